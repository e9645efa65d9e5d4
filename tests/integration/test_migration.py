"""Migration jobs on test-driver nodes: kinds, methods, placement, and the races around them."""

import pytest

from tests.conftest import SLOW_SESSION, paused, race


def migrate(cluster, vm, kind="migrate", **body):
    r = cluster.session().post(f"{cluster.api_url}/api/v1/vms/{vm}/{kind}", json=body, timeout=10)
    return r


def vm_info(cluster, vm):
    return cluster.session().get(f"{cluster.api_url}/api/v1/vms/{vm}", timeout=10).json()


def node_info(cluster, node):
    return cluster.session().get(f"{cluster.api_url}/api/v1/nodes/{node}", timeout=10).json()


def test_migrate_unmigrate_move_a_running_vm(cluster, vm_name):
    """migrate records last_node, unmigrate returns and clears it, move clears it; the VM runs after each step."""
    assert cluster.define_vm(vm_name, 256, node="hv1", start=True)["state"] == "succeeded"
    before = {n: node_info(cluster, n)["vms"]["running"] for n in ("hv1", "hv3")}

    r = migrate(cluster, vm_name, target="hv3")
    assert r.status_code == 202, r.text
    job = cluster.wait_job(r.json()["id"])
    assert job["state"] == "succeeded", job
    assert (job["percent"], job["result"]["node"], job["result"]["how"]) == (100, "hv3", "handover")
    assert "removing its old definition from hv1" in job["messages"][-1]["text"]
    vm = vm_info(cluster, vm_name)
    assert (vm["node"], vm["last_node"], vm["state"], vm["active_job"]) == ("hv3", "hv1", "running", "")
    # libvirt agrees: the figures each node's worker wrote in the commit come from its own hypervisor.
    assert node_info(cluster, "hv3")["vms"]["running"] == before["hv3"] + 1
    assert node_info(cluster, "hv1")["vms"]["running"] == before["hv1"] - 1
    assert node_info(cluster, "hv3")["memory"]["allocated"] >= 256

    job = cluster.wait_job(migrate(cluster, vm_name, "unmigrate").json()["id"])
    assert job["state"] == "succeeded"
    vm = vm_info(cluster, vm_name)
    assert (vm["node"], vm["last_node"], vm["state"]) == ("hv1", "", "running")

    job = cluster.wait_job(migrate(cluster, vm_name, "move", target="hv2").json()["id"])
    assert job["state"] == "succeeded"
    vm = vm_info(cluster, vm_name)
    assert (vm["node"], vm["last_node"], vm["state"]) == ("hv2", "", "running")
    r = migrate(cluster, vm_name, "unmigrate")
    assert r.status_code == 409 and r.json()["error"] == "no_last_node"


def test_stopped_vm_only_changes_node(cluster, vm_name):
    """A stopped VM moves without booting."""
    assert cluster.define_vm(vm_name, 128, node="hv2")["state"] == "succeeded"
    job = cluster.wait_job(migrate(cluster, vm_name, target="hv1").json()["id"])
    assert job["state"] == "succeeded" and job["params"]["method"] == "cold"
    vm = vm_info(cluster, vm_name)
    assert (vm["node"], vm["state"]) == ("hv1", "stopped")
    start = cluster.session().post(f"{cluster.api_url}/api/v1/vms/{vm_name}/state", json={"state": "start"}).json()
    assert cluster.wait_job(start["id"])["state"] == "succeeded"  # hv1's libvirt has it


def test_shutdown_method_is_used_when_asked(cluster, vm_name):
    """method=shutdown shuts the VM down on S and starts it on T."""
    assert cluster.define_vm(vm_name, 128, node="hv1", start=True)["state"] == "succeeded"
    job = cluster.wait_job(migrate(cluster, vm_name, target="hv2", method="shutdown").json()["id"])
    assert job["state"] == "succeeded" and job["result"]["how"] == "shutdown"
    assert vm_info(cluster, vm_name)["state"] == "running"


@pytest.mark.parametrize("body,status,code", [
    ({"target": "nosuch"}, 400, "invalid_request"),
    ({"method": "teleport"}, 400, "invalid_request"),
    ({"target": 5}, 400, "invalid_request"),
])
def test_bad_migration_requests_are_refused(cluster, vm_name, body, status, code):
    """Unknown targets, methods and wrong types are refused before anything is written."""
    assert cluster.define_vm(vm_name, 128, node="hv1")["state"] == "succeeded"
    jobs = cluster.zk.get_children("/jobs")
    r = migrate(cluster, vm_name, **body)
    assert r.status_code == status and r.json()["error"] == code, r.text
    assert cluster.zk.get_children("/jobs") == jobs


def test_never_to_its_own_node_and_not_when_busy(make_cluster):
    """Migrating to the VM's own node is 409 same_node; six requests at once make exactly one job, the five
    others are refused vm_busy while it is still queued (its target's worker is paused, so the race surely ran)."""
    c = make_cluster(worker_env=SLOW_SESSION)
    assert c.define_vm("busy", 128, node="hv1", start=True)["state"] == "succeeded"
    r = migrate(c, "busy", target="hv1")
    assert r.status_code == 409 and r.json()["error"] == "same_node"
    with paused(c.workers["hv2"]):
        answers = race(6, lambda _i: migrate(c, "busy", target="hv2"))
    assert sorted(a.status_code for a in answers) == [202] + [409] * 5
    assert {a.json()["error"] for a in answers if a.status_code == 409} == {"vm_busy"}
    winner = next(a.json() for a in answers if a.status_code == 202)
    assert c.wait_job(winner["id"])["state"] == "succeeded"
    assert vm_info(c, "busy")["node"] == "hv2"


def test_vm_that_fits_nowhere_stays_put(cluster, vm_name):
    """A VM bigger than every other node's total memory (hv1 4 GiB, hv3 2 GiB) gets no_target, with or without an
    explicit target, and stays running where it is with no job."""
    assert cluster.define_vm(vm_name, 5000, node="hv2", start=True)["state"] == "succeeded"
    jobs = cluster.zk.get_children("/jobs")
    r = migrate(cluster, vm_name, target="hv3")
    assert r.status_code == 409 and r.json()["error"] == "no_target" and "hv3" in r.json()["message"]
    r = migrate(cluster, vm_name, kind="migrate")
    assert r.status_code == 409 and r.json()["error"] == "no_target", r.text
    vm = vm_info(cluster, vm_name)
    assert (vm["node"], vm["state"], vm["active_job"]) == ("hv2", "running", "")
    assert sorted(cluster.zk.get_children("/jobs")) == sorted(jobs)
    # Stopped, it leaves hv2's memory to the module's later tests.
    stop = cluster.session().post(f"{cluster.api_url}/api/v1/vms/{vm_name}/state", json={"state": "stop"}).json()
    assert cluster.wait_job(stop["id"])["state"] == "succeeded"
