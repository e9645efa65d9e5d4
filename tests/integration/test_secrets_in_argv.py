"""No secret of the cluster appears on the command line of any process on the machine (``ps`` shows it to all)."""

from pathlib import Path

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
