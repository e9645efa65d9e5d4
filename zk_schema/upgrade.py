"""Cluster creation and schema upgrades on a live ZooKeeper.

Protocol of an upgrade from version N to N+1 (``migrate``):

1. Take the ZooKeeper lock at ``base.lock.schema`` so that exactly one process upgrades; a second caller waits
   for it, then finds the version already moved and does nothing.
2. Compute the plan from the two data files (``plan``): keys *added* (create with default), *removed* (delete),
   and *moved* (same key with a new path, or a key renamed through the newer file's ``renamed`` map: the data is
   copied to the new path and the old path deleted).
3. Apply the plan instance by instance (the cluster config, each node, each VM, ...), one ZooKeeper transaction
   per instance, so an instance is never half-upgraded. Every step tests what exists first, which makes a crashed
   upgrade safe to run again.
4. Run the version's hand-written step, if it has one (``zk_schema.steps``: data derived from what the cluster
   holds, such as schema 8's indexes). The upgrade holds the define lock (from schema 7 on) through steps 3-5, so
   no define decides against a layout that is changing; a define also checks the version in its transaction.
5. Write the new version to ``base.schema.version`` last. Workers watch that key and re-exec themselves when it
   changes, because their live watches were set on the old paths and cannot be moved in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from zk_schema.schema import Schema, SchemaError, available_versions
from zk_schema.steps import STEPS

__all__ = ["UpgradePlan", "cluster_version", "init_cluster", "migrate", "plan", "upgrade_to_latest"]


@dataclass
class UpgradePlan:
    """What changes between two versions, by full key name."""

    old: Schema
    new: Schema
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)  # old full name -> new full name (path differs)


def plan(old: Schema, new: Schema) -> UpgradePlan:
    """Compare two versions; pure, no ZooKeeper needed."""
    if new.version != old.version + 1:
        raise SchemaError(f"upgrades go one version at a time: {old.version} -> {new.version}")
    if any(new.roots.get(section) != root for section, root in old.roots.items()):
        raise SchemaError("section roots changed or went; this upgrade needs a hand-written step")
    result = UpgradePlan(old, new)
    sources = {new_name: old_name for old_name, new_name in new.renamed.items()}
    for name, key in new.keys.items():
        if key.ephemeral:
            continue
        source = sources.get(name, name)
        previous = old.keys.get(source)
        if previous is None:
            result.added.append(name)
        elif previous.path != key.path or source != name:
            result.moved[source] = name
    consumed = set(result.moved) | set(new.keys)
    result.removed = [name for name, key in old.keys.items() if name not in consumed and not key.ephemeral]
    return result


def cluster_version(zk: KazooClient, schema: Schema | None = None) -> int | None:
    """The schema version a cluster records, or None when no cluster was created."""
    # The version key's path is the same in every version; a change would make clusters unreadable.
    path = (schema or Schema.latest()).path("base.schema.version")
    try:
        data, _ = zk.get(path)
    except NoNodeError:
        return None
    return int(data.decode() or 0)


def init_cluster(zk: KazooClient, version: int | None = None) -> tuple[Schema, list[str]]:
    """Create a cluster at ``version`` (default: latest) or, when one exists, add keys missing from its version."""
    current = cluster_version(zk)
    if current is None:
        current_or_new = available_versions()[-1] if version is None else version
    else:
        current_or_new = current
    schema = Schema.load(current_or_new)
    if current is None:
        zk.create(schema.path("base.schema.version"), str(schema.version).encode(), makepath=True)
    created = schema.apply_defaults(zk)
    return schema, created


def _ensure_parents(zk: KazooClient, path: str, tx, planned: set[str]) -> None:
    parent = path.rsplit("/", 1)[0]
    chain = []
    while parent and parent not in planned and zk.exists(parent) is None:
        chain.append(parent)
        parent = parent.rsplit("/", 1)[0]
    for p in reversed(chain):
        tx.create(p, b"")
        planned.add(p)


def _delete_tree_ops(zk: KazooClient, path: str, tx) -> None:
    for child in zk.get_children(path):
        _delete_tree_ops(zk, f"{path}/{child}", tx)
    tx.delete(path)


def _upgrade_instance(zk: KazooClient, p: UpgradePlan, section: str, names: tuple[str, ...]) -> None:
    tx = zk.transaction()
    planned: set[str] = set()
    for old_name, new_name in p.moved.items():
        if not old_name.startswith(section + "."):
            continue
        src, dst = p.old.path(old_name, *names), p.new.path(new_name, *names)
        if zk.exists(src) is None or zk.exists(dst) is not None:
            continue
        data, _ = zk.get(src)
        _ensure_parents(zk, dst, tx, planned)
        tx.create(dst, data)
        planned.add(dst)
        tx.delete(src)
    for name in p.added:
        if not name.startswith(section + "."):
            continue
        dst = p.new.path(name, *names)
        if zk.exists(dst) is None and dst not in planned:
            _ensure_parents(zk, dst, tx, planned)
            tx.create(dst, p.new.keys[name].default.encode())
            planned.add(dst)
    for name in p.removed:
        if name.startswith(section + "."):
            src = p.old.path(name, *names)
            if zk.exists(src) is not None:
                _delete_tree_ops(zk, src, tx)
    if tx.operations:
        results = tx.commit()
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            raise SchemaError(f"upgrade of {section} {names!r} failed: {failures[0]!r}")


def migrate(zk: KazooClient, target: int, *, lock_timeout: float = 30.0) -> Schema:
    """Upgrade the live cluster one version to ``target`` under the schema lock; a no-op when already there."""
    lock = zk.Lock(Schema.latest().path("base.lock.schema"), "schema-upgrade")
    if not lock.acquire(timeout=lock_timeout):
        raise SchemaError(f"could not take the schema lock within {lock_timeout} s")
    try:
        current = cluster_version(zk)
        if current is None:
            raise SchemaError("no cluster here: run `pvc cluster init` first")
        if current == target:
            return Schema.load(target)
        p = plan(Schema.load(current), Schema.load(target))
        define_lock = zk.Lock(p.old.path("base.lock.define"), "schema-upgrade") if "base.lock.define" in p.old.keys \
            else None
        if define_lock and not define_lock.acquire(timeout=lock_timeout):
            raise SchemaError(f"could not take the define lock within {lock_timeout} s")
        try:
            for section in p.old.roots:  # a section new in this version has no instances yet (or its step makes them)
                for names in p.old.instances(zk, section):
                    _upgrade_instance(zk, p, section, names)
            if target in STEPS:
                STEPS[target](zk, p.new)
            zk.set(p.new.path("base.schema.version"), str(target).encode())
        finally:
            if define_lock:
                define_lock.release()
        return p.new
    finally:
        lock.release()


def workers_unable(zk: KazooClient, schema: Schema, versions: list[int]) -> dict[str, str]:
    """Nodes whose RUNNING worker could not load every one of ``versions`` -> why. A worker re-executes at each
    version the cluster passes through and exits when it cannot load it; a node without a worker (no presence) is
    not asked: it loads whatever the cluster records when it starts. A worker says what it can load in its ephemeral
    ``node.schema_loadable``, at the newest layout's path; one that does not say is older than that key."""
    latest = Schema.latest()
    unable = {}
    for node in sorted(zk.get_children(schema.path("base.node"))):
        if zk.exists(schema.path("node.presence", node)) is None:
            continue
        try:
            loadable = {int(v) for v in zk.get(latest.path("node.schema_loadable", node))[0].decode().split(",") if v}
        except NoNodeError:
            unable[node] = "its worker does not say which schema versions it can load (it predates schema 7)"
            continue
        lacking = [v for v in versions if v not in loadable]
        if lacking:
            unable[node] = (f"its worker cannot load schema {', '.join(map(str, lacking))} (it loads up to "
                            f"{max(loadable)})")
    return unable


def upgrade_to_latest(zk: KazooClient) -> list[int]:
    """Apply every pending upgrade in order; returns the versions passed through."""
    current = cluster_version(zk)
    if current is None:
        raise SchemaError("no cluster here: run `pvc cluster init` first")
    done = []
    for version in available_versions():
        if version > current:
            migrate(zk, version)
            done.append(version)
    return done
