"""What a VM's libvirt XML may ask of the hypervisor: the policy the API checks at define (pure, no ZooKeeper).

An API token must not be root on every hypervisor, and libvirt does whatever the XML says with the rights of
QEMU (or of libvirtd). So, unless the API's configuration allows more (``xml_*`` settings, docs/security.md):

1. **Host paths** (any attribute value or element text that starts with ``/``: disk, filesystem and char-device
   sources, logs, sockets, kernel, initrd, loader, nvram, TPM, evdev ...) must lie under ``xml_allowed_paths``
   (lexically normalised: ``..`` does not climb out). Exceptions: ``<emulator>`` must be one of
   ``xml_allowed_emulators``; ``/dev/urandom`` and ``/dev/random`` (an RNG backend).
   ``<description>``, ``<title>``, ``<metadata>`` and ``<sysinfo>`` are free text and not read.
2. **Network and pool storage**: a ``<source protocol=...>`` must be one of ``xml_allowed_protocols`` (``rbd``);
   a ``<source pool=...>`` one of ``xml_allowed_pools`` (none, unless configured; ``*`` allows any).
3. **No** ``qemu:`` **namespace** elements (``qemu:commandline`` runs anything) unless
   ``xml_allow_qemu_namespace``.
4. **Host devices**: a PCI ``<hostdev>`` or ``<interface type='hostdev'>`` must be one of the cluster's SR-IOV
   VFs (by PCI address); any other host device (PCI, USB, SCSI, mdev) needs ``xml_allow_hostdev``.

The name rule (exact, ``pvc_tasks.names``) and the cluster-wide uniqueness of the UUID are checked by
``submit_define``. Each violation names the element (``devices/disk[2]/source@file``) and the setting to change.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

__all__ = ["QEMU_NS", "XmlPolicy", "violations"]

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
_FREE_TEXT = frozenset({"description", "title", "metadata", "sysinfo"})
_RNG_DEVICES = frozenset({"/dev/urandom", "/dev/random"})


@dataclass(frozen=True)
class XmlPolicy:
    allowed_paths: tuple[str, ...] = ("/var/lib/libvirt/images",)
    allowed_emulators: tuple[str, ...] = ()
    allowed_protocols: tuple[str, ...] = ("rbd",)
    allowed_pools: tuple[str, ...] = ()
    allow_qemu_namespace: bool = False
    allow_hostdev: bool = False
    #: PCI addresses (domain, bus, slot, function) of the cluster's SR-IOV VFs, which hostdevs may name.
    vf_addresses: frozenset[tuple[int, ...]] = field(default_factory=frozenset)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _under(path: str, roots: tuple[str, ...]) -> bool:
    clean = posixpath.normpath(path)
    return any(clean == root.rstrip("/") or clean.startswith(root.rstrip("/") + "/") for root in roots if root)


def _pci(element: ET.Element | None) -> tuple[int, ...] | None:
    if element is None:
        return None
    try:
        return tuple(int(element.get(a, ""), 0) for a in ("domain", "bus", "slot", "function"))
    except ValueError:
        return None


def _walk(element: ET.Element, where: str):
    yield element, where
    counts: dict[str, int] = {}
    for child in element:
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions
        name = _local(child.tag) if not child.tag.startswith(QEMU_NS) else "qemu:" + _local(child.tag)
        counts[name] = counts.get(name, 0) + 1
        if name in _FREE_TEXT:
            continue
        yield from _walk(child, f"{where}/{name}[{counts[name]}]" if where else f"{name}[{counts[name]}]")


def _host_device(element: ET.Element, policy: XmlPolicy, where: str) -> str | None:
    tag = _local(element.tag)
    if tag == "hostdev" or (tag == "interface" and element.get("type") == "hostdev"):
        source = element.find("source")
        address = source.find("address") if source is not None else None
        if tag == "interface" or element.get("type") == "pci":
            if _pci(address) in policy.vf_addresses:
                return None
            if not policy.allow_hostdev:
                return (f"{where}: PCI device {_describe(address)} is not an SR-IOV VF of this cluster "
                        f"(other host devices need xml_allow_hostdev)")
        elif not policy.allow_hostdev:
            return f"{where}: host device of type {element.get('type')!r} needs xml_allow_hostdev"
    return None


def _describe(address: ET.Element | None) -> str:
    if address is None:
        return "(no address)"
    return ":".join(address.get(a, "?") for a in ("domain", "bus", "slot", "function"))


def violations(root: ET.Element, policy: XmlPolicy) -> list[str]:
    """Every way ``root`` (a parsed ``<domain>``) breaks ``policy``, as sentences naming the element; [] when none."""
    found: list[str] = []
    for element, where in _walk(root, ""):
        place = where or "domain"
        if element.tag.startswith(QEMU_NS) and not policy.allow_qemu_namespace:
            found.append(f"{place}: qemu: namespace elements pass options straight to QEMU (needs "
                         f"xml_allow_qemu_namespace)")
            continue
        problem = _host_device(element, policy, place)
        if problem:
            found.append(problem)
        tag = _local(element.tag)
        if tag == "source" and element.get("protocol") and element.get("protocol") not in policy.allowed_protocols:
            found.append(f"{place}@protocol: network storage {element.get('protocol')!r} is not allowed "
                         f"(xml_allowed_protocols: {', '.join(policy.allowed_protocols) or 'none'})")
        if tag == "source" and element.get("pool") and not ({"*", element.get("pool")} & set(policy.allowed_pools)):
            found.append(f"{place}@pool: storage pool {element.get('pool')!r} is not allowed "
                         f"(xml_allowed_pools: {', '.join(policy.allowed_pools) or 'none'})")
        text = (element.text or "").strip()
        if tag == "emulator":
            if text not in policy.allowed_emulators:
                found.append(f"{place}: emulator {text!r} is not one of xml_allowed_emulators "
                             f"({', '.join(policy.allowed_emulators) or 'none'})")
            continue
        values = [(f"{place}@{name}", value) for name, value in element.attrib.items()]
        values += [(place, text)] if text else []
        for at, value in values:
            if value.startswith("/") and not (value in _RNG_DEVICES and tag == "backend") \
                    and not _under(value, policy.allowed_paths):
                found.append(f"{at}: host path {value!r} is outside the allowed directories "
                             f"(xml_allowed_paths: {', '.join(policy.allowed_paths) or 'none'})")
    return found
