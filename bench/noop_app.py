"""The baseline of the benches: a plain Celery app with no-op tasks, nothing of pvc in it.

Run as worker processes by the benches (``celery -A bench.noop_app worker --pool threads -Q <queue>``) on the
same Redis (and, for ``bench.hop``, the same ZooKeeper) as the cluster under test, so the ratio printed compares
pvc's job path with Celery's own hop cost on this machine.
"""

from __future__ import annotations

import os
import threading

from celery import Celery
from kazoo.client import KazooClient

from zk_schema.acl import acl_for

app = Celery("bench", broker=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/15"),
             backend=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/15"))
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_prefetch_multiplier=1, task_default_queue="bench", worker_hijack_root_logger=False)

_zk: KazooClient | None = None
_zk_lock = threading.Lock()


def _zookeeper() -> KazooClient:
    global _zk
    with _zk_lock:
        if _zk is None:
            # Authenticated as pvc is (the cluster's chroot admits nobody else), with the same ACL on its node.
            identity = os.environ["BENCH_ZOOKEEPER_AUTH"]
            _zk = KazooClient(hosts=os.environ["BENCH_ZOOKEEPER"], auth_data=[("digest", identity)],
                              default_acl=acl_for(identity))
            _zk.start()
            _zk.ensure_path("/bench")
        return _zk


@app.task(name="bench.noop")
def noop(**kwargs) -> dict:
    return kwargs


@app.task(name="bench.hop")
def hop(zk_writes: int = 0, **kwargs) -> dict:
    """One link of a chain: ``zk_writes`` ZooKeeper writes (each its own transaction), nothing else."""
    if zk_writes:
        zk = _zookeeper()
        for _ in range(zk_writes):
            zk.set("/bench", b"x")
    return kwargs
