"""Who may touch a cluster's tree: one digest identity (pvc's), with every right; nobody else, not even to read.

Every pvc process authenticates to ZooKeeper as the identity of the ``zookeeper_auth`` setting
(``user:password``) and creates every node with ``acl_for(identity)`` (kazoo's ``default_acl``), so a new key is
protected from its first byte. ``secure_tree`` puts the same ACL on a tree created before (``pvc cluster upgrade``),
and on the cluster's root when it is a chroot. ZooKeeper's ``exists`` answers anyone (the server does not check
ACLs for it); data, children and every write need the identity (``NoAuthError`` otherwise).
"""

from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.security import ACL, make_digest_acl

__all__ = ["acl_for", "parse_identity", "secure_tree"]

#: ZooKeeper's own subtree (quotas, config); never pvc's to change.
_ZOOKEEPER_OWN = "/zookeeper"


def parse_identity(identity: str) -> tuple[str, str]:
    """``user:password`` -> (user, password); ValueError naming what is wrong (never the password)."""
    user, sep, password = identity.partition(":")
    if not sep or not user or not password:
        raise ValueError("zookeeper_auth must be 'user:password' (both non-empty)")
    return user, password


def acl_for(identity: str) -> list[ACL]:
    """The ACL of every pvc node: all rights for ``identity``, none for anyone else."""
    user, password = parse_identity(identity)
    return [make_digest_acl(user, password, all=True)]


def secure_tree(zk: KazooClient, acl: list[ACL], path: str = "/") -> int:
    """Give every node below ``path`` (and ``path`` itself when the client is chrooted, i.e. ``/`` is the
    cluster's own root) exactly ``acl``; returns how many nodes changed. Idempotent; safe while the cluster runs
    (an ACL change does not touch data or versions of the data). One level of the tree at a time, its reads sent
    together (kazoo's async calls), so a cluster of thousands of VMs costs a few round trips per level."""
    if path == "/" and not zk.chroot:
        level = [f"/{child}" for child in zk.get_children("/") if f"/{child}" != _ZOOKEEPER_OWN]
    else:
        level = [path]
    changed = 0
    while level:
        reads = [(node, zk.get_acls_async(node), zk.get_children_async(node)) for node in level]
        level, writes = [], []
        for node, acls, children in reads:
            try:
                current, _ = acls.get()
                names = children.get()
            except NoNodeError:
                continue  # deleted meanwhile (a finished job, a lock): nothing to protect
            if list(current) != list(acl):
                writes.append(zk.set_acls_async(node, acl))
            level += [f"{node.rstrip('/')}/{name}" for name in names]
        for write in writes:
            try:
                write.get()
                changed += 1
            except NoNodeError:
                continue
    return changed
