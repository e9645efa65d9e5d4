"""SR-IOV pure functions: the exact ip commands per setting, iproute2's JSON, validation, the sysfs inventory."""

from __future__ import annotations

import os

import pytest

from pvc_tasks.errors import Invalid
from pvc_tasks.sriov import validate_config
from pvc_workers.sriov import IpLinkNic, ip_link_commands, parse_vfinfo

BASE = ["ip", "link", "set", "dev", "ens1f0", "vf", "3"]


@pytest.mark.parametrize(("config", "expected"), [
    ({"vlan_id": "100", "vlan_qos": "5"}, [("vlan", BASE + ["vlan", "100", "qos", "5"])]),
    ({"vlan_id": "0"}, [("vlan", BASE + ["vlan", "0", "qos", "0"])]),
    ({"tx_rate_min": "10", "tx_rate_max": "2000"}, [("tx_rate", BASE + ["min_tx_rate", "10", "max_tx_rate", "2000"])]),
    ({"spoof_check": "false"}, [("spoof_check", BASE + ["spoofchk", "off"])]),
    ({"spoof_check": "true"}, [("spoof_check", BASE + ["spoofchk", "on"])]),
    ({"trust": "true"}, [("trust", BASE + ["trust", "on"])]),
    ({"query_rss": "false"}, [("query_rss", BASE + ["query_rss", "off"])]),
    ({"link_state": "disable"}, [("link_state", BASE + ["state", "disable"])]),
    ({"mac": "02:00:00:00:00:0a"}, [("mac", BASE + ["mac", "02:00:00:00:00:0a"])]),
    ({"mtu": "9000"}, [("mtu", ["ip", "link", "set", "dev", "ens1f0v3", "mtu", "9000"])]),
    ({"mac": "", "mtu": ""}, []),
])
def test_each_setting_becomes_its_exact_ip_link_command(config, expected):
    """Every VF setting maps to the documented `ip link set` argv (MTU on the VF's own netdev)."""
    assert ip_link_commands("ens1f0", 3, "ens1f0v3", config) == expected


def test_iproute2_json_of_old_and_new_layouts_is_read():
    """vfinfo_list entries with vlan_list/rate (new) or flat vlan/qos/rates (old) give the same settings."""
    new = [{"vfinfo_list": [{"vf": 0, "address": "02:00:00:00:00:01", "vlan_list": [{"vlan": 7, "qos": 2}],
                             "rate": {"max_tx": 100, "min_tx": 5}, "spoofchk": False, "link_state": "enable",
                             "trust": True, "query_rss_en": True}]}]
    old = [{"vfinfo_list": [{"vf": 0, "address": "02:00:00:00:00:01", "vlan": 7, "qos": 2, "max_tx_rate": 100,
                             "min_tx_rate": 5, "spoofchk": False, "link_state": "enable", "trust": True,
                             "query_rss_en": True}]}]
    expected = {"vlan_id": "7", "vlan_qos": "2", "tx_rate_min": "5", "tx_rate_max": "100", "spoof_check": "false",
                "link_state": "enable", "trust": "true", "query_rss": "true", "mac": "02:00:00:00:00:01"}
    assert parse_vfinfo(new) == parse_vfinfo(old) == {0: expected}


def test_valid_settings_are_normalised():
    """Numbers, booleans in any usual spelling and MACs with dashes or capitals come out in one form."""
    out = validate_config({"vlan_id": 4095, "vlan_qos": "7", "spoof_check": "off", "trust": True,
                           "mac": "02-AB-CD-EF-00-01", "mtu": 9000, "tx_rate_max": 0, "tx_rate_min": 50},
                          {}, pf_mtu=9000)
    assert out == {"vlan_id": "4095", "vlan_qos": "7", "spoof_check": "false", "trust": "true",
                   "mac": "02:ab:cd:ef:00:01", "mtu": "9000", "tx_rate_max": "0", "tx_rate_min": "50"}


@pytest.mark.parametrize(("changes", "current", "field"), [
    ({"vlan_id": 4096}, {}, "vlan_id"),
    ({"vlan_id": -1}, {}, "vlan_id"),
    ({"vlan_id": True}, {}, "vlan_id"),
    ({"vlan_qos": 8}, {"vlan_id": "5"}, "vlan_qos"),
    ({"vlan_qos": 1}, {"vlan_id": "0"}, "vlan_qos"),
    ({"vlan_id": 0}, {"vlan_id": "5", "vlan_qos": "3"}, "vlan_qos"),
    ({"tx_rate_min": 200}, {"tx_rate_max": "100"}, "tx_rate_min"),
    ({"tx_rate_max": 50}, {"tx_rate_min": "100"}, "tx_rate_min"),
    ({"mac": "01:00:5e:00:00:01"}, {}, "mac"),
    ({"mac": "ff:ff:ff:ff:ff:ff"}, {}, "mac"),
    ({"mac": "00:00:00:00:00:00"}, {}, "mac"),
    ({"mac": "02:00:00:00:01"}, {}, "mac"),
    ({"mtu": 67}, {}, "mtu"),
    ({"mtu": 9001}, {}, "mtu"),
    ({"link_state": "up"}, {}, "link_state"),
    ({"trust": "maybe"}, {}, "trust"),
    ({"speed": 10}, {}, "speed"),
])
def test_invalid_settings_name_the_field(changes, current, field):
    """Each bad value is refused with the field named, judged together with the VF's current settings."""
    with pytest.raises(Invalid) as err:
        validate_config(changes, current, pf_mtu=9000)
    assert field in err.value.details


def test_sysfs_inventory_reads_pfs_vfs_and_pci_addresses(tmp_path):
    """A sysfs tree with a PF of two VFs gives the PF's MTU and count and each VF's name, PCI address and MTU."""
    net, devices = tmp_path / "class" / "net", tmp_path / "devices"
    (net / "ens1f0" / "device").mkdir(parents=True)
    (net / "ens1f0" / "mtu").write_text("9000\n")
    (net / "ens1f0" / "device" / "sriov_numvfs").write_text("2\n")
    for index, name in enumerate(("ens1f0v0", "ens1f0v1")):
        pci = devices / f"0000:3b:02.{index}"
        (pci / "net" / name).mkdir(parents=True)
        os.symlink(pci, net / "ens1f0" / "device" / f"virtfn{index}")
        (net / name).mkdir()
        (net / name / "mtu").write_text("1500\n")
    pfs, vfs = IpLinkNic(sysfs=str(tmp_path)).inventory(["ens1f0", "absent0"])
    assert [(p.name, p.mtu, p.vfcount) for p in pfs] == [("ens1f0", 9000, 2)]
    assert [(v.name, v.index, v.pci, v.mtu) for v in vfs] == [
        ("ens1f0v0", 0, ("0x0000", "0x3b", "0x02", "0x0"), 1500),
        ("ens1f0v1", 1, ("0x0000", "0x3b", "0x02", "0x1"), 1500)]
