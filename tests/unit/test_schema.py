"""The schema data files: names map to paths, and version-to-version plans are what the files say."""

import pytest

from zk_schema import Schema, SchemaError, available_versions, plan


def test_versions_are_consecutive_from_zero():
    """Every version from 0 to the latest ships, so every cluster has an upgrade path."""
    versions = available_versions()
    assert versions == list(range(len(versions))) and len(versions) >= 2


def test_key_names_map_to_paths():
    """A key name and its instance names give one absolute path."""
    schema = Schema.latest()
    assert schema.path("node.keepalive", "hv1") == "/nodes/hv1/keepalive"
    assert schema.path("node", "hv1") == "/nodes/hv1"
    assert schema.path("base.config.maintenance") == "/config/maintenance"
    assert schema.path("domain.meta.node_limit", "vm1") == "/domains/vm1/meta/node_limit"
    assert schema.path("sriov_vf.used_by", "hv1", "ens1f0v3").startswith("/nodes/hv1/sriov/vf/ens1f0v3")


@pytest.mark.parametrize("key,names", [("node.nope", ("hv1",)), ("nosection.x", ()), ("node.keepalive", ()),
                                       ("node.keepalive", ("a/b",)), ("node.keepalive", ("",))])
def test_bad_key_or_names_raise(key, names):
    """An unknown key, a missing instance name or a name with a slash is an error, never a wrong path."""
    with pytest.raises(SchemaError):
        Schema.latest().path(key, *names)


def test_unknown_version_is_a_clear_error():
    """Loading a version this code does not ship names the versions it knows."""
    with pytest.raises(SchemaError, match="known"):
        Schema.load(999)


def test_secret_keys_are_marked():
    """The IPMI password is the one secret key, so the API can leave it out."""
    assert Schema.latest().secret_keys() == {"node.ipmi.password"}


def test_plan_0_to_1_adds_removes_and_moves():
    """The 0->1 plan adds max_downtime, drops the console log and moves IPMI and VM meta keys."""
    p = plan(Schema.load(0), Schema.load(1))
    assert p.added == ["domain.meta.max_downtime"]
    assert p.removed == ["domain.console.log"]
    assert p.moved["domain.node_autostart"] == "domain.meta.autostart"
    assert p.moved["node.ipmi.password"] == "node.ipmi.password"
    assert p.moved["domain.meta.node_limit"] == "domain.meta.node_limit"


def test_plan_refuses_skipping_versions():
    """Upgrades go one version at a time."""
    with pytest.raises(SchemaError):
        plan(Schema.load(0), Schema.load(0))


def test_create_ops_put_parents_first():
    """An instance's creation ops list every parent before its children, with values over defaults."""
    ops = Schema.latest().create_ops("domain", "vm1", values={"state": "defining"})
    paths = [p for p, _ in ops]
    assert paths[0] == "/domains/vm1"
    assert paths.index("/domains/vm1/meta") < paths.index("/domains/vm1/meta/node_limit")
    assert dict(ops)["/domains/vm1/state"] == b"defining"


def test_plan_1_to_2_adds_node_reservations():
    """Version 2 only adds the node's reservation key."""
    p = plan(Schema.load(1), Schema.load(2))
    assert (p.added, p.removed, p.moved) == (["node.reserved"], [], {})


def test_plan_2_to_3_adds_migration_slots_and_node_jobs():
    """Version 3 adds the cluster's migration slots and each node's active flush/unflush job."""
    p = plan(Schema.load(2), Schema.load(3))
    assert (sorted(p.added), p.removed, p.moved) == (["base.migrations", "node.active_job"], [], {})


def test_plan_7_to_8_adds_the_indexes_as_new_sections():
    """Version 8 adds the UUID index and the index of open jobs: two base directories and two sections, whose
    entries its hand-written step fills (``zk_schema.steps``)."""
    old, new = Schema.load(7), Schema.load(8)
    p = plan(old, new)
    assert (sorted(p.added), p.removed, p.moved) == (["base.domain_uuid", "base.job_open"], [], {})
    assert set(new.roots) - set(old.roots) == {"domain_uuid", "job_open"}
    assert new.path("domain_uuid", "0f0e") == "/uuids/0f0e" and new.path("job_open", "j1") == "/jobs_open/j1"


def test_plan_refuses_a_changed_section_root():
    """A section whose root moved cannot be upgraded by the declarative plan."""
    old, new = Schema.load(7), Schema.load(8)
    new.roots["job"] = "/history/{job}"
    with pytest.raises(SchemaError, match="roots changed"):
        plan(old, new)
