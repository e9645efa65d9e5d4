"""What whoever holds the broker's credentials can make a pvc worker do through Celery's remote control: inspect
it, and no more (no shutdown, no pool restart, no consuming another node's queue); and pvc's Redis user is refused
the dangerous commands while everything pvc, Celery and Flower send is let through."""

import redis
import requests
from celery import Celery

from pvc_tasks.routing import node_queue


def _control(c):
    return Celery("control", broker=c.broker_url).control


def test_a_worker_answers_inspection_and_refuses_the_rest(cluster):
    """ping and stats answer; shutdown, pool_restart, autoscale, rate_limit and revoke are unknown to a pvc worker,
    which stays up; add_consumer of another node's queue is refused; of its own queue it works."""
    control, hv1 = _control(cluster), ["pvc@hv1"]
    assert control.ping(destination=hv1, timeout=5)
    assert control.inspect(destination=hv1, timeout=5).stats()["pvc@hv1"]["pool"]
    pid = cluster.workers["hv1"].pid
    for command, args in [("shutdown", {}), ("pool_restart", {"reload": True, "modules": ["os"]}),
                          ("autoscale", {"max": 100, "min": 50}), ("rate_limit", {"task_name": "pvc.vm.start",
                                                                                  "rate_limit": "1/h"}),
                          ("revoke", {"task_id": "x", "terminate": True})]:
        replies = control.broadcast(command, arguments=args, destination=hv1, reply=True, timeout=3)
        assert replies and all(f"KeyError('{command}')" in str(r) for r in replies), (command, replies)
    refused = control.add_consumer(node_queue("hv2").name, destination=hv1, reply=True, timeout=5)
    assert "refused" in str(refused) and "pvc@hv1" in str(refused), refused
    assert cluster.workers["hv1"].alive() and cluster.workers["hv1"].pid == pid
    cluster.consume("hv1", False)
    cluster.consume("hv1", True)
    assert control.ping(destination=hv1, timeout=5)


def test_pvcs_redis_user_is_refused_what_it_never_needs(cluster, vm_name):
    """FLUSHALL, CONFIG, KEYS, SHUTDOWN, MONITOR and CLIENT LIST are refused to pvc's own user; after a define, a
    start, a migration, a control broadcast and Flower's broker view, Redis's ACL log shows no refusal of anything
    pvc, Celery or Flower sent."""
    port, password = int(cluster.redis.info["port"]), str(cluster.redis.info["password"])
    pvc = redis.Redis(host="127.0.0.1", port=port, username="pvc", password=password, socket_timeout=5)
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("SHUTDOWN",), ("MONITOR",),
                    ("CLIENT", "LIST")):
        try:
            pvc.execute_command(*command)
        except redis.exceptions.NoPermissionError:
            continue
        raise AssertionError(f"{command} was allowed")
    audit = redis.Redis(host="127.0.0.1", port=port, username="audit", password=password + "-audit", socket_timeout=5)
    audit.acl_log_reset()
    assert cluster.define_vm(vm_name, 64, node="hv1", start=True)["state"] == "succeeded"
    s = cluster.session()
    job = s.post(f"{cluster.api_url}/api/v1/vms/{vm_name}/migrate", json={"target": "hv2"}, timeout=10).json()
    assert cluster.wait_job(job["id"])["state"] == "succeeded"
    assert _control(cluster).inspect(destination=["pvc@hv2"], timeout=5).active_queues()
    assert s.get(f"{cluster.api_url}/api/v1/metrics", timeout=10).status_code == 200  # queue depths from Redis
    if cluster.flower_service is not None:
        auth = (cluster.flower_user, cluster.flower_password)
        assert requests.get(f"{cluster.flower_url}/api/workers", auth=auth, timeout=30).status_code == 200
    assert audit.acl_log() == []
    assert cluster.wait_job(s.post(f"{cluster.api_url}/api/v1/vms/{vm_name}/state", json={"state": "stop"},
                                   timeout=10).json()["id"])["state"] == "succeeded"
