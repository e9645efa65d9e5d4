"""bench/lifecycle.py: what a VM lifecycle job costs end to end, against raw Celery hops, in one run.

Starts its own local cluster (ZooKeeper, Redis, 3 test-driver workers, the API), defines one VM, then measures
ROUNDS round trips of start + stop jobs through the API: POST the state change, then long-poll the job
(``GET /jobs/<id>?wait=5&after=<revision>``, as the CLI does) until it is terminal. The baseline, in the same
run and on the same Redis: a plain Celery worker (threads pool, like the node workers) and two no-op hops per
round (``apply_async`` + ``get``, twice).

    .venv/bin/python bench/lifecycle.py [--rounds 200]

Prints p50/p99 of both and their ratio. The job path adds what the baseline lacks: an HTTP request, one ZooKeeper
transaction creating the job with the VM's marker, the worker's claim (CAS), the libvirt call, the terminal
transaction, and the HTTP long-polls of the job.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402
from pvc_dev.services import Service, wait_until  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def job_round_trip(s: requests.Session, base: str, vm: str, action: str) -> float:
    started = time.perf_counter()
    job = s.post(f"{base}/vms/{vm}/state", json={"state": action}, timeout=10).json()
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        # The CLI's way: a long-poll that answers as soon as the job changes.
        job = s.get(f"{base}/jobs/{job['id']}", params={"wait": 5, "after": job.get("revision", -1)},
                    timeout=15).json()
    if job["state"] != "succeeded":
        raise RuntimeError(f"{action} job ended {job['state']}: {job['reason']}")
    return time.perf_counter() - started


def baseline(cluster: LocalCluster, rounds: int, workdir: Path) -> list[float]:
    redis_db = cluster.redis_url.rsplit("/", 1)[0] + "/15"
    env = {"BENCH_REDIS": redis_db, "PYTHONPATH": str(ROOT)}
    worker = Service("bench-worker", [str(Path(sys.executable).with_name("celery")), "-A", "bench.noop_app",
                                      "worker", "--pool", "threads", "--concurrency", "4", "-Q", "bench",
                                      "--without-gossip", "--without-mingle", "-l", "WARNING"],
                     workdir / "bench-worker.log", env=env, cwd=ROOT)
    import os

    os.environ["BENCH_REDIS"] = redis_db
    from bench.noop_app import noop

    try:
        wait_until(lambda: worker.check() or noop.apply_async(kwargs={}).get(timeout=2) == {}, 60,
                   "the baseline worker")
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            for action in ("start", "stop"):
                noop.apply_async(kwargs={"vm": "bench", "node": "hv1", "action": action}).get(timeout=10)
            times.append(time.perf_counter() - started)
        return times
    finally:
        worker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pvc-bench-"))
    cluster = LocalCluster(workdir, [NodeSpec("hv1"), NodeSpec("hv2"), NodeSpec("hv3")], flower=False)
    print(f"starting a 3-node cluster in {workdir} ...", flush=True)
    cluster.start()
    try:
        cluster.define_vm("bench", node="hv1")
        s, base = cluster.session(), f"{cluster.api_url}/api/v1"
        for _ in range(5):  # warm-up
            job_round_trip(s, base, "bench", "start")
            job_round_trip(s, base, "bench", "stop")
        jobs = []
        for _ in range(args.rounds):
            jobs.append(job_round_trip(s, base, "bench", "start") + job_round_trip(s, base, "bench", "stop"))
        raw = baseline(cluster, args.rounds, workdir)
    finally:
        cluster.stop()
    jp50, jp99, rp50, rp99 = (percentile(jobs, 50), percentile(jobs, 99), percentile(raw, 50), percentile(raw, 99))
    print(f"\nstart+stop round trip, {args.rounds} rounds (ms)        p50      p99     mean")
    print(f"  pvc jobs through the API (2 jobs)          {jp50 * 1e3:7.2f}  {jp99 * 1e3:7.2f}  "
          f"{statistics.mean(jobs) * 1e3:7.2f}")
    print(f"  raw Celery, 2 no-op hops, same Redis       {rp50 * 1e3:7.2f}  {rp99 * 1e3:7.2f}  "
          f"{statistics.mean(raw) * 1e3:7.2f}")
    print(f"  ratio pvc / raw                            {jp50 / rp50:7.2f}x {jp99 / rp99:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
