"""Soak (opt-in: ``scripts/test -m soak tests/chaos/test_soak.py``): random transient faults of every kind under a
random workload, for ``PVC_SOAK_MINUTES`` (default 3), seeded by ``PVC_SOAK_SEED`` (printed, so a failing run can
be replayed). Faults: Redis SIGKILLed (with or without its queued messages), a worker SIGKILLed and restarted or
paused (SIGSTOP) for 3 s, the ZooKeeper server SIGKILLed for 2 s, the API SIGKILLed. Each is shorter than the
fencing threshold (fencing is on, 20 s here). Workload: starts, stops, restarts, migrations, flush and ready, VF
changes, through the API with Idempotency-Keys. Afterwards: every job terminal, no fence, every node back to
``run`` and ready, and the harness's invariant check (libvirt agrees with ZooKeeper on every node, nothing leaked).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid

import pytest
import requests

from pvc_dev.cluster import NodeSpec
from pvc_dev.services import wait_until
from tests.chaos.scenarios import assert_no_crash

MINUTES = float(os.environ.get("PVC_SOAK_MINUTES") or 3)
pytestmark = [pytest.mark.soak, pytest.mark.timeout(MINUTES * 60 + 600)]

NODES = [NodeSpec("hv1", 16384), NodeSpec("hv2", 16384), NodeSpec("hv3", 16384)]
ENV = {"PVC_ZK_SESSION_TIMEOUT": "10", "PVC_REDRIVE_AFTER": "2", "PVC_SUSPECT_AFTER_INTERVALS": "10",
       "PVC_SAVING_THROWS": "10"}
VMS = [f"soak{i:02d}" for i in range(18)]
#: Never set: waiting on it is a pause that paces the faults (not a wait for some state to arrive).
_PACE = threading.Event()


def _request(c, rng: random.Random) -> None:
    """One random request; refusals (409: busy, wrong state) are part of the workload."""
    vm, node = rng.choice(VMS), rng.choice(["hv1", "hv2", "hv3"])
    method, path, body = rng.choice([
        ("post", f"/vms/{vm}/state", {"state": rng.choice(["start", "stop", "restart", "shutdown"])}),
        ("post", f"/vms/{vm}/migrate", {}), ("post", f"/vms/{vm}/unmigrate", {}),
        ("post", f"/nodes/{node}/flush", None), ("post", f"/nodes/{node}/ready", None),
        ("put", f"/sriov/vfs/{node}/ens1f0v{rng.randrange(4)}", {"vlan_id": rng.randrange(1, 4000)}),
    ])
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    for _attempt in range(2):  # one retry with the same key, as the CLI does
        try:
            c.session().request(method, f"{c.api_url}/api/v1{path}", json=body, headers=headers, timeout=30)
            return
        except requests.RequestException:
            _PACE.wait(1)


def _fault(c, rng: random.Random) -> str:
    kind = rng.choice(["redis", "redis-lose", "worker-kill", "worker-pause", "zookeeper", "api"])
    node = rng.choice(["hv1", "hv2", "hv3"])
    if kind.startswith("redis"):
        c.restart_redis(kill=True, lose=kind == "redis-lose", down=1.0)
    elif kind == "worker-kill":
        c.workers[node].kill()
        c.start_worker(node)
        c.wait_worker(node)
    elif kind == "worker-pause":
        os.kill(c.workers[node].pid, signal.SIGSTOP)
        try:
            _PACE.wait(3)
        finally:
            os.kill(c.workers[node].pid, signal.SIGCONT)
    elif kind == "zookeeper":
        c.restart_zookeeper(down=2.0)
    else:
        c.restart_api()
    return f"{kind} {node if kind.startswith('worker') else ''}".strip()


def test_soak(make_cluster):
    """Random transient faults under a random workload: afterwards every job is terminal, nothing was fenced,
    every node runs and is ready, and the invariant check passes."""
    seed = int(os.environ.get("PVC_SOAK_SEED") or random.randrange(1 << 30))
    minutes = MINUTES
    print(f"\nsoak seed {seed}, {minutes:g} min (PVC_SOAK_SEED={seed} replays the same choices)")
    rng, faults_rng = random.Random(seed), random.Random(seed + 1)
    c = make_cluster(NODES, worker_env=ENV, own_zookeeper=True, fencing=True)
    for i, vm in enumerate(VMS):
        assert c.define_vm(vm, 64, node=f"hv{1 + i % 3}", start=i % 2 == 0)["state"] == "succeeded"
    stop = threading.Event()

    def workload() -> None:
        while not stop.is_set():
            _request(c, rng)
            stop.wait(rng.uniform(0.05, 0.5))

    thread = threading.Thread(target=workload, daemon=True)
    thread.start()
    done, end = [], time.monotonic() + minutes * 60
    while time.monotonic() < end:
        _PACE.wait(faults_rng.uniform(5, 15))
        done.append(_fault(c, faults_rng))
    stop.set()
    thread.join(timeout=60)
    print(f"faults: {', '.join(done)}")
    s, base = c.session(), f"{c.api_url}/api/v1"

    def open_jobs() -> list[dict]:
        return [j for j in s.get(f"{base}/jobs", params={"limit": 1000}, timeout=30).json()
                if j["state"] in ("queued", "running")]

    wait_until(lambda: not open_jobs(), 180, "every job to end")
    for node in ("hv1", "hv2", "hv3"):  # leave every node ready, as an operator would after the storm
        assert c.wait_job(s.post(f"{base}/nodes/{node}/ready", timeout=30).json()["id"], timeout=180)["state"] \
            in ("succeeded", "failed")
    jobs = s.get(f"{base}/jobs", params={"limit": 1000}, timeout=30).json()
    assert [j for j in jobs if j["kind"] == "fence"] == []
    assert [j["id"] for j in jobs if j["state"] == "failed" and not j["reason"].strip()] == []
    assert_no_crash(c)
    states = s.get(f"{base}/cluster", timeout=30).json()["node_states"]
    assert {n: (v["daemon_state"], v["domain_state"]) for n, v in states.items()} == \
        dict.fromkeys(("hv1", "hv2", "hv3"), ("run", "ready")), states
