"""PVC's last_node rules, one test per row of the table in docs/architecture.md ("A VM's home: last_node")."""

import pytest

from pvc_dev.cluster import NodeSpec
from tests.conftest import zk_snapshot


@pytest.fixture(scope="module")
def c(shared_cluster):
    return shared_cluster("last-node", [NodeSpec("hv1", 8192), NodeSpec("hv2", 8192), NodeSpec("hv3", 8192)])


def call(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=30, **kw)


def where(c, vm) -> tuple[str, str]:
    v = call(c, "get", f"/vms/{vm}").json()
    return v["node"], v["last_node"]


def migrate(c, vm, kind="migrate", **body) -> dict:
    r = call(c, "post", f"/vms/{vm}/{kind}", json=body)
    assert r.status_code == 202, r.text
    return c.wait_job(r.json()["id"])


def test_migrate_remembers_the_home(c, vm_name):
    """migrate of a VM at home: it runs on the target, and last_node is the node it left."""
    assert c.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    assert migrate(c, vm_name, target="hv2")["state"] == "succeeded"
    assert where(c, vm_name) == ("hv2", "hv1")


def test_migrating_a_migrated_vm_is_refused_unless_forced(c, vm_name):
    """migrate of a VM already away from home: 409 already_migrated naming its home, nothing written."""
    assert c.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    assert migrate(c, vm_name, target="hv2")["state"] == "succeeded"
    before = zk_snapshot(c.zk, c.schema.root("domain", vm_name))
    r = call(c, "post", f"/vms/{vm_name}/migrate", json={"target": "hv3"})
    assert r.status_code == 409 and r.json()["error"] == "already_migrated", r.text
    assert r.json()["details"]["last_node"] == "hv1" and "unmigrate" in r.json()["message"]
    assert zk_snapshot(c.zk, c.schema.root("domain", vm_name)) == before


def test_forced_migration_keeps_the_original_home(c, vm_name):
    """A forced migrate of a migrated VM moves it and keeps its home; unmigrate then returns it there."""
    assert c.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    assert migrate(c, vm_name, target="hv2")["state"] == "succeeded"
    assert migrate(c, vm_name, target="hv3", force=True)["state"] == "succeeded"
    assert where(c, vm_name) == ("hv3", "hv1")
    assert migrate(c, vm_name, "unmigrate")["state"] == "succeeded"
    assert where(c, vm_name) == ("hv1", "")


def test_forced_migration_to_the_home_clears_it(c, vm_name):
    """A forced migrate that lands on the VM's home leaves it at home (no last_node)."""
    assert c.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    assert migrate(c, vm_name, target="hv2")["state"] == "succeeded"
    assert migrate(c, vm_name, target="hv1", force=True)["state"] == "succeeded"
    assert where(c, vm_name) == ("hv1", "")


def test_move_to_the_current_node_makes_the_migration_permanent(c, vm_name):
    """move to the node a migrated VM is on: nothing moves, last_node is cleared, the job says so."""
    assert c.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    assert migrate(c, vm_name, target="hv2")["state"] == "succeeded"
    job = migrate(c, vm_name, "move", target="hv2")
    assert job["state"] == "succeeded" and job["result"]["permanent"] is True, job
    assert where(c, vm_name) == ("hv2", "")
    assert call(c, "get", f"/vms/{vm_name}").json()["state"] == "running"


def test_move_to_the_current_node_of_a_vm_at_home_is_refused(c, vm_name):
    """move to the node a VM at home is on: 409 same_node."""
    assert c.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    r = call(c, "post", f"/vms/{vm_name}/move", json={"target": "hv1"})
    assert r.status_code == 409 and r.json()["error"] == "same_node", r.text


def test_flush_keeps_the_home_of_a_vm_already_away(c, vm_name):
    """A flush of hv2 moves a VM whose home is hv1 without overwriting that home, and a VM at home on hv2 gets
    hv2 as its home; ready of hv2 brings back only the latter."""
    visitor, local = f"{vm_name}-v", f"{vm_name}-l"
    assert c.define_vm(visitor, node="hv1", start=True)["state"] == "succeeded"
    assert migrate(c, visitor, target="hv2")["state"] == "succeeded"
    assert c.define_vm(local, node="hv2", start=True)["state"] == "succeeded"
    assert call(c, "put", f"/vms/{visitor}/meta", json={"node_limit": ["hv2", "hv3"]}).status_code == 200  # not home
    flushed = c.wait_job(call(c, "post", "/nodes/hv2/flush").json()["id"], timeout=60)
    assert flushed["state"] == "succeeded", flushed
    assert where(c, visitor)[1] == "hv1" and where(c, local)[1] == "hv2"
    back = c.wait_job(call(c, "post", "/nodes/hv2/ready").json()["id"], timeout=60)
    assert back["state"] == "succeeded", back
    assert where(c, local) == ("hv2", "")
    assert where(c, visitor) == ("hv3", "hv1")
    assert call(c, "put", f"/vms/{visitor}/meta", json={"node_limit": []}).status_code == 200
    assert migrate(c, visitor, "unmigrate")["state"] == "succeeded"
    assert where(c, visitor) == ("hv1", "")
