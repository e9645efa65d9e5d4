"""A worker whose Celery consumer stops taking messages while the process lives restarts itself, and the
supervisor (the harness's, as systemd's Restart=always in production) starts it again."""

from __future__ import annotations

from celery import Celery

from pvc_dev.cluster import NodeSpec
from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from pvc_tasks.routing import node_queue

WATCHDOG = {"PVC_CONSUMER_CHECK_INTERVAL": "1", "PVC_CONSUMER_STALL_AFTER": "4"}


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=30, **kw)


def test_a_worker_whose_consumer_stops_restarts_itself(make_cluster):
    """hv1's consumer stops (the process lives): its watchdog's pings go untaken, it records the node fault
    consumer_stuck and exits 75; the supervisor starts it again (counted), the new worker runs the job that waited,
    and clears the fault."""
    c = make_cluster([NodeSpec("hv1")], worker_env=WATCHDOG)
    assert c.define_vm("waits", node="hv1")["state"] == "succeeded"
    replies = Celery("control", broker=c.redis_url).control.cancel_consumer(
        node_queue("hv1").name, destination=["pvc@hv1"], reply=True, timeout=5)
    assert replies, "the worker did not answer the cancel"
    job = api(c, "post", "/vms/waits/state", json={"state": "start"}).json()
    wait_until(lambda: c.restarts.get("hv1") == 1, 60, "the supervisor to restart hv1")
    assert "hv1 exited by itself (status 75)" in (c.workdir / "supervisor.log").read_text()
    assert c.wait_job(job["id"], timeout=60)["state"] == "succeeded"
    assert libvirt_domains(c)["hv1"]["waits"]["state"] == "running"

    def faults() -> list[str]:
        return [f["id"] for f in api(c, "get", "/nodes/hv1").json()["faults"]]

    wait_until(lambda: "consumer_stuck" not in faults(), 30, "the new worker to clear the fault")
    assert c.restarts == {"hv1": 1}
