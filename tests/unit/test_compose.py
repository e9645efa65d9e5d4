"""docker-compose.test.yml describes the dev cluster's topology and only runs commands that exist."""

import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def console_scripts() -> set[str]:
    text = (ROOT / "setup.py").read_text()
    return {line.split("=")[0].strip().strip('"') for line in text.splitlines() if "=" in line and ":" in line
            and line.strip().startswith('"pvc')}


def test_compose_services_and_commands_exist():
    """Every service's command is one of our console scripts or a program the image has; files it copies exist."""
    doc = yaml.safe_load((ROOT / "docker-compose.test.yml").read_text())
    services = doc["services"]
    assert {"zookeeper", "redis", "api", "flower", "init", "worker-hv1", "worker-hv2", "worker-hv3"} <= set(services)
    scripts = console_scripts()
    assert {"pvc", "pvc-worker", "pvc-api", "pvc-dev"} <= scripts
    for name, service in services.items():
        command = service.get("command")
        if not command or ("image" in service and "build" not in service):
            continue  # third-party images run their own commands
        program = command[0]
        installed = Path(sys.executable).with_name(program).exists() or shutil.which(program)
        assert program in scripts or installed or program == "python", (name, program)
        if program == "celery":
            assert command[1:3] == ["-A", "pvc_tasks.app"]
    for node in ("hv1", "hv2", "hv3"):
        command = services[f"worker-{node}"]["command"]
        assert command[:3] == ["pvc-worker", "--node", node]
        assert (ROOT / "docker" / f"{node}.xml").is_file()
        assert f"/etc/pvc/nodes/{node}.xml" in command[-1]
    flower = services["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"] and "CELERY_BROKER_URL" in flower["environment"]
    assert not [arg for arg in flower["command"] if "auth" in arg or "://" in arg]  # no secret in argv
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "default off" in redis  # durable, and only pvc's ACL user connects
    assert (ROOT / "Dockerfile").is_file()
