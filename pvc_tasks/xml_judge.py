"""The machinery of the VM XML policy: its settings (``XmlPolicy``), how one host path is judged for one use
(``path_problem``), and the ``Judge`` that collects what one tree breaks. The rules that use it:
``pvc_tasks.xml_devices`` (devices) and ``pvc_tasks.xml_policy`` (the rest, and the whole walk)."""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pvc_tasks import defaults

__all__ = ["Judge", "XmlPolicy", "path_problem"]

_RNG_DEVICES = frozenset({"/dev/urandom", "/dev/random", "/dev/hwrng"})


@dataclass(frozen=True)
class XmlPolicy:
    """The ``xml_*`` settings, plus the cluster's SR-IOV VFs (from ZooKeeper at the API, from the node's own NICs
    on a worker) and, on a node, how to follow a path's symbolic links."""

    vm_paths: tuple[str, ...] = defaults.XML_VM_PATHS
    image_paths: tuple[str, ...] = defaults.XML_IMAGE_PATHS
    firmware_paths: tuple[str, ...] = defaults.XML_FIRMWARE_PATHS
    nvram_paths: tuple[str, ...] = defaults.XML_NVRAM_PATHS
    allowed_emulators: tuple[str, ...] = defaults.XML_ALLOWED_EMULATORS
    allowed_protocols: tuple[str, ...] = ("rbd",)
    allowed_storage_hosts: tuple[str, ...] = ()
    allowed_pools: tuple[str, ...] = ()
    allowed_networks: tuple[str, ...] = defaults.XML_ALLOWED_NETWORKS
    allowed_bridges: tuple[str, ...] = ()
    allowed_direct_devices: tuple[str, ...] = ()
    allowed_listen: tuple[str, ...] = defaults.XML_ALLOWED_LISTEN
    allow_qemu_namespace: bool = False
    allow_hostdev: bool = False
    #: PCI addresses (domain, bus, slot, function) and interface names of the cluster's SR-IOV VFs.
    vf_addresses: frozenset[tuple[int, ...]] = field(default_factory=frozenset)
    vf_names: frozenset[str] = field(default_factory=frozenset)
    #: On a node: a path -> where it really leads (``os.path.realpath``); None at the API, which has no host files.
    resolve: Callable[[str], str] | None = None


#: What each use of a path is, for the sentences that refuse one.
_USES = {"own": "a file the VM writes", "image": "a read-only image", "firmware": "firmware", "nvram": "NVRAM"}


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root.rstrip("/") or path.startswith(root.rstrip("/") + "/") for root in roots if root)


def _own_file(path: str, vm: str, policy: XmlPolicy) -> bool:
    """``<root>/<vm>.<extension>`` (one extension, no dot in it) directly in a VM root: the name virt-install gives
    a VM's first disk. It belongs to one VM only: the name before the last dot (``a.b.qcow2`` is VM ``a.b``'s)."""
    directory, name = posixpath.split(path)
    stem, dot, extension = name.rpartition(".")
    return directory in [r.rstrip("/") for r in policy.vm_paths] and bool(dot) and stem == vm and "/" not in extension


def path_problem(path: str, use: str, vm: str, policy: XmlPolicy) -> str | None:
    """Why ``path`` may not serve ``use`` for VM ``vm``; None when it may."""
    if use == "emulator":
        return None if path in policy.allowed_emulators else \
            f"emulator {path!r} is not one of xml_allowed_emulators ({', '.join(policy.allowed_emulators) or 'none'})"
    if use == "rng":
        return None if path in _RNG_DEVICES else f"RNG source {path!r} is not one of {', '.join(sorted(_RNG_DEVICES))}"
    if not path.startswith("/"):
        return f"relative path {path!r} (libvirt would resolve it against its own working directory)"
    if posixpath.normpath(path) != path.rstrip("/") or "/../" in path + "/" or "//" in path:
        return f"path {path!r} is not in normal form (no '..', '.' or '//')"
    own = tuple(f"{root.rstrip('/')}/{vm}" for root in policy.vm_paths)
    allowed = {"own": own, "image": own + policy.image_paths, "firmware": own + policy.firmware_paths,
               "nvram": own}[use]
    nvram_file = use == "nvram" and posixpath.dirname(path) in [p.rstrip("/") for p in policy.nvram_paths] and \
        posixpath.basename(path) == f"{vm}_VARS.fd"
    if not (_under(path, allowed) and path.rstrip("/") not in own) and not nvram_file and \
            not (use != "firmware" and _own_file(path, vm, policy)):
        where = {"own": "the VM's own directory", "image": "the VM's own directory or xml_image_paths",
                 "firmware": "xml_firmware_paths or the VM's own directory",
                 "nvram": "the VM's own directory or <xml_nvram_paths>/<vm>_VARS.fd"}[use]
        return f"{path!r} is not in {where} ({', '.join(allowed) or 'none'}), where {_USES[use]} must be"
    if policy.resolve is not None:
        real = policy.resolve(path)
        if real != path and path_problem(real, use, vm, replace(policy, resolve=None)):
            return f"{path!r} leads to {real!r}, which is no place for {_USES[use]}"
    return None


class Judge:
    """One tree judged: problems found, and the (element, attribute) pairs a rule has looked at already (the
    catch-all skips them)."""

    def __init__(self, root: ET.Element, vm: str, policy: XmlPolicy) -> None:
        self.root, self.vm, self.policy = root, vm, policy
        self.problems: list[str] = []
        self.seen: set[tuple[int, str]] = set()

    def refuse(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}")

    def judged(self, element: ET.Element) -> None:
        """Everything in ``element`` has been judged as a whole: the catch-all leaves it alone."""
        for inner in element.iter():
            self.seen.update((id(inner), attribute) for attribute in ("", *inner.attrib))

    def refuse_all(self, element: ET.Element, where: str, text: str) -> None:
        """Refuse ``element`` as a whole (one sentence, not one per path inside it)."""
        self.refuse(where, text)
        self.judged(element)

    def path(self, element: ET.Element | None, where: str, attribute: str, use: str) -> None:
        """Judge one path-bearing field (an attribute, or the text when ``attribute`` is "")."""
        if element is None:
            return
        self.seen.add((id(element), attribute))
        value = element.get(attribute) if attribute else (element.text or "").strip()
        if value:
            problem = path_problem(value, use, self.vm, self.policy)
            if problem:
                self.refuse(f"{where}@{attribute}" if attribute else where, problem)
