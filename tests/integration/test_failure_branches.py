"""Failure branches nobody meets on a good day: the broker gone at submit, a lost task message, a duplicated step
message, a define that libvirt refuses. Each is caused for real, on real servers, and checked in libvirt too."""

from __future__ import annotations

import json

import pytest
import redis
from celery import Celery

from pvc_dev.cluster import NodeSpec, domain_xml
from pvc_dev.invariants import libvirt_domains, zk_state
from pvc_dev.services import wait_until
from pvc_tasks.routing import node_queue
from tests.conftest import SLOW_SESSION, paused, task_returns


def skipped(worker, task: str, job_id: str) -> int:
    """How many ``task`` messages for the job returned without acting."""
    return sum("'state': 'skipped'" in line for line in task_returns(worker, task, job_id))


def send_duplicates(c, task: str, job_id: str, vm: str, node: str, times: int = 3) -> None:
    """Deliver ``task``'s message for the job ``times`` more, as a broker redelivery or a re-send would."""
    sender = Celery("duplicate", broker=c.redis_url)
    for _ in range(times):
        sender.send_task(task, kwargs={"job_id": job_id, "vm": vm, "node": node}, queue=node_queue(node))


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=30, **kw)


@pytest.mark.invariants_broken("Redis stays stopped: the nodes' libvirt cannot be asked through their workers")
def test_broker_down_at_submit_is_503_and_changes_nothing(make_cluster):
    """With Redis gone, a start request is 503 broker_unavailable, the VM keeps no marker and its state, and the
    job created for it is recorded failed with the reason (nothing waits for a message that was never sent)."""
    c = make_cluster([NodeSpec("hv1")])
    assert c.define_vm("nobroker", node="hv1")["state"] == "succeeded"
    jobs_before = set(c.zk.get_children("/jobs"))
    before = {p: d for p, d in zk_state(c.zk).items() if not p.startswith("/jobs")}
    c.redis.stop()
    r = api(c, "post", "/vms/nobroker/state", json={"state": "start"})
    assert r.status_code == 503 and r.json()["error"] == "broker_unavailable", r.text
    assert {p: d for p, d in zk_state(c.zk).items() if not p.startswith("/jobs")} == before
    (new,) = set(c.zk.get_children("/jobs")) - jobs_before
    job = json.loads(c.zk.get(f"/jobs/{new}")[0])
    assert job["state"] == "failed" and "could not enqueue: broker unreachable" in job["reason"]


def test_lost_task_message_fails_the_job_after_queue_timeout(make_cluster):
    """A job whose message vanished from Redis ends failed after queue_timeout with that reason, freeing its VM; the
    VM stays as it was in libvirt."""
    c = make_cluster([NodeSpec("hv1")], worker_env={**SLOW_SESSION, "PVC_QUEUE_TIMEOUT": "3"})
    assert c.define_vm("lost", node="hv1")["state"] == "succeeded"
    broker = redis.Redis.from_url(c.redis_url)
    with paused(c.workers["hv1"]):
        # The paused worker's pending BRPOP would still take the message; wait until Redis gave up on it.
        wait_until(lambda: broker.info("clients")["blocked_clients"] == 0, 5, "no blocked consumer")
        job = api(c, "post", "/vms/lost/state", json={"state": "start"}).json()
        queued = [k for k in broker.keys("node.hv1*") if broker.type(k) == b"list" and broker.llen(k)]
        assert len(queued) == 1 and broker.llen(queued[0]) == 1, queued
        broker.delete(queued[0])  # the message is lost
    ended = c.wait_job(job["id"], timeout=30)
    assert ended["state"] == "failed" and "not started within 3 s: the task message was lost" in ended["reason"]
    assert api(c, "get", "/vms/lost").json()["active_job"] == ""
    assert libvirt_domains(c)["hv1"]["lost"]["state"] == "stopped"


def test_duplicated_step_message_runs_the_step_once(make_cluster):
    """A migration's perform message delivered four times while the job waits for it: the step runs once, the VM
    ends on the target only, and each duplicate is logged as stale."""
    c = make_cluster([NodeSpec("hv1"), NodeSpec("hv2")], worker_env=SLOW_SESSION)
    assert c.define_vm("dup", node="hv1", start=True)["state"] == "succeeded"
    with paused(c.workers["hv1"]):  # perform waits in hv1's queue
        job = api(c, "post", "/vms/dup/migrate", json={"target": "hv2"}).json()
        wait_until(lambda: json.loads(c.zk.get(f"/jobs/{job['id']}")[0])["stage"] == "pvc.migrate.perform", 6,
                   "prepare on hv2")
        # Four messages for one step, taken by the pool's threads at the same moment.
        send_duplicates(c, "pvc.migrate.perform", job["id"], "dup", "hv1")
    ended = c.wait_job(job["id"])
    assert ended["state"] == "succeeded", ended
    wait_until(lambda: skipped(c.workers["hv1"], "pvc.migrate.perform", job["id"]) == 3, 15,
               "the three duplicates to be ignored")
    assert sum("is now on hv2" in m["text"] for m in ended["messages"]) == 1  # finish committed once
    assert {n: d.get("dup", {}).get("state") for n, d in libvirt_domains(c).items()} == \
        {"hv1": None, "hv2": "running"}


def test_duplicated_job_message_runs_the_job_once(make_cluster):
    """A start job's message delivered four times at once (all reach the paused worker's pool together): exactly
    one claims the job and runs it; the others are ignored."""
    c = make_cluster([NodeSpec("hv1")], worker_env=SLOW_SESSION)
    assert c.define_vm("dupstart", node="hv1")["state"] == "succeeded"
    with paused(c.workers["hv1"]):
        job = api(c, "post", "/vms/dupstart/state", json={"state": "start"}).json()
        send_duplicates(c, "pvc.vm.start", job["id"], "dupstart", "hv1")
    ended = c.wait_job(job["id"])
    assert ended["state"] == "succeeded", ended
    wait_until(lambda: skipped(c.workers["hv1"], "pvc.vm.start", job["id"]) == 3, 15,
               "the three duplicates to be ignored")
    assert [m["text"] for m in ended["messages"]].count("starting dupstart on hv1") == 1
    assert libvirt_domains(c)["hv1"]["dupstart"]["state"] == "running"


def test_define_refused_by_libvirt_releases_its_vfs(make_cluster):
    """A define whose XML libvirt refuses fails with libvirt's reason, removes the VM record, and gives back the VF
    the define had claimed, so another VM can use it."""
    c = make_cluster([NodeSpec("hv1")])
    vf_xml = (domain_xml("badarch").replace("arch='x86_64'", "arch='nosuch'")
              .replace("</domain>", "<devices><interface type='direct'><source dev='ens1f0v1' mode='passthrough'/>"
                                    "</interface></devices></domain>"))
    r = api(c, "post", "/vms", json={"xml": vf_xml, "node": "hv1"})
    assert r.status_code == 202, r.text
    ended = c.wait_job(r.json()["id"])
    assert ended["state"] == "failed" and "nosuch" in ended["reason"], ended
    assert api(c, "get", "/vms/badarch").status_code == 404
    vf = api(c, "get", "/sriov/vfs/hv1/ens1f0v1").json()
    assert vf["used"] is False and vf["used_by"] == ""
    good = domain_xml("vfuser").replace("</domain>", "<devices><interface type='direct'><source dev='ens1f0v1' "
                                                     "mode='passthrough'/></interface></devices></domain>")
    assert c.wait_job(api(c, "post", "/vms", json={"xml": good, "node": "hv1"}).json()["id"])["state"] == "succeeded"
    assert "badarch" not in libvirt_domains(c)["hv1"]
