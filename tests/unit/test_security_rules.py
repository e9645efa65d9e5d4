"""The pure rules behind the API's defences: names, XML policy, JSON depth, token table, sealed secrets."""

import xml.etree.ElementTree as ET

import pytest

from pvc_tasks.names import is_name
from pvc_tasks.secrets import PREFIX, SecretError, new_key, seal, unseal
from pvc_tasks.xml_policy import XmlPolicy, violations
from pvc_web.auth import TokenTable, entry
from pvc_web.limits import json_depth
from zk_schema.acl import acl_for, parse_identity

POLICY = XmlPolicy(allowed_paths=("/var/lib/libvirt/images",), allowed_emulators=("/usr/bin/qemu-system-x86_64",),
                   vf_addresses=frozenset({(0, 0x3C, 0, 1)}))
QEMU = "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"


def check(devices: str = "", extra: str = "", attrs: str = "", policy: XmlPolicy = POLICY) -> list[str]:
    xml = (f"<domain type='kvm' {attrs}><name>v</name><memory>65536</memory>{extra}"
           f"<devices>{devices}</devices></domain>")
    return violations(ET.fromstring(xml), policy)


def disk(kind: str, source: str) -> str:
    return f"<disk type='{kind}' device='disk'><source {source}/><target dev='vda'/></disk>"


def test_names_follow_one_rule():
    """Letters, digits, _ . -, starting with a letter or digit, at most 63: nothing a path reads differently."""
    assert all(is_name(n) for n in ("hv1", "web-1.example", "a", "A_b", "x" * 63, "ens1f0v3"))
    assert not any(is_name(n) for n in (".", "..", "", "a/b", "a\x00b", " a", "a ", "a\n", "-a", "x" * 64, "é", None))


@pytest.mark.parametrize("devices,where", [
    (disk("file", "file='/etc/shadow'"), "devices[1]/disk[1]/source[1]@file"),
    (disk("block", "dev='/dev/sda'"), "devices[1]/disk[1]/source[1]@dev"),
    (disk("file", "file='/var/lib/libvirt/images/../../../etc/shadow'"), "source[1]@file"),
    (disk("file", "file='/var/lib/libvirt/images-evil/x.img'"), "source[1]@file"),
    ("<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>", "filesystem[1]/source[1]@dir"),
    ("<serial type='file'><source path='/etc/cron.d/x'/></serial>", "serial[1]/source[1]@path"),
    ("<serial type='pty'><log file='/root/.ssh/authorized_keys'/></serial>", "serial[1]/log[1]@file"),
    ("<emulator>/tmp/not-qemu</emulator>", "devices[1]/emulator[1]"),
    (disk("network", "protocol='nbd' name='x'"), "source[1]@protocol"),
    (disk("volume", "pool='default' volume='x'"), "source[1]@pool"),
    ("<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0x3b' slot='0' function='0'/>"
     "</source></hostdev>", "devices[1]/hostdev[1]"),
    ("<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/><product id='0x2'/></source></hostdev>",
     "devices[1]/hostdev[1]"),
    ("<interface type='hostdev'><source><address type='pci' domain='0' bus='9' slot='0' function='0'/></source>"
     "</interface>", "devices[1]/interface[1]"),
])
def test_what_the_policy_refuses_is_named(devices, where):
    """Each refused element is named by its place in the document."""
    found = check(devices)
    assert len(found) == 1 and where in found[0], found


def test_what_the_policy_allows():
    """Images under the allowed directories, RBD, the cluster's VFs, an RNG device, pty consoles, free text."""
    assert check(disk("file", "file='/var/lib/libvirt/images/vm.qcow2'") + disk("network", "protocol='rbd' "
                 "name='vms/v'") + "<emulator>/usr/bin/qemu-system-x86_64</emulator>"
                 "<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x3c' slot='0x00' "
                 "function='0x1'/></source></hostdev><rng model='virtio'><backend model='random'>/dev/urandom"
                 "</backend></rng><serial type='pty'/>", extra="<description>/etc/shadow</description>") == []


def test_qemu_namespace_and_kernel_paths():
    """qemu:commandline is refused unless allowed; a kernel outside the allowed paths is a host path."""
    xml = "<qemu:commandline><qemu:arg value='-x'/></qemu:commandline>"
    assert "qemu:commandline[1]" in check(extra=xml, attrs=QEMU)[0]
    assert check(extra=xml, attrs=QEMU, policy=XmlPolicy(allow_qemu_namespace=True)) == []
    assert "os[1]/kernel[1]" in check(extra="<os><kernel>/boot/vmlinuz</kernel></os>")[0]


def test_allowances_open_what_they_name():
    """xml_allow_hostdev opens host devices; xml_allowed_pools '*' any pool."""
    usb = "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source></hostdev>"
    assert check(usb, policy=XmlPolicy(allow_hostdev=True)) == []
    assert check(disk("volume", "pool='p' volume='x'"), policy=XmlPolicy(allowed_pools=("*",))) == []


def test_json_depth_counts_outside_strings():
    """Brackets in strings (escaped quotes and backslashes included) do not count; an unterminated string runs to
    the end, as a parser reads it; above the limit the count stops."""
    assert json_depth(b'{"a": [1, {"b": "[[[["}]}', 32) == 3
    assert json_depth(b'["a\\"]', 32) == 1 and json_depth(b'["a\\\\", ["b"]]', 32) == 2
    assert json_depth(b'["\\\\\\"[["]', 32) == 1  # an escaped backslash, then an escaped quote
    assert json_depth(b"[" * 100_000, 32) == 33
    assert json_depth(b'"' + b"a" * 200_000 + b"[[", 32) == 0
    assert json_depth(b'"' + b'\\"' * 100_000 + b"[[", 32) == 0  # the body that once cost n^2


def test_token_table_keeps_hashes_and_roles():
    """Entries are NAME:ROLE:sha256:HEX; a plaintext entry or an unknown role is refused without echoing it."""
    table = TokenTable([entry("alice", "admin", "t1"), entry("bob", "read-only", "t2")])
    assert table.find("t1").name == "alice" and table.find("t2").role == "read-only"
    assert table.find("t3") is None and table.find("") is None
    with pytest.raises(ValueError) as bad:
        TokenTable(["plaintext-secret"])
    assert "plaintext-secret" not in str(bad.value) and "entry 1" in str(bad.value)
    with pytest.raises(ValueError, match="role"):
        TokenTable([entry("x", "root", "t")])


def test_sealed_secrets_need_their_key():
    """A sealed value opens with its key only; empty stays empty; an unsealed legacy value reads as it is."""
    key = new_key()
    sealed = seal("hunter2", key)
    assert sealed.startswith(PREFIX) and "hunter2" not in sealed and unseal(sealed, key) == "hunter2"
    assert seal("", key) == "" and unseal("legacy", "") == "legacy"
    with pytest.raises(SecretError):
        unseal(sealed, new_key())
    with pytest.raises(SecretError, match="not set"):
        seal("x", "")


def test_zookeeper_identity_is_user_colon_password():
    """The identity must name a user and a password; the ACL gives that digest every right."""
    assert parse_identity("pvc:s3cret") == ("pvc", "s3cret")
    for bad in ("pvc", ":x", "pvc:", ""):
        with pytest.raises(ValueError):
            parse_identity(bad)
    acl = acl_for("pvc:s3cret")
    assert len(acl) == 1 and acl[0].id.scheme == "digest" and acl[0].id.id.startswith("pvc:")
