"""What a VM's libvirt XML may ask of the host: an allow-list, judged on libvirt's own reading (pure).

libvirt does what a domain's XML says with QEMU's rights, and some of it (an interface's ``<script>``, a host
device) with libvirtd's, which are root's. An API token must not be root on the hypervisors, and neither must
pvc's ZooKeeper identity: the API judges every define, and each worker judges every document again before its
libvirt sees it (``pvc_workers.xml_guard``), with the settings of its own config file (``xml_*``, never from
ZooKeeper or the API) and its own NICs' VFs.

``violations(doc, policy)`` judges both trees of a ``pvc_tasks.domain_xml.DomainXml`` (libvirt's reading and the
canonical text) by the same rules and returns one sentence per problem, naming the element
(``devices/disk[1]/source@file``) and the setting that would allow it. The rules:

1. **Host paths only where a table allows them** (``_PATH_FIELDS`` and the per-device checks), each with how it may
   be used; a path anywhere else is refused, a relative path or one with ``..`` everywhere:
     ``own``       read-write, only inside the VM's own directory ``<root>/<vm name>/`` of an ``xml_vm_paths`` root,
                   or the file ``<root>/<vm name>.<extension>`` (virt-install's name for a VM's disk) (writable
                   disks and filesystems, NVRAM, sockets, character-device files, logs, NVDIMMs, pstore);
     ``image``     read-only: the VM's own directory or a shared ``xml_image_paths`` directory (read-only disks,
                   CD-ROMs, backing files, kernel, initrd, DTB, ACPI tables);
     ``firmware``  read-only: ``xml_firmware_paths`` or the VM's own directory (loader, NVRAM template);
     ``nvram``     ``own``, or libvirt's own ``<xml_nvram_paths>/<vm name>_VARS.fd``;
     ``emulator``  one of ``xml_allowed_emulators``; ``rng``: ``/dev/urandom``, ``/dev/random``, ``/dev/hwrng``.
   On a node the policy also follows symbolic links of paths that exist (``resolve``): a link in a VM's own
   directory is judged where it points.
2. **Devices by kind** (``_DEVICES``): an element under ``<devices>`` that the table does not know is refused.
   Disks: files, network (``xml_allowed_protocols``, hosts in ``xml_allowed_storage_hosts``), pool volumes
   (``xml_allowed_pools``); no host block devices, NVMe controllers, vhost-user or vDPA, no ``lun`` passthrough.
   Interfaces: only onto ``xml_allowed_networks``, ``xml_allowed_bridges``, the cluster's SR-IOV VFs (macvtap or
   hostdev) or ``xml_allowed_direct_devices``; never ``ethernet`` (``<script>`` runs as root), ``user`` (QEMU's NAT
   reaches the host's loopback services), sockets to any address, vhost-user or vDPA. Character devices: pty and
   the like, or unix sockets and files in the VM's own directory; never TCP or UDP (to the BMCs' UDP 623, say), host
   devices, pipes or stdio. Displays: VNC or SPICE listening on ``xml_allowed_listen`` or a socket of its own.
   Host devices: the cluster's VFs, others only with ``xml_allow_hostdev``. Never ``shmem`` (a channel to other
   VMs), ``lease`` (a host lock file), passthrough input, TPM or audio backends that reach host devices.
3. **Elsewhere**: ``<seclabel>`` is the node's to choose (qemu.conf), never the VM's; no ``sysinfo`` entry with a
   ``file``; no real-time scheduler (a FIFO vCPU starves the node's own threads, its keepalive among them); the
   resource partition is ``/machine``; no ``qemu:`` element unless ``xml_allow_qemu_namespace``; no element of the
   domain that the table ``_TOP`` does not know.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

from pvc_tasks.domain_xml import QEMU_NS, DomainXml
from pvc_tasks.xml_devices import DEVICES, refused_device
from pvc_tasks.xml_judge import Judge, XmlPolicy

__all__ = ["XmlPolicy", "violations"]

_QEMU = "{" + QEMU_NS + "}"
#: Children of <domain> the policy knows; their content is judged by the rules below and the path catch-all.
_TOP = frozenset({
    "name", "uuid", "genid", "title", "description", "metadata", "maxMemory", "memory", "currentMemory",
    "blkiotune", "memtune", "memoryBacking", "vcpu", "vcpus", "iothreads", "iothreadids", "defaultiothread",
    "cputune", "numatune", "resource", "sysinfo", "os", "features", "cpu", "clock", "on_poweroff", "on_reboot",
    "on_crash", "on_lockfailure", "pm", "perf", "devices", "seclabel", "keywrap", "launchSecurity",
    "throttlegroups", "idmap",
})
#: Free text: never read for paths (a kernel command line says ``root=/dev/vda``; SMBIOS strings may hold ``/``).
_FREE_TEXT = frozenset({"title", "description", "metadata"})
#: (element path below <domain>, attribute or "" for the text) -> how the path may be used.
_PATH_FIELDS: dict[tuple[str, str], str] = {
    ("os/loader", ""): "firmware", ("os/nvram", ""): "nvram", ("os/nvram", "template"): "firmware",
    ("os/kernel", ""): "image", ("os/initrd", ""): "image", ("os/dtb", ""): "image", ("os/acpi/table", ""): "image",
    ("devices/emulator", ""): "emulator",
}
#: Values that are not host paths though they may start with "/".
_NOT_PATHS = frozenset({("os/cmdline", ""), ("devices/filesystem/target", "dir"), ("resource/partition", "")})


def _walk(element: ET.Element, where: str, rel: str) -> Iterator[tuple[ET.Element, str, str]]:
    """(element, place with indices, path below <domain> without them) for every element but free text."""
    yield element, where, rel
    counts: dict[str, int] = {}
    for child in element:
        tag = child.tag if not child.tag.startswith(_QEMU) else "qemu:" + child.tag[len(_QEMU):]
        counts[tag] = counts.get(tag, 0) + 1
        if tag in _FREE_TEXT and element.tag == "domain":
            continue
        place = f"{where}/{tag}[{counts[tag]}]" if where else f"{tag}[{counts[tag]}]"
        yield from _walk(child, place, f"{rel}/{tag}" if rel else tag)


def _judge(root: ET.Element, vm: str, policy: XmlPolicy) -> list[str]:
    judge = Judge(root, vm, policy)
    for element, where, rel in _walk(root, "", ""):
        tag = element.tag
        top = rel.split("/", 1)[0]
        if tag.startswith(_QEMU):
            if not policy.allow_qemu_namespace:
                judge.refuse(where, "qemu: namespace elements pass options straight to QEMU (needs "
                             "xml_allow_qemu_namespace)")
            continue
        if rel and "/" not in rel and top not in _TOP:
            judge.refuse(where, f"<{tag}> is not an element pvc's XML policy knows")
        elif rel.startswith("devices/") and rel.count("/") == 1:
            (DEVICES.get(tag) or refused_device)(judge, element, where)
        elif tag == "seclabel":
            judge.refuse(where, "the node's security driver labels its VMs (qemu.conf); a VM may not choose its own "
                                "<seclabel>")
        elif rel == "sysinfo/entry" and element.get("file") is not None:
            judge.refuse(f"{where}@file", "a sysinfo entry with a file hands a host file to the guest")
        elif tag in ("vcpusched", "iothreadsched", "emulatorsched") and element.get("scheduler") in ("fifo", "rr"):
            judge.refuse(where, "a real-time scheduler lets the VM starve the node's own threads")
        elif rel == "resource/partition" and (element.text or "").strip() != "/machine":
            judge.refuse(where, "the resource partition is the node's: only /machine")
        for attribute in ("", *element.attrib):
            use = _PATH_FIELDS.get((rel, attribute))
            if use:
                judge.path(element, where, attribute, use)
    _catch_all(judge)
    return judge.problems


def _catch_all(judge: Judge) -> None:
    """Every host path a rule did not judge is refused: a field the tables do not list may not name the host."""
    for element, where, rel in _walk(judge.root, "", ""):
        if element.tag.startswith(_QEMU) or rel.startswith("sysinfo") or element.tag == "seclabel":
            continue
        for attribute, value in [("", (element.text or "").strip()), *element.attrib.items()]:
            if (id(element), attribute) in judge.seen or (rel, attribute) in _NOT_PATHS:
                continue
            if value.startswith("/"):
                judge.refuse(f"{where}@{attribute}" if attribute else where,
                             f"host path {value!r} in a field pvc's XML policy does not allow paths in")


def violations(doc: DomainXml, policy: XmlPolicy) -> list[str]:
    """Every way ``doc`` breaks ``policy``, as sentences naming the element; [] when none. Both trees are judged
    (libvirt's reading, then the canonical text); a problem both show is said once."""
    found: dict[str, str] = {}
    for tree in (doc.libvirt, doc.tree):
        for problem in _judge(tree, doc.name, policy):
            found.setdefault(problem.split(": ", 1)[-1], problem)
    return list(found.values())
