"""bench/scale.py: what the API's reads and the job submissions cost as the cluster grows (issue 17).

Starts a cluster of ``--nodes`` test-driver nodes (4 by default: with the API, ZooKeeper, Redis and this client,
what 2 cores bear while staying responsive), then for each size in ``--vms`` (growing: the VMs of a size are kept
for the next):

    seed      defines VMs through the API (``--define-threads`` clients, half of them started), then adds ended
              job records straight into ZooKeeper (synthetic history, as the janitor would keep it) so that the
              cluster holds ``--jobs`` x size / the largest size job records;
    reads     ``--requests`` sequential GETs of each list endpoint (/vms, /nodes, /jobs, /cluster, /sriov/pfs,
              /sriov/vfs) and of one VM's detail: p50 / p99 (ms);
    submit    VM start/stop requests from 8 clients for ``--submit-seconds``: jobs accepted per second, and how
              many of them ended within the run;
    size      ZooKeeper's data (bytes of every znode's data, walked) and znode count, the API's resident memory.

    .venv/bin/python bench/scale.py [--vms 500,5000] [--jobs 20000] [--nodes 4] [--requests 30]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kazoo.exceptions import NoNodeError  # noqa: E402

from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402
from pvc_tasks.jobs import Job, JobState, JobStore, commit  # noqa: E402

READS = ("/vms", "/nodes", "/jobs", "/cluster", "/sriov/pfs", "/sriov/vfs")


def seed_vms(c: LocalCluster, first: int, last: int, threads: int) -> None:
    nodes = sorted(c.workers)

    def define(i: int) -> None:
        job = c.define_vm(f"s{i:05d}", 64, node=nodes[i % len(nodes)], start=i % 2 == 0)
        assert job["state"] == "succeeded", job

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(define, range(first, last)))


def seed_jobs(c: LocalCluster, count: int) -> None:
    """``count`` ended job records, written 100 per transaction."""
    store, now = JobStore(c.zk, c.schema), time.time()
    for first in range(0, count, 100):
        ops = []
        for i in range(first, min(first + 100, count)):
            job = Job.new("start", f"s{i % 5000:05d}", "hv1", {}, stage="pvc.vm.start")
            job.state, job.created, job.started, job.finished = JobState.SUCCEEDED, now - 3600, now - 3600, now - 3599
            ops += store.create_ops(job)
        commit(c.zk, ops)


def timed_gets(c: LocalCluster, path: str, n: int) -> tuple[float, float]:
    s, took = c.session(), []
    for _ in range(n):
        started = time.perf_counter()
        r = s.get(f"{c.api_url}/api/v1{path}", timeout=120)
        took.append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
    took.sort()
    return statistics.median(took), took[min(len(took) - 1, int(len(took) * 0.99))]


def submissions(c: LocalCluster, names: list[str], seconds: float) -> tuple[float, int, int]:
    """(accepted jobs per second, accepted, ended within the run)."""
    accepted: list[str] = []
    lock, stop = threading.Lock(), time.monotonic() + seconds
    pool = itertools.cycle(names)

    def client() -> None:
        s = c.session()
        while time.monotonic() < stop:
            with lock:
                name = next(pool)
            state = s.get(f"{c.api_url}/api/v1/vms/{name}", timeout=30).json()["state"]
            r = s.post(f"{c.api_url}/api/v1/vms/{name}/state", timeout=30,
                       json={"state": "stop" if state == "running" else "start"})
            if r.status_code == 202:
                with lock:
                    accepted.append(r.json()["id"])

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    s = c.session()
    ended = sum(s.get(f"{c.api_url}/api/v1/jobs/{j}", timeout=30).json()["state"] in ("succeeded", "failed")
                for j in accepted)
    return len(accepted) / elapsed, len(accepted), ended


def zk_size(c: LocalCluster) -> tuple[int, int]:
    """(bytes of data, znodes) under the cluster's root, walked breadth first with async reads."""
    zk, total, count, level = c.zk, 0, 0, ["/"]
    while level:
        data = [zk.get_async(p) for p in level]
        kids = [zk.get_children_async(p) for p in level]
        nxt = []
        for path, d, k in zip(level, data, kids):
            try:
                total += len(d.get()[0] or b"")
                nxt += [f"{path.rstrip('/')}/{child}" for child in k.get()]
            except NoNodeError:
                continue  # deleted as we walked (an index entry of a job that ended, a pruned job)
            count += 1
        level = nxt
    return total, count


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", default="500,5000")
    parser.add_argument("--jobs", type=int, default=20_000, help="job records at the largest size")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--define-threads", type=int, default=16)
    parser.add_argument("--submit-seconds", type=float, default=20)
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.vms.split(","))
    nodes = [NodeSpec(f"hv{i}", 512 * 1024, 64) for i in range(1, args.nodes + 1)]
    c = LocalCluster(Path(tempfile.mkdtemp(prefix="pvc-bench-scale-")), nodes, flower=False)
    print(f"starting {args.nodes} test-driver nodes ...", flush=True)
    c.start()
    rows, defined, jobs_now = [], 0, 0
    try:
        for size in sizes:
            print(f"{size} VMs: defining {size - defined} ...", flush=True)
            started = time.monotonic()
            seed_vms(c, defined, size, args.define_threads)
            define_rate = (size - defined) / (time.monotonic() - started)
            defined = size
            records = len(c.zk.get_children(c.schema.path("base.job")))
            wanted = args.jobs * size // sizes[-1]
            if wanted > records:
                seed_jobs(c, wanted - records)
            jobs_now = len(c.zk.get_children(c.schema.path("base.job")))
            print(f"  {jobs_now} job records; reading ...", flush=True)
            reads = {path: timed_gets(c, path, args.requests) for path in READS}
            reads["/vms/<name>"] = timed_gets(c, "/vms/s00001", args.requests)
            rate, accepted, ended = submissions(c, [f"s{i:05d}" for i in range(0, size, 7)], args.submit_seconds)
            data, znodes = zk_size(c)
            print("  reads p50 (ms): " + ", ".join(f"{p} {v[0]:.1f}" for p, v in reads.items()), flush=True)
            rows.append({"size": size, "jobs": jobs_now, "reads": reads, "define_rate": define_rate, "rate": rate,
                         "accepted": accepted, "ended": ended, "data": data, "znodes": znodes,
                         "rss": rss_mib(c.api.pid)})
    finally:
        c.stop()
    print(f"\n{args.nodes} test-driver nodes; {args.requests} sequential requests per endpoint (ms)")
    print("  endpoint          " + "".join(f"{r['size']:>7d} VMs p50 / p99   " for r in rows))
    for path in (*READS, "/vms/<name>"):
        print(f"  {path:16s}  " + "".join(f"{r['reads'][path][0]:9.1f} / {r['reads'][path][1]:8.1f}     "
                                          for r in rows))
    for r in rows:
        print(f"\n  {r['size']} VMs, {r['jobs']} job records: defines {r['define_rate']:.1f}/s; submissions "
              f"{r['rate']:.1f} jobs/s ({r['accepted']} accepted, {r['ended']} ended within the run); ZooKeeper "
              f"{r['data'] / 2**20:.1f} MiB in {r['znodes']} znodes; API RSS {r['rss']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
