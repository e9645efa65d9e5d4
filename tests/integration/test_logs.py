"""Logs an operator can use: an access line per API request with its id and token name, request ids on jobs,
and JSON lines naming the job, VM and node."""

import json

import requests

from pvc_dev.cluster import NodeSpec


def test_every_api_request_is_logged_with_its_id_and_the_job_records_it(cluster, api, vm_name):
    """A request's X-Request-Id comes back, names the job it created, and its access line gives method, path,
    status, token name and id; a refused token is logged as "-" and never written; a hostile id is replaced."""
    cluster.define_vm(vm_name, node="hv2")
    r = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": "start"}, headers={"X-Request-Id": "cli-run-42"})
    assert (r.status_code, r.headers["X-Request-Id"]) == (202, "cli-run-42")
    job = cluster.wait_job(r.json()["id"])
    assert (job["request_id"], job["requested_by"]) == ("cli-run-42", "admin")
    refused = requests.get(f"{api.base}/vms", headers={"X-Api-Key": "not-a-token-xyz"}, timeout=10)
    assert refused.status_code == 401 and len(refused.headers["X-Request-Id"]) == 32
    hostile = api.get(f"{api.base}/vms", headers={"X-Request-Id": "<script>alert(1)</script>"})
    assert hostile.headers["X-Request-Id"] != "<script>alert(1)</script>"
    log = cluster.api.log_path.read_text()
    assert f"POST /api/v1/vms/{vm_name}/state 202 " in log and "token=admin id=cli-run-42 client=127.0.0.1" in log
    assert "GET /api/v1/vms 401 " in log and f"token=- id={refused.headers['X-Request-Id']}" in log
    assert "not-a-token-xyz" not in log and cluster.token not in log and "<script>" not in log


def test_json_logs_name_the_job_vm_and_node(make_cluster):
    """With log_format json every line a worker or the API logs is one JSON object; a worker's lines name its
    node, and those written while a job's task runs name the job and its VM too."""
    env = {"PVC_LOG_FORMAT": "json"}
    c = make_cluster([NodeSpec("hv1")], worker_env=env, api_env=env)
    job = c.define_vm("logged", node="hv1", start=True)
    assert job["state"] == "succeeded"
    worker_lines = [json.loads(line) for line in c.workers["hv1"].log_path.read_text().splitlines()
                    if line.startswith("{")]
    assert worker_lines and all(line["node"] == "hv1" and line["level"] and line["time"] for line in worker_lines)
    about_jobs = [line for line in worker_lines if line.get("job")]
    assert about_jobs and all(line["vm"] == "logged" for line in about_jobs)
    api_lines = [json.loads(line) for line in c.api.log_path.read_text().splitlines() if line.startswith("{")]
    access = [line for line in api_lines if line["logger"] == "pvc_web.access"]
    assert access and all({"method", "path", "status", "ms", "token", "request_id"} <= set(line) for line in access)
