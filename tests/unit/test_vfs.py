"""Which VFs a VM's XML uses, which target VFs a move picks, and the rewritten XML (pure functions)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pvc_tasks.errors import Conflict
from pvc_tasks.vfs import VfUse, plan, rewrite, uses


def vf(name: str, pf: str, function: int, used: bool = False, bus: str = "0x3c") -> dict:
    return {"name": name, "pf": pf, "used": "true" if used else "false", "used_by": "", "pci.domain": "0x0000",
            "pci.bus": bus, "pci.slot": "0x00", "pci.function": hex(function)}


NODE = [vf("ens1f0v0", "ens1f0", 0), vf("ens1f0v1", "ens1f0", 1), vf("ens1f1v0", "ens1f1", 0, bus="0x3d")]

XML = """<domain type='kvm'><name>web</name><memory unit='MiB'>256</memory><vcpu>1</vcpu><devices>
<interface type='direct'><source dev='ens1f0v1' mode='passthrough'/><model type='virtio'/></interface>
<interface type='direct'><source dev='eth0' mode='bridge'/></interface>
<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x0000' bus='0x3d' slot='0x00'
 function='0x0'/></source></interface>
<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x01' slot='0x00'
 function='0x0'/></source></hostdev>
</devices></domain>"""


def test_the_xml_names_a_macvtap_and_a_hostdev_vf_and_nothing_else():
    """macvtap by interface name, hostdev by PCI address; a plain macvtap and a non-VF PCI device are ignored."""
    found = uses(XML, NODE)
    assert [(u.mode, u.name) for u in found] == [("macvtap", "ens1f0v1"), ("hostdev", "ens1f1v0")]


def test_a_move_prefers_the_same_vf_name_then_any_free_vf_of_the_same_pf():
    """Same name when free; else another free VF of that PF; never a used or reserved one."""
    found = [VfUse("macvtap", NODE[1])]
    target = [vf("ens1f0v0", "ens1f0", 0), vf("ens1f0v1", "ens1f0", 1)]
    assert plan("web", found, "hv2", target, {}) == {"ens1f0v1": "ens1f0v1"}
    target[1]["used"] = "true"
    assert plan("web", found, "hv2", target, {}) == {"ens1f0v1": "ens1f0v0"}
    with pytest.raises(Conflict, match="no free VF on PF ens1f0"):
        plan("web", found, "hv2", target, {"job-1": {"memory": 1, "vfs": ["ens1f0v0"]}})
    assert plan("web", found, "hv2", target, {"job-1": {"vfs": ["ens1f0v0"]}}, own_job="job-1") == \
        {"ens1f0v1": "ens1f0v0"}


def test_a_target_without_the_pf_cannot_take_the_vm():
    """A VF on ens1f1 cannot be matched by free VFs on ens1f0 only."""
    with pytest.raises(Conflict) as err:
        plan("web", [VfUse("hostdev", NODE[2])], "hv3", [vf("ens1f0v0", "ens1f0", 0)], {})
    assert err.value.code == "no_target" and err.value.details["pf"] == "ens1f1"


def test_two_vfs_of_one_pf_get_two_distinct_target_vfs():
    """Each source VF gets its own target VF."""
    found = [VfUse("macvtap", NODE[0]), VfUse("macvtap", NODE[1])]
    target = [vf("ens1f0v5", "ens1f0", 5), vf("ens1f0v6", "ens1f0", 6)]
    assert plan("web", found, "hv2", target, {}) == {"ens1f0v0": "ens1f0v5", "ens1f0v1": "ens1f0v6"}


def test_rewrite_changes_the_macvtap_dev_and_the_hostdev_address_only():
    """The macvtap source dev and the hostdev PCI address follow the mapping; other devices are untouched."""
    target = [vf("ens1f0v3", "ens1f0", 3, bus="0x5c"), vf("ens1f1v1", "ens1f1", 1, bus="0x5d")]
    out = ET.fromstring(rewrite(XML, uses(XML, NODE), {"ens1f0v1": "ens1f0v3", "ens1f1v0": "ens1f1v1"}, target))
    devs = [s.get("dev") for s in out.iter("source") if s.get("dev")]
    assert devs == ["ens1f0v3", "eth0"]
    addresses = [a.attrib for a in out.iter("address")]
    assert addresses[0] == {"type": "pci", "domain": "0x0000", "bus": "0x5d", "slot": "0x00", "function": "0x1"}
    assert addresses[1]["bus"] == "0x01"  # the GPU-like device is not a VF: unchanged
    assert uses(ET.tostring(out, encoding="unicode"), target) and out.findtext("name") == "web"
