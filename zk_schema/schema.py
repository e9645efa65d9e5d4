"""The ZooKeeper key layout of one schema version, and the operations on a live cluster that need only it.

A version is a data file, ``versions/<N>.json``. It has *sections*; each section has a ``root`` template (``""``
for the cluster-wide ``base`` section, ``/nodes/{node}`` for a node, ``/nodes/{node}/sriov/vf/{vf}`` for a VF)
and *keys*, each with a path below the root and a default value. A key name is ``<section>.<key>``:

    schema.path("node.keepalive", "hv1")        -> "/nodes/hv1/keepalive"
    schema.path("node", "hv1")                  -> "/nodes/hv1"        (the section root itself)
    schema.path("base.config.maintenance")      -> "/config/maintenance"
    schema.path("sriov_vf.used_by", "hv1", "ens1f0v3")

This is the only place in the project that knows a path string. Keys marked ``ephemeral`` (node presence) are
owned by a live session and are never created with defaults; keys marked ``secret`` are never shown by the API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

__all__ = ["Key", "Schema", "SchemaError", "available_versions"]

_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


class SchemaError(Exception):
    """A key name, version or cluster that does not fit the schema."""


@dataclass(frozen=True)
class Key:
    """One key of a section: its path below the section root and its default data."""

    section: str
    name: str
    path: str
    default: str = ""
    ephemeral: bool = False
    secret: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.section}.{self.name}"


def available_versions() -> list[int]:
    """Every schema version shipped with this code, ascending."""
    files = resources.files("zk_schema").joinpath("versions").iterdir()
    return sorted(int(f.name.removesuffix(".json")) for f in files if f.name.endswith(".json"))


class Schema:
    """The key layout of one version; build it with ``Schema.load(version)`` or ``Schema.latest()``."""

    def __init__(self, document: dict) -> None:
        self.version: int = int(document["version"])
        self.description: str = document.get("description", "")
        # Keys whose *name* changed since the previous version (old full name -> new full name).
        self.renamed: dict[str, str] = dict(document.get("renamed", {}))
        self.roots: dict[str, str] = {}
        self.keys: dict[str, Key] = {}
        for section, body in document["sections"].items():
            self.roots[section] = body["root"]
            for name, spec in body["keys"].items():
                key = Key(section, name, spec["path"], spec.get("default", ""),
                          bool(spec.get("ephemeral")), bool(spec.get("secret")))
                self.keys[key.full_name] = key

    @classmethod
    def load(cls, version: int) -> Schema:
        try:
            text = resources.files("zk_schema").joinpath(f"versions/{int(version)}.json").read_text()
        except (FileNotFoundError, ValueError) as exc:
            raise SchemaError(f"schema version {version!r} is not known to this code "
                              f"(known: {available_versions()})") from exc
        return cls(json.loads(text))

    @classmethod
    def latest(cls) -> Schema:
        return cls.load(available_versions()[-1])

    # ---- names to paths -------------------------------------------------------------------------------------
    def path(self, key: str, *names: str) -> str:
        """The absolute path of ``key`` (``section.key`` or a bare section) for the instance ``names``."""
        section, _, sub = key.partition(".")
        if section not in self.roots:
            raise SchemaError(f"unknown schema section {section!r} in key {key!r}")
        root = self.root(section, *names)
        if not sub:
            return root or "/"
        spec = self.keys.get(key)
        if spec is None:
            raise SchemaError(f"unknown key {key!r} in schema version {self.version}")
        return root + spec.path

    def root(self, section: str, *names: str) -> str:
        template = self.roots[section]
        wanted = template.count("{")
        if len(names) != wanted:
            raise SchemaError(f"section {section!r} needs {wanted} name(s), got {len(names)}: {names!r}")
        for name in names:
            if not name or "/" in name:
                raise SchemaError(f"invalid name {name!r} for section {section!r}")
        values = iter(names)
        return _PLACEHOLDER.sub(lambda _: next(values), template)

    def section_keys(self, section: str, *, persistent: bool = True) -> list[Key]:
        """The keys of a section in file order; ``persistent`` leaves out ephemeral ones."""
        return [k for k in self.keys.values() if k.section == section and not (persistent and k.ephemeral)]

    def secret_keys(self) -> set[str]:
        return {k.full_name for k in self.keys.values() if k.secret}

    # ---- instances on a live cluster ------------------------------------------------------------------------
    def instances(self, zk: KazooClient, section: str) -> Iterator[tuple[str, ...]]:
        """Every instance of a section present in ZooKeeper, as the tuple of names that fills its root."""
        template = self.roots[section]
        if "{" not in template:
            yield ()
            return
        parts = template.strip("/").split("/")

        def walk(prefix: str, rest: list[str], names: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
            if not rest:
                yield names
                return
            head, tail = rest[0], rest[1:]
            if head.startswith("{"):
                try:
                    children = sorted(zk.get_children(prefix or "/"))
                except NoNodeError:
                    return
                for child in children:
                    yield from walk(f"{prefix}/{child}", tail, names + (child,))
            else:
                yield from walk(f"{prefix}/{head}", tail, names)

        yield from walk("", parts, ())

    def missing(self, zk: KazooClient) -> list[str]:
        """Paths of persistent keys absent from the live cluster (empty when the cluster is valid)."""
        absent = []
        for section in self.roots:
            for names in self.instances(zk, section):
                for key in self.section_keys(section):
                    path = self.path(key.full_name, *names)
                    if zk.exists(path) is None:
                        absent.append(path)
        return absent

    def apply_defaults(self, zk: KazooClient) -> list[str]:
        """Create every missing persistent key with its default; returns the paths created."""
        created = []
        for path in self.missing(zk):
            key_default = self._default_for(path)
            try:
                zk.create(path, key_default.encode(), makepath=True)
                created.append(path)
            except NodeExistsError:
                continue
        return created

    def create_ops(self, section: str, *names: str, values: dict[str, str] | None = None) -> list[tuple[str, bytes]]:
        """(path, data) pairs that create one instance with defaults overridden by ``values`` (key -> data),
        parents before children, for use inside a transaction."""
        values = dict(values or {})
        unknown = set(values) - {k.name for k in self.section_keys(section)}
        if unknown:
            raise SchemaError(f"unknown {section} keys: {sorted(unknown)}")
        root = self.root(section, *names)
        ops: dict[str, bytes] = {root: values.pop("", "").encode()} if root else {}
        for key in self.section_keys(section):
            path = root + key.path
            # Intermediate directories such as /meta are created empty, before their children.
            parent = path.rsplit("/", 1)[0]
            while parent != root and parent not in ops:
                ops[parent] = b""
                parent = parent.rsplit("/", 1)[0]
            ops[path] = values.get(key.name, key.default).encode()
        return sorted(ops.items(), key=lambda item: item[0].count("/"))

    def _default_for(self, path: str) -> str:
        for section in self.roots:
            template = self.roots[section]
            for key in self.section_keys(section):
                pattern = (template + key.path).split("/")
                parts = path.split("/")
                if len(pattern) == len(parts) and all(p.startswith("{") or p == q for p, q in zip(pattern, parts)):
                    return key.default
        return ""
