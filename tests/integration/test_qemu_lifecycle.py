"""Lifecycle jobs on a node with real QEMU guests (libvirt's embedded QEMU driver inside the worker)."""

import pytest

from pvc_dev.cluster import NodeSpec
from pvc_dev.guests import qemu_domain_xml
from pvc_dev.services import wait_until


@pytest.fixture(scope="module")
def qemu_cluster(shared_cluster):
    return shared_cluster("qemu", [NodeSpec("hvq", hypervisor="qemu-embed")])


def test_shutdown_ignored_by_the_guest_fails_after_its_bound_when_force_is_off(qemu_cluster):
    """A guest that ignores ACPI, with shutdown_force off: shutdown fails after its timeout with a reason and the VM
    keeps running; stop then forces it off."""
    c = qemu_cluster
    assert c.define_vm("guest1", node="hvq", start=True, xml=qemu_domain_xml("guest1"))["state"] == "succeeded"
    s, base = c.session(), f"{c.api_url}/api/v1"
    assert s.get(f"{base}/vms/guest1").json()["state"] == "running"
    assert s.put(f"{base}/vms/guest1/meta", json={"shutdown_force": False}).json()["meta"]["shutdown_force"] is False
    job = s.post(f"{base}/vms/guest1/state", json={"state": "shutdown", "timeout": 2}).json()
    ended = c.wait_job(job["id"])
    assert ended["state"] == "failed"
    assert "did not shut down within 2 s and is still running" in ended["reason"]
    assert ended["percent"] < 100
    vm = s.get(f"{base}/vms/guest1").json()
    assert vm["state"] == "running" and vm["active_job"] == "" and "did not shut down" in vm["failed_reason"]

    restart = c.wait_job(s.post(f"{base}/vms/guest1/state", json={"state": "restart", "timeout": 1}).json()["id"])
    assert restart["state"] == "failed" and "still running" in restart["reason"]

    stop = c.wait_job(s.post(f"{base}/vms/guest1/state", json={"state": "stop"}).json()["id"])
    assert stop["state"] == "succeeded"
    vm = s.get(f"{base}/vms/guest1").json()
    assert vm["state"] == "stopped" and vm["failed_reason"] == ""
    undefine = c.wait_job(s.delete(f"{base}/vms/guest1").json()["id"])
    assert undefine["state"] == "succeeded"


def test_shutdown_ignored_by_the_guest_forces_it_off_after_its_bound(qemu_cluster):
    """By default (as PVC), a guest that ignores ACPI is forced off once the timeout has passed, and the shutdown
    and restart jobs say so; with the cluster's setting off, the VM's own meta still forces it."""
    c = qemu_cluster
    assert c.define_vm("guest2", node="hvq", start=True, xml=qemu_domain_xml("guest2"))["state"] == "succeeded"
    s, base = c.session(), f"{c.api_url}/api/v1"
    assert s.get(f"{base}/cluster").json()["shutdown_force"] is True
    restart = c.wait_job(s.post(f"{base}/vms/guest2/state", json={"state": "restart", "timeout": 1}).json()["id"])
    assert restart["state"] == "succeeded" and restart["result"]["forced"] is True, restart
    assert s.get(f"{base}/vms/guest2").json()["state"] == "running"
    assert s.put(f"{base}/cluster/shutdown_force", json={"shutdown_force": False}).status_code == 200
    try:
        assert s.put(f"{base}/vms/guest2/meta", json={"shutdown_force": True}).status_code == 200
        job = c.wait_job(s.post(f"{base}/vms/guest2/state", json={"state": "shutdown", "timeout": 2}).json()["id"])
    finally:
        assert s.put(f"{base}/cluster/shutdown_force", json={"shutdown_force": True}).status_code == 200
    assert job["state"] == "succeeded" and job["result"]["forced"] is True, job
    assert any("did not shut down within 2 s: forced off" in m["text"] for m in job["messages"]), job["messages"]
    vm = s.get(f"{base}/vms/guest2").json()
    assert (vm["state"], vm["failed_reason"]) == ("stopped", "")
    assert c.wait_job(s.delete(f"{base}/vms/guest2").json()["id"])["state"] == "succeeded"


def test_stop_during_a_shutdown_supersedes_it(qemu_cluster):
    """vm stop while a shutdown job waits for a guest that ignores ACPI: accepted at once (no 409); the shutdown
    job ends cancelled naming the stop job, which forces the VM off."""
    c = qemu_cluster
    assert c.define_vm("guest3", node="hvq", start=True, xml=qemu_domain_xml("guest3"))["state"] == "succeeded"
    s, base = c.session(), f"{c.api_url}/api/v1"
    shutdown = s.post(f"{base}/vms/guest3/state", json={"state": "shutdown", "timeout": 120}).json()
    wait_until(lambda: s.get(f"{base}/jobs/{shutdown['id']}").json()["phase"] == "shutdown", 30,
               "the shutdown to wait for the guest")
    r = s.post(f"{base}/vms/guest3/state", json={"state": "stop"})
    assert r.status_code == 202, r.text
    stop = c.wait_job(r.json()["id"])
    assert stop["state"] == "succeeded", stop
    ended = c.wait_job(shutdown["id"])
    assert ended["state"] == "cancelled" and f"superseded by `vm stop` (job {stop['id']})" in ended["reason"], ended
    vm = s.get(f"{base}/vms/guest3").json()
    assert (vm["state"], vm["active_job"]) == ("stopped", "")
    assert c.wait_job(s.delete(f"{base}/vms/guest3").json()["id"])["state"] == "succeeded"


def test_flush_with_no_target_forces_an_acpi_deaf_guest_off_and_succeeds(qemu_cluster):
    """Flushing the only node with allow_shutdown: the guest that ignores ACPI is forced off after the timeout, the
    flush succeeds (the node runs nothing), and ready starts the guest again."""
    c = qemu_cluster
    assert c.define_vm("guest4", node="hvq", start=True, xml=qemu_domain_xml("guest4"))["state"] == "succeeded"
    s, base = c.session(), f"{c.api_url}/api/v1"
    refused = s.post(f"{base}/nodes/hvq/flush")
    assert refused.status_code == 409 and refused.json()["details"]["vms"] == ["guest4"], refused.text
    flush = c.wait_job(s.post(f"{base}/nodes/hvq/flush", json={"allow_shutdown": True}).json()["id"], timeout=120)
    assert flush["state"] == "succeeded", flush
    child = s.get(f"{base}/jobs", params={"parent": flush["id"]}).json()[0]
    assert child["kind"] == "shutdown" and child["result"]["forced"] is True, child
    assert s.get(f"{base}/nodes/hvq").json()["domain_state"] == "flushed"
    vm = s.get(f"{base}/vms/guest4").json()
    assert (vm["state"], vm["meta"]["autostart"]) == ("stopped", True)
    back = c.wait_job(s.post(f"{base}/nodes/hvq/ready").json()["id"], timeout=120)
    assert back["state"] == "succeeded", back
    vm = s.get(f"{base}/vms/guest4").json()
    assert (vm["state"], vm["meta"]["autostart"]) == ("running", False)
    assert c.wait_job(s.post(f"{base}/vms/guest4/state", json={"state": "stop"}).json()["id"])["state"] == "succeeded"
    assert c.wait_job(s.delete(f"{base}/vms/guest4").json()["id"])["state"] == "succeeded"
