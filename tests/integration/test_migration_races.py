"""Migration under races and failures: the VM always ends on exactly one node, with a job that says why."""

import json
import os
import signal
import threading

import pytest

from pvc_dev.cluster import NodeSpec, domain_xml
from pvc_dev.services import wait_until
from pvc_tasks.jobs import Job, commit


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=15, **kw)


def job_record(c, job_id) -> Job:
    return Job.from_bytes(c.zk.get(c.schema.path("job", job_id))[0])


def reserved(c, node) -> dict:
    return json.loads(c.zk.get(c.schema.path("node.reserved", node))[0] or b"{}")


@pytest.fixture
def trio(make_cluster):
    c = make_cluster([NodeSpec("hv1", 8192), NodeSpec("hv2", 8192), NodeSpec("hv3", 4096)])
    return c


def test_parallel_placements_do_not_overfill_a_node(trio):
    """Two VMs racing for the last room on hv3: exactly one is placed there, the other gets no_target."""
    c = trio
    for name in ("r1", "r2"):
        assert c.define_vm(name, 2500, node="hv1", start=True)["state"] == "succeeded"
    barrier, answers = threading.Barrier(2), {}

    def request(name):
        barrier.wait()
        answers[name] = api(c, "post", f"/vms/{name}/migrate", json={"target": "hv3"})

    threads = [threading.Thread(target=request, args=(n,)) for n in ("r1", "r2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(a.status_code for a in answers.values())
    assert codes == [202, 409], {n: a.text for n, a in answers.items()}
    loser = next(a.json() for a in answers.values() if a.status_code == 409)
    assert loser["error"] == "no_target"
    winner = next(a.json() for a in answers.values() if a.status_code == 202)
    assert c.wait_job(winner["id"])["state"] == "succeeded"
    assert reserved(c, "hv3") == {}


def test_target_change_while_waiting_aborts_cleanly(trio):
    """If the job's recorded target changes while its first step waits, the job aborts and the VM stays on S."""
    c = trio
    assert c.define_vm("tc", 512, node="hv1", start=True)["state"] == "succeeded"
    t = c.workers["hv2"]
    os.kill(t.pid, signal.SIGSTOP)
    try:
        job = api(c, "post", "/vms/tc/migrate", json={"target": "hv2"}).json()
        assert reserved(c, "hv2") == {job["id"]: {"memory": 512, "vcpus": 1}}
        data, stat = c.zk.get(c.schema.path("job", job["id"]))
        record = Job.from_bytes(data)
        record.params["target"] = "hv3"  # another actor re-planned the move
        commit(c.zk, [("set", c.schema.path("job", job["id"]), record.to_bytes(), stat.version)])
    finally:
        os.kill(t.pid, signal.SIGCONT)
    ended = c.wait_job(job["id"])
    assert ended["state"] == "failed" and "target changed" in ended["reason"], ended
    vm = api(c, "get", "/vms/tc").json()
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hv1", "running", "")
    assert reserved(c, "hv2") == {}


def test_cancel_while_queued_and_while_running(trio):
    """Cancel of a queued migration releases everything at once; cancel before perform rolls back to S."""
    c = trio
    assert c.define_vm("cx", 256, node="hv1", start=True)["state"] == "succeeded"
    target, source = c.workers["hv2"], c.workers["hv1"]
    os.kill(target.pid, signal.SIGSTOP)
    try:
        job = api(c, "post", "/vms/cx/migrate", json={"target": "hv2"}).json()
        cancelled = api(c, "post", f"/jobs/{job['id']}/cancel").json()
        assert cancelled["state"] == "cancelled"
        assert reserved(c, "hv2") == {} and api(c, "get", "/vms/cx").json()["active_job"] == ""
    finally:
        os.kill(target.pid, signal.SIGCONT)

    os.kill(source.pid, signal.SIGSTOP)  # prepare runs on hv2, perform waits in hv1's queue
    try:
        job = api(c, "post", "/vms/cx/migrate", json={"target": "hv2"}).json()
        wait_until(lambda: job_record(c, job["id"]).stage == "pvc.migrate.perform", 20, "prepare to finish")
        assert api(c, "post", f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    finally:
        os.kill(source.pid, signal.SIGCONT)
    ended = c.wait_job(job["id"])
    assert ended["state"] == "cancelled" and "cancelled by request" in ended["reason"], ended
    vm = api(c, "get", "/vms/cx").json()
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hv1", "running", "")
    assert reserved(c, "hv2") == {}
    again = c.wait_job(api(c, "post", "/vms/cx/migrate", json={"target": "hv2"}).json()["id"])
    assert again["state"] == "succeeded"  # hv2's leftover copy was removed by the rollback


def test_target_worker_killed_mid_migration(trio):
    """kill -9 of T's worker after the VM left S: the janitor rolls back, the VM runs on S again, the job says why."""
    c = trio
    assert c.define_vm("kx", 256, node="hv1", start=True)["state"] == "succeeded"
    source, target = c.workers["hv1"], c.workers["hv2"]
    os.kill(source.pid, signal.SIGSTOP)
    try:
        job = api(c, "post", "/vms/kx/migrate", json={"target": "hv2"}).json()
        wait_until(lambda: job_record(c, job["id"]).stage == "pvc.migrate.perform", 20, "prepare on hv2")
        os.kill(target.pid, signal.SIGSTOP)
    finally:
        os.kill(source.pid, signal.SIGCONT)
    wait_until(lambda: job_record(c, job["id"]).stage == "pvc.migrate.finish", 20, "perform on hv1")
    assert api(c, "get", "/nodes/hv1").json()["vms"]["running"] == 0  # the VM left hv1 (hand-over)
    target.kill()
    ended = c.wait_job(job["id"], timeout=60)
    assert ended["state"] == "failed" and "hv2's worker is not running" in ended["reason"], ended
    assert "restarted on hv1" in ended["reason"]
    vm = api(c, "get", "/vms/kx").json()
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hv1", "running", "")
    assert api(c, "get", "/nodes/hv1").json()["vms"]["running"] == 1
    assert reserved(c, "hv2") == {}


def test_source_worker_killed_before_perform(trio):
    """kill -9 of S's worker while perform waits: the job fails with the reason and nothing stays reserved."""
    c = trio
    assert c.define_vm("sx", 256, node="hv1", start=True)["state"] == "succeeded"
    source = c.workers["hv1"]
    os.kill(source.pid, signal.SIGSTOP)
    job = api(c, "post", "/vms/sx/migrate", json={"target": "hv2"}).json()
    wait_until(lambda: job_record(c, job["id"]).stage == "pvc.migrate.perform", 20, "prepare on hv2")
    source.kill()
    ended = c.wait_job(job["id"], timeout=60)
    assert ended["state"] == "failed" and "hv1's worker is not running" in ended["reason"], ended
    assert reserved(c, "hv2") == {}
    vm = api(c, "get", "/vms/sx").json()
    assert vm["node"] == "hv1" and vm["active_job"] == ""
    c.start_worker("hv1")
    c.wait_worker("hv1")
    assert api(c, "get", "/vms/sx").json()["state"] == "running"  # restored from ZooKeeper by the reconciler
    _ = domain_xml
