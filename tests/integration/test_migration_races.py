"""Migration under races and failures: the VM always ends on exactly one node, with a job that says why."""

import json
import os
import signal

import pytest

from pvc_dev.cluster import NodeSpec
from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from pvc_tasks.jobs import Job, commit
from tests.conftest import SLOW_SESSION, paused, race, step_returned


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=15, **kw)


def job_record(c, job_id) -> Job:
    return Job.from_bytes(c.zk.get(c.schema.path("job", job_id))[0])


def reserved(c, node) -> dict:
    return json.loads(c.zk.get(c.schema.path("node.reserved", node))[0] or b"{}")


@pytest.fixture
def trio(make_cluster):
    return make_cluster([NodeSpec("hv1", 8192), NodeSpec("hv2", 8192), NodeSpec("hv3", 4096)],
                        worker_env=SLOW_SESSION)


def where(c, vm, *only: str) -> dict[str, str]:
    """Node -> state of ``vm`` on every node (or ``only`` these) whose libvirt has it, as the node reports."""
    return {node: domains[vm]["state"] for node, domains in libvirt_domains(c, only=only or None).items()
            if domains and vm in domains}


def test_parallel_placements_do_not_overfill_a_node(trio):
    """Two VMs racing for the last room on hv3: exactly one is placed there, the other gets no_target."""
    c = trio
    for name in ("r1", "r2"):
        assert c.define_vm(name, 2500, node="hv1", start=True)["state"] == "succeeded"
    answers = dict(race(2, lambda i: (f"r{i + 1}", api(c, "post", f"/vms/r{i + 1}/migrate", json={"target": "hv3"}))))
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
    with paused(c.workers["hv2"]):
        job = api(c, "post", "/vms/tc/migrate", json={"target": "hv2"}).json()
        assert reserved(c, "hv2") == {job["id"]: {"memory": 512, "vcpus": 1}}
        data, stat = c.zk.get(c.schema.path("job", job["id"]))
        record = Job.from_bytes(data)
        record.params["target"] = "hv3"  # another actor re-planned the move
        commit(c.zk, [("set", c.schema.path("job", job["id"]), record.to_bytes(), stat.version)])
    ended = c.wait_job(job["id"])
    assert ended["state"] == "failed" and "target changed" in ended["reason"], ended
    vm = api(c, "get", "/vms/tc").json()
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hv1", "running", "")
    assert reserved(c, "hv2") == {}
    assert where(c, "tc") == {"hv1": "running"}


def test_cancel_while_queued_and_while_running(trio):
    """Cancel of a queued migration releases everything at once; cancel before perform rolls back to S."""
    c = trio
    assert c.define_vm("cx", 256, node="hv1", start=True)["state"] == "succeeded"
    target, source = c.workers["hv2"], c.workers["hv1"]
    with paused(target):
        job = api(c, "post", "/vms/cx/migrate", json={"target": "hv2"}).json()
        cancelled = api(c, "post", f"/jobs/{job['id']}/cancel").json()
        assert cancelled["state"] == "cancelled"
        assert reserved(c, "hv2") == {} and api(c, "get", "/vms/cx").json()["active_job"] == ""
    with paused(source):  # prepare runs on hv2 (which defines its copy), perform waits in hv1's queue
        job = api(c, "post", "/vms/cx/migrate", json={"target": "hv2"}).json()
        wait_until(lambda: job_record(c, job["id"]).stage == "pvc.migrate.perform", 6, "prepare to finish")
        assert where(c, "cx", "hv2") == {"hv2": "stopped"}  # the copy the rollback must remove (hv1 is paused)
        assert api(c, "post", f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    ended = c.wait_job(job["id"])
    assert ended["state"] == "cancelled" and "cancelled by request" in ended["reason"], ended
    vm = api(c, "get", "/vms/cx").json()
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hv1", "running", "")
    assert reserved(c, "hv2") == {}
    assert where(c, "cx") == {"hv1": "running"}  # hv2's copy is gone: the rollback removed it
    again = c.wait_job(api(c, "post", "/vms/cx/migrate", json={"target": "hv2"}).json()["id"])
    assert again["state"] == "succeeded"
    assert where(c, "cx") == {"hv2": "running"}


def test_target_worker_killed_mid_migration(trio):
    """kill -9 of T's worker after the VM left S: the janitor rolls back, the VM runs on S again, the job says why."""
    c = trio
    assert c.define_vm("kx", 256, node="hv1", start=True)["state"] == "succeeded"
    source, target = c.workers["hv1"], c.workers["hv2"]
    with paused(source):
        job = api(c, "post", "/vms/kx/migrate", json={"target": "hv2"}).json()
        # Not only the stage: prepare's task must have returned, i.e. sent perform's message, before hv2 stops.
        wait_until(lambda: step_returned(target, "pvc.migrate.prepare", job["id"]), 6, "prepare on hv2")
        os.kill(target.pid, signal.SIGSTOP)  # finish will wait in hv2's queue; hv2 is killed below
    wait_until(lambda: job_record(c, job["id"]).stage == "pvc.migrate.finish", 20, "perform on hv1")
    assert api(c, "get", "/nodes/hv1").json()["vms"]["running"] == 0  # the VM left hv1 (hand-over)
    target.kill()
    ended = c.wait_job(job["id"], timeout=60)
    assert ended["state"] == "failed" and "hv2's worker is not running" in ended["reason"], ended
    assert "restarted on hv1" in ended["reason"]
    vm = api(c, "get", "/vms/kx").json()
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hv1", "running", "")
    assert where(c, "kx") == {"hv1": "running"}  # hv2's test-driver state died with its worker
    assert reserved(c, "hv2") == {}


def test_source_worker_killed_before_perform(trio):
    """kill -9 of S's worker while perform waits: the job fails with the reason and nothing stays reserved."""
    c = trio
    assert c.define_vm("sx", 256, node="hv1", start=True)["state"] == "succeeded"
    source = c.workers["hv1"]
    os.kill(source.pid, signal.SIGSTOP)  # perform waits in hv1's queue; hv1 is killed below
    job = api(c, "post", "/vms/sx/migrate", json={"target": "hv2"}).json()
    wait_until(lambda: job_record(c, job["id"]).stage == "pvc.migrate.perform", 6, "prepare on hv2")
    source.kill()
    ended = c.wait_job(job["id"], timeout=60)
    assert ended["state"] == "failed" and "hv1's worker is not running" in ended["reason"], ended
    assert reserved(c, "hv2") == {}
    vm = api(c, "get", "/vms/sx").json()
    assert vm["node"] == "hv1" and vm["active_job"] == ""
    c.start_worker("hv1")
    c.wait_worker("hv1")
    assert api(c, "get", "/vms/sx").json()["state"] == "running"
    assert where(c, "sx") == {"hv1": "running"}  # restored from ZooKeeper by the reconciler; no copy on hv2


def migrate_until_only_cleanup_is_left(c, vm: str) -> dict:
    """Migrate ``vm`` hv1 -> hv2 step by step until the commit on hv2 is done and only the cleanup is left, waiting
    in hv1's queue; hv1's worker is left STOPPED (SIGSTOP) for the caller to kill or resume. Returns the job."""
    source, target = c.workers["hv1"], c.workers["hv2"]
    with paused(source):  # perform waits in hv1's queue
        job = api(c, "post", f"/vms/{vm}/migrate", json={"target": "hv2"}).json()
        wait_until(lambda: step_returned(target, "pvc.migrate.prepare", job["id"]), 6, "prepare on hv2")
        os.kill(target.pid, signal.SIGSTOP)  # finish will wait in hv2's queue
    try:
        wait_until(lambda: step_returned(source, "pvc.migrate.perform", job["id"]), 6, "perform on hv1")
        os.kill(source.pid, signal.SIGSTOP)  # cleanup will wait in hv1's queue
    finally:
        os.kill(target.pid, signal.SIGCONT)
    try:
        wait_until(lambda: step_returned(target, "pvc.migrate.finish", job["id"]), 6, "the commit on hv2")
    except BaseException:
        os.kill(source.pid, signal.SIGCONT)
        raise
    return job


def test_source_dead_before_cleanup_commits_and_defers_the_cleanup(trio):
    """S dies after the commit on T, with only its cleanup left: the migration has happened, so the janitor ends the
    job succeeded with the cleanup deferred, and the VM runs on T alone (S's copy went with S's worker)."""
    c = trio
    assert c.define_vm("cl", 256, node="hv1", start=True)["state"] == "succeeded"
    job = migrate_until_only_cleanup_is_left(c, "cl")
    c.workers["hv1"].kill()
    ended = c.wait_job(job["id"], timeout=60)
    assert ended["state"] == "succeeded", (ended["reason"], ended["messages"])
    notes = [m["text"] for m in ended["messages"]]
    assert any("cleanup on hv1 deferred: node hv1's worker is not running" in n for n in notes), notes
    vm = api(c, "get", "/vms/cl").json()
    assert (vm["node"], vm["last_node"], vm["state"], vm["active_job"]) == ("hv2", "hv1", "running", "")
    assert where(c, "cl") == {"hv2": "running"}
    c.start_worker("hv1")
    c.wait_worker("hv1")
    assert where(c, "cl") == {"hv2": "running"}  # the returning source does not bring its copy back


def test_cancel_after_the_commit_is_too_late(trio):
    """A cancel that arrives while only S's cleanup is left: the VM is already committed on T, so the job
    succeeds and the cleanup still removes S's copy (it used to end "cancelled" and leave S's copy defined)."""
    c = trio
    assert c.define_vm("late", 256, node="hv1", start=True)["state"] == "succeeded"
    job = migrate_until_only_cleanup_is_left(c, "late")
    try:
        assert api(c, "post", f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    finally:
        os.kill(c.workers["hv1"].pid, signal.SIGCONT)
    ended = c.wait_job(job["id"])
    assert ended["state"] == "succeeded", (ended["reason"], ended["messages"])
    assert where(c, "late") == {"hv2": "running"}
