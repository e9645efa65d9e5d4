"""Secrets at rest in ZooKeeper (a node's IPMI password) are sealed with the cluster's ``secret_key``.

Why a key outside ZooKeeper rather than a stricter ACL: every coordinator may become the fencer, so a "fencer
only" identity would be held by every node anyway, and ACLs guard only the wire: ZooKeeper's snapshots, its
transaction log and every backup of them hold the data in clear. A key that lives in the workers' config files
(mode 0600) keeps the password out of all of these. The API never needs it: it never shows the password.

A sealed value is ``sealed:v1:<Fernet token>`` (AES-128-CBC + HMAC-SHA256, with its time stamp). An empty value
stays empty (no BMC configured). A value without the prefix was written by a worker before this existed; it is
read as it is and sealed the next time that node's worker starts.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["PREFIX", "SecretError", "check_key", "new_key", "seal", "unseal"]

PREFIX = "sealed:v1:"


class SecretError(ValueError):
    """A secret cannot be sealed or opened: no key, a malformed key, or a value sealed with another key."""


def new_key() -> str:
    return Fernet.generate_key().decode()


def _fernet(key: str) -> Fernet:
    if not key:
        raise SecretError("secret_key is not set: it seals the IPMI passwords stored in ZooKeeper "
                          "(generate one with `pvc-dev secret-key`; the same on every node)")
    try:
        return Fernet(key.encode())
    except ValueError:
        raise SecretError("secret_key is not a valid key (32 url-safe base64-encoded bytes)") from None


def check_key(key: str) -> None:
    _fernet(key)


def seal(value: str, key: str) -> str:
    return PREFIX + _fernet(key).encrypt(value.encode()).decode() if value else ""


def unseal(stored: str, key: str) -> str:
    if not stored.startswith(PREFIX):
        return stored
    try:
        return _fernet(key).decrypt(stored.removeprefix(PREFIX).encode()).decode()
    except InvalidToken:
        raise SecretError("the value was sealed with another secret_key (check that every node has the same "
                          "one)") from None
