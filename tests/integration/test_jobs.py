"""Job guarantees: one active job per VM, cancel of a queued job, and fast failure when a node is absent."""

import os
import signal
import threading
import time

from pvc_dev import invariants
from pvc_dev.cluster import NodeSpec
from pvc_dev.services import wait_until
from tests.conftest import BOTH_BROKERS, SLOW_SESSION, paused, race

pytestmark = BOTH_BROKERS


def test_parallel_requests_on_one_vm_make_exactly_one_job(make_cluster):
    """Eight simultaneous start requests on one stopped VM: exactly one 202, the seven others 409 vm_busy.

    The node's worker is paused while they race, so the winner's job is still active when every loser is
    answered. A loser refused by the pre-check (the marker was already set when it looked) proves nothing about the
    race; one refused at commit ("at the same moment": it read an empty marker too, and the transaction's version
    check stopped it) proves two requests really raced. Rounds repeat, on fresh VMs, until one such loss is seen."""
    c = make_cluster(worker_env=SLOW_SESSION)
    base = f"{c.api_url}/api/v1"
    for round_ in range(6):
        vm = f"par{round_}"
        assert c.define_vm(vm, node="hv1")["state"] == "succeeded"
        with paused(c.workers["hv1"]):
            answers = race(8, lambda _i, vm=vm: c.session().post(f"{base}/vms/{vm}/state", json={"state": "start"},
                                                                 timeout=10))
            statuses = sorted(r.status_code for r in answers)
            assert statuses == [202] + [409] * 7, [r.text for r in answers]
            assert {r.json()["error"] for r in answers if r.status_code == 409} == {"vm_busy"}
        winner = next(r.json() for r in answers if r.status_code == 202)
        assert c.wait_job(winner["id"])["state"] == "succeeded"
        assert len(c.session().get(f"{base}/jobs", params={"vm": vm, "kind": "start"}).json()) == 1
        assert invariants.libvirt_domains(c)["hv1"][vm]["state"] == "running"
        if any("at the same moment" in r.json()["message"] for r in answers if r.status_code == 409):
            return  # the version check decided a real race
    raise AssertionError("in 6 rounds no two requests raced to the commit: the check was never exercised")


def test_busy_vm_gets_409_naming_the_active_job(make_cluster):
    """While a job is active on a VM, another mutation is refused with that job's id."""
    c = make_cluster(worker_env=SLOW_SESSION)
    assert c.define_vm("busy", node="hv1", start=True)["state"] == "succeeded"
    s = c.session()
    with paused(c.workers["hv1"]):  # the job stays queued while the worker is frozen
        first = s.post(f"{c.api_url}/api/v1/vms/busy/state", json={"state": "stop"}).json()
        second = s.post(f"{c.api_url}/api/v1/vms/busy/state", json={"state": "shutdown"})
        assert second.status_code == 409 and second.json()["error"] == "vm_busy"
        assert second.json()["details"]["job"] == first["id"]
    assert c.wait_job(first["id"])["state"] == "succeeded"


def test_cancel_a_queued_job(make_cluster):
    """A job cancelled while queued ends cancelled, frees the VM, and its late message does nothing."""
    c = make_cluster(worker_env=SLOW_SESSION)
    assert c.define_vm("cq", node="hv2")["state"] == "succeeded"
    s, base = c.session(), f"{c.api_url}/api/v1"
    worker = c.workers["hv2"]
    with paused(worker):
        job = s.post(f"{base}/vms/cq/state", json={"state": "start"}).json()
        assert job["state"] == "queued"
        cancelled = s.post(f"{base}/jobs/{job['id']}/cancel").json()
        assert cancelled["state"] == "cancelled" and "queued" in cancelled["reason"]
        assert s.get(f"{base}/vms/cq").json()["active_job"] == ""
        again = s.post(f"{base}/jobs/{job['id']}/cancel")
        assert again.status_code == 409 and again.json()["error"] == "job_ended"
    # The worker now receives the message; it cannot take the stage, so the VM stays stopped and the job cancelled.
    wait_until(lambda: f"stale pvc.vm.start message for job {job['id']}" in worker.log_path.read_text(), 20,
               "the late message to be ignored")
    assert s.get(f"{base}/jobs/{job['id']}").json()["state"] == "cancelled"
    assert s.get(f"{base}/vms/cq").json()["state"] == "stopped"
    assert invariants.libvirt_domains(c)["hv2"]["cq"]["state"] == "stopped"


def test_job_for_an_absent_node_fails_fast(make_cluster):
    """With a node's worker dead, a new job is refused at once and a queued one fails with the reason."""
    c = make_cluster()
    assert c.define_vm("orphan", node="hv3", start=True)["state"] == "succeeded"
    s, base = c.session(), f"{c.api_url}/api/v1"
    worker = c.workers["hv3"]
    os.kill(worker.pid, signal.SIGSTOP)
    job = s.post(f"{base}/vms/orphan/state", json={"state": "stop"}).json()
    worker.kill()  # dies with the job still queued
    ended = c.wait_job(job["id"], timeout=30)
    assert ended["state"] == "failed" and "hv3's worker is not running" in ended["reason"]
    assert s.get(f"{base}/vms/orphan").json()["active_job"] == ""
    r = s.post(f"{base}/vms/orphan/state", json={"state": "stop"})
    assert r.status_code == 409 and r.json()["error"] == "node_unavailable"
    assert "pvc-worker --node hv3" in r.json()["message"]
    node = s.get(f"{base}/nodes/hv3").json()
    assert node["alive"] is False


def test_restarted_worker_reconciles_from_zookeeper(make_cluster):
    """After kill -9 and restart, a node's worker redefines its VMs from ZooKeeper (its test-driver libvirt starts
    empty) and restarts the running one, as the new worker's own libvirt reports."""
    c = make_cluster()
    assert c.define_vm("keep-running", node="hv1", start=True)["state"] == "succeeded"
    assert c.define_vm("keep-stopped", node="hv1")["state"] == "succeeded"
    c.workers["hv1"].kill()
    c.start_worker("hv1")
    c.wait_worker("hv1", timeout=30)
    domains = invariants.libvirt_domains(c)["hv1"]
    assert {n: d["state"] for n, d in domains.items()} == {"keep-running": "running", "keep-stopped": "stopped"}
    assert "reconciled VMs of hv1: {'redefined': 2, 'restarted': 1," in c.workers["hv1"].log_path.read_text()
    s, base = c.session(), f"{c.api_url}/api/v1"
    assert s.get(f"{base}/vms/keep-running").json()["state"] == "running"
    assert s.get(f"{base}/vms/keep-stopped").json()["state"] == "stopped"
    job = s.post(f"{base}/vms/keep-running/state", json={"state": "stop"}).json()
    assert c.wait_job(job["id"])["state"] == "succeeded"
    assert invariants.libvirt_domains(c)["hv1"]["keep-running"]["state"] == "stopped"


def test_bounded_shutdown_of_a_cooperative_guest_succeeds(cluster, api, vm_name):
    """A test-driver guest powers off at once, well within the bound (test_qemu_lifecycle covers a guest that
    ignores the request)."""
    assert cluster.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    job = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": "shutdown", "timeout": 1}).json()
    ended = cluster.wait_job(job["id"])
    assert ended["state"] == "succeeded" and ended["result"]["state"] == "stopped"


def test_long_poll_answers_when_the_job_changes(make_cluster):
    """GET /jobs/<id>?wait=&after= blocks until the job moves past the client's revision, then answers."""
    c = make_cluster([NodeSpec("hv1")], worker_env=SLOW_SESSION)
    assert c.define_vm("lp", node="hv1")["state"] == "succeeded"
    s, base = c.session(), f"{c.api_url}/api/v1"
    worker = c.workers["hv1"]
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        job = s.post(f"{base}/vms/lp/state", json={"state": "start"}).json()
        seen = s.get(f"{base}/jobs/{job['id']}").json()
        assert seen["state"] == "queued"
        quiet = s.get(f"{base}/jobs/{job['id']}", params={"wait": 0.5, "after": seen["revision"]}).json()
        assert quiet["revision"] == seen["revision"]  # nothing changed within the wait
        threading.Timer(0.5, os.kill, (worker.pid, signal.SIGCONT)).start()
        started = time.monotonic()
        changed = s.get(f"{base}/jobs/{job['id']}", params={"wait": 25, "after": seen["revision"]}).json()
        assert time.monotonic() - started < 25 and changed["revision"] > seen["revision"]
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert c.wait_job(job["id"])["state"] == "succeeded"
    bad = s.get(f"{base}/jobs/{job['id']}", params={"wait": 99})
    assert bad.status_code == 400 and "wait" in bad.json()["details"]


def test_an_engine_pass_holds_its_lease_through_a_long_step_and_cannot_extend_a_lost_one(cluster):
    """A pass about to power-cycle a node extends its lease to the cycle's bound, so another pass meanwhile only
    marks the job dirty; a pass whose lease expired and was taken by another cannot extend it (it must stop)."""
    from pvc_tasks import defaults
    from pvc_tasks.engine import extend_lease, take_lease
    from pvc_tasks.fencing import FENCE
    from pvc_tasks.jobs import Job, JobState, JobStore, commit

    store = JobStore(cluster.zk, cluster.schema)
    job = Job.new("fence", "", "", {"target": "nowhere", "why": "a lease test"}, stage=FENCE)
    commit(cluster.zk, [*store.create_ops(job)])
    try:
        assert take_lease(store, job.id, "first", False) is not None
        before = time.time()
        assert extend_lease(store, job.id, "first", 30)
        assert store.get(job.id).params["lease"]["until"] >= before + defaults.ENGINE_LEASE + 30
        assert take_lease(store, job.id, "second", False) is None
        assert store.get(job.id).params["dirty"]
        # The first holder died and its lease ran out: the second pass takes it; the first may not extend it.
        def expire(j) -> bool:
            j.params["lease"]["until"] = 0
            return True

        store.update(job.id, expire)
        assert take_lease(store, job.id, "second", False) is not None
        assert not extend_lease(store, job.id, "first", 30)
        assert store.get(job.id).params["lease"]["token"] == "second"
    finally:
        store.finish(job.id, JobState.CANCELLED, "a lease test", {}, release=False)
