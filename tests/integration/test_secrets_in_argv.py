"""No secret of the cluster appears on the command line of any process on the machine (``ps`` shows it to all)
nor in any log file the cluster writes, and every file that holds one is readable by its owner alone."""

import stat
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


def readable_by_others(root: Path, secrets: list[str]) -> tuple[list[tuple[str, str]], int]:
    """Files under ``root`` that hold one of ``secrets`` (or a private key) and that anyone but their owner may
    read, with their modes; and how many files hold a secret."""
    offenders, holding = [], 0
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue  # a socket or a file removed meanwhile
        if not any(s.encode() in data for s in [*secrets, "PRIVATE KEY"] if s):
            continue
        holding += 1
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            offenders.append((str(path.relative_to(root)), oct(mode)))
    return offenders, holding


def test_every_file_holding_a_secret_is_readable_by_its_owner_alone(make_cluster):
    """redis.conf, the BMCs' lan.conf, the TLS keys, ...: every file of a cluster (Flower, BMCs and ZooKeeper over
    TLS included) that holds a token, a password, the sealing key or a private key is mode 0600."""
    c = make_cluster(flower=True, zookeeper_tls=True)
    offenders, holding = readable_by_others(c.workdir, [
        c.token, c.read_token, c.zookeeper_auth.partition(":")[2], c.secret_key, str(c.redis.info["password"]),
        c.flower_password, BMC_PASSWORD])
    assert offenders == []
    assert holding >= 3 + 4  # redis.conf, three lan.conf, four private keys
