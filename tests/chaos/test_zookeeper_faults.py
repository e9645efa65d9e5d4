"""ZooKeeper goes away during real work: the cluster's only server SIGKILLed mid-flush and started again."""

from __future__ import annotations

from tests.chaos.scenarios import FAULTY, NODES, api, assert_flush_survives


def test_zookeeper_restarted_during_a_flush(make_cluster):
    """The single ZooKeeper server SIGKILLed for 3 s mid-flush of 30 VMs, fencing on: the flush succeeds, no node
    is declared dead or fenced, every VM runs once on another node, and no job ended with an empty reason."""
    c = make_cluster(NODES, worker_env=FAULTY, own_zookeeper=True, fencing=True)
    assert_flush_survives(c, 30, 5, lambda: c.restart_zookeeper(down=3.0), "ZooKeeper was killed")
    jobs = api(c, "get", "/jobs", params={"limit": 500}).json()
    assert [j for j in jobs if j["kind"] == "fence"] == []
    assert [j["id"] for j in jobs if j["state"] == "failed" and not j["reason"].strip()] == []
    states = api(c, "get", "/cluster").json()["node_states"]
    assert {n: s["daemon_state"] for n, s in states.items()} == dict.fromkeys(("hv1", "hv2", "hv3"), "run")


def test_flush_survives_the_loss_of_the_ensemble_leader(make_cluster):
    """A 3-server ensemble whose leader is SIGKILLed mid-flush of 30 VMs (and comes back 3 s later as a follower),
    fencing on: the flush succeeds, no node is declared dead or fenced, and the job records are intact."""
    c = make_cluster(NODES, worker_env=FAULTY, zookeeper_servers=3, fencing=True)
    leaders: list[int] = []

    def fault() -> None:
        leaders.append(c.zookeeper_ensemble.leader().pid)
        c.kill_zookeeper_leader(down=3.0)

    assert_flush_survives(c, 30, 5, fault, "the ZooKeeper leader was killed")
    assert c.zookeeper_ensemble.leader().pid != leaders[0]  # another member leads: the fault really happened
    jobs = api(c, "get", "/jobs", params={"limit": 500}).json()
    assert [j for j in jobs if j["kind"] == "fence"] == []
    assert [j["id"] for j in jobs if j["state"] == "failed" and not j["reason"].strip()] == []
    states = api(c, "get", "/cluster").json()["node_states"]
    assert {n: s["daemon_state"] for n, s in states.items()} == dict.fromkeys(("hv1", "hv2", "hv3"), "run")
