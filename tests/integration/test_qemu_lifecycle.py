"""Lifecycle jobs on a node with real QEMU guests (libvirt's embedded QEMU driver inside the worker)."""

import pytest

from pvc_dev.cluster import NodeSpec
from pvc_dev.guests import qemu_domain_xml


@pytest.fixture(scope="module")
def qemu_cluster(shared_cluster):
    return shared_cluster("qemu", [NodeSpec("hvq", hypervisor="qemu-embed")])


def test_shutdown_ignored_by_the_guest_fails_after_its_bound(qemu_cluster):
    """A guest that ignores ACPI: shutdown fails after its timeout with a reason and the VM keeps running;
    stop then forces it off."""
    c = qemu_cluster
    assert c.define_vm("guest1", node="hvq", start=True, xml=qemu_domain_xml("guest1"))["state"] == "succeeded"
    s, base = c.session(), f"{c.api_url}/api/v1"
    assert s.get(f"{base}/vms/guest1").json()["state"] == "running"
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
