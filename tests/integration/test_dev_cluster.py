"""The dev cluster launcher: up prints how to connect, a second up is harmless, down leaves no process behind."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import requests

from pvc_dev.bmc import BMC_PASSWORD, BMC_USER
from pvc_dev.services import wait_until
from tests.integration.test_secrets_in_argv import readable_by_others

PVC_DEV = str(Path(sys.executable).with_name("pvc-dev"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def _power_cut_is_fenced_and_recovered(launcher, workdir: Path, banner: str, url: str, token: str,
                                       state: dict) -> dict:
    """The README's fencing demo: hv1's power is cut through its BMC with ipmitool; the primary fences hv1 (its
    power cycle starts a new worker), web1 runs on another node, the launcher stays up and records the new worker,
    and `ready hv1` brings web1 home. Returns the launcher's new state."""
    port = re.search(r"hv1 127\.0\.0\.1:(\d+)", banner).group(1)
    off = subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", port, "-U", BMC_USER,
                          "-P", BMC_PASSWORD, "chassis", "power", "off"], capture_output=True, text=True, timeout=30)
    assert off.returncode == 0, off.stderr
    headers = {"X-Api-Key": token}

    def get(path: str, **params):
        return requests.get(f"{url}/api/v1{path}", headers=headers, params=params, timeout=10).json()

    def recovered():
        web1 = get("/vms/web1")
        return web1 if web1["node"] != "hv1" and web1["state"] == "running" else None

    def hv1_back():
        hv1 = {n["name"]: n for n in get("/nodes")}["hv1"]
        return hv1["alive"] and hv1["daemon_state"] == "run"

    wait_until(recovered, 120, "web1 to run on another node")

    def fence_ended():
        fences = get("/jobs", kind="fence")
        return fences if fences and all(f["state"] in ("succeeded", "failed", "cancelled") for f in fences) else None

    # web1 runs elsewhere once its recover job ended, a moment before the fence job's last pass ends the fence
    # (seen twice: the fence still `running` when read at once).
    fences = wait_until(fence_ended, 60, "the fence job to end")
    assert [(f["params"]["target"], f["state"]) for f in fences] == [("hv1", "succeeded")]
    wait_until(hv1_back, 120, "hv1 to be powered on and its worker to run")
    old_pid = {p["name"]: p["pid"] for p in state["processes"]}["worker-hv1"]

    def recorded():
        now = json.loads((workdir / "state.json").read_text())
        pid = {p["name"]: p["pid"] for p in now["processes"]}["worker-hv1"]
        return now if pid != old_pid and alive(pid) else None

    new_state = wait_until(recorded, 30, "the launcher to record hv1's new worker")
    ready = requests.post(f"{url}/api/v1/nodes/hv1/ready", headers=headers, json={}, timeout=10).json()

    def ended():
        job = get(f"/jobs/{ready['id']}")
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    assert wait_until(ended, 120, "`ready hv1` to end")["state"] == "succeeded"
    assert get("/vms/web1")["node"] == "hv1"  # home again
    assert launcher.poll() is None
    return new_state


def test_up_status_second_up_and_down(tmp_path):
    """`pvc-dev up` starts everything with demo VMs; a power cut of a node through its BMC is fenced and recovered
    while the launcher stays up; `up` again only reports; `down` stops every recorded PID."""
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
        secrets = [(workdir / name).read_text().strip() for name in ("token", "read-token", "flower-password")]
        offenders, holding = readable_by_others(workdir, secrets)
        assert offenders == [] and holding >= 6, offenders  # state.json, env, cli.toml, the three secret files
        assert re.search(r"ZooKeeper .* over mutual TLS", banner), banner  # the dev cluster's default
        vms = requests.get(f"{url}/api/v1/vms", headers={"X-Api-Key": token}, timeout=5).json()
        assert {v["name"]: v["state"] for v in vms} == {"web1": "running", "web2": "running", "db1": "running",
                                                        "batch1": "stopped"}
        nodes = requests.get(f"{url}/api/v1/nodes", headers={"X-Api-Key": token}, timeout=5).json()
        assert len({n["memory"]["total"] for n in nodes}) == 3  # each node its own size

        state = _power_cut_is_fenced_and_recovered(launcher, workdir, banner, url, token, state)

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
