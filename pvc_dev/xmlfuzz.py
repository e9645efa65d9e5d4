"""A differential fuzzer of the VM XML policy: libvirt's own reading is the oracle.

For every path-bearing field libvirt knows (``FIELDS``: a template with a slot ``{P}`` for the path, in element
text or an attribute), ``variants`` writes the forbidden path ``/etc/shadow`` into the slot in many disguises: split
by child elements, comments or processing instructions, in CDATA, as character or entity references, under a
namespace, in another case, with whitespace around it, behind ``..``, in a duplicated element or attribute,
attributes reordered. ``judge`` then asks two questions of each variant:

- the oracle: does libvirt, given the text as it is (``defineXML`` on a private test-driver connection, no
  validation, as a node's libvirtd would take it), end up with a host path that leads to the forbidden file, or
  (the ``qemu:`` namespace, which the test driver drops) with a ``qemu:`` element at all?
- pvc: does ``pvc_tasks.domain_xml.read`` with ``pvc_tasks.xml_policy.violations`` refuse it?

A variant the oracle calls forbidden that pvc accepts is a hole. Seeded and bounded: the same seed gives the same
variants. Run by tests/unit/test_xml_fuzz.py (thousands of cases) and bench/xml_fuzz.py (as many as you like).
"""

from __future__ import annotations

import posixpath
import random
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass

import libvirt

from pvc_tasks.domain_xml import read
from pvc_tasks.errors import Invalid
from pvc_tasks.xml_policy import XmlPolicy, violations

__all__ = ["FIELDS", "FORBIDDEN", "Outcome", "judge", "run", "variants"]

FORBIDDEN = "/etc/shadow"
VM = "fuzz"
OWN = f"/var/lib/libvirt/images/{VM}"

#: (field, where the slot goes, template). ``{P}`` is the slot: an attribute value (written with quotes by the
#: template) or element text. ``{S}`` marks the element whose text or attribute holds the slot, for the mutators.
FIELDS: list[tuple[str, str, str]] = [
    ("os/kernel", "text", "<os><type arch='x86_64'>hvm</type><kernel>{P}</kernel></os>"),
    ("os/initrd", "text", "<os><type arch='x86_64'>hvm</type><kernel>/var/lib/libvirt/boot/k</kernel>"
                          "<initrd>{P}</initrd></os>"),
    ("os/dtb", "text", "<os><type arch='x86_64'>hvm</type><dtb>{P}</dtb></os>"),
    ("os/loader", "text", "<os><type arch='x86_64'>hvm</type><loader readonly='yes' type='pflash'>{P}</loader></os>"),
    ("os/nvram", "text", "<os><type arch='x86_64'>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/"
                         "C.fd</loader><nvram>{P}</nvram></os>"),
    ("os/nvram@template", "attr", "<os><type arch='x86_64'>hvm</type><loader readonly='yes' type='pflash'>/usr/share/"
                                  "OVMF/C.fd</loader><nvram template='{P}'>/var/lib/libvirt/qemu/nvram/fuzz_VARS.fd"
                                  "</nvram></os>"),
    ("os/acpi/table", "text", "<os><type arch='x86_64'>hvm</type><acpi><table type='slic'>{P}</table></acpi></os>"),
    ("emulator", "text", "<devices><emulator>{P}</emulator></devices>"),
    ("disk@file", "attr", "<devices><disk type='file' device='disk'><source file='{P}'/><target dev='vda'/></disk>"
                          "</devices>"),
    ("cdrom@file", "attr", "<devices><disk type='file' device='cdrom'><source file='{P}'/><target dev='hdc'/>"
                           "<readonly/></disk></devices>"),
    ("disk@dir", "attr", "<devices><disk type='dir' device='disk'><source dir='{P}'/><target dev='vda'/></disk>"
                         "</devices>"),
    ("disk@dev", "attr", "<devices><disk type='block' device='disk'><source dev='{P}'/><target dev='vda'/></disk>"
                         "</devices>"),
    ("backingStore@file", "attr", "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                                  f"<source file='{OWN}/a.qcow2'/><backingStore type='file'><format type='raw'/>"
                                  "<source file='{P}'/></backingStore><target dev='vda'/></disk></devices>"),
    ("filesystem@dir", "attr", "<devices><filesystem type='mount'><source dir='{P}'/><target dir='t'/></filesystem>"
                               "</devices>"),
    ("filesystem@file", "attr", "<devices><filesystem type='file'><driver type='loop' format='raw'/><source "
                                "file='{P}'/><target dir='t'/></filesystem></devices>"),
    ("serial-file@path", "attr", "<devices><serial type='file'><source path='{P}'/></serial></devices>"),
    ("serial-unix@path", "attr", "<devices><serial type='unix'><source mode='bind' path='{P}'/></serial></devices>"),
    ("serial-dev@path", "attr", "<devices><serial type='dev'><source path='{P}'/></serial></devices>"),
    ("serial-pipe@path", "attr", "<devices><serial type='pipe'><source path='{P}'/></serial></devices>"),
    ("serial-log@file", "attr", "<devices><serial type='pty'><log file='{P}'/></serial></devices>"),
    ("channel@path", "attr", "<devices><channel type='unix'><source mode='bind' path='{P}'/><target type='virtio' "
                             "name='x.0'/></channel></devices>"),
    ("console-file@path", "attr", "<devices><console type='file'><source path='{P}'/></console></devices>"),
    ("rng", "text", "<devices><rng model='virtio'><backend model='random'>{P}</backend></rng></devices>"),
    ("tpm@path", "attr", "<devices><tpm model='tpm-tis'><backend type='passthrough'><device path='{P}'/></backend>"
                         "</tpm></devices>"),
    ("input@evdev", "attr", "<devices><input type='passthrough' bus='virtio'><source evdev='{P}'/></input>"
                            "</devices>"),
    ("nvdimm/path", "text", "<maxMemory slots='2' unit='MiB'>1024</maxMemory><cpu><numa><cell id='0' cpus='0' "
                            "memory='32' unit='MiB'/></numa></cpu><devices><memory model='nvdimm'><source><path>{P}"
                            "</path></source><target><size unit='MiB'>32</size><node>0</node></target></memory>"
                            "</devices>"),
    ("interface-script@path", "attr", "<devices><interface type='ethernet'><script path='{P}'/></interface>"
                                      "</devices>"),
    ("interface-vhostuser@path", "attr", "<devices><interface type='vhostuser'><source type='unix' path='{P}' "
                                         "mode='client'/><model type='virtio'/></interface></devices>"),
    ("interface-rom@file", "attr", "<devices><interface type='network'><source network='default'/><rom file='{P}'/>"
                                   "</interface></devices>"),
    ("graphics@socket", "attr", "<devices><graphics type='vnc' socket='{P}'/></devices>"),
    ("sysinfo-fwcfg@file", "attr", "<sysinfo type='fwcfg'><entry name='opt/x' file='{P}'/></sysinfo>"),
    ("hostdev-storage/block", "text", "<devices><hostdev mode='capabilities' type='storage'><source><block>{P}"
                                      "</block></source></hostdev></devices>"),
    ("blkiotune/path", "text", "<blkiotune><device><path>{P}</path><weight>500</weight></device></blkiotune>"),
    ("lease@path", "attr", "<devices><lease><lockspace>s</lockspace><key>k</key><target path='{P}'/></lease>"
                           "</devices>"),
    ("shmem-server@path", "attr", "<devices><shmem name='s'><model type='ivshmem-doorbell'/><server path='{P}'/>"
                                  "</shmem></devices>"),
    ("smartcard/database", "text", "<devices><smartcard mode='host-certificates'><certificate>a</certificate>"
                                   "<certificate>b</certificate><certificate>c</certificate><database>{P}</database>"
                                   "</smartcard></devices>"),
    ("qemu:arg", "attr", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg "
                         "value='-kernel'/><qemu:arg value='{P}'/></qemu:commandline>"),
]


def _document(body: str, doctype: str = "", attrs: str = "") -> str:
    os_part = "" if body.startswith("<os>") else "<os><type arch='x86_64'>hvm</type></os>"
    return (f"{doctype}<domain type='kvm'{attrs}><name>{VM}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            f"{os_part}{body}</domain>")


def _char_refs(rng: random.Random, text: str) -> str:
    return "".join(f"&#x{ord(c):x};" if rng.random() < 0.4 else f"&#{ord(c)};" if rng.random() < 0.2 else c
                   for c in text)


def _cut(rng: random.Random, text: str) -> tuple[str, str]:
    at = rng.randrange(0, len(text) + 1)
    return text[:at], text[at:]


def _path(rng: random.Random) -> str:
    """The forbidden path, written as a path that leads there."""
    return rng.choice([FORBIDDEN, f"{OWN}/../../../../../etc/shadow", "/etc//shadow", "/etc/./shadow",
                       "/var/lib/libvirt/boot/../../../../etc/shadow", "etc/shadow", "../../../../etc/shadow",
                       "/usr/share/OVMF/../../../etc/shadow"])


def _text_slot(rng: random.Random) -> tuple[str, str, str]:
    """(the slot's text, a DOCTYPE if it needs one, how it was disguised)."""
    path = _path(rng)
    kind = rng.choice(["plain", "element", "comment", "pi", "cdata", "charref", "entity", "space", "mixed"])
    if kind == "element":
        a, b = _cut(rng, path)
        return f"{a}<{rng.choice(['x', 'b', 'name', 'path'])}/>{b}", "", kind
    if kind == "comment":
        a, b = _cut(rng, path)
        return f"{a}<!-- {rng.choice(['', '/var/lib/libvirt/images/fuzz/x', '-'])} -->{b}", "", kind
    if kind == "pi":
        a, b = _cut(rng, path)
        return f"{a}<?x y?>{b}", "", kind
    if kind == "cdata":
        a, b = _cut(rng, path)
        return f"{a}<![CDATA[{b}]]>", "", kind
    if kind == "charref":
        return _char_refs(rng, path), "", kind
    if kind == "entity":
        return "&e;", f"<!DOCTYPE domain [<!ENTITY e '{path}'>]>", kind
    if kind == "space":
        return rng.choice([" ", "\n", "\t", "  \n "]) + path + rng.choice(["", " ", "\n"]), "", kind
    a, b = _cut(rng, path)  # mixed: several disguises at once
    return f"{_char_refs(rng, a)}<!---->{'<x/>' if rng.random() < 0.5 else ''}<![CDATA[{b}]]>", "", kind


def _attr_slot(rng: random.Random) -> tuple[str, str, str]:
    path = _path(rng)
    kind = rng.choice(["plain", "charref", "entity", "space"])
    if kind == "charref":
        return _char_refs(rng, path), "", kind
    if kind == "entity":
        return "&e;", f"<!DOCTYPE domain [<!ENTITY e '{path}'>]>", kind
    if kind == "space":
        return rng.choice([" ", "&#10;", "&#9;"]) + path, "", kind
    return path, "", kind


def _restructure(rng: random.Random, body: str, slot_kind: str) -> tuple[str, str, str]:
    """(body, extra root attributes, what was done): namespaces, case, duplicates, attribute order, comments."""
    kind = rng.choice(["none", "none", "namespace-attr", "namespace-element", "case", "duplicate", "reorder",
                       "comments-between", "metadata"])
    if kind == "namespace-attr" and slot_kind == "attr":
        # the slot's attribute also under a namespace, with a harmless value in the plain one
        body = body.replace("='{P}'", f"='{OWN}/x' f:{{A}}='{{P}}'", 1)
        return body, " xmlns:f='urn:fuzz'", kind
    if kind == "namespace-element" and (found := re.search(r"<devices><(\w+)", body)):
        name = found.group(1)
        start = found.start(1) - 1
        tail = body[start:].replace(f"<{name}", f"<f:{name}", 1).replace(f"</{name}>", f"</f:{name}>", 1)
        return body[:start] + tail, " xmlns:f='urn:fuzz'", kind
    if kind == "case":
        return body.replace("<devices>", "<Devices>").replace("</devices>", "</Devices>"), "", kind
    if kind == "duplicate" and "<devices>" in body:
        inner = body[body.index("<devices>") + 9:body.rindex("</devices>")]
        benign = inner.replace("{P}", f"{OWN}/x")
        pair = benign + inner if rng.random() < 0.5 else inner + benign
        return body.replace(inner, pair, 1), "", kind
    if kind == "comments-between":
        return body.replace("><", "><!-- c --><", rng.randrange(1, 4)), "", kind
    if kind == "metadata":
        return f"<metadata><m:x xmlns:m='urn:m'>{body}</m:x></metadata>", "", kind
    return body, "", "none"


def _attr_name(template: str) -> str:
    """The attribute whose value is the slot: ``file`` in ``file='{P}'``."""
    before = template.split("='{P}'", 1)[0]
    return before.rsplit(" ", 1)[-1]


def variants(seed: int, count: int) -> Iterator[tuple[str, str, str]]:
    """``count`` (field, disguise, document) triples, the same for the same seed; every field in turn."""
    rng = random.Random(seed)
    for i in range(count):
        field, where, template = FIELDS[i % len(FIELDS)]
        body, attrs, structure = _restructure(rng, template, where)
        if "{A}" in body:
            body = body.replace("{A}", _attr_name(template))
        slot, doctype, disguise = (_text_slot if where == "text" else _attr_slot)(rng)
        if where == "attr" and "'" in slot:
            slot = slot.replace("'", "&apos;")
        yield field, f"{disguise}+{structure}", _document(body.replace("{P}", slot), doctype, attrs)


@dataclass
class Outcome:
    cases: int = 0
    #: libvirt read the variant (it would define it) and it leads to the forbidden file: the cases that matter.
    forbidden: int = 0
    refused: int = 0
    #: forbidden variants pvc accepted: holes (field, disguise, document)
    holes: list[tuple[str, str, str]] | None = None
    by_field: dict[str, int] | None = None


class _Oracle:
    def __init__(self) -> None:
        self.conn = libvirt.open("test:///default")
        for domain in self.conn.listAllDomains():
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        self.lock = threading.Lock()

    def reading(self, text: str) -> ET.Element | None:
        """libvirt's reading of the text as given (None: libvirt would not define it)."""
        with self.lock:
            try:
                domain = self.conn.defineXML(text)
            except libvirt.libvirtError:
                return None
            try:
                described = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
            finally:
                domain.undefine()
        root = ET.fromstring(_without_free_text(described))
        return root


def _without_free_text(described: str) -> str:
    """libvirt's description without <metadata>, <title> and <description>: text libvirt keeps for people and
    applications and never uses as a host resource (metadata is copied verbatim, entity references and all)."""
    return re.sub(r"<(metadata|title|description)>.*?</\1>", "", described, flags=re.DOTALL)


def _leads_to_forbidden(value: str) -> bool:
    value = value.strip()
    return bool(value) and posixpath.normpath(posixpath.join("/", value)) == FORBIDDEN


def _forbidden(oracle: _Oracle, text: str) -> bool:
    reading = oracle.reading(text)
    if reading is None:
        return False
    if "qemu/1.0" in text and "commandline" in text:
        try:  # the test driver drops qemu: elements; QEMU's driver would pass them on
            from lxml import etree
            tree = etree.fromstring(text.encode(), etree.XMLParser(resolve_entities=True, no_network=True))
            if tree.find("{http://libvirt.org/schemas/domain/qemu/1.0}commandline") is not None:
                return True
        except etree.LxmlError:
            return False
    return any(_leads_to_forbidden(v) for element in reading.iter()
               for v in [element.text or "", *element.attrib.values()])


def judge(text: str, policy: XmlPolicy) -> bool:
    """pvc refuses ``text`` (libvirt-reading ``Invalid``, or a policy violation)."""
    try:
        return bool(violations(read(text), policy))
    except Invalid:
        return True


def run(seed: int, count: int, policy: XmlPolicy | None = None) -> Outcome:
    """Generate ``count`` variants from ``seed`` and judge each by the oracle and by pvc."""
    policy = policy or XmlPolicy()
    oracle, outcome = _Oracle(), Outcome(holes=[], by_field={})
    for field, disguise, text in variants(seed, count):
        outcome.cases += 1
        if not _forbidden(oracle, text):
            continue
        outcome.forbidden += 1
        outcome.by_field[field] = outcome.by_field.get(field, 0) + 1
        if judge(text, policy):
            outcome.refused += 1
        else:
            outcome.holes.append((field, disguise, text))
    return outcome
