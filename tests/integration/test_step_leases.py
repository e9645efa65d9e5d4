"""Claimed steps are bounded too (pvc_tasks.leases): a step stuck in a hypervisor call that does not return has its
job ended with the reason, and what the call did is recorded when it comes back. Real QEMU behind its own libvirtd,
whose launcher (the subreaper that reaps its QEMUs, ``pvc_dev.subreaper``) the test freezes with SIGSTOP: libvirt
then waits for an exited QEMU to be reaped, so a destroy, or the end of a live migration, hangs until it resumes."""

import os
import signal

from pvc_dev.cluster import NodeSpec
from pvc_dev.guests import qemu_domain_xml
from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from tests.integration.test_migration_qemu import QEMU_NODES, qemu_pid, start_busy_guest


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=15, **kw)


def faults(c, node: str) -> dict[str, str]:
    return {f["id"]: f["message"] for f in api(c, "get", f"/nodes/{node}").json()["faults"]}


def test_a_step_stuck_in_a_hung_libvirt_call_ends_its_job_and_is_settled_when_the_call_returns(make_cluster):
    """libvirtd's reaper frozen under a stop job: 2 s without progress end the job failed with the reason and free
    the VM, the node shows the fault step_hung; once the reaper resumes, the forced-off VM is recorded stopped, as
    libvirt says, and the fault clears."""
    c = make_cluster([NodeSpec("hq1", hypervisor="qemu")], worker_env={"PVC_STEP_LEASE": "2"})
    assert c.define_vm("hang", node="hq1", start=True, xml=qemu_domain_xml("hang"))["state"] == "succeeded"
    libvirtd = c.libvirtds["hq1"]
    os.kill(libvirtd.pid, signal.SIGSTOP)
    try:
        job = api(c, "post", "/vms/hang/state", json={"state": "stop"}).json()
        ended = c.wait_job(job["id"], timeout=30)
        assert ended["state"] == "failed", ended
        assert ended["reason"] == ("step pvc.vm.stop showed no progress for 2 s on node hq1 (a thread stuck in a "
                                   "hypervisor call that does not return)")
        assert api(c, "get", "/vms/hang").json()["active_job"] == ""
        hung = wait_until(lambda: faults(c, "hq1").get("step_hung"), 10, "the step_hung fault")
        assert f"step pvc.vm.stop of job {job['id']}" in hung
    finally:
        os.kill(libvirtd.pid, signal.SIGCONT)
    wait_until(lambda: "step_hung" not in faults(c, "hq1"), 30, "the stuck thread to return")
    settled = api(c, "get", f"/jobs/{job['id']}").json()
    assert "step pvc.vm.stop returned late; hang is stopped on hq1, as now recorded" in \
        [m["text"] for m in settled["messages"]], settled["messages"]
    assert api(c, "get", "/vms/hang").json()["state"] == "stopped"
    assert libvirt_domains(c)["hq1"]["hang"]["state"] == "stopped"


def test_a_live_migration_whose_source_libvirt_hangs_restarts_the_worker_and_is_rolled_back(make_cluster):
    """The source's libvirtd frozen while a live migration is in flight (its reaper stopped: libvirt waits for the
    QEMU that left to be reaped, as for a hung process): the step's calls hang, the lease lapses,
    and instead of a rollback racing the migration, hq1's worker restarts itself (node fault step_hung, exit 75);
    once libvirtd resumes, the new worker's reconcile rolls the migration back or forward from what each libvirt
    says, and the VM runs on exactly one node, where ZooKeeper places it."""
    c = make_cluster(QEMU_NODES, worker_env={"PVC_MIGRATION_BANDWIDTH": "1", "PVC_STEP_LEASE": "2"})
    start_busy_guest(c, "frozen", "hq1")  # at 1 MiB/s its writes keep the migration in flight for minutes
    job = api(c, "post", "/vms/frozen/migrate", json={"target": "hq2", "method": "live"}).json()
    wait_until(lambda: any(m["text"].startswith("live-migrating") for m in
                           api(c, "get", f"/jobs/{job['id']}").json()["messages"]), 30, "the live migration")
    libvirtd = c.libvirtds["hq1"]
    os.kill(libvirtd.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: c.restarts.get("hq1"), 30, "hq1's worker to restart itself")
        wait_until(lambda: c.workers["hq1"].alive(), 10, "the supervisor to start a new worker")
    finally:
        os.kill(libvirtd.pid, signal.SIGCONT)
    ended = c.wait_job(job["id"], timeout=120)
    notes = [m["text"] for m in ended["messages"]]
    assert any("showed no progress for 2 s on node hq1" in t and "restarts itself" in t for t in notes), notes
    assert "exited by itself (status 75)" in (c.workdir / "supervisor.log").read_text()
    vm = api(c, "get", "/vms/frozen").json()
    assert vm["state"] == "running" and vm["active_job"] == "", (ended["state"], ended["reason"], vm)
    running = {n for n in ("hq1", "hq2") if qemu_pid(c, n, "frozen")}
    assert running == {vm["node"]}, (running, vm["node"], ended["reason"])
    print(f"\nmigration {ended['state']} ({ended['reason'] or 'rolled forward'}); the VM runs on {vm['node']}")
