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
    (an ACL change does not touch data or versions of the data)."""
    changed = 0

    def visit(node: str) -> None:
        nonlocal changed
        try:
            current, _ = zk.get_acls(node)
            if list(current) != list(acl):
                zk.set_acls(node, acl)
                changed += 1
            children = zk.get_children(node)
        except NoNodeError:
            return  # deleted meanwhile (a finished job, a lock): nothing to protect
        for child in children:
            visit(f"{node.rstrip('/')}/{child}")

    if path == "/":
        if zk.chroot:
            visit("/")
            return changed
        for child in zk.get_children("/"):
            if f"/{child}" != _ZOOKEEPER_OWN:
                visit(f"/{child}")
        return changed
    visit(path)
    return changed
