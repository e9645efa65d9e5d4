"""The pure rules behind the API's defences: names, JSON depth, token table, sealed secrets (the XML policy:
test_xml_policy.py)."""

import pytest

from pvc_tasks.names import is_name
from pvc_tasks.secrets import PREFIX, SecretError, new_key, seal, unseal
from pvc_web.auth import TokenTable, entry
from pvc_web.limits import json_depth
from zk_schema.acl import acl_for, parse_identity


def test_names_follow_one_rule():
    """Letters, digits, _ . -, starting with a letter or digit, at most 63: nothing a path reads differently."""
    assert all(is_name(n) for n in ("hv1", "web-1.example", "a", "A_b", "x" * 63, "ens1f0v3"))
    assert not any(is_name(n) for n in (".", "..", "", "a/b", "a\x00b", " a", "a ", "a\n", "-a", "x" * 64, "é", None))


def test_json_depth_counts_outside_strings():
    """Brackets in strings (escaped quotes and backslashes included) do not count; an unterminated string runs to
    the end, as a parser reads it; above the limit the count stops."""
    assert json_depth(b'{"a": [1, {"b": "[[[["}]}', 32) == 3
    assert json_depth(b'["a\\"]', 32) == 1 and json_depth(b'["a\\\\", ["b"]]', 32) == 2
    assert json_depth(b'["\\\\\\"[["]', 32) == 1  # an escaped backslash, then an escaped quote
    assert json_depth(b"[" * 100_000, 32) == 33
    assert json_depth(b'"' + b"a" * 200_000 + b"[[", 32) == 0
    assert json_depth(b'"' + b'\\"' * 100_000 + b"[[", 32) == 0  # the body that once cost n^2


def test_token_table_keeps_hashes_and_roles():
    """Entries are NAME:ROLE:sha256:HEX; a plaintext entry or an unknown role is refused without echoing it."""
    table = TokenTable([entry("alice", "admin", "t1"), entry("bob", "read-only", "t2")])
    assert table.find("t1").name == "alice" and table.find("t2").role == "read-only"
    assert table.find("t3") is None and table.find("") is None
    with pytest.raises(ValueError) as bad:
        TokenTable(["plaintext-secret"])
    assert "plaintext-secret" not in str(bad.value) and "entry 1" in str(bad.value)
    with pytest.raises(ValueError, match="role"):
        TokenTable([entry("x", "root", "t")])


def test_sealed_secrets_need_their_key():
    """A sealed value opens with its key only; empty stays empty; an unsealed legacy value reads as it is."""
    key = new_key()
    sealed = seal("hunter2", key)
    assert sealed.startswith(PREFIX) and "hunter2" not in sealed and unseal(sealed, key) == "hunter2"
    assert seal("", key) == "" and unseal("legacy", "") == "legacy"
    with pytest.raises(SecretError):
        unseal(sealed, new_key())
    with pytest.raises(SecretError, match="not set"):
        seal("x", "")


def test_zookeeper_identity_is_user_colon_password():
    """The identity must name a user and a password; the ACL gives that digest every right."""
    assert parse_identity("pvc:s3cret") == ("pvc", "s3cret")
    for bad in ("pvc", ":x", "pvc:", ""):
        with pytest.raises(ValueError):
            parse_identity(bad)
    acl = acl_for("pvc:s3cret")
    assert len(acl) == 1 and acl[0].id.scheme == "digest" and acl[0].id.id.startswith("pvc:")
