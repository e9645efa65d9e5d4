"""Job history is bounded: the primary's janitor prunes ended jobs by age (``job_retention``) and by count
(``job_history``, the newest by their end); which ones, in tests/unit/test_job_history.py."""

import time

from pvc_dev.services import wait_until


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=15, **kw)


def job_ids(c) -> set[str]:
    return set(c.zk.get_children(c.schema.path("base.job")))


def test_only_the_newest_ended_jobs_are_kept(make_cluster):
    """With ``job_history`` 4, nine ended jobs become the four that ended last."""
    c = make_cluster(worker_env={"PVC_JOB_HISTORY": "4", "PVC_HISTORY_INTERVAL": "1"})
    ended = []
    for i in range(3):
        for action in (None, "start", "stop"):
            if action is None:
                ended.append(c.define_vm(f"hist{i}", node="hv1"))
            else:
                job = api(c, "post", f"/vms/hist{i}/state", json={"state": action}).json()
                ended.append(c.wait_job(job["id"]))
    assert all(j["state"] == "succeeded" for j in ended)
    newest = {j["id"] for j in sorted(ended, key=lambda j: j["finished"])[-4:]}
    wait_until(lambda: job_ids(c) == newest, 30, "the four newest jobs, and only them, to remain")
    assert api(c, "get", "/jobs").json() and {j["id"] for j in api(c, "get", "/jobs").json()} == newest


def test_ended_jobs_older_than_the_retention_are_pruned_and_no_sooner(make_cluster):
    """With ``job_retention`` 3 s an ended job disappears, never before it has been over for 3 s."""
    c = make_cluster(worker_env={"PVC_JOB_RETENTION": "3", "PVC_HISTORY_INTERVAL": "1"})
    job = c.define_vm("aged", node="hv1")
    assert job["state"] == "succeeded" and job["id"] in job_ids(c)
    wait_until(lambda: job["id"] not in job_ids(c), 30, "the ended job to be pruned")
    assert time.time() - job["finished"] >= 3
    assert api(c, "get", f"/jobs/{job['id']}").status_code == 404


def test_jobs_are_listed_in_pages_by_creation_time(cluster, vm_name):
    """``limit`` and ``before`` page through a VM's jobs newest first; ``since`` keeps the recent ones; a bad time
    is a 400 naming the field."""
    assert cluster.define_vm(vm_name, node="hv1", start=True)["state"] == "succeeded"
    stop = api(cluster, "post", f"/vms/{vm_name}/state", json={"state": "stop"}).json()
    assert cluster.wait_job(stop["id"])["state"] == "succeeded"
    mine = api(cluster, "get", f"/jobs?vm={vm_name}").json()
    assert [j["kind"] for j in mine] == ["stop", "start", "define"]
    first = api(cluster, "get", f"/jobs?vm={vm_name}&limit=2").json()
    assert [j["id"] for j in first] == [j["id"] for j in mine[:2]]
    rest = api(cluster, "get", f"/jobs?vm={vm_name}&limit=2&before={first[-1]['created']}").json()
    assert [j["id"] for j in rest] == [mine[2]["id"]]
    recent = api(cluster, "get", f"/jobs?vm={vm_name}&since={mine[1]['created']}").json()
    assert [j["id"] for j in recent] == [j["id"] for j in mine[:2]]
    bad = api(cluster, "get", "/jobs?since=soon")
    assert bad.status_code == 400 and "since" in bad.json()["details"], bad.text
