"""ZooKeeper goes away during real work: the cluster's only server SIGKILLed mid-flush and started again."""

from __future__ import annotations

import time

from pvc_dev.services import wait_until
from tests.chaos.test_broker_and_worker_faults import BOUND, FAULTY, NODES, api, progress, running_on


def test_zookeeper_restarted_during_a_flush(make_cluster):
    """The single ZooKeeper server SIGKILLed for 3 s mid-flush of 30 VMs, fencing on: the flush succeeds, no node
    is declared dead or fenced, every VM runs once on another node, and no job ended with an empty reason."""
    c = make_cluster(NODES, worker_env=FAULTY, own_zookeeper=True, fencing=True)
    names = [f"z{i:02d}" for i in range(30)]
    for name in names:
        assert c.define_vm(name, 64, node="hv1", start=True)["state"] == "succeeded"
    flush = api(c, "post", "/nodes/hv1/flush").json()
    wait_until(lambda: progress(c, flush["id"]) >= 5, 120, "five VMs to leave hv1")
    fault = time.monotonic()
    c.restart_zookeeper(down=3.0)
    ended = c.wait_job(flush["id"], timeout=BOUND)
    print(f"\nflush of 30 VMs ended {time.monotonic() - fault:.1f} s after ZooKeeper was killed")
    assert ended["state"] == "succeeded", (ended["reason"], ended["messages"][-5:])
    jobs = api(c, "get", "/jobs", params={"limit": 500}).json()
    assert [j for j in jobs if j["kind"] == "fence"] == []
    assert [j["id"] for j in jobs if j["state"] == "failed" and not j["reason"].strip()] == []
    states = api(c, "get", "/cluster").json()["node_states"]
    assert {n: s["daemon_state"] for n, s in states.items()} == dict.fromkeys(("hv1", "hv2", "hv3"), "run")
    placed = running_on(c, {"hv1", "hv2", "hv3"})
    assert sorted(placed) == names and set(placed.values()) <= {"hv2", "hv3"}, placed
