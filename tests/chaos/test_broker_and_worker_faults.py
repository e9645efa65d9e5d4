"""Transient faults during real work: the broker (Redis and RabbitMQ) killed with its queued messages, node workers
killed mid-flush.

Each scenario runs on real servers and ends with the harness's invariant check (tests/conftest.py): no VM defined or
running on two nodes as each node's libvirt says, no leaked marker, slot or reservation, every job terminal. Every
job here must end within ``BOUND`` s of the fault: far below ``queue_timeout`` (one hour), so none of them waited for
it. Each test prints how long its jobs took to end after the fault (``-s`` shows it).
"""

from __future__ import annotations

import os
import signal
import time

from pvc_dev.cluster import NodeSpec
from pvc_dev.services import wait_until
from tests.chaos.scenarios import (
    BOUND,
    FAULTY,
    NODES,
    api,
    assert_flush_survives,
    assert_no_crash,
    progress,
    running_on,
)
from tests.conftest import BOTH_BROKERS


@BOTH_BROKERS
def test_broker_killed_with_its_messages_during_a_50_vm_flush(make_cluster, broker):
    """The broker (Redis, then RabbitMQ) SIGKILLed mid-flush, every queued message lost with it, and restarted on
    its port: the flush succeeds, and every VM runs once, on another node."""
    c = make_cluster(NODES, worker_env=FAULTY, own_broker=True)
    assert_flush_survives(c, 50, 10, lambda: c.restart_broker(kill=True, lose=True), f"{broker} was killed")


@BOTH_BROKERS
def test_broker_killed_with_a_batch_of_starts_queued_on_a_one_thread_worker(make_cluster, broker):
    """Twenty start jobs queued behind a one-thread worker when the broker (Redis, then RabbitMQ) is SIGKILLed with
    them: each is re-sent from its record once the broker is back, and every VM runs; no VM stays busy until
    queue_timeout."""
    c = make_cluster([NodeSpec("hv1", 16384)], worker_env={**FAULTY, "PVC_WORKER_CONCURRENCY": "1"}, own_broker=True)
    names = [f"s{i:02d}" for i in range(20)]
    for name in names:
        assert c.define_vm(name, 64, node="hv1")["state"] == "succeeded"
    worker = c.workers["hv1"]
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        jobs = [api(c, "post", f"/vms/{name}/state", json={"state": "start"}).json()["id"] for name in names]
        wait_until(lambda: c.queued("hv1") >= 19, 10, "the start messages queued in the broker")
        fault = time.monotonic()
        c.restart_broker(kill=True, lose=True)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    ended = [c.wait_job(job, timeout=BOUND) for job in jobs]
    print(f"\n20 start jobs ended {time.monotonic() - fault:.1f} s after {broker} was killed")
    assert [job["state"] for job in ended] == ["succeeded"] * 20, [(j["vm"], j["reason"]) for j in ended]
    assert sorted(running_on(c, {"hv1"})) == names
    assert_no_crash(c)


def test_source_then_target_worker_killed_during_a_flush(make_cluster):
    """The flushing node's worker is SIGKILLed and restarted mid-flush, then a target's: each restart rolls back or
    re-sends what it held, the flush retries the VMs whose migration failed, and it succeeds."""
    c = make_cluster(NODES, worker_env=FAULTY)
    assert api(c, "put", "/cluster/limits", json={"migrate_cluster": 1}).status_code == 200  # one VM at a time
    names = [f"k{i:02d}" for i in range(20)]
    for name in names:
        assert c.define_vm(name, 64, node="hv1", start=True)["state"] == "succeeded"
    flush = api(c, "post", "/nodes/hv1/flush").json()
    fault = time.monotonic()
    for node in ("hv1", "hv2"):
        done = progress(c, flush["id"])
        wait_until(lambda done=done: progress(c, flush["id"]) > done, 120, "one more VM to leave hv1")
        c.workers[node].kill()
        c.start_worker(node)
        c.wait_worker(node)
    ended = c.wait_job(flush["id"], timeout=BOUND)
    print(f"\nflush of 20 VMs ended {time.monotonic() - fault:.1f} s after the first kill")
    assert ended["state"] == "succeeded", (ended["reason"], ended["messages"][-5:])
    assert progress(c, flush["id"]) == 20
    placed = running_on(c, {"hv1", "hv2", "hv3"})
    records = {name: {k: v for k, v in api(c, "get", f"/vms/{name}").json().items() if k in ("node", "state")}
               for name in set(names) - set(placed)}
    assert sorted(placed) == names and set(placed.values()) <= {"hv2", "hv3"}, (placed, records)
    assert_no_crash(c)
