"""The device rules of the VM XML policy: one checker per element under ``<devices>`` (``DEVICES``).

Each checker gets the judge (``pvc_tasks.xml_judge``) (``refuse``, ``refuse_all``, ``path``), the device element
and its place. A device kind the table does not know is refused (``refused_device``); a host path a checker does
not judge is refused by the policy's catch-all. Why each kind is limited as it is: docs/security.md.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

from pvc_tasks.xml_judge import Judge

__all__ = ["DEVICES", "refused_device"]

_PCI = ("domain", "bus", "slot", "function")
_CHARDEV_SAFE = frozenset({"pty", "null", "vc", "spicevmc", "spiceport", "qemu-vdagent"})
_CHARDEV_OWN = frozenset({"unix", "file"})


def _first(element: ET.Element, tag: str, where: str) -> tuple[ET.Element | None, str]:
    return element.find(tag), f"{where}/{tag}[1]"


def _pci(element: ET.Element | None) -> tuple[int, ...] | None:
    if element is None:
        return None
    try:
        return tuple(int(element.get(a, ""), 0) for a in _PCI)
    except ValueError:
        return None


def _fine(_judge: Judge, _element: ET.Element, _where: str) -> None:
    """A device that names nothing of the host (its host paths, if any, still meet the catch-all)."""


def refused_device(judge: Judge, element: ET.Element, where: str) -> None:
    judge.refuse_all(element, where, f"<{element.tag}> devices are not ones pvc's XML policy knows")


def _disk(judge: Judge, disk: ET.Element, where: str) -> None:
    kind, device = disk.get("type", "file"), disk.get("device", "disk")
    if device == "lun":
        judge.refuse_all(disk, where, "a lun disk passes SCSI commands to a host device")
        return
    read_only = disk.find("readonly") is not None or device == "cdrom"
    source, at = _first(disk, "source", where)
    if kind in ("file", "dir"):
        judge.path(source, at, kind, "image" if read_only else "own")
    elif kind == "network":
        _network_source(judge, source, at)
    elif kind == "volume":
        pool = source.get("pool") if source is not None else None
        if pool and not ({"*", pool} & set(judge.policy.allowed_pools)):
            judge.refuse(f"{at}@pool", f"storage pool {pool!r} is not allowed (xml_allowed_pools: "
                                       f"{', '.join(judge.policy.allowed_pools) or 'none'})")
    else:
        judge.refuse_all(disk, where, f"a disk of type {kind!r} reaches the host directly (block devices, NVMe "
                                      f"controllers, vhost-user, vDPA): use an image file, a network disk or a pool "
                                      f"volume")
        return
    for depth, backing in enumerate(disk.iter("backingStore"), 1):
        source, at = _first(backing, "source", f"{where}/backingStore[{depth}]")
        if backing.get("type", "file") == "file":
            judge.path(source, at, "file", "image")
        elif backing.get("type") == "network":
            _network_source(judge, source, at)
        else:
            judge.refuse_all(backing, f"{where}/backingStore[{depth}]", "a backing store that is not a file or a "
                                                                        "network disk")


def _network_source(judge: Judge, source: ET.Element | None, at: str) -> None:
    if source is None:
        return
    policy, protocol = judge.policy, source.get("protocol")
    if protocol not in policy.allowed_protocols:
        judge.refuse(f"{at}@protocol", f"network storage {protocol!r} is not allowed (xml_allowed_protocols: "
                                       f"{', '.join(policy.allowed_protocols) or 'none'})")
    for i, host in enumerate(source.findall("host"), 1):
        name, port = host.get("name", ""), host.get("port", "")
        if host.get("transport") == "unix" or host.get("socket"):
            judge.refuse_all(host, f"{at}/host[{i}]", "a network disk through a host socket")
        elif name and name not in policy.allowed_storage_hosts and f"{name}:{port}" not in policy.allowed_storage_hosts:
            judge.refuse(f"{at}/host[{i}]", f"storage host {name}:{port} is not one of xml_allowed_storage_hosts "
                                            f"({', '.join(policy.allowed_storage_hosts) or 'none'})")


def _interface(judge: Judge, iface: ET.Element, where: str) -> None:
    policy, kind = judge.policy, iface.get("type")
    for script in ("script", "downscript"):
        if iface.find(script) is not None:
            judge.refuse_all(iface, where, f"an interface <{script}> is a program libvirtd runs as root")
            return
    source, at = _first(iface, "source", where)
    named = dict(source.attrib) if source is not None else {}
    if kind == "network" and named.get("network") not in policy.allowed_networks:
        judge.refuse(f"{at}@network", f"network {named.get('network')!r} is not one of xml_allowed_networks "
                                      f"({', '.join(policy.allowed_networks) or 'none'})")
    elif kind == "bridge" and named.get("bridge") not in policy.allowed_bridges:
        judge.refuse(f"{at}@bridge", f"bridge {named.get('bridge')!r} is not one of xml_allowed_bridges "
                                     f"({', '.join(policy.allowed_bridges) or 'none'})")
    elif kind == "direct" and named.get("dev") not in policy.vf_names | set(policy.allowed_direct_devices):
        judge.refuse(f"{at}@dev", f"macvtap onto {named.get('dev')!r}, which is neither an SR-IOV VF of this cluster "
                                  f"nor one of xml_allowed_direct_devices")
    elif kind == "hostdev":
        _pci_device(judge, iface, where, source.find("address") if source is not None else None)
    elif kind not in ("network", "bridge", "direct"):
        judge.refuse_all(iface, where, f"an interface of type {kind!r} is not onto a configured network or bridge "
                                       f"(user networking reaches the host's own services; ethernet, sockets, "
                                       f"vhost-user and vDPA reach the host or any address)")


def _pci_device(judge: Judge, element: ET.Element, where: str, address: ET.Element | None) -> None:
    if _pci(address) in judge.policy.vf_addresses or judge.policy.allow_hostdev:
        judge.judged(element)
        return
    described = ":".join(address.get(a, "?") for a in _PCI) if address is not None else "(no address)"
    judge.refuse_all(element, where, f"PCI device {described} is not an SR-IOV VF of this cluster (other host "
                                     f"devices need xml_allow_hostdev)")


def _hostdev(judge: Judge, hostdev: ET.Element, where: str) -> None:
    source = hostdev.find("source")
    if hostdev.get("mode", "subsystem") == "subsystem" and hostdev.get("type") == "pci":
        _pci_device(judge, hostdev, where, source.find("address") if source is not None else None)
    elif judge.policy.allow_hostdev:
        judge.judged(hostdev)
    else:
        judge.refuse_all(hostdev, where, f"a host device of type {hostdev.get('type')!r} needs xml_allow_hostdev")


def _chardev(judge: Judge, dev: ET.Element, where: str) -> None:
    """serial, parallel, console, channel, redirdev, and the character backends of smartcards and RNGs."""
    kind = dev.get("type", "pty")
    if kind in _CHARDEV_OWN:
        for i, source in enumerate(dev.findall("source"), 1):
            judge.path(source, f"{where}/source[{i}]", "path", "own")
    elif kind not in _CHARDEV_SAFE:
        judge.refuse_all(dev, where, f"a character device of type {kind!r} reaches the host or the network (TCP, "
                                     f"UDP, host devices, pipes, stdio): use pty, or a unix socket in the VM's own "
                                     f"directory")
        return
    log, at = _first(dev, "log", where)
    judge.path(log, at, "file", "own")


def _smartcard(judge: Judge, card: ET.Element, where: str) -> None:
    if card.get("mode") == "passthrough":
        _chardev(judge, card, where)
    else:
        judge.refuse_all(card, where, "a smartcard of mode host or host-certificates uses the host's own")


def _rng(judge: Judge, rng: ET.Element, where: str) -> None:
    backend, at = _first(rng, "backend", where)
    if backend is None:
        return
    if backend.get("model") == "random":
        judge.path(backend, at, "", "rng")
    elif backend.get("model") == "egd":
        _chardev(judge, backend, at)


def _by_type(allowed: frozenset[str], what: str) -> Callable[[Judge, ET.Element, str], None]:
    def check(judge: Judge, element: ET.Element, where: str) -> None:
        kind = element.get("type") or element.get("model") or ""
        if kind not in allowed:
            judge.refuse_all(element, where, f"{what} of type {kind!r} reaches a host device or service (allowed: "
                                             f"{', '.join(sorted(allowed))})")

    return check


def _graphics(judge: Judge, graphics: ET.Element, where: str) -> None:
    policy = judge.policy
    if graphics.get("type") not in ("vnc", "spice"):
        judge.refuse_all(graphics, where, f"a display of type {graphics.get('type')!r} is not VNC or SPICE")
        return
    addresses = [(f"{where}@listen", graphics.get("listen"))]
    for i, listen in enumerate(graphics.findall("listen"), 1):
        at = f"{where}/listen[{i}]"
        if listen.get("type") == "socket":
            judge.path(listen, at, "socket", "own")
        elif listen.get("type") == "network" and listen.get("network") not in policy.allowed_networks:
            judge.refuse(f"{at}@network", f"network {listen.get('network')!r} is not one of xml_allowed_networks")
        addresses.append((f"{at}@address", listen.get("address")))
    for at, address in addresses:
        if address and address not in policy.allowed_listen:
            judge.refuse(at, f"a display listening on {address} (xml_allowed_listen: "
                             f"{', '.join(policy.allowed_listen) or 'none'})")
    judge.path(graphics, where, "socket", "own")


def _filesystem(judge: Judge, fs: ET.Element, where: str) -> None:
    kind, read_only = fs.get("type", "mount"), fs.find("readonly") is not None
    binary, at = _first(fs, "binary", where)
    if binary is not None and binary.get("path"):
        judge.refuse(f"{at}@path", "a filesystem daemon binary is a program run as root")
        judge.judged(binary)
    source, at = _first(fs, "source", where)
    if kind == "mount":
        judge.path(source, at, "dir", "image" if read_only else "own")
        judge.path(source, at, "socket", "own")
    elif kind == "file":
        judge.path(source, at, "file", "image" if read_only else "own")
    elif kind != "ram":
        judge.refuse_all(fs, where, f"a filesystem of type {kind!r} reaches host devices or templates")


def _memory(judge: Judge, memory: ET.Element, where: str) -> None:
    source, at = _first(memory, "source", where)
    if source is not None:
        judge.path(source.find("path"), f"{at}/path[1]", "", "own")


def _pstore(judge: Judge, pstore: ET.Element, where: str) -> None:
    judge.path(pstore.find("path"), f"{where}/path[1]", "", "own")


def _never(reason: str) -> Callable[[Judge, ET.Element, str], None]:
    def check(judge: Judge, element: ET.Element, where: str) -> None:
        judge.refuse_all(element, where, reason)

    return check


#: Device element -> its checker. Anything else under <devices> is refused.
DEVICES: dict[str, Callable[[Judge, ET.Element, str], None]] = {
    "emulator": _fine, "disk": _disk, "controller": _fine, "filesystem": _filesystem, "interface": _interface,
    "input": _by_type(frozenset({"mouse", "tablet", "keyboard"}), "an input device"), "sound": _fine,
    "audio": _by_type(frozenset({"none", "spice"}), "an audio backend"), "hostdev": _hostdev,
    "graphics": _graphics, "video": _fine, "serial": _chardev, "parallel": _chardev, "console": _chardev,
    "channel": _chardev, "redirdev": _chardev, "redirfilter": _fine, "smartcard": _smartcard, "hub": _fine,
    "watchdog": _fine, "memballoon": _fine, "rng": _rng,
    "tpm": lambda judge, tpm, where: _by_type(frozenset({"emulator"}), "a TPM backend")(
        judge, tpm.find("backend") if tpm.find("backend") is not None else tpm, where),
    "panic": _fine, "memory": _memory, "iommu": _fine, "vsock": _fine, "crypto": _fine, "nvram": _fine,
    "pstore": _pstore,
    "shmem": _never("shared memory is a channel to other VMs (and to the host's /dev/shm)"),
    "lease": _never("a lease names a lock file on the host"),
}
