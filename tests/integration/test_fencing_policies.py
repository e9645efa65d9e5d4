"""What docs/fencing.md promises beyond the happy path: a slow node is forgiven, each recovery policy does what
it says, a VM with nowhere to go waits on its node, and a storage hook that refuses keeps the VM down.

Every cluster here fences for real (``fencing=True``) through its nodes' ``ipmi_sim`` BMCs, with the fast
detection of test_fencing (dead about 3 s after the last keepalive).
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from pvc_tasks.jobs import JobStore
from pvc_workers.ipmi import chassis_power
from tests.conftest import SLOW_SESSION, paused
from tests.integration.test_fencing import HA_ENV, api, bmc, fence_of, jobs, nodes, primary, vms


def victim_of(c) -> str:
    boss = primary(c)
    return next(n for n in ("hv2", "hv3") if n != boss)


def faults(c, node: str) -> list[dict]:
    return api(c, "get", f"/nodes/{node}").json()["faults"]


def test_slow_but_healthy_node_is_suspected_then_forgiven(make_cluster):
    """A node whose keepalives stop for less than the dead threshold is suspected (a visible fault), forgiven when
    they resume (the fault is cleared), and never fenced."""
    env = {**HA_ENV, **SLOW_SESSION, "PVC_SAVING_THROWS": "8"}  # dead only after 10 silent intervals
    c = make_cluster(nodes(3), worker_env=env, fencing=True)
    victim = victim_of(c)
    assert c.define_vm("slow1", 256, node=victim, start=True)["state"] == "succeeded"
    with paused(c.workers[victim]):
        wait_until(lambda: any(f["id"] == "keepalive_missed" for f in faults(c, victim)), 7, "the suspicion")
    # The monitor saw its keepalive change again and judged it alive: the decision not to fence is made.
    wait_until(lambda: not any(f["id"] == "keepalive_missed" for f in faults(c, victim)), 15, "the pardon")
    assert jobs(c, "fence") == []
    node = api(c, "get", f"/nodes/{victim}").json()
    assert node["daemon_state"] == "run" and node["fence"] == {}
    assert libvirt_domains(c)[victim]["slow1"]["state"] == "running"


def test_successful_fence_none_marks_vms_failed_and_starts_nothing(make_cluster):
    """successful_fence=none: the fence succeeds, but its VMs are not recovered: each is marked failed with the
    reason, no recover job is made, and the node powered on again starts none of them."""
    c = make_cluster(nodes(3), worker_env={**HA_ENV, "PVC_SUCCESSFUL_FENCE": "none"}, fencing=True)
    victim = victim_of(c)
    for i in range(2):
        assert c.define_vm(f"n{i}", 256, node=victim, start=True)["state"] == "succeeded"
    chassis_power(bmc(c, victim), "off")
    fence = fence_of(c, victim)
    assert fence["result"]["fence"]["ok"] is True, fence
    assert jobs(c, "recover") == []
    placed = vms(c)
    for i in range(2):
        assert (placed[f"n{i}"]["node"], placed[f"n{i}"]["state"]) == (victim, "failed")
        assert "never runs twice" in placed[f"n{i}"]["failed_reason"]
    c.wait_worker(victim)  # powered on by the fence
    domains = libvirt_domains(c)
    assert {n: d["state"] for n, d in domains[victim].items()} == {"n0": "stopped", "n1": "stopped"}
    assert not any("n0" in d or "n1" in d for node, d in domains.items() if node != victim)


def test_vm_with_no_recovery_target_stays_stopped_with_autostart(make_cluster):
    """A fenced node's VM that may run nowhere else (node_limit) stays on it, stopped, autostart set, with the
    reason; when the node is back, `ready` starts it there."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    victim = victim_of(c)
    assert c.define_vm("pinned", 256, node=victim, start=True)["state"] == "succeeded"
    assert api(c, "put", "/vms/pinned/meta", json={"node_limit": [victim]}).status_code == 200
    chassis_power(bmc(c, victim), "off")
    fence = fence_of(c, victim)
    assert fence["result"]["fence"]["ok"] is True, fence
    vm = vms(c)["pinned"]
    assert (vm["node"], vm["state"], vm["meta"]["autostart"]) == (victim, "stopped", True)
    assert "no target for pinned" in vm["failed_reason"]
    assert [j for j in jobs(c, "recover") if j["vm"] == "pinned"] == []
    c.wait_worker(victim)
    back = c.wait_job(api(c, "post", f"/nodes/{victim}/ready").json()["id"], timeout=60)
    assert back["state"] == "succeeded", back
    assert libvirt_domains(c)[victim]["pinned"]["state"] == "running"


def test_storage_hook_that_refuses_keeps_the_vm_down(make_cluster):
    """When the storage-lock hook raises, the VM is not started anywhere: its recover job fails naming the hook's
    error, the VM stays recorded on the dead node as failed, and the target keeps no copy."""
    env = {**HA_ENV, "PVC_STORAGE_LOCK_HOOK": "tests.hooks:refuse"}
    c = make_cluster(nodes(3), worker_env=env, fencing=True)
    victim = victim_of(c)
    assert c.define_vm("locked", 256, node=victim, start=True)["state"] == "succeeded"
    chassis_power(bmc(c, victim), "off")
    fence = fence_of(c, victim)
    assert fence["state"] == "failed" and "locked" in fence["reason"], fence
    recover = [j for j in jobs(c, "recover") if j["vm"] == "locked"]
    assert len(recover) == 1 and recover[0]["state"] == "failed"
    assert "storage lock hook failed for locked: locks on locked's disks are still held by" in recover[0]["reason"]
    vm = vms(c)["locked"]
    assert (vm["node"], vm["state"]) == (victim, "failed")
    c.wait_worker(victim)
    domains = libvirt_domains(c)
    assert [node for node, d in domains.items() if "locked" in d] == [victim]  # no copy on the target
    assert domains[victim]["locked"]["state"] == "stopped"


def test_bmc_that_does_not_power_off_is_a_failed_fence(make_cluster):
    """A BMC that accepts "power off" while the node stays on (a stuck relay): the fence fails at "verify off",
    and with the default failed_fence=none the VMs are marked failed, never started elsewhere."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    victim = victim_of(c)
    assert c.define_vm("stuck1", 256, node=victim, start=True)["state"] == "succeeded"
    c.power.stuck.add(victim)
    c.workers[victim].kill()  # the node's OS hangs; its board keeps power, whatever the BMC is told
    fence = fence_of(c, victim)
    assert fence["state"] == "failed", fence
    assert fence["result"]["fence"]["steps"] == ["power off sent"]
    assert "still reports power on after 3 checks" in fence["result"]["fence"]["reason"]
    vm = vms(c)["stuck1"]
    assert (vm["node"], vm["state"]) == (victim, "failed") and "never runs twice" in vm["failed_reason"]
    assert jobs(c, "recover") == []
    assert api(c, "get", f"/nodes/{victim}").json()["fence"]["state"] == "fence-failed"


def test_failed_fence_with_policy_migrate_recovers_after_the_self_fence_interval(make_cluster):
    """failed_fence=migrate: a node whose BMC is gone is not confirmed off, but it self-fences (its worker stops its
    VMs when cut off), so once its self-fence interval has passed since its last keepalive its VMs are recovered
    elsewhere, each exactly once."""
    env = {**HA_ENV, "PVC_FAILED_FENCE": "migrate", "PVC_SELF_FENCE_AFTER": "2"}
    c = make_cluster(nodes(3), worker_env=env, fencing=True)
    victim = victim_of(c)
    for i in range(2):
        assert c.define_vm(f"m{i}", 256, node=victim, start=True)["state"] == "succeeded"
    c.bmc[victim].stop()
    c.workers[victim].kill()
    fence = fence_of(c, victim)
    assert fence["result"]["fence"]["ok"] is False and "power off failed" in fence["result"]["fence"]["reason"]
    recovered = [j for j in jobs(c, "recover") if j["parent"] == fence["id"]]
    assert sorted(j["vm"] for j in recovered) == ["m0", "m1"] and all(j["state"] == "succeeded" for j in recovered)
    placed = vms(c)
    assert all(placed[f"m{i}"]["node"] not in ("", victim) and placed[f"m{i}"]["state"] == "running"
               for i in range(2))
    assert sum("m0" in d for d in libvirt_domains(c).values() if d) == 1


def test_failed_fence_with_policy_migrate_leaves_the_vms_of_a_node_that_does_not_self_fence(make_cluster):
    """failed_fence=migrate, but the node does not self-fence (self_fence_after 0, the default): its fence failed,
    so it may still run its VMs, and they are marked failed where they are, never started elsewhere."""
    c = make_cluster(nodes(3), worker_env={**HA_ENV, "PVC_FAILED_FENCE": "migrate"}, fencing=True)
    victim = victim_of(c)
    assert c.define_vm("nsf0", 256, node=victim, start=True)["state"] == "succeeded"
    c.bmc[victim].stop()
    c.workers[victim].kill()
    fence = fence_of(c, victim)
    assert fence["result"]["fence"]["ok"] is False, fence
    vm = vms(c)["nsf0"]
    assert (vm["node"], vm["state"]) == (victim, "failed"), vm
    assert f"{victim} does not self-fence, so it may still run its VMs" in vm["failed_reason"], vm
    assert jobs(c, "recover") == []
    assert not any("nsf0" in (d or {}) for n, d in libvirt_domains(c).items() if n != victim)


def test_failed_fence_with_policy_migrate_waits_one_keepalive_interval_past_the_self_fence(make_cluster):
    """A node that self-fences 8 s after losing ZooKeeper, keepalives every 2 s: its VMs are recovered no sooner
    than 8 + 2 s after its last keepalive, both instants stamped by ZooKeeper (the interval's margin covers a
    self-fence that fired up to one interval late)."""
    env = {**HA_ENV, "PVC_FAILED_FENCE": "migrate", "PVC_SELF_FENCE_AFTER": "8", "PVC_KEEPALIVE_INTERVAL": "2"}
    c = make_cluster(nodes(3), worker_env=env, fencing=True)
    victim = victim_of(c)
    assert c.define_vm("sfm0", 256, node=victim, start=True)["state"] == "succeeded"
    c.bmc[victim].stop()
    c.workers[victim].kill()
    last_keepalive = c.zk.exists(c.schema.path("node.keepalive", victim)).mtime / 1000
    fence = fence_of(c, victim)
    (recovered,) = [j for j in jobs(c, "recover") if j["parent"] == fence["id"]]
    assert recovered["state"] == "succeeded", recovered
    submitted = c.zk.exists(JobStore(c.zk, c.schema).path(recovered["id"])).ctime / 1000
    assert submitted - last_keepalive >= 8 + 2, (submitted - last_keepalive, fence["messages"])


def test_failed_fence_with_policy_migrate_waits_by_zookeepers_clock_not_the_nodes(make_cluster):
    """failed_fence=migrate on a node whose clock is an hour behind (its keepalive timestamps look an hour old):
    the fence still waits out its self-fence interval, timed on ZooKeeper's clock, before recovering its VM."""
    env = {**HA_ENV, "PVC_FAILED_FENCE": "migrate", "PVC_SELF_FENCE_AFTER": "4"}
    c = make_cluster(nodes(3), worker_env=env, fencing=True)
    victim = victim_of(c)
    c.workers[victim].stop()
    c.start_worker(victim, skewed("-1h"))
    c.wait_worker(victim)
    assert api(c, "get", f"/nodes/{victim}").json()["keepalive_age"] > 3000  # as its own timestamps say
    assert c.define_vm("sk0", 256, node=victim, start=True)["state"] == "succeeded"
    c.bmc[victim].stop()
    c.workers[victim].kill()
    fence = fence_of(c, victim)
    texts = [m["text"] for m in fence["messages"]]
    assert any(t.startswith("waiting: ") and "self-fence (4 s)" in t for t in texts), texts
    assert [j["vm"] for j in jobs(c, "recover") if j["state"] == "succeeded"] == ["sk0"]


def test_cleanly_stopped_node_is_never_judged(make_cluster):
    """A node whose worker stopped cleanly (daemon_state stop) is not suspected or fenced, however long it stays
    away: by the time the monitor suspects a node that was paused later, it has judged the stopped one longer."""
    env = {**HA_ENV, **SLOW_SESSION, "PVC_SAVING_THROWS": "8"}
    c = make_cluster(nodes(4), worker_env=env, fencing=True)
    boss = primary(c)
    stopped, control = [n for n in ("hv2", "hv3", "hv4") if n != boss][:2]
    c.workers[stopped].stop()  # SIGTERM: state "stop", presence released
    assert api(c, "get", f"/nodes/{stopped}").json()["daemon_state"] == "stop"
    with paused(c.workers[control]):
        wait_until(lambda: any(f["id"] == "keepalive_missed" for f in faults(c, control)), 7, "the suspicion")
    assert not any(f["id"] == "keepalive_missed" for f in faults(c, stopped))
    assert jobs(c, "fence") == []
    assert api(c, "get", f"/nodes/{stopped}").json()["daemon_state"] == "stop"


def skewed(offset: str) -> dict[str, str]:
    """Environment that runs a process with its wall clock shifted by ``offset`` (libfaketime, e.g. "-1h");
    monotonic clocks stay true, as NTP-less skew leaves them."""
    lib = next(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    return {"LD_PRELOAD": str(lib), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_a_node_with_a_skewed_clock_is_never_suspected(make_cluster):
    """A node whose clock is an hour behind writes keepalive timestamps an hour old, yet is never suspected: the
    monitor judges keepalives by their znodes' modification times, on ZooKeeper's clock. Proven at the moment the
    monitor suspects another node that was paused meanwhile."""
    env = {**HA_ENV, **SLOW_SESSION, "PVC_SAVING_THROWS": "8"}
    c = make_cluster(nodes(4), worker_env=env, fencing=True)
    boss = primary(c)
    skew, control = [n for n in ("hv2", "hv3", "hv4") if n != boss][:2]
    c.workers[skew].stop()
    c.start_worker(skew, skewed("-1h"))
    c.wait_worker(skew)
    assert api(c, "get", f"/nodes/{skew}").json()["keepalive_age"] > 3000  # its timestamps are an hour old
    with paused(c.workers[control]):
        wait_until(lambda: any(f["id"] == "keepalive_missed" for f in faults(c, control)), 7, "the suspicion")
    assert not any(f["id"] == "keepalive_missed" for f in faults(c, skew))
    assert jobs(c, "fence") == []
    assert api(c, "get", f"/nodes/{skew}").json()["daemon_state"] == "run"


def test_worker_declared_dead_while_cut_off_exits_with_status_4(make_cluster):
    """A worker cut off from ZooKeeper long enough to be declared dead (its fence failing: BMC gone) exits with
    status 4 when the link returns, so that its service manager restarts it into the returning-node path; the
    restarted worker starts none of its VMs (the failed fence marked them failed)."""
    from pvc_dev.netcut import Link
    from pvc_workers.session import EXIT_DECLARED_DEAD

    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    victim = victim_of(c)
    link = Link(int(c.zookeeper.info["port"]))
    try:
        c.workers[victim].stop()
        c.start_worker(victim, {"PVC_ZOOKEEPER": f"127.0.0.1:{link.port}{c.chroot}"})
        c.wait_worker(victim)
        assert c.define_vm("cut1", 256, node=victim, start=True)["state"] == "succeeded"
        c.bmc[victim].stop()
        link.cut()
        fence = fence_of(c, victim)
        assert fence["state"] == "failed" and "power off failed" in fence["result"]["fence"]["reason"], fence
        link.restore()
        worker = c.workers[victim]
        wait_until(lambda: not worker.alive(), 30, "the worker to exit")
        assert worker.proc.returncode == EXIT_DECLARED_DEAD
        assert "declared dead while its ZooKeeper session was lost" in worker.log_path.read_text()
    finally:
        link.close()
    c.start_worker(victim)  # what systemd would do
    c.wait_worker(victim)
    assert libvirt_domains(c)[victim]["cut1"]["state"] == "stopped"
    assert vms(c)["cut1"]["state"] == "failed"


def test_a_node_that_does_not_power_on_again_is_still_fenced(make_cluster):
    """The fence's last step, power on, fails (a broken power supply): the node was seen off, so the fence holds,
    the failure is recorded among its steps, each VM is recovered exactly once, and the node stays down."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    victim = victim_of(c)
    for i in range(2):
        assert c.define_vm(f"p{i}", 256, node=victim, start=True)["state"] == "succeeded"
    c.power.refuse_on.add(victim)
    chassis_power(bmc(c, victim), "off")
    fence = fence_of(c, victim)
    assert fence["state"] == "succeeded" and fence["result"]["fence"]["ok"] is True, fence
    steps = fence["result"]["fence"]["steps"]
    assert steps[:2] == ["power off sent", "verified off"] and steps[2].startswith("power on failed:"), steps
    recovered = [j for j in jobs(c, "recover") if j["parent"] == fence["id"]]
    assert sorted(j["vm"] for j in recovered) == ["p0", "p1"] and all(j["state"] == "succeeded" for j in recovered)
    assert not c.workers[victim].alive()
    assert all(v["node"] != victim and v["state"] == "running" for v in vms(c).values())


def test_a_node_that_never_finished_starting_is_never_judged(make_cluster):
    """A worker that registered and then failed to start (daemon_state init: here, a libvirt URI that does not
    open) is not judged: by the time the monitor suspects a node paused later, the starting one has no fault and
    no fence."""
    env = {**HA_ENV, **SLOW_SESSION, "PVC_SAVING_THROWS": "8"}
    c = make_cluster(nodes(4), worker_env=env, fencing=True)
    boss = primary(c)
    starting, control = [n for n in ("hv2", "hv3", "hv4") if n != boss][:2]
    c.workers[starting].stop()
    failed = c.start_worker(starting, {"PVC_LIBVIRT_URI": "test:///no/such/node.xml"})
    wait_until(lambda: not failed.alive(), 30, "the worker to give up")
    assert failed.proc.returncode == 2 and "cannot open libvirt" in failed.log_path.read_text()
    assert api(c, "get", f"/nodes/{starting}").json()["daemon_state"] == "init"
    with paused(c.workers[control]):
        wait_until(lambda: any(f["id"] == "keepalive_missed" for f in faults(c, control)), 7, "the suspicion")
    assert not any(f["id"] == "keepalive_missed" for f in faults(c, starting))
    assert jobs(c, "fence") == []


def test_a_node_resumed_as_it_is_declared_dead_keeps_no_stale_copy(make_cluster):
    """A worker frozen past the dead threshold and resumed the moment it is declared dead is fenced; the node
    comes back while its VMs are still being recovered (its start-up defines those still recorded on it) and, in
    every one of three rounds, ends holding no copy of a VM that ZooKeeper places elsewhere, as its libvirt says."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    victim = victim_of(c)
    names = [f"rz{i:02d}" for i in range(40)]  # enough that their recoveries are still being created at power-on
    for name in names:  # defines in turn (each reserves on the node); the starts at once
        assert c.define_vm(name, 128, node=victim)["state"] == "succeeded"
    starts = [api(c, "post", f"/vms/{name}/state", json={"state": "start"}).json()["id"] for name in names]
    assert all(c.wait_job(job)["state"] == "succeeded" for job in starts)
    seen: set[str] = set()
    for _round in range(3):
        pid = c.workers[victim].pid
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: api(c, "get", f"/nodes/{victim}").json()["daemon_state"] == "dead", 30,
                   "the node to be declared dead")
        os.kill(pid, signal.SIGCONT)
        fence = wait_until(lambda: [j for j in jobs(c, "fence") if j["id"] not in seen], 30, "its fence job")[0]
        seen.add(fence["id"])
        assert c.wait_job(fence["id"], timeout=90)["state"] == "succeeded"
        c.wait_worker(victim)

        def stale() -> list[str]:
            placed = vms(c)
            return sorted(vm for vm in libvirt_domains(c)[victim] if placed[vm]["node"] != victim)

        wait_until(lambda: not stale(), 30, f"{victim} to hold no stale copy")
        running = Counter(vm for node in libvirt_domains(c).values() for vm, d in node.items()
                          if d["state"] == "running")
        assert running == {name: 1 for name in names}
        back = c.wait_job(api(c, "post", f"/nodes/{victim}/ready").json()["id"], timeout=120)
        assert back["state"] == "succeeded", back


def test_a_worker_whose_bmc_refuses_it_says_so_at_start(make_cluster):
    """A node whose BMC refuses its credentials gets the node fault ``ipmi`` when its worker starts (fencing it
    would fail, and the operator sees it before that matters); with the right credentials the fault is cleared."""
    c = make_cluster(nodes(2), worker_env=HA_ENV, fencing=True)
    node = next(n for n in ("hv1", "hv2") if n != primary(c))
    c.workers[node].stop()
    c.start_worker(node, {"PVC_IPMI_PASSWORD": "not-the-bmc-password"})
    c.wait_worker(node)
    fault = wait_until(lambda: [f for f in faults(c, node) if f["id"] == "ipmi"], 30, "the ipmi fault")[0]
    assert "IPMI unreachable" in fault["message"] and "cannot be fenced" in fault["message"], fault
    assert "not-the-bmc-password" not in json.dumps(api(c, "get", f"/nodes/{node}").json())
    c.workers[node].stop()
    c.start_worker(node)
    c.wait_worker(node)
    wait_until(lambda: not [f for f in faults(c, node) if f["id"] == "ipmi"], 30, "the fault to be cleared")
