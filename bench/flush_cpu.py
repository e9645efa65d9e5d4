"""bench/flush_cpu.py: CPU seconds of every cluster process, and ZooKeeper packets, for one flush and one ready.

Wall time on a shared 2-core machine varies by 10-15 % between runs of the same code; the CPU spent by the
workers, the API, ZooKeeper and Redis, and the number of packets ZooKeeper received, vary far less, which makes
them the figures to compare two versions with (run each version's checkout with its own PYTHONPATH).
Same cluster as bench/flush.py (hv1 64 GiB, hv2-hv4 32 GiB, half the VMs running, default limits).

    .venv/bin/python bench/flush_cpu.py [--vms 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402
from pvc_dev.services import zk_stats  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its direct children (a worker's pool, ZooKeeper's JVM wrapper)."""
    total = 0.0
    for p in [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def zk_received(port: int) -> int:
    """Packets the ZooKeeper server has received."""
    return int(zk_stats(port)["Received"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=500)
    args = parser.parse_args()
    nodes = [NodeSpec("hv1", 65536, 16)] + [NodeSpec(f"hv{i}", 32768, 16) for i in (2, 3, 4)]
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="pvc-bench-flush-cpu-")), nodes, flower=False)
    cluster.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            jobs = pool.map(lambda i: cluster.define_vm(f"b{i:04d}", 64, node="hv1", start=i % 2 == 0),
                            range(args.vms))
            assert all(j["state"] == "succeeded" for j in jobs)
        procs = {**{name: w.pid for name, w in cluster.workers.items()}, "api": cluster.api.pid,
                 "zookeeper": cluster.zookeeper.pid, "redis": cluster.redis.pid}
        port = int(cluster.zookeeper.info["port"])
        print(f"{args.vms} VMs off hv1 and back")
        for action in ("flush", "ready"):
            before, packets, started = {k: cpu_seconds(p) for k, p in procs.items()}, zk_received(port), \
                time.perf_counter()
            job = cluster.session().post(f"{cluster.api_url}/api/v1/nodes/hv1/{action}", timeout=30).json()
            assert cluster.wait_job(job["id"], timeout=1800)["state"] == "succeeded"
            wall = time.perf_counter() - started
            spent = {k: cpu_seconds(p) - before[k] for k, p in procs.items()}
            detail = ", ".join(f"{k} {v:.1f}" for k, v in spent.items())
            print(f"  {action:5s}: wall {wall:6.1f} s, CPU {sum(spent.values()):6.1f} s ({detail}), "
                  f"ZooKeeper packets {zk_received(port) - packets}")
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
