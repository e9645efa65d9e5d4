"""Metrics: the API's /api/v1/metrics (the cluster's figures, behind the token) and a worker's own (metrics_listen),
scraped from a live cluster while jobs run."""

import requests
from prometheus_client.parser import text_string_to_metric_families

from pvc_dev.cluster import NodeSpec
from pvc_dev.services import free_port, wait_until
from pvc_tasks.routing import node_queue
from tests.conftest import consumer
from tests.integration.test_api_connections import _closed_by_server

NODES = [NodeSpec("mt1"), NodeSpec("mt2")]


def parse(text: str) -> dict[tuple, float]:
    """Samples as {(name, (label, value), ...): value}."""
    return {(s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(c) -> dict[tuple, float]:
    r = c.session().get(f"{c.api_url}/api/v1/metrics", timeout=15)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain"), r.text
    return parse(r.text)


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, *sorted(labels.items())), 0.0)


def test_cluster_metrics_move_when_jobs_run(make_cluster):
    """Jobs by kind and state, their durations, VM and node figures and a node's queue depth move as a VM is
    defined, started and migrated, and as a message waits for a worker that does not consume."""
    c = make_cluster(NODES)
    before = scrape(c)
    assert sample(before, "pvc_node_up", node="mt1") == 1 and sample(before, "pvc_node_up", node="mt2") == 1
    assert sample(before, "pvc_node_state", node="mt1", daemon_state="run", domain_state="ready") == 1

    assert c.define_vm("met1", 512, node="mt1", start=True)["state"] == "succeeded"
    job = c.session().post(f"{c.api_url}/api/v1/vms/met1/migrate", json={"target": "mt2"}, timeout=10).json()
    assert c.wait_job(job["id"])["state"] == "succeeded"
    after = scrape(c)
    for kind in ("define", "start", "migrate"):
        assert sample(after, "pvc_jobs", kind=kind, state="succeeded") == \
            sample(before, "pvc_jobs", kind=kind, state="succeeded") + 1, kind
        assert sample(after, "pvc_job_duration_seconds_count", kind=kind, state="succeeded") == \
            sample(before, "pvc_job_duration_seconds_count", kind=kind, state="succeeded") + 1, kind
        assert sample(after, "pvc_job_duration_seconds_sum", kind=kind, state="succeeded") > 0
    assert sample(after, "pvc_vms", state="running") == sample(before, "pvc_vms", state="running") + 1
    assert sample(after, "pvc_node_vms", node="mt2", state="running") == 1
    assert sample(after, "pvc_node_memory_mib", node="mt2", what="allocated") >= 512
    assert sample(after, "pvc_zookeeper_request_seconds_count", op="get") > \
        sample(before, "pvc_zookeeper_request_seconds_count", op="get")
    assert sample(after, "pvc_fences_total", outcome="off") == 0

    queue = node_queue("mt2").name
    assert sample(after, "pvc_queue_messages", queue=queue) == 0
    consumer(c, "mt2", False)
    try:
        stop = c.session().post(f"{c.api_url}/api/v1/vms/met1/state", json={"state": "stop"}, timeout=10).json()
        assert sample(scrape(c), "pvc_queue_messages", queue=queue) >= 1
    finally:
        consumer(c, "mt2", True)
    assert c.wait_job(stop["id"])["state"] == "succeeded"
    wait_until(lambda: sample(scrape(c), "pvc_queue_messages", queue=queue) == 0, 30, "the queue to drain")


def test_metrics_need_the_token_and_basic_is_what_prometheus_sends(make_cluster):
    """No token: 401; the token as the Basic password (Prometheus' basic_auth) or in X-Api-Key: 200."""
    c = make_cluster(NODES[:1])
    assert requests.get(f"{c.api_url}/api/v1/metrics", timeout=5).status_code == 401
    r = requests.get(f"{c.api_url}/api/v1/metrics", auth=("prometheus", c.token), timeout=15)
    assert r.status_code == 200 and "pvc_jobs" in r.text
    assert c.token not in r.text


def _threads(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def test_a_worker_serves_its_metrics_and_idle_sockets_cost_it_nothing(make_cluster):
    """With metrics_listen, a worker serves the duration of each step it ran, by task name and outcome, and its
    ZooKeeper request latency. 60 connections that send nothing leave its thread count about where it was (a fixed
    pool serves scrapes; prometheus-client's server grew a thread per connection), the worker closes one it serves
    when its timeout runs out and one beyond what may wait at once, a scrape still answers, and the node keeps its
    keepalive (present, not fenced)."""
    import socket

    c = make_cluster(NODES[:1])
    port = free_port()
    c.workers["mt1"].stop()
    c.start_worker("mt1", {"PVC_METRICS_LISTEN": f"127.0.0.1:{port}"})
    c.wait_worker("mt1")
    assert c.define_vm("metw", node="mt1", start=True)["state"] == "succeeded"
    samples = parse(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    assert sample(samples, "pvc_step_duration_seconds_count", task="pvc.vm.start", outcome="SUCCESS") >= 1
    assert sample(samples, "pvc_step_duration_seconds_count", task="pvc.vm.define", outcome="SUCCESS") >= 1
    assert sample(samples, "pvc_zookeeper_request_seconds_count", op="transaction") >= 2

    pid = c.workers["mt1"].pid
    before = _threads(pid)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(60)]
    try:
        assert _threads(pid) <= before + 10  # the pool's second thread, and whatever the worker itself starts
        # The last is beyond what may wait: closed at once. The first is served: cut when its 2 s run out.
        assert all(_closed_by_server(idle[i], 30) for i in (-1, 0))
    finally:
        for sock in idle:
            sock.close()
    assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    node = c.session().get(f"{c.api_url}/api/v1/nodes/mt1", timeout=10).json()
    assert node["alive"] and node["daemon_state"] == "run", node
