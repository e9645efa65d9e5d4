"""No secret of the cluster appears on the command line of any process on the machine (``ps`` shows it to all)
nor in any log file the cluster writes."""

from pathlib import Path

import requests

from pvc_dev.bmc import BMC_PASSWORD


def _command_lines() -> dict[int, bytes]:
    lines = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                lines[int(proc.name)] = (proc / "cmdline").read_bytes()
            except OSError:
                continue  # it exited meanwhile
    return lines


def test_no_secret_in_any_command_line(make_cluster):
    """Tokens, the ZooKeeper identity, the sealing key, the Redis, Flower and BMC passwords: in no process's argv."""
    c = make_cluster(flower=True)
    secrets = {"api token": c.token, "read-only token": c.read_token,
               "zookeeper password": c.zookeeper_auth.partition(":")[2], "secret_key": c.secret_key,
               "redis password": str(c.redis.info["password"]), "flower password": c.flower_password,
               "bmc password": BMC_PASSWORD}
    ours = {s.pid for s in c.services} | {w.pid for w in c.workers.values()}
    lines = _command_lines()
    assert ours <= set(lines), "every process the cluster started is running"
    leaks = [(pid, what) for pid, line in lines.items() for what, secret in secrets.items() if secret.encode() in line]
    assert leaks == []


def test_no_secret_in_any_log_the_cluster_writes(make_cluster, vm_name):
    """After jobs, a migration, refused tokens and a worker restart (which checks its BMC), no log file of the
    cluster's holds a token, a password or the sealing key."""
    c = make_cluster(flower=True)
    s = c.session()
    assert c.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    job = s.post(f"{c.api_url}/api/v1/vms/{vm_name}/migrate", json={"target": "hv2"}, timeout=10).json()
    assert c.wait_job(job["id"])["state"] == "succeeded"
    wrong = c.token[:-4] + "xxxx"  # a near miss: a log that echoed presented keys would show most of the real one
    assert requests.get(f"{c.api_url}/api/v1/vms", headers={"X-Api-Key": wrong}, timeout=10).status_code == 401
    assert requests.post(f"{c.api_url}/api/v1/vms/{vm_name}/state", json={"state": "stop"},
                         headers={"X-Api-Key": c.read_token}, timeout=10).status_code == 403
    flower = c.flower_service.info["url"]
    assert requests.get(f"{flower}/api/workers", auth=(c.flower_user, "wrong"), timeout=10).status_code == 401
    c.workers["hv3"].stop()
    c.start_worker("hv3")
    c.wait_worker("hv3")
    secrets = {"api token": c.token, "token prefix": c.token[:-4], "read-only token": c.read_token,
               "zookeeper password": c.zookeeper_auth.partition(":")[2], "secret_key": c.secret_key,
               "redis password": str(c.redis.info["password"]), "flower password": c.flower_password,
               "bmc password": BMC_PASSWORD}
    logs = [p for p in c.workdir.rglob("*.log") if p.is_file()]
    assert {p.parent.name for p in logs} >= {"workers", "api", "flower"}, "the logs read are the services' own"
    leaks = [(str(p.relative_to(c.workdir)), what) for p in logs for what, secret in secrets.items()
             if secret.encode() in p.read_bytes()]
    assert leaks == []
