"""The node's own reading of every VM XML before its libvirt sees it: ZooKeeper's identity is not root here.

The API judges a define's XML once; but a worker defines whatever ZooKeeper holds (a define, a migration's
hand-over or its target XML, a recovery, the reconciler at start-up), so whoever could write to ZooKeeper could
otherwise hand this node's libvirt any document. ``XmlGuard.check`` runs before every define and every live
migration that carries a target XML, and at a migration's prepare:

1. the document is read as libvirt reads it (``pvc_tasks.domain_xml``: this process's own libvirt library, so the
   node's version of libvirt's schema and parser) and must describe the VM the job is about (same name);
2. the policy (``pvc_tasks.xml_policy``) judges it with this worker's OWN settings (``xml_*`` in its config file,
   never ZooKeeper's), this node's own SR-IOV VFs (from its NICs, not ZooKeeper's records), and symbolic links
   followed (a link in a VM's directory is judged where it points);
3. every image file that exists here and is not raw has its backing chain read from its header (``qemu-img info
   --backing-chain``, bounded): each backing file must be a read-only image the policy allows, and each external
   data file a file of the VM's own directory.

A refusal raises ``XmlRefused`` (a ``HypervisorError``): the job fails with reason ``xml_not_allowed on <node>:
...`` and libvirt never saw the document. What the guard hands on is the canonical text, not ZooKeeper's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace

from pvc_tasks import defaults
from pvc_tasks.context import XmlRefused
from pvc_tasks.domain_xml import DomainXml, read
from pvc_tasks.errors import Invalid
from pvc_tasks.vfs import named_devices
from pvc_tasks.xml_judge import XmlPolicy, path_problem
from pvc_tasks.xml_policy import violations

__all__ = ["XmlGuard", "backing_problems"]

log = logging.getLogger(__name__)

#: This node's VFs: (PCI addresses as (domain, bus, slot, function), interface names).
VfSource = Callable[[], tuple[frozenset[tuple[int, ...]], frozenset[str]]]


def _qemu_img_chain(path: str) -> list[dict]:
    """``qemu-img info --backing-chain`` of ``path``: one dict per image, the top first."""
    done = subprocess.run(["qemu-img", "info", "--backing-chain", "--output=json", "-U", path],
                          capture_output=True, text=True, timeout=defaults.QEMU_IMG_TIMEOUT, check=False)
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"qemu-img exited {done.returncode}")
    chain = json.loads(done.stdout)
    return chain if isinstance(chain, list) else [chain]


def backing_problems(doc: DomainXml, policy: XmlPolicy, chain: Callable[[str], list[dict]] = _qemu_img_chain
                     ) -> list[str]:
    """What the headers of the VM's existing non-raw image files would make QEMU open besides the files named in
    the XML: backing files (read-only images) and external data files (the VM's own)."""
    problems = []
    for i, disk in enumerate(doc.libvirt.findall("devices/disk"), 1):
        source, driver = disk.find("source"), disk.find("driver")
        path = source.get("file") if source is not None and disk.get("type", "file") == "file" else None
        if not path or (driver is not None and driver.get("type", "raw") == "raw") or driver is None \
                or not os.path.exists(path):
            continue
        where = f"devices[1]/disk[{i}]/source[1]@file"
        try:
            images = chain(path)
        except FileNotFoundError:
            problems.append(f"{where}: {path!r} is a {driver.get('type')} image and qemu-img is not installed to "
                            f"read its backing chain (install qemu-utils)")
            continue
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{where}: the backing chain of {path!r} cannot be read ({exc})")
            continue
        for image in images:
            data_file = (image.get("format-specific") or {}).get("data", {}).get("data-file")
            backing = image.get("full-backing-filename") or image.get("backing-filename")
            for named, use, what in ((backing, "image", "backing file"), (data_file, "own", "data file")):
                problem = path_problem(named, use, doc.name, policy) if named else None
                if problem:
                    problems.append(f"{where}: its image header names {what} {named!r}: {problem}")
    return problems


class XmlGuard:
    """One per worker: ``check(xml, vm)`` -> the canonical text this node may define, or ``XmlRefused``.

    ``vfs()``: this node's VFs as its NICs show them. ``present(device)``: is an interface of that name (or a PCI
    device at that address) on this node? A macvtap or PCI device the VM names that does not exist here at all (a
    VF that vanished when its PF was given fewer VFs) reaches nothing, so it does not stop the define; one that
    exists must be one of this node's VFs."""

    def __init__(self, policy: XmlPolicy, vfs: VfSource, present: Callable[[str | tuple[int, ...]], bool],
                 chain: Callable[[str], list[dict]] = _qemu_img_chain) -> None:
        self.policy, self.vfs, self.present, self.chain = replace(policy, resolve=os.path.realpath), vfs, present, chain

    def check(self, xml: str, vm: str) -> str:
        try:
            doc = read(xml)
        except Invalid as exc:
            raise XmlRefused([exc.message.removeprefix("xml: ")]) from exc
        if doc.name != vm:
            raise XmlRefused([f"name: the XML defines {doc.name!r}, not VM {vm!r}"])
        addresses, names = self.vfs()
        for _mode, _element, dev, pci in named_devices(doc.libvirt):
            if dev and dev not in names and not self.present(dev):
                names |= {dev}
            elif pci and pci not in addresses and not self.present(pci):
                addresses |= {pci}
        policy = replace(self.policy, vf_addresses=addresses, vf_names=names)
        problems = violations(doc, policy) + backing_problems(doc, policy, self.chain)
        if problems:
            log.error("refusing the XML of VM %s: %s", vm, "; ".join(problems))
            raise XmlRefused(problems)
        return doc.xml
