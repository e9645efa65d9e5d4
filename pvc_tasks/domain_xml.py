"""A VM's libvirt XML, read as libvirt reads it: the one reading that pvc's checks, records and defines all use.

pvc once judged the client's text with ElementTree while libvirt read it with libxml2, and the two disagreed: an
element split by a child (``<initrd><x/>/etc/shadow</initrd>``) was empty to one and ``/etc/shadow`` to the other,
a namespaced attribute (``foo:file``) was nothing to one and ``file`` to the other. ``read`` returns a ``DomainXml``
made in four steps, and refuses (``Invalid``) when one fails (libvirt's reading is taken before the schema check,
whose messages say less):

1. **strict**: well-formed; no DOCTYPE (so no entities, internal or external); at most ``MAX_DEPTH`` levels of
   elements; the root is ``<domain>``; an element
   or attribute in a namespace only inside ``<metadata>`` (applications' data) or, for elements, in the ``qemu:``
   namespace, which the policy judges (libvirt's test driver drops it).
2. **canonical**: the tree written out again, with a ``<uuid>`` when it had none: no comments, processing
   instructions, CDATA sections or character references are left, so ElementTree, libxml2 and every later reader
   see one tree. pvc stores exactly this text in ZooKeeper and hands exactly this text to libvirt.
3. **valid**: the installed libvirt's own RELAX NG schema (``domain.rng``, what ``virsh define --validate``
   checks; compiled once per process) accepts it: no text beside child elements, no attribute libvirt does not
   know, no relative path where the schema wants an absolute one.
4. **libvirt's reading**: defined on a private ``test:///default`` connection of this process (libvirt's own parser
   and its post-parse defaults; the test driver keeps domains in memory and touches nothing on the host) and read
   back with ``XMLDesc``, then undefined. Name, UUID, memory and vCPUs are taken from it.

The policy (``pvc_tasks.xml_policy``) judges both trees: libvirt's reading (what libvirt made of the text) and the
canonical one (what the text says, including what the test driver leaves out but QEMU's driver would honour:
``seclabel``, ``qemu:`` elements). The API reads every define this way; every worker reads every document again
before it gives it to its own libvirt (``pvc_workers.xml_guard``).
"""

from __future__ import annotations

import threading
import uuid as uuidlib
import xml.etree.ElementTree as ET
import xml.parsers.expat
from dataclasses import dataclass

import libvirt
from lxml import etree as lxml_etree

from pvc_tasks import defaults
from pvc_tasks.errors import Invalid
from pvc_tasks.names import NAME_RULE, is_name

__all__ = ["MAX_DEPTH", "QEMU_NS", "DomainXml", "read"]

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)
# libvirt prints every error to stderr by default; a refused reading is raised as Invalid instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
ET.register_namespace("libosinfo", "http://libosinfo.org/xmlns/libvirt/domain/1.0")


@dataclass(frozen=True)
class DomainXml:
    """One VM definition, read once: the text pvc keeps and defines, both trees, and the facts pvc records."""

    #: The canonical text: stored in ZooKeeper, handed to libvirt.
    xml: str
    #: The canonical text parsed (ElementTree): what the document says.
    tree: ET.Element
    #: libvirt's reading of it (``XMLDesc`` of the test driver): what libvirt makes of it.
    libvirt: ET.Element
    name: str
    uuid: str
    memory_mib: int
    vcpus: int


def _invalid(message: str, detail: str, code: str | None = None) -> Invalid:
    return Invalid(f"xml: {message}", code=code, details={"xml": [detail]})


#: Deepest nesting of elements accepted (libvirt's parser stops at 256; a walk of ours would recurse).
MAX_DEPTH = 64


def _well_formed(text: str) -> ET.Element:
    """Parsed, after an expat pass that refuses any DOCTYPE (entities, and the billion laughs, with it) and
    elements nested deeper than ``MAX_DEPTH`` (a 500 KiB document can nest 50,000 deep, past any recursion)."""
    checker = xml.parsers.expat.ParserCreate()
    depth = [0]

    def doctype(*_args) -> None:
        raise _invalid("a DOCTYPE (and so entities) is not accepted", "DOCTYPE declared", "xml_not_allowed")

    def start(*_args) -> None:
        depth[0] += 1
        if depth[0] > MAX_DEPTH:
            raise _invalid(f"elements nested deeper than {MAX_DEPTH} levels", f"nested deeper than {MAX_DEPTH}")

    def end(*_args) -> None:
        depth[0] -= 1

    checker.StartDoctypeDeclHandler = doctype
    checker.EntityDeclHandler = doctype
    checker.StartElementHandler = start
    checker.EndElementHandler = end
    try:
        checker.Parse(text, True)
        return ET.fromstring(text)
    except (xml.parsers.expat.ExpatError, ET.ParseError) as exc:
        raise _invalid(f"not well-formed XML ({exc})", str(exc)) from exc


def _namespaces(root: ET.Element) -> None:
    """Elements and attributes in a namespace only inside ``<metadata>``; elements of ``qemu:`` anywhere."""
    if root.tag != "domain":
        raise _invalid("the root element must be <domain>", "root element is not <domain>")

    def walk(element: ET.Element, where: str) -> None:
        for name in element.attrib:
            if name.startswith("{"):
                raise _invalid(f"{where}: attribute {name} is in a namespace (libvirt reads such attributes by "
                               f"their local name)", f"{where}@{name}", "xml_not_allowed")
        for child in element:
            tag = child.tag
            if tag == "metadata" and element is root:
                continue
            if tag.startswith("{") and not tag.startswith("{" + QEMU_NS + "}"):
                raise _invalid(f"{where}/{tag}: elements in a namespace belong inside <metadata>",
                               f"{where}/{tag}", "xml_not_allowed")
            walk(child, f"{where}/{tag.rsplit('}', 1)[-1]}")

    walk(root, "domain")


def _canonical(root: ET.Element) -> str:
    """The tree as text, with a ``<uuid>`` (a new one when it has none): the VM keeps this identity on every node;
    without it each define (a handover on the test driver, a recovery, a restore) would let libvirt invent one."""
    if root.find("uuid") is None:
        element = ET.Element("uuid")
        element.text = str(uuidlib.uuid4())
        name_at = next((i for i, child in enumerate(root) if child.tag == "name"), 0)
        root.insert(name_at + 1, element)
    return ET.tostring(root, encoding="unicode")


class _Schema:
    """libvirt's domain schema, compiled on first use (about 12 ms); a compiled RELAX NG validates in about 0.2 ms
    (libvirt's own ``--validate`` compiles it on every define: 15 ms). lxml's validators are not thread-safe."""

    def __init__(self, path: str) -> None:
        self.path, self._compiled, self._lock = path, None, threading.Lock()

    def check(self, text: str) -> None:
        with self._lock:
            if self._compiled is None:
                try:
                    self._compiled = lxml_etree.RelaxNG(lxml_etree.parse(self.path))
                except (OSError, lxml_etree.LxmlError) as exc:
                    raise Invalid(f"xml: libvirt's domain schema {self.path} cannot be read here ({exc}); install "
                                  f"libvirt0", code="xml_schema_missing") from exc
            parser = lxml_etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
            document = lxml_etree.fromstring(text.encode(), parser)
            if not self._compiled.validate(document):
                # libxml2 reports the innermost offender first ("Extra element initrd in interleave").
                errors = list(dict.fromkeys(f"{e.path}: {e.message}" if e.path else e.message
                                            for e in self._compiled.error_log))[:3]
                raise _invalid(f"libvirt's schema refuses it (an element or value not allowed there, text beside "
                               f"child elements, or a relative path): {'; '.join(errors)}", "; ".join(errors))


class _Reader:
    """libvirt's parser, reached through a private in-memory test driver: one connection for the process's life,
    one document at a time (each is defined under its own name and undefined again)."""

    def __init__(self) -> None:
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    def _connection(self) -> libvirt.virConnect:
        if self._conn is None:
            self._conn = libvirt.open("test:///default")
            for domain in self._conn.listAllDomains():  # the driver's sample domain ("test") would take a name
                if domain.isActive():
                    domain.destroy()
                domain.undefine()
        return self._conn

    def reading(self, text: str) -> ET.Element:
        with self._lock:
            try:
                domain = self._connection().defineXML(text)
            except libvirt.libvirtError as exc:
                message = exc.get_error_message() or str(exc)
                raise _invalid(f"libvirt cannot read it: {message}", message) from exc
            try:
                described = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
            finally:
                domain.undefine()
        return ET.fromstring(described)


_SCHEMA = _Schema(defaults.LIBVIRT_DOMAIN_SCHEMA)
_READER = _Reader()


def _uuid(text: str | None) -> uuidlib.UUID | None:
    try:
        return uuidlib.UUID((text or "").strip())
    except ValueError:
        return None


def read(text: str) -> DomainXml:
    """The four steps of the module docstring; ``Invalid`` (``invalid_request``, or ``xml_not_allowed`` for what the
    policy would refuse anyway) naming the first thing that fails."""
    root = _well_formed(text)
    _namespaces(root)
    canonical = _canonical(root)
    reading = _READER.reading(canonical)  # first: libvirt's own message says best what it cannot read
    _SCHEMA.check(canonical)
    name = reading.findtext("name") or ""
    if not is_name(name):
        raise _invalid(f"<name> {name!r} must be {NAME_RULE}, exactly (no spaces around it)",
                       "invalid or missing <name>")
    if (root.findtext("name") or "") != name or _uuid(root.findtext("uuid")) != _uuid(reading.findtext("uuid")):
        raise _invalid("libvirt reads another name or UUID than the text says", "name or uuid read differently")
    memory = reading.find("memory")
    try:
        kib = int(memory.text or "") * {"KiB": 1, "MiB": 1024, "GiB": 1024**2}[memory.get("unit", "KiB")]  # type: ignore[union-attr]
        vcpus = int(reading.findtext("vcpu") or "1")
    except (AttributeError, KeyError, ValueError) as exc:
        raise _invalid("<memory> and <vcpu> must be numbers with a known unit", "invalid <memory> or <vcpu>") from exc
    if kib < 1024 or vcpus < 1:
        raise _invalid("memory must be at least 1 MiB and vcpu positive", "too little memory, or no vCPU")
    return DomainXml(canonical, root, reading, name, str(reading.findtext("uuid")), kib // 1024, vcpus)
