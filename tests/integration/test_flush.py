"""Flush (drain) and unflush (ready) of a node: children, limits, no-target VMs, cancel, failure."""

import json
import os
import signal
from collections import Counter

from pvc_dev.cluster import NodeSpec, domain_xml
from pvc_dev.invariants import zk_state
from pvc_dev.services import wait_until
from tests.conftest import consumer

NODES = [NodeSpec("hv1", 8192), NodeSpec("hv2", 8192), NodeSpec("hv3", 8192), NodeSpec("hv4", 4096)]


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=15, **kw)


def vms(c) -> dict[str, dict]:
    return {v["name"]: v for v in api(c, "get", "/vms").json()}


def assert_consistent(c) -> None:
    """Every VM on exactly one node (ZooKeeper's count per node equals what each node's libvirt reports), no
    active job left, no slot or reservation held."""
    records = vms(c)
    assert all(v["active_job"] == "" for v in records.values()), records
    for node in c.workers:
        info = api(c, "get", f"/nodes/{node}").json()
        placed = [v for v in records.values() if v["node"] == node]
        assert info["vms"]["total"] == len(placed), (node, info["vms"], [v["name"] for v in placed])
        assert info["vms"]["running"] == sum(v["state"] == "running" for v in placed), node
    assert json.loads(c.zk.get(c.schema.path("base.migrations"))[0]) == {}
    for node in c.workers:
        assert json.loads(c.zk.get(c.schema.path("node.reserved", node))[0]) == {}


def test_flush_then_ready_brings_every_vm_back(make_cluster):
    """Flush moves every VM off the node by child migrations (stopped ones without booting), showing which VMs are
    in flight; the node takes no new VM; flush again is a no-op; ready brings them all back; ready again is a
    no-op."""
    c = make_cluster(NODES)
    for i in range(6):
        assert c.define_vm(f"f{i}", 256, node="hv1", start=i < 4)["state"] == "succeeded"
    for node in ("hv2", "hv3", "hv4"):
        consumer(c, node, False)  # the children wait for their targets: the flush holds two in flight
    job = api(c, "post", "/nodes/hv1/flush").json()
    wait_until(lambda: len(api(c, "get", f"/jobs/{job['id']}").json()["progress"].get("in_flight", [])) == 2, 30,
               "two children in flight")
    flushing = api(c, "get", f"/jobs/{job['id']}").json()
    in_flight = flushing["progress"]["in_flight"]
    assert set(in_flight) < {f"f{i}" for i in range(6)}, flushing["progress"]
    assert (flushing["progress"]["done"], flushing["progress"]["total"]) == (0, 6)
    assert flushing["phase"].startswith(f"flush 0/6, in flight: {', '.join(in_flight)}"), flushing["phase"]
    for node in ("hv2", "hv3", "hv4"):
        consumer(c, node, True)
    ended = c.wait_job(job["id"], timeout=120)
    assert ended["state"] == "succeeded" and ended["percent"] == 100, ended
    assert sorted(ended["result"]["done"]) == [f"f{i}" for i in range(6)]
    children = api(c, "get", "/jobs", params={"parent": job["id"]}).json()
    assert len(children) == 6 and {ch["kind"] for ch in children} == {"migrate"}
    assert api(c, "get", "/nodes/hv1").json()["domain_state"] == "flushed"
    placed = vms(c)
    assert all(v["node"] != "hv1" and v["last_node"] == "hv1" for v in placed.values())
    assert [placed[f"f{i}"]["state"] for i in range(6)] == ["running"] * 4 + ["stopped"] * 2
    assert_consistent(c)

    r = api(c, "post", "/vms", json={"xml": domain_xml("newcomer"), "node": "hv1"})
    assert r.status_code == 409 and r.json()["error"] == "node_not_ready"
    r = api(c, "post", "/vms/f0/migrate", json={"target": "hv1", "force": True})
    assert r.status_code == 409 and r.json()["error"] == "node_not_ready"
    again = api(c, "post", "/nodes/hv1/flush").json()
    assert again["state"] == "succeeded" and "already flushed" in again["result"]["noop"]

    back = c.wait_job(api(c, "post", "/nodes/hv1/ready").json()["id"], timeout=120)
    assert back["state"] == "succeeded" and back["kind"] == "unflush"
    placed = vms(c)
    assert all(v["node"] == "hv1" and v["last_node"] == "" for v in placed.values())
    assert [placed[f"f{i}"]["state"] for i in range(6)] == ["running"] * 4 + ["stopped"] * 2
    assert api(c, "get", "/nodes/hv1").json()["domain_state"] == "ready"
    assert api(c, "post", "/nodes/hv1/ready").json()["result"]["noop"].endswith("already ready")
    assert_consistent(c)


def test_vm_with_no_target_is_shut_down_marked_autostart_and_started_by_ready(make_cluster):
    """A flush that would shut a VM down is refused (409 insufficient_capacity naming it and the shortfall, nothing
    written); with allow_shutdown the VM that fits nowhere else is shut down with the reason recorded and autostart
    set; ready starts it again on its node and clears autostart."""
    c = make_cluster([NodeSpec("hv1", 16384), NodeSpec("hv2", 4096)])
    assert c.define_vm("big", 9000, node="hv1", start=True)["state"] == "succeeded"
    assert c.define_vm("small", 256, node="hv1", start=True)["state"] == "succeeded"
    before = zk_state(c.zk)
    r = api(c, "post", "/nodes/hv1/flush")
    assert r.status_code == 409 and r.json()["error"] == "insufficient_capacity", r.text
    assert r.json()["details"]["vms"] == ["big"] and r.json()["details"]["shortfall_mib"] == 9000
    assert "big" in r.json()["message"] and "allow-shutdown" in r.json()["message"]
    assert zk_state(c.zk) == before  # refused: no job, no state, nothing
    ended = c.wait_job(api(c, "post", "/nodes/hv1/flush", json={"allow_shutdown": True}).json()["id"], timeout=60)
    assert ended["state"] == "succeeded", ended
    placed = vms(c)
    assert (placed["big"]["node"], placed["big"]["state"], placed["big"]["meta"]["autostart"]) == \
        ("hv1", "stopped", True)
    assert placed["small"]["node"] == "hv2"
    children = {ch["vm"]: ch for ch in api(c, "get", "/jobs", params={"parent": ended["id"]}).json()}
    assert children["big"]["kind"] == "shutdown"
    back = c.wait_job(api(c, "post", "/nodes/hv1/ready").json()["id"], timeout=60)
    assert back["state"] == "succeeded"
    placed = vms(c)
    assert (placed["big"]["state"], placed["big"]["meta"]["autostart"]) == ("running", False)
    assert placed["small"]["node"] == "hv1"
    assert_consistent(c)


def slot_peaks(c, parents: list[str]) -> dict[str, int]:
    """The most migration slots ever held at once (cluster, out of one node, into one node), read from ZooKeeper's
    own transaction order, so no moment can be missed: a migration takes its slot in the transaction that creates
    its job (the job znode's ``czxid``) and gives it back in the one that ends it (its last write, ``mzxid``)."""
    events = []
    for parent in parents:
        for child in api(c, "get", "/jobs", params={"parent": parent}).json():
            if child["kind"] != "migrate":
                continue
            stat = c.zk.exists(c.schema.path("job", child["id"]))
            slot = (child["params"]["source"], child["params"]["target"])
            events += [(stat.czxid, 1, slot), (stat.mzxid, -1, slot)]
    held: list[tuple[str, str]] = []
    peaks = {"cluster": 0, "out": 0, "in": 0}
    for _zxid, delta, slot in sorted(events, key=lambda e: (e[0], e[1])):  # at one zxid, releases come first
        if delta > 0:
            held.append(slot)
        else:
            held.remove(slot)
        peaks["cluster"] = max(peaks["cluster"], len(held))
        for role, index in (("out", 0), ("in", 1)):
            peaks[role] = max([peaks[role], *Counter(s[index] for s in held).values()])
    return peaks


def test_parallel_flushes_of_two_nodes_respect_the_limits(make_cluster):
    """Two nodes flushed at once: the slots never exceed 2 out per node, 2 in per node, 3 in the cluster, and the
    limit that binds is reached (every VM goes to hv3, the node with the most free memory, so "2 in per node" is
    the bound: a check of "at most" alone would pass for a flush that never ran two at once)."""
    c = make_cluster(NODES)
    assert api(c, "put", "/cluster/limits", json={"migrate_out_per_node": 2, "migrate_in_per_node": 2,
                                                  "migrate_cluster": 3}).status_code == 200
    for node in ("hv1", "hv2"):
        for i in range(8):
            assert c.define_vm(f"{node}-{i}", 128, node=node, start=True)["state"] == "succeeded"
    jobs = [api(c, "post", f"/nodes/{n}/flush").json() for n in ("hv1", "hv2")]
    ended = [c.wait_job(j["id"], timeout=180) for j in jobs]
    assert [e["state"] for e in ended] == ["succeeded", "succeeded"], ended
    peaks = slot_peaks(c, [j["id"] for j in jobs])
    assert peaks["cluster"] <= 3 and peaks["out"] <= 2 and peaks["in"] == 2, peaks
    assert all(v["node"] == "hv3" for v in vms(c).values())
    assert_consistent(c)


def test_user_migrations_wait_for_node_work(make_cluster):
    """While a node has a live flush job, a user-requested migration is refused (node work goes first); after, or
    with only a leftover state and no job, it runs."""
    c = make_cluster(NODES)
    assert c.define_vm("user-vm", 128, node="hv2", start=True)["state"] == "succeeded"
    c.zk.set(c.schema.path("node.active_job", "hv1"), b"a-live-flush")  # as a running flush of hv1 has it
    r = api(c, "post", "/vms/user-vm/migrate", json={"target": "hv3"})
    assert r.status_code == 409 and r.json()["error"] == "migration_limit" and "hv1" in r.json()["message"]
    c.zk.set(c.schema.path("node.active_job", "hv1"), b"")
    c.zk.set(c.schema.path("node.domain_state", "hv4"), b"flush")  # a state left behind with no job blocks nothing
    r = api(c, "post", "/vms/user-vm/migrate", json={"target": "hv3"})
    assert r.status_code == 202 and c.wait_job(r.json()["id"])["state"] == "succeeded"
    c.zk.set(c.schema.path("node.domain_state", "hv4"), b"ready")


def test_ready_during_a_flush_cancels_it_cleanly(make_cluster):
    """ready while a flush runs: queued children are cancelled, running ones end, the node is ready again, and
    every VM is on exactly one node with no marker, slot or reservation left."""
    c = make_cluster(NODES)
    assert api(c, "put", "/cluster/limits", json={"migrate_cluster": 1}).status_code == 200
    for i in range(8):
        assert c.define_vm(f"c{i}", 128, node="hv1", start=True)["state"] == "succeeded"
    job = api(c, "post", "/nodes/hv1/flush").json()
    wait_until(lambda: len(api(c, "get", f"/jobs/{job['id']}").json()["result"].get("done", [])) >= 2, 60,
               "two VMs to leave")
    cancelling = api(c, "post", "/nodes/hv1/ready").json()
    assert cancelling["id"] == job["id"] and cancelling["cancel_requested"] is True
    ended = c.wait_job(job["id"], timeout=60)
    assert ended["state"] == "cancelled", ended
    node = api(c, "get", "/nodes/hv1").json()
    assert node["domain_state"] == "ready"
    assert c.zk.get(c.schema.path("node.active_job", "hv1"))[0] == b""
    placed = vms(c)
    assert 2 <= sum(v["node"] != "hv1" for v in placed.values()) < 8
    assert all(v["state"] == "running" for v in placed.values())
    assert_consistent(c)
    again = c.wait_job(api(c, "post", "/nodes/hv1/flush").json()["id"], timeout=120)
    assert again["state"] == "succeeded"  # a later flush works


def test_failed_child_is_listed_and_the_flush_goes_on(make_cluster):
    """A child migration whose target dies fails; the flush moves the others and ends failed listing the VM."""
    c = make_cluster(NODES)
    for i in range(3):
        assert c.define_vm(f"ok{i}", 128, node="hv1", start=True)["state"] == "succeeded"
        assert api(c, "put", f"/vms/ok{i}/meta", json={"node_limit": ["hv1", "hv3"]}).status_code == 200
    assert c.define_vm("doomed", 128, node="hv1", start=True)["state"] == "succeeded"
    assert api(c, "put", "/vms/doomed/meta", json={"node_limit": ["hv1", "hv2"]}).status_code == 200
    target = c.workers["hv2"]
    os.kill(target.pid, signal.SIGSTOP)  # doomed's migration waits in hv2's queue
    job = api(c, "post", "/nodes/hv1/flush").json()
    wait_until(lambda: len(api(c, "get", f"/jobs/{job['id']}").json()["result"].get("done", [])) == 3, 60,
               "the other VMs to leave")
    target.kill()
    ended = c.wait_job(job["id"], timeout=60)
    assert ended["state"] == "failed" and "doomed" in ended["reason"], ended
    assert "hv2's worker is not running" in ended["result"]["stayed"]["doomed"]
    placed = vms(c)
    assert (placed["doomed"]["node"], placed["doomed"]["state"]) == ("hv1", "running")
    assert all(placed[f"ok{i}"]["node"] == "hv3" for i in range(3))
    node = api(c, "get", "/nodes/hv1").json()
    assert node["domain_state"] == "ready" and node["active_job"] == ""  # not "flushed": doomed still runs there
    fault = next(f for f in node["faults"] if f["id"] == "flush")
    assert job["id"] in fault["message"] and "still on hv1: doomed" in fault["message"]


def test_flush_whose_node_dies_ends_with_a_reason_and_ready_works_later(make_cluster):
    """If N's worker dies mid-flush, the flush ends failed with the reason; N is left ready (not stuck in flush) with
    a fault that says what happened and what to do; user migrations are accepted; after N returns, ready brings its
    VMs back and clears the fault."""
    c = make_cluster(NODES)
    assert api(c, "put", "/cluster/limits", json={"migrate_cluster": 1}).status_code == 200
    for i in range(6):
        assert c.define_vm(f"d{i}", 128, node="hv1", start=True)["state"] == "succeeded"
    job = api(c, "post", "/nodes/hv1/flush").json()
    wait_until(lambda: len(api(c, "get", f"/jobs/{job['id']}").json()["result"].get("done", [])) >= 1, 60,
               "one VM to leave")
    c.workers["hv1"].kill()
    ended = c.wait_job(job["id"], timeout=60)
    assert ended["state"] == "failed" and "hv1's worker is not running" in ended["reason"], ended
    node = api(c, "get", "/nodes/hv1").json()
    assert (node["domain_state"], node["active_job"]) == ("ready", "")  # not stuck in "flush"
    fault = next(f for f in node["faults"] if f["id"] == "flush")["message"]
    assert f"flush job {job['id']} failed" in fault and "pvc node ready hv1" in fault, fault
    assert any("pvc node ready hv1" in step for step in node["next"]), node["next"]
    status = api(c, "get", "/cluster").json()
    assert any(f["id"] == "node:hv1:flush" for f in status["faults"]) and status["node_states"]["hv1"]["next"]
    wait_until(lambda: all(not v["active_job"] for v in vms(c).values()), 60, "children to end")
    moved = next(v["name"] for v in vms(c).values() if v["node"] != "hv1")
    r = api(c, "post", f"/vms/{moved}/migrate", json={"target": "hv4", "force": True})
    assert r.status_code == 202, r.text  # user migrations are not blocked by the failed flush
    assert c.wait_job(r.json()["id"])["state"] == "succeeded"
    c.start_worker("hv1")
    c.wait_worker("hv1")
    wait_until(lambda: all(not v["active_job"] for v in vms(c).values()), 60, "children to end")
    back = c.wait_job(api(c, "post", "/nodes/hv1/ready").json()["id"], timeout=120)
    assert back["state"] == "succeeded", back
    node = api(c, "get", "/nodes/hv1").json()
    assert node["domain_state"] == "ready" and not any(f["id"] == "flush" for f in node["faults"])
    assert all(v["node"] == "hv1" and v["state"] == "running" for v in vms(c).values())
