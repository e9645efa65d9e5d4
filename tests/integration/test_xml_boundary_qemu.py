"""The host boundary on a node with real QEMU (libvirt's embedded QEMU driver in the worker): each dangerous
document of the table is refused at the API, and, written straight into ZooKeeper as a define job, refused by the
node with ``xml_not_allowed`` before QEMU's libvirt ever sees it; an ordinary guest is still defined and run."""

from pathlib import Path

import pytest

from pvc_dev.cluster import NodeSpec
from pvc_dev.guests import qemu_domain_xml
from pvc_dev.invariants import libvirt_domains
from tests.integration.test_xml_boundary import REFUSED, plant_define
from tests.xml_cases import case_xml

#: A PCI device this machine has (the table names one of the simulated NICs' PFs, which only test nodes have).
_PCI = sorted(p.name for p in Path("/sys/bus/pci/devices").iterdir()) if Path("/sys/bus/pci/devices").exists() else []


@pytest.fixture(scope="module")
def qemu_cluster(shared_cluster):
    return shared_cluster("xmlq", [NodeSpec("hvq", hypervisor="qemu-embed")])


def on_this_host(xml: str) -> str:
    """The table's document for a QEMU node of this machine: a QEMU domain, the host NIC ``lo`` where the table
    names a simulated PF, and a PCI device that exists here where it names the simulated one."""
    xml = xml.replace("type='test'", "type='qemu'").replace("'ens1f0'", "'lo'")
    if _PCI:
        domain, bus, rest = _PCI[0].split(":")
        slot, function = rest.split(".")
        xml = xml.replace("domain='0' bus='0x3b' slot='0' function='0'",
                          f"domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'")
    return xml


@pytest.mark.parametrize("case_id,parts,expected,needle", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_qemu_node_refuses_each_dangerous_document(qemu_cluster, vm_name, case_id, parts, expected, needle):
    """400 at the API; planted in ZooKeeper, the define fails ``xml_not_allowed on hvq`` and QEMU's libvirt has no
    such domain."""
    c = qemu_cluster
    xml = on_this_host(case_xml(case_id, parts, vm_name))
    r = c.session().post(f"{c.api_url}/api/v1/vms", json={"xml": xml, "node": "hvq"}, timeout=30)
    assert r.status_code == 400, r.text
    job = c.wait_job(plant_define(c, vm_name, xml, "hvq"))
    assert job["state"] == "failed" and job["reason"].startswith("xml_not_allowed on hvq: "), job
    assert vm_name not in libvirt_domains(c, only=["hvq"])["hvq"]


def test_an_ordinary_guest_still_runs(qemu_cluster, vm_name):
    """The control: a real guest passes both checks, is defined and runs."""
    c = qemu_cluster
    assert c.define_vm(vm_name, node="hvq", start=True, xml=qemu_domain_xml(vm_name))["state"] == "succeeded"
    assert libvirt_domains(c, only=["hvq"])["hvq"][vm_name]["state"] == "running"
    s = c.session()
    assert c.wait_job(s.post(f"{c.api_url}/api/v1/vms/{vm_name}/state", json={"state": "stop"},
                             timeout=10).json()["id"])["state"] == "succeeded"
    assert c.wait_job(s.delete(f"{c.api_url}/api/v1/vms/{vm_name}", timeout=10).json()["id"])["state"] == "succeeded"
