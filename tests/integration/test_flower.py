"""Flower, behind basic auth, shows each lifecycle task by name on the worker of the VM's node."""

import requests

from pvc_dev.services import wait_until


def test_flower_shows_the_task_on_the_vm_nodes_worker(cluster, api, vm_name):
    """A start job's task appears in Flower's API as pvc.vm.start, on pvc@hv3, with the VM and node in its args."""
    flower = cluster.start_flower()
    url, auth = flower.info["url"], (cluster.flower_user, cluster.flower_password)
    assert requests.get(f"{url}/api/workers", timeout=5).status_code == 401
    assert requests.get(f"{url}/api/workers", auth=(cluster.flower_user, "wrong"), timeout=5).status_code == 401

    assert cluster.define_vm(vm_name, node="hv3", start=True)["state"] == "succeeded"
    job = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": "stop"}).json()
    assert cluster.wait_job(job["id"])["state"] == "succeeded"

    def task():
        t = requests.get(f"{url}/api/task/info/{job['id']}", auth=auth, timeout=5)
        return t.json() if t.ok and t.json().get("state") == "SUCCESS" else None

    info = wait_until(task, 30, "Flower to record the task")
    assert info["name"] == "pvc.vm.stop"
    assert info["worker"] == "pvc@hv3"
    assert f"'vm': '{vm_name}'" in info["kwargs"] and "'node': 'hv3'" in info["kwargs"]
    workers = wait_until(lambda: requests.get(f"{url}/api/workers?refresh=1", auth=auth, timeout=10).json(),
                         30, "Flower to list the workers")
    assert {"pvc@hv1", "pvc@hv2", "pvc@hv3"} <= set(workers)
    assert [q["name"] for q in workers["pvc@hv3"]["active_queues"]] == ["node.hv3"]
