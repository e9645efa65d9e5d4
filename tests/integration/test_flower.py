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
    primary = api.get(f"{api.base}/cluster").json()["primary"]
    for node in ("hv1", "hv2", "hv3"):  # its own queue; the primary also consumes the cluster queue
        expected = ["node." + node] + (["cluster"] if node == primary else [])
        assert sorted(q["name"] for q in workers[f"pvc@{node}"]["active_queues"]) == sorted(expected)


def test_flower_shows_each_migration_step_on_its_nodes_worker(cluster, api, vm_name):
    """prepare and finish run on the target's worker, perform and cleanup on the source's, each by name."""
    flower = cluster.start_flower()
    url, auth = flower.info["url"], (cluster.flower_user, cluster.flower_password)
    assert cluster.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    job = api.post(f"{api.base}/vms/{vm_name}/migrate", json={"target": "hv2"}).json()
    assert cluster.wait_job(job["id"])["state"] == "succeeded"
    expected = {"pvc.migrate.prepare": "pvc@hv2", "pvc.migrate.perform": "pvc@hv1",
                "pvc.migrate.finish": "pvc@hv2", "pvc.migrate.cleanup": "pvc@hv1"}

    def steps():
        tasks = requests.get(f"{url}/api/tasks", auth=auth, timeout=5).json()
        mine = {t["name"]: t for t in tasks.values() if job["id"] in (t.get("kwargs") or "")}
        return mine if set(expected) <= set(mine) and all(t["state"] == "SUCCESS" for t in mine.values()) else None

    found = wait_until(steps, 30, "Flower to record the four steps")
    assert {name: task["worker"] for name, task in found.items()} == expected


def test_flower_metrics_need_the_credentials_and_its_control_api_is_off(cluster):
    """``/metrics`` asks for the credentials; shutting a worker down or sending a task through Flower is refused
    (403) even with them, and the worker keeps running."""
    flower = cluster.start_flower()
    url, auth = flower.info["url"], (cluster.flower_user, cluster.flower_password)
    assert requests.get(f"{url}/metrics", timeout=5).status_code == 401
    assert requests.get(f"{url}/metrics", auth=auth, timeout=5).status_code == 200
    for path in ("/api/worker/shutdown/pvc@hv1", "/api/worker/queue/cancel-consumer/pvc@hv1?queue=node.hv1",
                 "/api/task/async-apply/pvc.vm.stop"):
        r = requests.post(f"{url}{path}", auth=auth, json={}, timeout=10)
        assert r.status_code == 403 and "read-only" in r.text, (path, r.status_code, r.text)
    assert requests.get(f"{url}/api/workers", auth=auth, timeout=10).status_code == 200
    assert cluster.workers["hv1"].alive()
