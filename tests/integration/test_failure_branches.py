"""Failure branches nobody meets on a good day: the broker gone at submit, a lost task message, a duplicated step
message, a define that libvirt refuses. Each is caused for real, on real servers, and checked in libvirt too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests
from celery import Celery

from pvc_dev.cluster import NodeSpec, domain_xml
from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from pvc_tasks.routing import node_queue
from tests.conftest import BOTH_BROKERS, SLOW_SESSION, consumer, paused, task_returns


def skipped(worker, task: str, job_id: str) -> int:
    """How many ``task`` messages for the job returned without acting."""
    return sum("'state': 'skipped'" in line for line in task_returns(worker, task, job_id))


def send_duplicates(c, task: str, job_id: str, vm: str, node: str, times: int = 3) -> None:
    """Deliver ``task``'s message for the job ``times`` more, as a broker redelivery or a re-send would."""
    sender = Celery("duplicate", broker=c.broker_url)
    for _ in range(times):
        sender.send_task(task, kwargs={"job_id": job_id, "vm": vm, "node": node}, queue=node_queue(node))


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=30, **kw)


@BOTH_BROKERS
def test_broker_down_at_submit_is_accepted_and_runs_when_it_returns(make_cluster):
    """With the broker gone, a start request is still accepted (the job record is the outbox); when the broker
    returns on its port, the re-driver publishes the job and the VM runs: nothing is lost, nothing waits for ever."""
    c = make_cluster([NodeSpec("hv1")], worker_env={"PVC_REDRIVE_AFTER": "2"}, own_broker=True)
    assert c.define_vm("nobroker", node="hv1")["state"] == "succeeded"
    c.broker_service.stop()
    r = api(c, "post", "/vms/nobroker/state", json={"state": "start"})
    assert r.status_code == 202 and r.json()["state"] == "queued", r.text
    c.restart_broker(kill=False, down=1.0)
    ended = c.wait_job(r.json()["id"], timeout=60)
    assert ended["state"] == "succeeded", ended
    assert any("re-sent to node hv1's queue" in m["text"] for m in ended["messages"]), ended["messages"]
    assert libvirt_domains(c)["hv1"]["nobroker"]["state"] == "running"


@BOTH_BROKERS
def test_lost_task_message_is_re_sent_from_the_job_record(make_cluster):
    """A job whose message vanished from the broker is published again by its node's janitor and runs; the job
    says so."""
    c = make_cluster([NodeSpec("hv1")], worker_env={"PVC_REDRIVE_AFTER": "1"})
    assert c.define_vm("lost", node="hv1")["state"] == "succeeded"
    consumer(c, "hv1", on=False)
    job = api(c, "post", "/vms/lost/state", json={"state": "start"}).json()
    wait_until(lambda: c.queued("hv1"), 5, "the message in hv1's queue")
    assert c.purge("hv1") == 1  # the message is lost
    consumer(c, "hv1", on=True)
    ended = c.wait_job(job["id"], timeout=30)
    assert ended["state"] == "succeeded", ended
    assert [m["text"] for m in ended["messages"] if "re-sent" in m["text"]] == [
        "pvc.vm.start re-sent to node hv1's queue: not taken 1 s after it was published (1 of 5)"]
    assert libvirt_domains(c)["hv1"]["lost"]["state"] == "running"


@BOTH_BROKERS
def test_a_node_that_takes_nothing_fails_the_job_after_the_re_send_limit(make_cluster):
    """Every message for a job vanishes (a node whose worker lives but takes nothing): after redrive_limit re-sends
    the job fails saying so, its VM is free and unchanged in libvirt."""
    c = make_cluster([NodeSpec("hv1")], worker_env={"PVC_REDRIVE_AFTER": "1", "PVC_REDRIVE_LIMIT": "2"})
    assert c.define_vm("void", node="hv1")["state"] == "succeeded"
    consumer(c, "hv1", on=False)
    job = api(c, "post", "/vms/void/state", json={"state": "start"}).json()

    def ended() -> dict | None:
        c.purge("hv1")
        record = api(c, "get", f"/jobs/{job['id']}").json()
        return record if record["state"] != "queued" else None

    record = wait_until(ended, 30, "the job to give up")
    consumer(c, "hv1", on=True)
    assert record["state"] == "failed" and record["reason"] == (
        "step pvc.vm.start was published 3 times to node hv1's queue and never taken within 1 s: that worker is "
        "not consuming its queue"), record
    assert api(c, "get", "/vms/void").json()["active_job"] == ""
    assert libvirt_domains(c)["hv1"]["void"]["state"] == "stopped"


@BOTH_BROKERS
def test_a_message_stuck_behind_a_queue_nobody_consumes_fails_after_queue_timeout(make_cluster):
    """A queue that is not empty is behind, not lossy: nothing is re-sent, and a job queued past queue_timeout ends
    failed with that reason, freeing its VM; the stale message is ignored when consuming resumes."""
    c = make_cluster([NodeSpec("hv1")], worker_env={"PVC_QUEUE_TIMEOUT": "3", "PVC_REDRIVE_AFTER": "1"})
    assert c.define_vm("stuck", node="hv1")["state"] == "succeeded"
    consumer(c, "hv1", on=False)
    job = api(c, "post", "/vms/stuck/state", json={"state": "start"}).json()
    ended = c.wait_job(job["id"], timeout=30)
    consumer(c, "hv1", on=True)
    assert ended["state"] == "failed" and "not started within 3 s: the task message was lost" in ended["reason"]
    assert not [m for m in ended["messages"] if "re-sent" in m["text"]], ended["messages"]
    assert api(c, "get", "/vms/stuck").json()["active_job"] == ""
    wait_until(lambda: not c.queued("hv1"), 10, "the stale message taken")
    assert libvirt_domains(c)["hv1"]["stuck"]["state"] == "stopped"


@BOTH_BROKERS
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


@BOTH_BROKERS
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


def test_define_refused_by_the_node_releases_its_vfs(make_cluster, tmp_path):
    """A define the node refuses (its disk is a link, in the VM's own directory, to a host file: only the node can
    see that) fails with the node's reason, removes the VM record, and gives back the VF the define had claimed, so
    another VM can use it."""
    roots = {"PVC_XML_VM_PATHS": str(tmp_path / "vms")}
    c = make_cluster([NodeSpec("hv1")], worker_env=roots, api_env=roots)
    (tmp_path / "vms" / "badlink").mkdir(parents=True)
    (tmp_path / "vms" / "badlink" / "disk.img").symlink_to("/etc/shadow")
    vf_xml = domain_xml("badlink").replace(
        "</domain>", f"<devices><disk type='file' device='disk'><source file='{tmp_path}/vms/badlink/disk.img'/>"
                     "<target dev='vda'/></disk><interface type='direct'><source dev='ens1f0v1' mode='passthrough'/>"
                     "</interface></devices></domain>")
    r = api(c, "post", "/vms", json={"xml": vf_xml, "node": "hv1"})
    assert r.status_code == 202, r.text
    ended = c.wait_job(r.json()["id"])
    assert ended["state"] == "failed" and "xml_not_allowed on hv1" in ended["reason"], ended
    assert "leads to '/etc/shadow'" in ended["reason"], ended
    assert api(c, "get", "/vms/badlink").status_code == 404
    vf = api(c, "get", "/sriov/vfs/hv1/ens1f0v1").json()
    assert vf["used"] is False and vf["used_by"] == ""
    good = domain_xml("vfuser").replace("</domain>", "<devices><interface type='direct'><source dev='ens1f0v1' "
                                                     "mode='passthrough'/></interface></devices></domain>")
    assert c.wait_job(api(c, "post", "/vms", json={"xml": good, "node": "hv1"}).json()["id"])["state"] == "succeeded"
    assert "badlink" not in libvirt_domains(c)["hv1"]


def test_a_stuck_job_is_shown_and_raises_a_cluster_fault_until_it_ends(make_cluster):
    """A job waiting past its kind's bound shows in /health (figures only), /cluster and `pvc cluster status`, with
    the cluster fault jobs_over_bound naming it; the fault clears once the job ends."""
    env = {"PVC_JOB_BOUND": "2"}
    c = make_cluster([NodeSpec("hv1")], worker_env=env, api_env=env)
    assert c.define_vm("slow", node="hv1")["state"] == "succeeded"
    consumer(c, "hv1", on=False)  # the message waits in a queue nobody reads: behind, so never re-sent
    job = api(c, "post", "/vms/slow/state", json={"state": "start"}).json()

    def fault() -> dict | None:
        return next((f for f in api(c, "get", "/cluster").json()["faults"] if f["id"] == "jobs_over_bound"), None)

    stuck = wait_until(fault, 20, "the fault jobs_over_bound")
    assert f"start job {job['id']} of VM slow on hv1, queued for" in stuck["message"], stuck
    backlog = api(c, "get", "/cluster").json()["backlog"]
    assert backlog["queued"]["count"] == 1 and backlog["queued"]["oldest_s"] > 2, backlog
    assert [j["id"] for j in backlog["over_bound"]] == [job["id"]] and backlog["over_bound"][0]["bound_s"] == 2
    # No token; health answers the API's last look, taken every 2 s.
    health = wait_until(lambda: (h := requests.get(f"{c.api_url}/api/v1/health", timeout=10)).json()["jobs"]
                        ["over_bound"] == 1 and h, 10, "health to count the job past its bound")
    assert health.status_code == 200, health.text
    assert job["id"] not in health.text and "slow" not in health.text
    shown = subprocess.run([str(Path(sys.executable).with_name("pvc")), "cluster", "status"], capture_output=True,
                           text=True, env={**os.environ, **c.client_env()}, timeout=60)
    assert "1 past their bound (see faults)" in shown.stdout and job["id"] in shown.stdout, shown.stdout
    consumer(c, "hv1", on=True)
    assert c.wait_job(job["id"], timeout=30)["state"] == "succeeded"
    wait_until(lambda: fault() is None, 20, "the fault to clear")
    assert api(c, "get", "/cluster").json()["backlog"]["over_bound"] == []


def test_a_node_restarted_under_a_queued_migration_restores_the_vm_before_moving_it(make_cluster):
    """hv1's worker dies (its test-driver hypervisor with it, as a node reboot) while a migration of its running VM
    waits, untaken, for hv1's perform step: the new worker restores the VM as ZooKeeper recorded it, running, and
    the migration then moves it running, instead of handing over a VM the restart had stopped."""
    c = make_cluster([NodeSpec("hv1"), NodeSpec("hv2")], worker_env=SLOW_SESSION)
    assert c.define_vm("queued", node="hv1", start=True)["state"] == "succeeded"
    os.kill(c.workers["hv1"].pid, signal.SIGSTOP)
    job = api(c, "post", "/vms/queued/migrate", json={"target": "hv2"}).json()
    wait_until(lambda: json.loads(c.zk.get(f"/jobs/{job['id']}")[0])["stage"] == "pvc.migrate.perform", 10,
               "prepare on hv2")
    c.workers["hv1"].kill()  # perform's message dies with it, or waits in the queue: either way untaken
    c.start_worker("hv1")
    c.wait_worker("hv1")
    ended = c.wait_job(job["id"])
    assert ended["state"] == "succeeded", ended
    vm = api(c, "get", "/vms/queued").json()
    assert (vm["node"], vm["state"]) == ("hv2", "running"), vm
    assert {n: d.get("queued", {}).get("state") for n, d in libvirt_domains(c).items()} == \
        {"hv1": None, "hv2": "running"}
    assert "reconciled VMs of hv1: {'redefined': 1, 'restarted': 1," in c.workers["hv1"].log_path.read_text()


def test_a_vm_restored_running_at_worker_start_loses_its_old_failure_reason(make_cluster):
    """A VM whose record carries a failure reason (an earlier restore failed) and that the restarted worker
    restores running has no failure reason any more: it is what the node's libvirt now says."""
    c = make_cluster([NodeSpec("hv1")])
    assert c.define_vm("revived", node="hv1", start=True)["state"] == "succeeded"
    c.zk.set(c.schema.path("domain.failed_reason", "revived"), b"restore on worker start failed: no such network")
    c.workers["hv1"].kill()  # its test-driver hypervisor goes with it: the next worker restores the VM
    c.start_worker("hv1")
    c.wait_worker("hv1")
    vm = api(c, "get", "/vms/revived").json()
    assert (vm["state"], vm["failed_reason"]) == ("running", ""), vm
