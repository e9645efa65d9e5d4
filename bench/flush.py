"""bench/flush.py: flush of 50, 200 and 500 VMs off one of 4 test-driver nodes.

Starts its own cluster (4 nodes: hv1 64 GiB, hv2-hv4 32 GiB; default limits 2 out / 2 in per node, 5 in the
cluster), defines the VMs on hv1 (half of them running), then for each size flushes hv1 through the API and
waits for the job; then makes hv1 ready again (the unflush brings every VM back) before growing to the next size.
For each flush it prints the wall time, VMs/s, and the peak number of migrations holding a slot, per source node,
per target node and in the cluster (sampled by a ZooKeeper watch on the slots), against the limits.

    .venv/bin/python bench/flush.py [--sizes 50,200,500] [--limits 6,3,9]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402


class Peaks:
    """Peak slot usage seen by a ZooKeeper data watch on the cluster's migration slots."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.cluster = self.out = self.into = 0

    def __call__(self, data, _stat) -> None:
        slots = json.loads(data or b"{}")
        self.cluster = max(self.cluster, len(slots))
        for attr, key in (("out", "source"), ("into", "target")):
            counts: dict[str, int] = {}
            for slot in slots.values():
                counts[slot[key]] = counts.get(slot[key], 0) + 1
            setattr(self, attr, max([getattr(self, attr), *counts.values()]))


def run_job(cluster: LocalCluster, path: str) -> tuple[dict, float]:
    s = cluster.session()
    started = time.perf_counter()
    job = s.post(f"{cluster.api_url}/api/v1{path}", timeout=30).json()
    ended = cluster.wait_job(job["id"], timeout=1800)
    return ended, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,200,500")
    parser.add_argument("--limits", default="", help="out,in,cluster (default: the cluster's defaults)")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="pvc-bench-flush-"))
    nodes = [NodeSpec("hv1", 65536, 16)] + [NodeSpec(f"hv{i}", 32768, 16) for i in (2, 3, 4)]
    cluster = LocalCluster(workdir, nodes, flower=False)
    print(f"starting a 4-node cluster in {workdir} ...", flush=True)
    cluster.start()
    peaks, rows, defined = Peaks(), [], 0
    lock = threading.Lock()
    try:
        cluster.zk.DataWatch(cluster.schema.path("base.migrations"), lambda d, s: (lock.acquire(), peaks(d, s),
                                                                                 lock.release()))
        if args.limits:
            out, into, total = (int(v) for v in args.limits.split(","))
            cluster.session().put(f"{cluster.api_url}/api/v1/cluster/limits", timeout=10, json={
                "migrate_out_per_node": out, "migrate_in_per_node": into, "migrate_cluster": total})
        limits = cluster.session().get(f"{cluster.api_url}/api/v1/cluster", timeout=10).json()["limits"]
        for size in sizes:
            with ThreadPoolExecutor(8) as pool:
                jobs = pool.map(lambda i: cluster.define_vm(f"b{i:04d}", 64, node="hv1", start=i % 2 == 0),
                                range(defined, size))
                assert all(j["state"] == "succeeded" for j in jobs)
            defined = size
            peaks.reset()
            flushed, seconds = run_job(cluster, "/nodes/hv1/flush")
            assert flushed["state"] == "succeeded", flushed["reason"]
            back, back_seconds = run_job(cluster, "/nodes/hv1/ready")
            assert back["state"] == "succeeded", back["reason"]
            rows.append((size, seconds, size / seconds, peaks.out, peaks.into, peaks.cluster, back_seconds))
            print(f"  {size} VMs: flush {seconds:.1f} s, ready {back_seconds:.1f} s", flush=True)
    finally:
        cluster.stop()
    print(f"\nflush of hv1 (limits: {limits['migrate_out_per_node']} out / {limits['migrate_in_per_node']} in per "
          f"node, {limits['migrate_cluster']} in the cluster)")
    print("   VMs   flush s    VMs/s   peak out/node  peak in/node  peak cluster   ready (unflush) s")
    for size, seconds, rate, out, into, total, back in rows:
        print(f"  {size:4d}   {seconds:7.2f}  {rate:7.1f}   {out:13d}  {into:12d}  {total:12d}   {back:17.2f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"\ntime grows {last[1] / first[1]:.1f}x for {last[0] / first[0]:.0f}x the VMs "
              f"(s per VM: {first[1] / first[0] * 1e3:.0f} ms at {first[0]}, {last[1] / last[0] * 1e3:.0f} ms at "
              f"{last[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
