"""High availability: node death -> IPMI fence -> recovery of each VM exactly once, and the guards around it.

Every node has a real ``ipmi_sim`` BMC whose chassis power kills or starts that node's worker; nodes die here by
``ipmitool chassis power off`` (or a crash), and the primary fences them through the same BMCs.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter

import pytest

from pvc_dev.bmc import BMC_PASSWORD, BMC_USER
from pvc_dev.cluster import NodeSpec
from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from pvc_tasks.fencing import declare_dead
from pvc_workers.ipmi import Bmc, chassis_power, power_status
from tests.conftest import SLOW_SESSION

#: Fast detection: 1 s keepalives, suspect after 2 missed, 1 saving throw (a dead node is fenced ~3-4 s after).
HA_ENV = {"PVC_SUSPECT_AFTER_INTERVALS": "2", "PVC_SAVING_THROWS": "1", "PVC_IPMI_TIMEOUT": "3"}


def nodes(n: int) -> list[NodeSpec]:
    return [NodeSpec(f"hv{i}", 8192) for i in range(1, n + 1)]


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=15, **kw)


def vms(c) -> dict[str, dict]:
    return {v["name"]: v for v in api(c, "get", "/vms").json()}


def jobs(c, kind: str) -> list[dict]:
    return [j for j in api(c, "get", "/jobs").json() if j["kind"] == kind]


def primary(c) -> str:
    return wait_until(lambda: api(c, "get", "/cluster").json()["primary"], 30, "a primary")


def bmc(c, node: str) -> Bmc:
    return Bmc(str(c.bmc[node].info["hostname"]), BMC_USER, BMC_PASSWORD, timeout=5)


def fence_of(c, node: str, timeout: float = 60) -> dict:
    found = wait_until(lambda: [j for j in jobs(c, "fence") if j["params"]["target"] == node], timeout,
                       f"a fence job for {node}")
    return c.wait_job(found[0]["id"], timeout=90)


def running_per_node(c) -> dict[str, int]:
    """What each node's own libvirt reports running (read through its worker), not what ZooKeeper records."""
    return {n: sum(d["state"] == "running" for d in (domains or {}).values())
            for n, domains in libvirt_domains(c).items()}


def test_dead_node_is_fenced_and_each_vm_recovered_exactly_once(make_cluster):
    """Power off a node holding VMs: the primary fences it through IPMI and each running VM is recovered exactly
    once on a valid node (node_limit honoured); a stopped VM stays; the node comes back flushed, discards a job
    that was queued for it, starts nothing, and `ready` brings its VMs home."""
    c = make_cluster(nodes(4), worker_env=HA_ENV, fencing=True)
    boss = primary(c)
    victim = next(n for n in ("hv2", "hv3", "hv4") if n != boss)
    limited = next(n for n in ("hv1", "hv2", "hv3", "hv4") if n not in (boss, victim))
    for i in range(5):
        assert c.define_vm(f"r{i}", 512, node=victim, start=True)["state"] == "succeeded"
    assert api(c, "put", "/vms/r0/meta", json={"node_limit": [victim, limited]}).status_code == 200
    assert c.define_vm("idle", 256, node=victim)["state"] == "succeeded"
    os.kill(c.workers[victim].pid, signal.SIGSTOP)  # the next job waits in the victim's queue
    queued = api(c, "post", "/vms/idle/state", json={"state": "start"}).json()
    chassis_power(bmc(c, victim), "off")

    fence = fence_of(c, victim)
    assert fence["state"] == "succeeded", fence
    assert fence["result"]["fence"]["ok"] and fence["result"]["fence"]["steps"][:2] == ["power off sent",
                                                                                         "verified off"]
    assert sorted(fence["result"]["done"]) == [f"r{i}" for i in range(5)]
    stale = c.wait_job(queued["id"])
    # Ended by the fence, or before it by a janitor that saw the node absent: either way, with the reason.
    assert stale["state"] == "failed" and f"node {victim}" in stale["reason"], stale
    recovered = [j for j in jobs(c, "recover") if j["parent"] == fence["id"]]
    assert Counter(j["vm"] for j in recovered) == {f"r{i}": 1 for i in range(5)}
    assert all(j["state"] == "succeeded" for j in recovered)
    placed = vms(c)
    assert all(placed[f"r{i}"]["node"] not in ("", victim) and placed[f"r{i}"]["state"] == "running"
               and placed[f"r{i}"]["last_node"] == victim for i in range(5))
    assert placed["r0"]["node"] == limited
    assert placed["idle"]["node"] == victim and placed["idle"]["state"] == "stopped"

    c.wait_worker(victim)  # powered on again by the fence: a new worker, whose reconcile ran before "run"
    info = api(c, "get", f"/nodes/{victim}").json()
    assert info["domain_state"] == "flushed" and info["fence"]["state"] == "fenced"
    domains = libvirt_domains(c)
    assert {n: d["state"] for n, d in domains[victim].items()} == {"idle": "stopped"}  # started nothing
    assert sum(d["state"] == "running" for node in domains.values() for d in node.values()) == 5
    assert vms(c)["idle"]["state"] == "stopped"

    back = c.wait_job(api(c, "post", f"/nodes/{victim}/ready").json()["id"], timeout=120)
    assert back["state"] == "succeeded", back
    assert all(v["node"] == victim for v in vms(c).values())


def test_failed_fence_with_policy_none_leaves_vms_failed(make_cluster):
    """A node whose BMC does not answer is not confirmed off: with failed_fence=none its VMs are marked failed
    with the reason and never started elsewhere; the dead BMC costs one timeout (the sequence stops there)."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    boss = primary(c)
    victim = next(n for n in ("hv2", "hv3") if n != boss)
    for i in range(2):
        assert c.define_vm(f"f{i}", 256, node=victim, start=True)["state"] == "succeeded"
    c.bmc[victim].stop()  # the BMC is gone; then the node crashes
    c.workers[victim].kill()

    fence = fence_of(c, victim)
    assert fence["state"] == "failed" and "fence of " + victim + " failed" in fence["reason"], fence
    assert fence["result"]["fence"]["steps"] == [] and "power off failed" in fence["result"]["fence"]["reason"]
    placed = vms(c)
    for i in range(2):
        assert placed[f"f{i}"]["node"] == victim and placed[f"f{i}"]["state"] == "failed"
        assert "never runs twice" in placed[f"f{i}"]["failed_reason"]
    assert jobs(c, "recover") == []
    assert api(c, "get", f"/nodes/{victim}").json()["fence"]["state"] == "fence-failed"


def test_maintenance_mode_disables_fencing_and_says_so(make_cluster):
    """In maintenance mode a dead node is reported (a node fault naming maintenance) but not fenced; when
    maintenance ends, it is fenced."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    boss = primary(c)
    victim = next(n for n in ("hv2", "hv3") if n != boss)
    assert api(c, "put", "/cluster/maintenance", json={"maintenance": True}).json()["maintenance"] is True
    status = api(c, "get", "/cluster").json()
    assert status["maintenance"] and "maintenance" in status["fencing"]
    c.workers[victim].kill()
    # The fault is written at the moment the monitor decides the node is dead and NOT to fence it: from then on
    # there is nothing to wait for.
    wait_until(lambda: any("NOT fenced: maintenance" in f["message"]
                           for f in api(c, "get", f"/nodes/{victim}").json()["faults"]), 30,
               "the maintenance fault")
    assert jobs(c, "fence") == []
    assert api(c, "get", f"/nodes/{victim}").json()["daemon_state"] == "run"  # not declared dead
    assert api(c, "put", "/cluster/maintenance", json={"maintenance": False}).status_code == 200
    assert fence_of(c, victim)["state"] == "succeeded"


def test_storm_guard_fences_nothing_when_half_the_cluster_looks_dead(make_cluster):
    """When half of the nodes stop at once, the primary suspects itself of being cut off: no fence, a cluster
    fault instead."""
    c = make_cluster(nodes(4), worker_env=HA_ENV, fencing=True)
    boss = primary(c)
    victims = [n for n in ("hv1", "hv2", "hv3", "hv4") if n != boss][:2]
    for node in victims:
        c.workers[node].kill()
    wait_until(lambda: [f for f in api(c, "get", "/cluster").json()["faults"] if f["id"] == "fence_storm"],
               30, "the fence storm fault")
    # Each victim's fault says the monitor judged it dead and chose not to fence it: the decision was made.
    for node in victims:
        wait_until(lambda n=node: any("NOT fenced: fence storm guard" in f["message"]
                                      for f in api(c, "get", f"/nodes/{n}").json()["faults"]), 30,
                   f"the storm guard's decision about {node}")
    assert jobs(c, "fence") == []
    for node in victims:
        assert api(c, "get", f"/nodes/{node}").json()["daemon_state"] == "run"  # never declared dead


def test_a_node_declared_dead_as_maintenance_begins_is_fenced_when_it_ends(make_cluster):
    """Maintenance switched on between a node's declaration and its fence step: the fence job waits, saying why,
    and fences the node and recovers each of its VMs once maintenance ends."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    victim = next(n for n in ("hv2", "hv3") if n != primary(c))
    for i in range(2):
        assert c.define_vm(f"m{i}", 256, node=victim, start=True)["state"] == "succeeded"
    assert api(c, "put", "/cluster/maintenance", json={"maintenance": True}).status_code == 200
    c.workers[victim].kill()
    job = declare_dead(c.zk, c.schema, victim, "declared an instant before maintenance began")  # the monitor's act
    assert job is not None

    waiting = wait_until(lambda: (j := api(c, "get", f"/jobs/{job.id}").json())["state"] == "running"
                         and "maintenance ends" in j["phase"] and j, 30, "the fence job to wait for maintenance")
    assert "fence" not in waiting["result"] and power_status(bmc(c, victim)) is True  # nothing was fenced
    assert api(c, "put", "/cluster/maintenance", json={"maintenance": False}).status_code == 200
    fence = c.wait_job(job.id, timeout=90)
    assert fence["state"] == "succeeded", fence
    assert sorted(fence["result"]["done"]) == ["m0", "m1"]
    assert Counter(j["vm"] for j in jobs(c, "recover")) == {"m0": 1, "m1": 1}
    assert all(v["node"] != victim and v["state"] == "running" for v in vms(c).values())


def test_a_node_back_before_its_fence_is_not_fenced(make_cluster):
    """A node declared dead whose worker starts again before the fence step (held back by maintenance): the
    fence job is cancelled with the reason, the node is not powered off, and nothing is recovered elsewhere."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    victim = next(n for n in ("hv2", "hv3") if n != primary(c))
    assert c.define_vm("back0", 256, node=victim, start=True)["state"] == "succeeded"
    assert api(c, "put", "/cluster/maintenance", json={"maintenance": True}).status_code == 200
    c.workers[victim].kill()
    job = declare_dead(c.zk, c.schema, victim, "declared an instant before maintenance began")
    assert job is not None
    c.power_on(victim)  # the worker's supervisor starts it again
    c.wait_worker(victim)
    pid = c.workers[victim].pid

    fence = c.wait_job(job.id, timeout=60)
    assert fence["state"] == "cancelled" and "came back before it was fenced" in fence["reason"], fence
    assert api(c, "get", f"/nodes/{victim}").json()["fence"]["state"] == "returned"
    assert jobs(c, "recover") == []
    assert vms(c)["back0"]["node"] == victim  # its worker started nothing (the test driver lost the guest)
    assert c.workers[victim].pid == pid and power_status(bmc(c, victim)) is True


def test_storm_guard_lets_a_two_node_cluster_fence(make_cluster):
    """In a 2-node cluster the one other node dying is half of the cluster but not a storm: it is fenced."""
    c = make_cluster(nodes(2), worker_env=HA_ENV, fencing=True)
    victim = next(n for n in ("hv1", "hv2") if n != primary(c))
    assert c.define_vm("two0", 256, node=victim, start=True)["state"] == "succeeded"
    chassis_power(bmc(c, victim), "off")
    assert fence_of(c, victim)["state"] == "succeeded"
    assert vms(c)["two0"]["node"] != victim and vms(c)["two0"]["state"] == "running"
    assert not [f for f in api(c, "get", "/cluster").json()["faults"] if f["id"] == "fence_storm"]


@pytest.mark.parametrize("size", [3, 4])
def test_a_node_that_stayed_dead_does_not_make_the_next_failure_a_storm(make_cluster, size):
    """A node whose fence failed stays dead for good; a later single failure is still fenced, in a 3- and a
    4-node cluster (the dead node is out of play, not a second node looking dead)."""
    c = make_cluster(nodes(size), worker_env=HA_ENV, fencing=True)
    boss = primary(c)
    gone, victim = [n for n in (f"hv{i}" for i in range(1, size + 1)) if n != boss][:2]
    c.bmc[gone].stop()  # no BMC: its fence fails and it stays dead
    c.workers[gone].kill()
    assert fence_of(c, gone)["state"] == "failed"
    assert api(c, "get", f"/nodes/{gone}").json()["daemon_state"] == "dead"

    assert c.define_vm(f"late{size}", 256, node=victim, start=True)["state"] == "succeeded"
    chassis_power(bmc(c, victim), "off")
    assert fence_of(c, victim)["state"] == "succeeded"
    assert vms(c)[f"late{size}"]["node"] not in (gone, victim)
    assert not [f for f in api(c, "get", "/cluster").json()["faults"] if f["id"] == "fence_storm"]


def test_primary_failover_runs_queued_cluster_work(make_cluster):
    """Cluster work queued while the primary is frozen runs on the next primary after the old one dies: a fence
    job queued for a dead node completes there, and the dead primary is fenced too (each once); a clean
    shutdown of a primary hands over at once."""
    from pvc_tasks.app import app
    c = make_cluster(nodes(5), worker_env=HA_ENV, fencing=True)
    boss = primary(c)
    dead = next(n for n in ("hv2", "hv3", "hv4") if n != boss)
    for i in range(2):
        assert c.define_vm(f"p{i}", 256, node=dead, start=True)["state"] == "succeeded"
    os.kill(c.workers[boss].pid, signal.SIGSTOP)
    c.workers[dead].kill()
    app.conf.broker_url = c.redis_url
    queued = declare_dead(c.zk, c.schema, dead, "declared by the test while the primary is frozen")
    assert queued is not None and declare_dead(c.zk, c.schema, dead, "twice") is None
    c.workers[boss].kill()

    done = c.wait_job(queued.id, timeout=90)
    assert done["state"] == "succeeded", done
    successor = primary(c)
    assert successor != boss
    assert all(v["node"] not in (dead, boss) and v["state"] == "running" for v in vms(c).values())
    assert fence_of(c, boss)["state"] == "succeeded"
    assert Counter(j["params"]["target"] for j in jobs(c, "fence")) == {dead: 1, boss: 1}

    c.workers[successor].stop()  # SIGTERM: relinquish before stopping
    wait_until(lambda: primary(c) not in (successor, boss), 15, "a clean handover")
    assert api(c, "get", f"/nodes/{successor}").json()["router_state"] == "secondary"


def test_a_primary_killed_right_after_its_fence_is_succeeded_without_a_second_power_cycle(make_cluster):
    """The primary dies the moment its power cycle of a dead node is confirmed, before its pass records it in the
    job: its successor takes the outcome from the node's fence record. The node is power-cycled once, the job is not
    taken for "the node came back", and each VM is recovered exactly once."""
    c = make_cluster(nodes(4), worker_env=HA_ENV, fencing=True)
    boss = primary(c)
    victim = next(n for n in ("hv2", "hv3", "hv4") if n != boss)
    others = [n for n in ("hv1", "hv2", "hv3", "hv4") if n not in (boss, victim)]
    for i in range(6):
        assert c.define_vm(f"k{i}", 256, node=victim, start=True)["state"] == "succeeded"
        # Not onto the primary about to die: a recovery there would be lost with it (another fence's business).
        assert api(c, "put", f"/vms/k{i}/meta", json={"node_limit": [victim, *others]}).status_code == 200

    def on_fence_record(data, _stat):
        if json.loads(data or b"{}").get("state") == "fenced":
            c.workers[boss].kill()
            return False
        return True

    c.zk.DataWatch(c.schema.path("node.fence", victim), on_fence_record)
    chassis_power(bmc(c, victim), "off")
    fence = fence_of(c, victim, timeout=90)
    assert fence["state"] == "succeeded", fence
    assert c.power.changes.count((victim, True)) == 1, c.power.changes  # powered on once: one power cycle
    recovered = [j for j in jobs(c, "recover") if j["parent"] == fence["id"] and j["state"] == "succeeded"]
    assert Counter(j["vm"] for j in recovered) == {f"k{i}": 1 for i in range(6)}
    c.wait_worker(victim)
    wait_until(lambda: Counter(d for domains in libvirt_domains(c).values() for d, info in (domains or {}).items()
                               if info["state"] == "running") == {f"k{i}": 1 for i in range(6)}, 30,
               "each VM running on exactly one node, as their libvirts say")


def test_a_crashed_primary_never_shows_primary(make_cluster):
    """A primary killed outright never writes ``secondary``: its successor does, and until then the API derives it
    from the missing presence; the successor alone shows ``primary``."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    assert api(c, "put", "/cluster/maintenance", json={"maintenance": True}).status_code == 200  # nobody fences it
    boss = primary(c)
    c.workers[boss].kill()
    wait_until(lambda: not api(c, "get", f"/nodes/{boss}").json()["alive"], 30, "the primary's session to expire")
    assert api(c, "get", f"/nodes/{boss}").json()["router_state"] == "secondary"
    successor = wait_until(lambda: primary(c) != boss and primary(c), 30, "a new primary")
    wait_until(lambda: c.zk.get(c.schema.path("node.router_state", boss))[0] == b"secondary", 15,
               "the successor to correct the crashed primary's router_state")
    states = {n["name"]: n["router_state"] for n in api(c, "get", "/nodes").json()}
    assert [n for n, s in states.items() if s == "primary"] == [successor]


def test_the_successor_of_a_dead_primary_counts_from_its_last_keepalive(make_cluster):
    """A primary that dies is judged by its keepalive's age on ZooKeeper's clock: its successor, which can take
    over only when the dead primary's 10 s session has expired, declares it dead at once, its keepalive being
    already past the 3 s threshold, instead of counting 3 s more from its own takeover."""
    c = make_cluster(nodes(3), worker_env={**HA_ENV, **SLOW_SESSION}, fencing=True)
    boss = primary(c)
    c.workers[boss].kill()
    fence = fence_of(c, boss)
    assert fence["state"] == "succeeded", fence
    age = float(re.match(r"no keepalive for ([0-9.]+) s by ZooKeeper's clock", fence["params"]["why"]).group(1))
    # Nobody could take over before the session expired (10 s after the kill), and the age then counted on:
    # "now" on ZooKeeper's clock lags by at most one 1 s interval.
    assert age >= 10 - 1.5, fence["params"]["why"]


def test_self_fence_stops_vms_of_a_worker_cut_off_from_zookeeper(make_cluster):
    """A worker cut off from ZooKeeper longer than self_fence_after destroys its VMs; when the link returns it
    takes its presence again and records them stopped with the reason."""
    from pvc_dev.netcut import Link

    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    boss = primary(c)
    victim = next(n for n in ("hv2", "hv3") if n != boss)
    assert api(c, "put", "/cluster/maintenance", json={"maintenance": True}).status_code == 200
    link = Link(int(c.zookeeper.info["port"]))
    try:
        c.workers[victim].stop()
        c.start_worker(victim, {"PVC_ZOOKEEPER": f"127.0.0.1:{link.port}{c.chroot}", "PVC_SELF_FENCE_AFTER": "2"})
        c.wait_worker(victim)
        for i in range(2):
            assert c.define_vm(f"s{i}", 256, node=victim, start=True)["state"] == "succeeded"
        link.cut()
        wait_until(lambda: "SELF-FENCE" in c.workers[victim].log_tail(200), 30, "the self-fence")
        link.restore()
        wait_until(lambda: all(vms(c)[f"s{i}"]["state"] == "stopped" for i in range(2)), 30, "stopped VMs")
        assert all("self-fenced" in vms(c)[f"s{i}"]["failed_reason"] for i in range(2))
        wait_until(lambda: api(c, "get", f"/nodes/{victim}").json()["alive"], 30, "presence again")
        wait_until(lambda: running_per_node(c)[victim] == 0, 10, "no VM running on the node")
        assert json.loads(c.zk.get(c.schema.path("node.fence", victim))[0]) == {}  # nobody fenced it
        c.workers[victim].stop()  # while the link still carries its session: a clean stop, not a 15 s one
        c.start_worker(victim, {"PVC_SELF_FENCE_AFTER": "2"})  # straight to ZooKeeper, for the harness's checks
        c.wait_worker(victim)
    finally:
        link.close()
