"""bench/failover.py: from the power-off of a node holding 20 / 100 VMs to all of them running elsewhere, for a
secondary and for the primary; and a soak of worker pauses shorter than the fencing threshold, counting false
fences (which must be zero).

Each failover run starts its own 4-node cluster (test-driver nodes, one ipmi_sim BMC each), defines the VMs on a
node that is not the primary (``secondary``) or on the primary itself (``primary``: its successor must first win
the primary lock, which it can only when the dead primary's ZooKeeper session has expired), starts them, and powers
that node off through its BMC (``ipmitool chassis power off``). It then reports, from the power-off:

    detection   until the primary declared the node dead (the fence job's creation),
    to primary  from the declaration until the fence task runs (the cluster queue, on the primary),
    fence       the IPMI sequence (power off, verify off, power on), as the fence job recorded it,
    recovery    from the confirmed fence until every VM runs on another node (the fence job's end),
    total       power-off -> all VMs running elsewhere.

Settings: ``default`` (keepalive 5 s, suspect after 3, 3 saving throws: a node is declared dead 30 s after its
last keepalive) and ``fast`` (1 s, 2, 1: ~3 s; what the tests use).

The soak (fast settings unless ``--soak-settings default``) SIGSTOPs a worker for random pauses below the
threshold, many times, and counts the fence jobs created: every one would be a false fence.

    .venv/bin/python bench/failover.py [--sizes 20,100] [--settings default,fast] [--roles secondary,primary]
                                       [--soak 30]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvc_dev.bmc import BMC_PASSWORD, BMC_USER  # noqa: E402
from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402
from pvc_workers.ipmi import Bmc, chassis_power  # noqa: E402

SETTINGS = {
    "default": {"PVC_KEEPALIVE_INTERVAL": "5", "PVC_SUSPECT_AFTER_INTERVALS": "3", "PVC_SAVING_THROWS": "3",
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
        return {"settings": settings, "role": role, "vms": size, "detection": ended["created"] - off,
                "to_primary": fenced["started_at"] - ended["created"], "fence": fenced["seconds"],
                "recovery": ended["finished"] - fenced["finished_at"], "total": ended["finished"] - off,
                "threshold": threshold(SETTINGS[settings])}
    finally:
        c.stop()


def soak(settings: str, pauses: int, seed: int) -> dict:
    rng = random.Random(seed)
    env = SETTINGS[settings]
    limit = threshold(env) - float(env["PVC_KEEPALIVE_INTERVAL"])  # worst case: paused right before a beat
    c = start_cluster(settings)
    try:
        boss = wait_primary(c)
        victim = next(n for n in ("hv2", "hv3", "hv4") if n != boss)
        lengths = []
        for _ in range(pauses):
            length = rng.uniform(0.3, 0.95) * limit
            pid = c.workers[victim].pid
            os.kill(pid, signal.SIGSTOP)
            time.sleep(length)
            os.kill(pid, signal.SIGCONT)
            lengths.append(length)
            time.sleep(rng.uniform(1.0, 2.0) * float(env["PVC_KEEPALIVE_INTERVAL"]))
        time.sleep(threshold(env))
        fences = [j for j in api(c, "/jobs") if j["kind"] == "fence"]
        return {"settings": settings, "pauses": pauses, "longest": max(lengths), "mean": sum(lengths) / len(lengths),
                "threshold": threshold(env), "false_fences": len(fences),
                "alive": api(c, f"/nodes/{victim}")["alive"]}
    finally:
        c.stop()


def main() -> int:
    logging.getLogger("kazoo").setLevel(logging.ERROR)  # teardown drops our inspection session; not news
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,100")
    parser.add_argument("--settings", default="default,fast")
    parser.add_argument("--roles", default="secondary,primary", help="which node loses power")
    parser.add_argument("--soak", type=int, default=30, help="number of pauses (0: no soak)")
    parser.add_argument("--soak-settings", default="fast", choices=sorted(SETTINGS))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for settings in args.settings.split(","):
        for role in args.roles.split(","):
            for size in (int(n) for n in args.sizes.split(",")):
                print(f"failover of the {role} holding {size} VMs at {settings} settings ...", flush=True)
                rows.append(failover(settings, size, role))
    print("\npower-off of a node -> all its VMs running elsewhere (seconds)")
    print("  settings   node        VMs   dead after   detection   to primary    fence   recovery    total")
    for r in rows:
        print(f"  {r['settings']:8s} {r['role']:10s} {r['vms']:5d}   {r['threshold']:8.0f} s   {r['detection']:9.2f}   "
              f"{r['to_primary']:10.2f}  {r['fence']:7.2f}   {r['recovery']:8.2f}  {r['total']:7.2f}")
    if args.soak:
        print(f"\nsoak: {args.soak} SIGSTOP pauses of a worker below the threshold ({args.soak_settings}) ...",
              flush=True)
        s = soak(args.soak_settings, args.soak, args.seed)
        print(f"  {s['pauses']} pauses, longest {s['longest']:.2f} s, mean {s['mean']:.2f} s, threshold "
              f"{s['threshold']:.0f} s: false fences {s['false_fences']} (node alive afterwards: {s['alive']})")
        if s["false_fences"]:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
