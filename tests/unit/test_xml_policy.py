"""The VM XML policy on libvirt's own reading: each finding of the security review refused, each ordinary VM let
through, and pvc's record of a VM (name, UUID, memory, VFs) equal to libvirt's reading of it."""

import uuid

import pytest

from pvc_tasks import vfs
from pvc_tasks.domain_xml import read
from pvc_tasks.errors import Invalid
from pvc_tasks.xml_policy import XmlPolicy, violations
from tests.xml_cases import CASES, POLICY_SETTINGS, case_xml, document

POLICY = XmlPolicy(**POLICY_SETTINGS)


def outcome(xml: str, policy: XmlPolicy = POLICY) -> tuple[str, str]:
    """("allowed", "") or ("refused" | "invalid", what the API's details would say)."""
    try:
        problems = violations(read(xml), policy)
    except Invalid as exc:
        kind = "refused" if exc.code == "xml_not_allowed" else "invalid"
        return kind, f"{exc.message} {exc.details}"
    return ("refused", " | ".join(problems)) if problems else ("allowed", "")


@pytest.mark.parametrize("case_id,parts,expected,needle", CASES, ids=[c[0] for c in CASES])
def test_each_case_is_judged_as_the_table_says(case_id, parts, expected, needle):
    """Refused with the element or reason named, refused by libvirt's schema, or allowed."""
    kind, said = outcome(case_xml(case_id, parts, "vm1"))
    assert kind == expected, said
    assert needle in said, said


def test_pvc_records_what_libvirt_reads():
    """Name and UUID split by a comment, memory in GiB, a UUID without dashes: the record is libvirt's reading, and
    the stored text says the same with nothing left to read differently."""
    given = uuid.uuid4()
    xml = document("vm1").replace("<name>vm1</name>", f"<name>vm<!-- -->1</name><uuid>{given.hex.upper()}</uuid>")
    doc = read(xml.replace("<memory unit='MiB'>64</memory>", "<memory unit='GiB'>2</memory>"))
    assert (doc.name, doc.uuid, doc.memory_mib, doc.vcpus) == ("vm1", str(given), 2048, 1)
    assert "<!--" not in doc.xml and "<name>vm1</name>" in doc.xml
    assert read(doc.xml).xml == doc.xml  # the canonical text is a fixed point


def test_a_uuid_is_added_when_missing_and_kept_by_libvirt():
    """A define without <uuid> gets one in the text itself, so every node defines the same identity."""
    doc = read(document("vm1"))
    assert str(uuid.UUID(doc.uuid)) == doc.uuid and f"<uuid>{doc.uuid}</uuid>" in doc.xml


def test_a_vf_named_through_a_character_reference_is_found():
    """``type='&#x64;irect'`` is a macvtap to libvirt, so it is one to pvc's VF bookkeeping too."""
    doc = read(document("vm1", devices="<interface type='&#x64;irect'><source dev='ens1f0v1' mode='passthrough'/>"
                                       "</interface>"))
    record = {"name": "ens1f0v1", "used": "false", "used_by": "", "pci.domain": "0", "pci.bus": "0x3c",
              "pci.slot": "0", "pci.function": "1"}
    assert [u.name for u in vfs.uses(doc.libvirt, [record])] == ["ens1f0v1"]
    assert [u.name for u in vfs.uses(doc.xml, [record])] == ["ens1f0v1"]


def test_settings_open_what_they_name():
    """xml_allow_hostdev opens host devices, xml_allowed_pools '*' any pool, xml_allow_qemu_namespace qemu:."""
    usb = document("vm1", devices="<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/><product "
                                  "id='0x2'/></source></hostdev>")
    assert outcome(usb)[0] == "refused" and outcome(usb, XmlPolicy(allow_hostdev=True))[0] == "allowed"
    pool = document("vm1", devices="<disk type='volume' device='disk'><source pool='p' volume='x'/><target "
                                   "dev='vda'/></disk>")
    assert outcome(pool)[0] == "refused" and outcome(pool, XmlPolicy(allowed_pools=("*",)))[0] == "allowed"
    qemu = case_xml("qemu-commandline", dict(next(c for c in CASES if c[0] == "qemu-commandline")[1]), "vm1")
    assert outcome(qemu, XmlPolicy(allow_qemu_namespace=True))[0] == "allowed"


def test_a_symbolic_link_is_judged_where_it_leads(tmp_path):
    """On a node, a link in the VM's own directory that leads out of it is refused; one that stays is not."""
    own = tmp_path / "vms" / "vm1"
    own.mkdir(parents=True)
    (own / "out.img").symlink_to("/etc/shadow")
    (own / "real.img").write_bytes(b"")
    (own / "in.img").symlink_to(own / "real.img")
    import os

    node = XmlPolicy(vm_paths=(str(tmp_path / "vms"),), resolve=os.path.realpath)
    assert outcome(document("vm1", devices=disk_at(own / "in.img")), node)[0] == "allowed"
    kind, said = outcome(document("vm1", devices=disk_at(own / "out.img")), node)
    assert kind == "refused" and "leads to '/etc/shadow'" in said


def disk_at(path) -> str:
    return f"<disk type='file' device='disk'><source file='{path}'/><target dev='vda'/></disk>"
