"""The dev cluster launcher: up prints how to connect, a second up is harmless, down leaves no process behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from pvc_dev.services import wait_until

PVC_DEV = str(Path(sys.executable).with_name("pvc-dev"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_up_status_second_up_and_down(tmp_path):
    """`pvc-dev up` starts everything with demo VMs; `up` again only reports; `down` stops every recorded PID."""
    workdir = tmp_path / "dev"
    log = open(tmp_path / "up.log", "w")
    launcher = subprocess.Popen([PVC_DEV, "--workdir", str(workdir), "up"], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        state = wait_until(lambda: json.loads((workdir / "state.json").read_text()), 120, "the dev cluster")
        banner = (tmp_path / "up.log").read_text()
        assert "API" in banner and "Flower" in banner and "token:" in banner and "pvc vm start" in banner
        names = {p["name"] for p in state["processes"]}
        assert {"zookeeper", "redis", "worker-hv1", "worker-hv2", "worker-hv3", "api", "flower", "bmc-hv1", "bmc-hv2",
                "bmc-hv3"} == names
        assert "BMCs      hv1 127.0.0.1:" in banner

        config = dict(line.split(" = ") for line in (workdir / "cli.toml").read_text().splitlines())
        url, token = config["api_url"].strip('"'), config["token"].strip('"')
        vms = requests.get(f"{url}/api/v1/vms", headers={"X-Api-Key": token}, timeout=5).json()
        assert {v["name"]: v["state"] for v in vms} == {"web1": "running", "web2": "running", "db1": "running",
                                                        "batch1": "stopped"}
        nodes = requests.get(f"{url}/api/v1/nodes", headers={"X-Api-Key": token}, timeout=5).json()
        assert len({n["memory"]["total"] for n in nodes}) == 3  # each node its own size

        again = subprocess.run([PVC_DEV, "--workdir", str(workdir), "up"], capture_output=True, text=True,
                               timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout
        status = subprocess.run([PVC_DEV, "--workdir", str(workdir), "status"], capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0 and status.stdout.count("running") >= 7

        down = subprocess.run([PVC_DEV, "--workdir", str(workdir), "down"], capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0
        launcher.wait(timeout=60)
        assert [p for p in state["processes"] if alive(p["pid"])] == []
        assert not (workdir / "state.json").exists()
    finally:
        if (workdir / "state.json").exists():  # a failure above: stop what the launcher recorded
            subprocess.run([PVC_DEV, "--workdir", str(workdir), "down"], capture_output=True, timeout=120)
        if launcher.poll() is None:
            launcher.kill()
        log.close()
