"""bench/migrate.py: what a migration job costs, against a raw Celery chain of the same shape, in one run.

Starts its own local cluster (ZooKeeper, Redis, 3 test-driver workers, the API; keepalive and janitor intervals
long so that nothing else writes to ZooKeeper while it counts), starts one idle VM, and measures:

* ZooKeeper write transactions per migration: the server's zxid (one per write transaction, a multi-op
  transaction counts once) before and after each migration, API request to terminal state;
* p50/p99 of a migration job through the API (POST, then the CLI's long-poll until terminal), alternating the VM
  between two nodes;
* the baseline in the same run: a Celery chain of as many hops (4, alternating between two worker processes as
  the steps alternate between T and S) doing the same number of ZooKeeper writes, on the same Redis and ZooKeeper.

* the same migration job on real QEMU nodes (two libvirtds, an idle 64 MiB guest, libvirt's peer-to-peer live
  migration), in a second cluster; after each job, the baseline in the same run: bare ``migrateToURI3`` of the
  same guest between the same two libvirtds, there and back, with the flags and parameters pvc's adapter uses
  (``pvc_workers.hypervisor``), connections opened beforehand as a worker holds them.

    .venv/bin/python bench/migrate.py [--rounds 100] [--qemu-rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lifecycle import percentile  # noqa: E402
from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402
from pvc_dev.services import Service, wait_until, zk_stats  # noqa: E402

STEPS = 4


def zxid(port: int) -> int:
    return int(zk_stats(port)["Zxid"], 16) & 0xFFFFFFFF  # low 32 bits count transactions within the epoch


def migrate(s, base: str, vm: str, target: str) -> float:
    started = time.perf_counter()
    job = s.post(f"{base}/vms/{vm}/move", json={"target": target}, timeout=10).json()
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        job = s.get(f"{base}/jobs/{job['id']}", params={"wait": 5, "after": job.get("revision", -1)},
                    timeout=15).json()
    if job["state"] != "succeeded":
        raise RuntimeError(f"migration ended {job['state']}: {job['reason']}")
    return time.perf_counter() - started


def baseline(cluster: LocalCluster, rounds: int, writes: int, workdir: Path) -> list[float]:
    redis_db = cluster.redis_url.rsplit("/", 1)[0] + "/15"
    env = {"BENCH_REDIS": redis_db, "BENCH_ZOOKEEPER": cluster.zk_hosts, "BENCH_ZOOKEEPER_AUTH": cluster.zookeeper_auth,
           "PYTHONPATH": str(ROOT)}
    os.environ.update(env)
    celery = str(Path(sys.executable).with_name("celery"))
    workers = [Service(f"bench-{q}", [celery, "-A", "bench.noop_app", "worker", "--pool", "threads",
                                      "--concurrency", "4", "-Q", q, "-n", f"{q}@bench", "--without-gossip",
                                      "--without-mingle", "-l", "WARNING"], workdir / f"bench-{q}.log", env=env,
                       cwd=ROOT) for q in ("bench.a", "bench.b")]
    from celery import chain

    from bench.noop_app import hop

    # The job's writes, spread over its hops; the API's creating transaction goes to the first hop.
    per_hop = [writes // STEPS + (1 if i < writes % STEPS else 0) for i in range(STEPS)]

    def run_chain() -> None:
        links = [hop.si(zk_writes=n, step=i).set(queue="bench.a" if i % 2 == 0 else "bench.b")
                 for i, n in enumerate(per_hop)]
        chain(*links).apply_async().get(timeout=30)

    try:
        wait_until(lambda: all(w.check() is None for w in workers) and (run_chain() or True), 60,
                   "the baseline workers")
        for _ in range(5):
            run_chain()
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            run_chain()
            times.append(time.perf_counter() - started)
        return times
    finally:
        for w in workers:
            w.stop()


def bare_there_and_back(conns: dict, peers: dict[str, str], vm: str, here: str, there: str) -> list[float]:
    """libvirt's own live migration of ``vm`` from ``here`` to ``there`` and back (ZooKeeper still places it here
    when this returns), each call timed."""
    import libvirt

    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
             | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    params = {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1"}  # as LocalCluster configures the workers
    took = []
    for source, target in ((here, there), (there, here)):
        dom = conns[source].lookupByName(vm)
        started = time.perf_counter()
        dom.migrateToURI3(peers[target], params, flags)
        took.append(time.perf_counter() - started)
    return took


def qemu_times(rounds: int) -> tuple[list[float], list[float]]:
    """(pvc migration jobs, bare migrateToURI3 calls) of one guest between two QEMU nodes, interleaved."""
    import libvirt

    from pvc_dev.guests import qemu_domain_xml

    workdir = Path(tempfile.mkdtemp(prefix="pvc-bench-qemu-"))
    cluster = LocalCluster(workdir, [NodeSpec("hq1", hypervisor="qemu"), NodeSpec("hq2", hypervisor="qemu")],
                           flower=False, worker_env={"PVC_KEEPALIVE_INTERVAL": "3600", "PVC_JANITOR_INTERVAL": "3600"})
    print(f"starting a 2-node QEMU cluster in {workdir} ...", flush=True)
    cluster.start()
    try:
        cluster.define_vm("guest", node="hq1", start=True, xml=qemu_domain_xml("guest"))
        s, base, nodes = cluster.session(), f"{cluster.api_url}/api/v1", ["hq2", "hq1"]
        migrate(s, base, "guest", "hq2")
        migrate(s, base, "guest", "hq1")
        peers = {n: cluster.zk.get(cluster.schema.path("node.hypervisor", n))[0].decode() for n in ("hq1", "hq2")}
        conns = {n: libvirt.open(uri) for n, uri in peers.items()}
        jobs, bare = [], []
        for i in range(rounds):
            jobs.append(migrate(s, base, "guest", nodes[i % 2]))
            bare += bare_there_and_back(conns, peers, "guest", nodes[i % 2], nodes[(i + 1) % 2])
        for conn in conns.values():
            conn.close()
        return jobs, bare
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--qemu-rounds", type=int, default=20)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pvc-bench-"))
    quiet = {"PVC_KEEPALIVE_INTERVAL": "3600", "PVC_JANITOR_INTERVAL": "3600"}
    cluster = LocalCluster(workdir, [NodeSpec("hv1"), NodeSpec("hv2"), NodeSpec("hv3")], flower=False,
                           worker_env=quiet)
    print(f"starting a 3-node cluster in {workdir} ...", flush=True)
    cluster.start()
    try:
        cluster.define_vm("bench", 256, node="hv1", start=True)
        s, base = cluster.session(), f"{cluster.api_url}/api/v1"
        port, nodes = int(cluster.zookeeper.info["port"]), ["hv2", "hv1"]
        for i in range(6):  # warm-up
            migrate(s, base, "bench", nodes[i % 2])
        counts = []
        for i in range(10):
            before = zxid(port)
            migrate(s, base, "bench", nodes[i % 2])
            counts.append(zxid(port) - before)
        times = [migrate(s, base, "bench", nodes[i % 2]) for i in range(args.rounds)]
        writes = round(statistics.median(counts))
        raw = baseline(cluster, args.rounds, writes, workdir)
    finally:
        cluster.stop()
    real, bare = qemu_times(args.qemu_rounds) if args.qemu_rounds else ([], [])
    jp50, jp99, rp50, rp99 = percentile(times, 50), percentile(times, 99), percentile(raw, 50), percentile(raw, 99)
    print(f"\nZooKeeper write transactions per migration (API request to terminal): median {writes} "
          f"(min {min(counts)}, max {max(counts)}, over {len(counts)} migrations)")
    print(f"\nmigration of an idle running VM, {args.rounds} rounds (ms)     p50      p99     mean")
    print(f"  pvc migrate job through the API (4 steps, 2 nodes)   {jp50 * 1e3:7.2f}  {jp99 * 1e3:7.2f}  "
          f"{statistics.mean(times) * 1e3:7.2f}")
    print(f"  raw Celery chain, 4 hops over 2 workers, {writes} ZK writes {rp50 * 1e3:6.2f}  {rp99 * 1e3:7.2f}  "
          f"{statistics.mean(raw) * 1e3:7.2f}")
    print(f"  ratio pvc / raw                                      {jp50 / rp50:7.2f}x {jp99 / rp99:7.2f}x")
    if real:
        print(f"\nlive migration of an idle 64 MiB QEMU guest, {len(real)} rounds (ms)      p50      p99     mean")
        print(f"  pvc migrate job through the API, 2 libvirtd nodes      {percentile(real, 50) * 1e3:7.1f}  "
              f"{percentile(real, 99) * 1e3:7.1f}  {statistics.mean(real) * 1e3:7.1f}")
        print(f"  bare migrateToURI3, same guest and nodes ({len(bare)} calls) {percentile(bare, 50) * 1e3:7.1f}  "
              f"{percentile(bare, 99) * 1e3:7.1f}  {statistics.mean(bare) * 1e3:7.1f}")
        ratios = percentile(real, 50) / percentile(bare, 50), percentile(real, 99) / percentile(bare, 99)
        print(f"  ratio pvc / bare                                       {ratios[0]:7.2f}x {ratios[1]:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
