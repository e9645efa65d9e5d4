"""bench/sriov.py: what SR-IOV adds to a job, against the same job without it, in one run.

Starts its own 3-node cluster (test-driver nodes with simulated NICs; see docs/sriov.md), then measures:

* ROUNDS VF changes (``PUT /sriov/vfs/hv1/ens1f0v0`` with a new VLAN each round, long-polled to the end) against
  ROUNDS ``start`` jobs of a VM on the same node: both are one task on one node queue, so the ratio is the cost
  of validation, the version-checked config transaction and the apply + ``applied`` record;
* ROUNDS migrations hv1 <-> hv2 of a running VM with a macvtap VF against a VM without one: the ratio is the
  cost of the VF pick, the reservation, the XML rewrite and the VF writes in the commit transaction.

    .venv/bin/python bench/sriov.py [--rounds 50]
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

from bench.lifecycle import percentile  # noqa: E402
from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402


def until_done(s: requests.Session, base: str, response: requests.Response) -> float:
    """Seconds from the request's start (``response.elapsed`` included) to the job's end, as the CLI waits."""
    job = response.json()
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        job = s.get(f"{base}/jobs/{job['id']}", params={"wait": 5, "after": job.get("revision", -1)},
                    timeout=15).json()
    if job["state"] != "succeeded":
        raise RuntimeError(f"{job['kind']} job ended {job['state']}: {job['reason']}")
    return time.perf_counter()


def timed(s: requests.Session, base: str, method: str, path: str, body: dict) -> float:
    started = time.perf_counter()
    return until_done(s, base, s.request(method, f"{base}{path}", json=body, timeout=10)) - started


def row(label: str, values: list[float]) -> str:
    return (f"  {label:<44} {percentile(values, 50) * 1e3:8.2f} {percentile(values, 99) * 1e3:8.2f} "
            f"{statistics.mean(values) * 1e3:8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pvc-bench-"))
    cluster = LocalCluster(workdir, [NodeSpec("hv1"), NodeSpec("hv2"), NodeSpec("hv3")], flower=False)
    print(f"starting a 3-node cluster in {workdir} ...", flush=True)
    cluster.start()
    xml = ("<domain type='test'><name>withvf</name><memory unit='MiB'>128</memory><vcpu>1</vcpu><os><type "
           "arch='x86_64'>hvm</type></os><devices><interface type='direct'><source dev='ens1f1v0' "
           "mode='passthrough'/></interface></devices></domain>")
    try:
        cluster.define_vm("plain", 128, node="hv1", start=True)
        cluster.define_vm("withvf", node="hv1", start=True, xml=xml)
        cluster.define_vm("idle", 128, node="hv1")
        s, base = cluster.session(), f"{cluster.api_url}/api/v1"
        vf_changes, starts, plain, withvf = [], [], [], []
        for i in range(args.rounds):
            vf_changes.append(timed(s, base, "PUT", "/sriov/vfs/hv1/ens1f0v0", {"vlan_id": 100 + i % 2}))
            starts.append(timed(s, base, "POST", "/vms/idle/state", {"state": "start"}))
            timed(s, base, "POST", "/vms/idle/state", {"state": "stop"})
            target = "hv2" if i % 2 == 0 else "hv1"
            plain.append(timed(s, base, "POST", "/vms/plain/move", {"target": target}))
            withvf.append(timed(s, base, "POST", "/vms/withvf/move", {"target": target}))
    finally:
        cluster.stop()
    print(f"\n{args.rounds} rounds, request to job end (ms)                p50      p99     mean")
    print(row("VF change (vf_config job on hv1)", vf_changes))
    print(row("VM start job on hv1 (same shape: 1 task)", starts))
    print(f"  ratio VF change / start                      {percentile(vf_changes, 50) / percentile(starts, 50):8.2f}x")
    print(row("move of a running VM, no VF", plain))
    print(row("move of a running VM with a macvtap VF", withvf))
    print(f"  ratio with VF / without                      {percentile(withvf, 50) / percentile(plain, 50):8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
