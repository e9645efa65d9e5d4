"""bench/redrive.py: how fast jobs end after a fault, and what the re-driver costs when nothing goes wrong.

Faults (each on a fresh 3-node test-driver cluster, ``redrive_after`` 2 s, janitor every 1 s): the time from the
fault to every job of the scenario being terminal.

* ``lost message``: one start job's message deleted from Redis before any worker took it;
* ``redis, starts``: Redis SIGKILLed (every queued message lost: its append-only files removed) with 20 start jobs
  queued behind a one-thread worker;
* ``redis, flush``: Redis SIGKILLed the same way while a flush of ``--vms`` VMs runs;
* ``worker, flush``: the flushing node's worker SIGKILLed and restarted while a flush of ``--vms`` VMs runs.

Normal case: two clusters in the same run, one with the re-driver (the default ``redrive_after``) and one with it
off (``redrive_after`` 0), measured in alternating rounds: start + stop lifecycle jobs and a migration job, p50 of
each through the API (POST, then the CLI's long-poll), and the ratio with / without.

    .venv/bin/python bench/redrive.py [--vms 30] [--rounds 100]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lifecycle import job_round_trip, percentile  # noqa: E402
from bench.migrate import migrate  # noqa: E402
from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402
from pvc_dev.services import wait_until  # noqa: E402

FAST = {"PVC_KEEPALIVE_INTERVAL": "1", "PVC_JANITOR_INTERVAL": "1", "PVC_ZK_SESSION_TIMEOUT": "10",
        "PVC_REDRIVE_AFTER": "2"}
NODES = [NodeSpec("hv1", 16384), NodeSpec("hv2", 16384), NodeSpec("hv3", 16384)]


def cluster(workdir: Path, name: str, nodes=None, **env: str) -> LocalCluster:
    # Faults here are transient (shorter than the fencing threshold): no BMCs, maintenance mode, nothing fenced.
    return LocalCluster(workdir / name, list(nodes or NODES), flower=False, worker_env={**FAST, **env}, bmcs=False,
                        fencing=False).start()


def wait_terminal(c: LocalCluster, job_ids: list[str], timeout: float = 300) -> None:
    for job_id in job_ids:
        job = c.wait_job(job_id, timeout=timeout)
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job_id} ({job['kind']} {job['vm']}) ended {job['state']}: {job['reason']}")


def queued(broker: redis.Redis, node: str) -> list[bytes]:
    return [k for k in broker.keys(f"node.{node}*") if broker.type(k) == b"list" and broker.llen(k)]


def consumer(c: LocalCluster, node: str, on: bool) -> None:
    from celery import Celery

    control = Celery("bench-control", broker=c.redis_url).control
    (control.add_consumer if on else control.cancel_consumer)(f"node.{node}", destination=[f"pvc@{node}"],
                                                             reply=True, timeout=5)


def lost_message(c: LocalCluster) -> float:
    c.define_vm("lost", 64, node="hv1")
    broker = redis.Redis.from_url(c.redis_url)
    consumer(c, "hv1", on=False)
    job = c.session().post(f"{c.api_url}/api/v1/vms/lost/state", json={"state": "start"}, timeout=10).json()
    wait_until(lambda: queued(broker, "hv1"), 5, "the message queued")
    broker.delete(*queued(broker, "hv1"))
    fault = time.monotonic()
    consumer(c, "hv1", on=True)
    wait_terminal(c, [job["id"]])
    return time.monotonic() - fault


def redis_starts(c: LocalCluster) -> float:
    names = [f"s{i:02d}" for i in range(20)]
    for name in names:
        c.define_vm(name, 64, node="hv1")
    worker = c.workers["hv1"]
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        s = c.session()
        jobs = [s.post(f"{c.api_url}/api/v1/vms/{n}/state", json={"state": "start"}, timeout=10).json()["id"]
                for n in names]
        fault = time.monotonic()
        c.restart_redis(kill=True, lose=True)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    wait_terminal(c, jobs)
    return time.monotonic() - fault


def flush_with_fault(c: LocalCluster, vms: int, fault_fn) -> float:
    for i in range(vms):
        c.define_vm(f"f{i:03d}", 64, node="hv1", start=True)
    s, base = c.session(), f"{c.api_url}/api/v1"
    flush = s.post(f"{base}/nodes/hv1/flush", timeout=10).json()
    wait_until(lambda: len(s.get(f"{base}/jobs/{flush['id']}", timeout=10).json()["result"].get("done", []))
               >= vms // 3, 300, "a third of the VMs to leave")
    fault = time.monotonic()
    fault_fn(c)
    wait_terminal(c, [flush["id"]])
    return time.monotonic() - fault


def restart_worker(c: LocalCluster) -> None:
    c.workers["hv1"].kill()
    c.start_worker("hv1")


def faults(workdir: Path, vms: int) -> list[tuple[str, float]]:
    scenarios = [("lost message (1 start job)", lambda c: lost_message(c), None),
                 ("redis SIGKILL, 20 starts queued, 1 thread", lambda c: redis_starts(c),
                  {"PVC_WORKER_CONCURRENCY": "1"}),
                 (f"redis SIGKILL during a flush of {vms} VMs", lambda c: flush_with_fault(
                     c, vms, lambda k: k.restart_redis(kill=True, lose=True)), None),
                 (f"worker SIGKILL + restart during a flush of {vms} VMs",
                  lambda c: flush_with_fault(c, vms, restart_worker), None)]
    results = []
    for i, (name, run, env) in enumerate(scenarios):
        c = cluster(workdir, f"fault{i}", **(env or {}))
        try:
            results.append((name, run(c)))
            print(f"  {name}: {results[-1][1]:.1f} s", flush=True)
        finally:
            c.stop()
    return results


def normal_case(workdir: Path, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Alternating rounds on a cluster with the re-driver and one without: lifecycle and migration times."""
    both = {"with": cluster(workdir, "with"), "without": cluster(workdir, "without", PVC_REDRIVE_AFTER="0")}
    times: dict[str, dict[str, list[float]]] = {k: {"lifecycle": [], "migration": []} for k in both}
    try:
        for c in both.values():
            c.define_vm("life", 64, node="hv1")
            c.define_vm("mig", 64, node="hv1")
        where = {k: "hv1" for k in both}
        for i in range(rounds + 5):  # 5 warm-up rounds
            for key, c in both.items():
                s, base = c.session(), f"{c.api_url}/api/v1"
                life = job_round_trip(s, base, "life", "start") + job_round_trip(s, base, "life", "stop")
                where[key] = "hv2" if where[key] == "hv1" else "hv1"
                mig = migrate(s, base, "mig", where[key])
                if i >= 5:
                    times[key]["lifecycle"].append(life)
                    times[key]["migration"].append(mig)
    finally:
        for c in both.values():
            c.stop()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pvc-bench-redrive-"))
    print(f"fault scenarios (time from the fault to every job terminal), in {workdir}:", flush=True)
    faults(workdir, args.vms)
    print(f"\nnormal case, {args.rounds} alternating rounds per cluster ...", flush=True)
    times = normal_case(workdir, args.rounds)
    print(f"\n{'p50 (ms)':<40}{'with':>10}{'without':>10}{'ratio':>9}")
    for kind, label in (("lifecycle", "start + stop (2 lifecycle jobs)"), ("migration", "migration job")):
        with_p50 = percentile(times["with"][kind], 50)
        without_p50 = percentile(times["without"][kind], 50)
        print(f"{label:<40}{with_p50 * 1e3:>10.1f}{without_p50 * 1e3:>10.1f}{with_p50 / without_p50:>8.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
