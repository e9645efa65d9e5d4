"""bench/failover.py: from the power-off of a node holding 20 / 100 VMs to all of them running elsewhere, for a
secondary and for the primary; and soaks of worker pauses and of a large flush, counting false fences.

Each failover run starts its own 4-node cluster (test-driver nodes, one ipmi_sim BMC each), defines the VMs on a
node that is not the primary (``secondary``) or on the primary itself (``primary``: its successor must first win
the primary lock, which it can only when the dead primary's ZooKeeper session has expired), starts them, and powers
that node off through its BMC (``ipmitool chassis power off``). It then reports, from the power-off:

    detection   until the primary declared the node dead (the fence job's creation),
    to primary  from the declaration until the fence task runs (the cluster queue, on the primary),
    fence       the IPMI sequence (power off, verify off, power on), as the fence job recorded it,
    recovery    from the confirmed fence until every VM runs on another node (the fence job's end),
    total       power-off -> all VMs running elsewhere.

Settings: ``default`` (the defaults of ``pvc_tasks.defaults``: keepalive 1 s, suspect after 3, 3 saving throws,
session 6 s: a node is declared dead 6 s after its last keepalive), ``before16`` (the defaults before issue 16:
5 s, 3, 3, session 10 s: 30 s) and ``fast`` (1 s, 2, 1, session 2 s: ~3 s; what the tests use).

Two soaks count false fences (fence jobs for nodes that never died), which must be zero:

    pauses  SIGSTOP a random worker (the primary too) at a random phase of its keepalive interval, for random
            pauses up to ``--longest`` (default ``LONGEST_STALL``, the stall the defaults are sized for; every
            fifth pause exactly that long);
    flush   flush a node holding ``--flush`` VMs (half running), the heaviest load pvc puts on the machine, and
            report the longest gap between two keepalive writes of each node on ZooKeeper's clock.

    .venv/bin/python bench/failover.py [--sizes 20,100] [--settings default,fast] [--roles secondary,primary]
                                       [--soak 30] [--longest 4] [--flush 500] [--soak-settings default]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvc_dev.bmc import BMC_PASSWORD, BMC_USER  # noqa: E402
from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402
from pvc_tasks import defaults  # noqa: E402
from pvc_workers.ipmi import Bmc, chassis_power  # noqa: E402

SETTINGS = {
    "default": {"PVC_KEEPALIVE_INTERVAL": str(defaults.KEEPALIVE_INTERVAL),
                "PVC_SUSPECT_AFTER_INTERVALS": str(defaults.SUSPECT_AFTER_INTERVALS),
                "PVC_SAVING_THROWS": str(defaults.SAVING_THROWS),
                "PVC_JANITOR_INTERVAL": str(defaults.JANITOR_INTERVAL),
                "PVC_ZK_SESSION_TIMEOUT": str(defaults.ZK_SESSION_TIMEOUT)},
    "before16": {"PVC_KEEPALIVE_INTERVAL": "5", "PVC_SUSPECT_AFTER_INTERVALS": "3", "PVC_SAVING_THROWS": "3",
                 "PVC_JANITOR_INTERVAL": "5", "PVC_ZK_SESSION_TIMEOUT": "10"},
    "fast": {"PVC_KEEPALIVE_INTERVAL": "1", "PVC_SUSPECT_AFTER_INTERVALS": "2", "PVC_SAVING_THROWS": "1",
             "PVC_JANITOR_INTERVAL": "1", "PVC_ZK_SESSION_TIMEOUT": "2"},
}


def threshold(env: dict[str, str]) -> float:
    return float(env["PVC_KEEPALIVE_INTERVAL"]) * (int(env["PVC_SUSPECT_AFTER_INTERVALS"])
                                                   + int(env["PVC_SAVING_THROWS"]))


def start_cluster(settings: str) -> LocalCluster:
    nodes = [NodeSpec(f"hv{i}", 65536, 16) for i in range(1, 5)]
    c = LocalCluster(Path(tempfile.mkdtemp(prefix="pvc-bench-failover-")), nodes, flower=False,
                     worker_env=dict(SETTINGS[settings], PVC_IPMI_TIMEOUT="5"))
    return c.start()


def api(c: LocalCluster, path: str) -> dict | list:
    return c.session().get(f"{c.api_url}/api/v1{path}", timeout=30).json()


def wait_primary(c: LocalCluster) -> str:
    deadline = time.monotonic() + 60
    while not (boss := api(c, "/cluster")["primary"]):
        if time.monotonic() > deadline:
            raise TimeoutError("no primary")
        time.sleep(0.2)
    return boss


def failover(settings: str, size: int, role: str) -> dict:
    c = start_cluster(settings)
    try:
        boss = wait_primary(c)
        victim = boss if role == "primary" else next(n for n in ("hv2", "hv3", "hv4") if n != boss)
        with ThreadPoolExecutor(8) as pool:
            done = list(pool.map(lambda i: c.define_vm(f"f{i:03d}", 256, node=victim, start=True), range(size)))
        assert all(j["state"] == "succeeded" for j in done)
        time.sleep(float(SETTINGS[settings]["PVC_KEEPALIVE_INTERVAL"]))  # a keepalive after the last start
        bmc = Bmc(str(c.bmc[victim].info["hostname"]), BMC_USER, BMC_PASSWORD)
        off = time.time()
        chassis_power(bmc, "off")
        fence = None
        while fence is None:
            found = [j for j in api(c, "/jobs") if j["kind"] == "fence"]
            fence = found[0] if found else None
            if time.time() - off > 300:
                raise TimeoutError("no fence job")
            time.sleep(0.1)
        ended = c.wait_job(fence["id"], timeout=600)
        assert ended["state"] == "succeeded", ended["reason"]
        everywhere = {v["node"] for v in api(c, "/vms") if v["state"] == "running"}
        assert victim not in everywhere and len(api(c, "/vms")) == size
        fenced = ended["result"]["fence"]
        children = [j for j in api(c, f"/jobs?parent={fence['id']}&limit=10000") if j["kind"] == "recover"]
        submitted = max(j["created"] for j in children) - fenced["finished_at"]
        return {"submitted": submitted, "settings": settings, "role": role, "vms": size,
                "detection": ended["created"] - off,
                "to_primary": fenced["started_at"] - ended["created"], "fence": fenced["seconds"],
                "recovery": ended["finished"] - fenced["finished_at"], "total": ended["finished"] - off,
                "threshold": threshold(SETTINGS[settings])}
    finally:
        c.stop()


def _pause(c: LocalCluster, node: str, seconds: float) -> None:
    pid = c.workers[node].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def fence_jobs(c: LocalCluster) -> list[dict]:
    return api(c, "/jobs?kind=fence&limit=10000")


def soak_pauses(settings: str, pauses: int, longest: float, seed: int) -> dict:
    """SIGSTOP a random worker (the primary too) for random pauses up to ``longest`` s, at a random phase of its
    keepalive interval; every fence job would be a false fence."""
    rng, env = random.Random(seed), SETTINGS[settings]
    interval = float(env["PVC_KEEPALIVE_INTERVAL"])
    c = start_cluster(settings)
    try:
        wait_primary(c)
        lengths, paused = [], {}
        for n in range(pauses):
            node = rng.choice(sorted(c.workers))
            length = longest if n % 5 == 0 else rng.uniform(0.5, 1.0) * longest  # every fifth: the longest
            time.sleep(rng.uniform(0, interval))
            _pause(c, node, length)
            lengths.append(length)
            paused[node] = paused.get(node, 0) + 1
            time.sleep(2 * interval)  # its keepalive is written again before the next pause
        time.sleep(threshold(env))
        nodes = api(c, "/nodes")
        return {"settings": settings, "pauses": pauses, "longest": max(lengths), "mean": sum(lengths) / len(lengths),
                "threshold": threshold(env), "false_fences": len(fence_jobs(c)), "paused": paused,
                "all_alive": all(n["alive"] and n["daemon_state"] == "run" for n in nodes)}
    finally:
        c.stop()


class KeepaliveGaps(threading.Thread):
    """The longest time between two keepalive writes of each node, by ZooKeeper's clock (the znode's mtime), read
    every 50 ms."""

    def __init__(self, c: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.c, self.stop, self.gaps, self.last = c, threading.Event(), {}, {}

    def run(self) -> None:
        zk, schema = self.c.zk, self.c.schema
        while not self.stop.wait(0.05):
            for node in self.c.workers:
                mtime = zk.exists(schema.path("node.keepalive", node)).mtime
                if node in self.last and mtime != self.last[node]:
                    self.gaps[node] = max(self.gaps.get(node, 0.0), (mtime - self.last[node]) / 1000)
                self.last[node] = mtime


def soak_flush(settings: str, size: int) -> dict:
    """Flush a node holding ``size`` VMs (half of them running) while every node's keepalive gaps are measured;
    every fence job would be a false fence."""
    c = start_cluster(settings)
    try:
        boss = wait_primary(c)
        node = next(n for n in ("hv2", "hv3", "hv4") if n != boss)
        with ThreadPoolExecutor(8) as pool:
            done = list(pool.map(lambda i: c.define_vm(f"s{i:04d}", 64, node=node, start=i % 2 == 0), range(size)))
        assert all(j["state"] == "succeeded" for j in done)
        gaps = KeepaliveGaps(c)
        gaps.start()
        started = time.monotonic()
        job = c.session().post(f"{c.api_url}/api/v1/nodes/{node}/flush", timeout=30).json()
        ended = c.wait_job(job["id"], timeout=1800)
        seconds = time.monotonic() - started
        time.sleep(threshold(SETTINGS[settings]))
        gaps.stop.set()
        gaps.join()
        assert ended["state"] == "succeeded", ended["reason"]
        return {"vms": size, "seconds": seconds, "gaps": gaps.gaps, "false_fences": len(fence_jobs(c)),
                "threshold": threshold(SETTINGS[settings])}
    finally:
        c.stop()


def main() -> int:
    logging.getLogger("kazoo").setLevel(logging.ERROR)  # teardown drops our inspection session; not news
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,100")
    parser.add_argument("--settings", default="default,fast")
    parser.add_argument("--roles", default="secondary,primary", help="which node loses power")
    parser.add_argument("--soak", type=int, default=30, help="number of pauses (0: no soak)")
    parser.add_argument("--longest", type=float, default=defaults.LONGEST_STALL,
                        help="the longest pause (s); default: the stall the defaults are sized for")
    parser.add_argument("--flush", type=int, default=500, help="VMs of the flush soak (0: none)")
    parser.add_argument("--soak-settings", default="default", choices=sorted(SETTINGS))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for settings in args.settings.split(","):
        for role in args.roles.split(","):
            for size in (int(n) for n in args.sizes.split(",")):
                print(f"failover of the {role} holding {size} VMs at {settings} settings ...", flush=True)
                rows.append(failover(settings, size, role))
    print("\npower-off of a node -> all its VMs running elsewhere (seconds)")
    print("  settings   node        VMs   dead after   detection   to primary    fence   recovery    total"
          "   (last recovery submitted)")
    for r in rows:
        print(f"  {r['settings']:8s} {r['role']:10s} {r['vms']:5d}   {r['threshold']:8.0f} s   {r['detection']:9.2f}   "
              f"{r['to_primary']:10.2f}  {r['fence']:7.2f}   {r['recovery']:8.2f}  {r['total']:7.2f}"
              f"   ({r['submitted']:.2f})")
    failed = False
    if args.soak:
        print(f"\nsoak: {args.soak} SIGSTOP pauses of a worker up to {args.longest:g} s ({args.soak_settings}) ...",
              flush=True)
        s = soak_pauses(args.soak_settings, args.soak, args.longest, args.seed)
        print(f"  {s['pauses']} pauses ({', '.join(f'{k} {v}' for k, v in sorted(s['paused'].items()))}), longest "
              f"{s['longest']:.2f} s, mean {s['mean']:.2f} s, dead after {s['threshold']:g} s: false fences "
              f"{s['false_fences']} (every node alive afterwards: {s['all_alive']})")
        failed |= bool(s["false_fences"]) or not s["all_alive"]
    if args.flush:
        print(f"\nsoak: flush of {args.flush} VMs ({args.soak_settings}) ...", flush=True)
        f = soak_flush(args.soak_settings, args.flush)
        print(f"  flush of {f['vms']} VMs: {f['seconds']:.1f} s; longest keepalive gap per node (ZooKeeper's clock): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(f["gaps"].items()))
              + f"; dead after {f['threshold']:g} s: false fences {f['false_fences']}")
        failed |= bool(f["false_fences"])
    return int(failed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
