"""The deployment files in deploy/ agree with the code: the example config loads, the units start our programs."""

import configparser
import json
import re
from pathlib import Path

from pvc_tasks.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = set(re.findall(r'"(pvc[a-z-]*)=', (ROOT / "setup.py").read_text()))


def test_the_example_config_loads_with_every_key_known():
    """deploy/pvc.toml.example is a valid config for a worker and the API (no unknown key, right types)."""
    settings = load_settings(ROOT / "deploy" / "pvc.toml.example", env={})
    assert (settings.node, settings.libvirt_uri, settings.api_listen) == ("hv1", "qemu:///system", "127.0.0.1:7370")
    assert settings.zookeeper.endswith("/pvc") and settings.zookeeper_auth.startswith("pvc:")


def test_each_systemd_unit_runs_an_installed_program_and_restarts_it():
    """Every unit's ExecStart is one of the package's console scripts, and a crash is restarted."""
    units = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
    assert {u.stem for u in units} == {"pvc-worker", "pvc-api", "pvc-flower"}
    for unit in units:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read(unit)
        program = Path(parser["Service"]["ExecStart"].split()[0]).name
        assert program in SCRIPTS, (unit.name, program)
        assert parser["Service"]["Restart"] == "always", unit.name


def test_the_grafana_dashboard_plots_only_metrics_that_pvc_exports():
    """deploy/grafana-dashboard.json is a dashboard whose every query names a metric family that pvc_web.metrics or
    pvc_tasks.metrics defines (a renamed metric would leave a panel empty without a word)."""
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    sources = (ROOT / "pvc_web" / "metrics.py").read_text() + (ROOT / "pvc_tasks" / "metrics.py").read_text()
    exported = set(re.findall(r'"(pvc_[a-z_]+)"', sources))
    assert {"pvc_jobs", "pvc_job_duration_seconds", "pvc_zookeeper_request_seconds"} <= exported
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 10
    for query in queries:
        for name in re.findall(r"\bpvc_[a-z_]+", query):
            family = re.sub(r"_(bucket|count|sum|total)$", "", name)
            assert family in exported, (query, name)
