"""VM lifecycle jobs end to end: API -> ZooKeeper -> the VM node's worker -> libvirt -> ZooKeeper."""

from pvc_dev.cluster import domain_xml
from tests.conftest import BOTH_BROKERS

pytestmark = BOTH_BROKERS


def test_define_start_shutdown_restart_stop_undefine(cluster, api, vm_name):
    """A VM goes through every lifecycle job and its state in ZooKeeper follows libvirt."""
    r = api.post(f"{api.base}/vms", json={"xml": domain_xml(vm_name, 512), "node": "hv2"})
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/api/v1/jobs/{r.json()['id']}"
    job = cluster.wait_job(r.json()["id"])
    assert (job["state"], job["node"], job["percent"]) == ("succeeded", "hv2", 100)
    vm = api.get(f"{api.base}/vms/{vm_name}").json()
    assert (vm["state"], vm["node"], vm["memory"], vm["active_job"]) == ("stopped", "hv2", 512, "")
    assert vm["uuid"] and "<domain" in vm["xml"]

    for action, state in [("start", "running"), ("shutdown", "stopped"), ("start", "running"),
                          ("restart", "running"), ("stop", "stopped")]:
        r = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": action})
        assert r.status_code == 202, r.text
        job = cluster.wait_job(r.json()["id"])
        assert job["state"] == "succeeded", job
        assert job["kind"] == action and job["started"] <= job["finished"]
        assert api.get(f"{api.base}/vms/{vm_name}").json()["state"] == state

    r = api.delete(f"{api.base}/vms/{vm_name}")
    assert r.status_code == 202
    assert cluster.wait_job(r.json()["id"])["state"] == "succeeded"
    assert api.get(f"{api.base}/vms/{vm_name}").status_code == 404


def test_define_without_node_uses_the_selector(cluster, api, vm_name):
    """With no node given, the default selector (most free memory) picks hv2, the biggest node."""
    r = api.post(f"{api.base}/vms", json={"xml": domain_xml(vm_name, 256)})
    assert r.status_code == 202, r.text
    assert cluster.wait_job(r.json()["id"])["node"] == "hv2"


def test_node_list_shows_resources_from_libvirt(api):
    """Each worker registered its node with the memory of its own node file and a fresh keepalive."""
    nodes = {n["name"]: n for n in api.get(f"{api.base}/nodes").json()}
    assert sorted(nodes) == ["hv1", "hv2", "hv3"]
    assert nodes["hv1"]["memory"]["total"] == 4096 and nodes["hv3"]["memory"]["total"] == 2048
    assert all(n["alive"] and n["daemon_state"] == "run" for n in nodes.values())
    assert all(n["keepalive_age"] is not None and n["keepalive_age"] < 10 for n in nodes.values())
    assert all(n["faults"] == [] for n in nodes.values())
    assert "password" not in str(nodes)


def test_node_figures_follow_each_job_in_its_ending_transaction(cluster, api, vm_name):
    """A node's running-VM figures, read the moment a job ends, already count what the job did (not a second later,
    at the inventory's next full pass)."""
    r = api.post(f"{api.base}/vms", json={"xml": domain_xml(vm_name, 384), "node": "hv3"})
    assert cluster.wait_job(r.json()["id"])["state"] == "succeeded"

    def figures() -> tuple[int, int]:
        return tuple(int(cluster.zk.get(cluster.schema.path(f"node.{key}", "hv3"))[0])
                     for key in ("vms.running", "memory.allocated"))

    idle = figures()
    for round_ in range(5):
        for action, delta in (("start", (1, 384)), ("stop", (0, 0))):
            r = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": action})
            assert cluster.wait_job(r.json()["id"])["state"] == "succeeded"
            assert figures() == (idle[0] + delta[0], idle[1] + delta[1]), (round_, action)
