"""Metrics of this process (prometheus-client), for a worker and the API alike; the cluster's own figures (jobs,
nodes, VMs, queues) are the API's (``pvc_web.metrics``).

- ``pvc_zookeeper_request_seconds{op}``: every ZooKeeper request of this process, from its queueing to its answer
  (``TimedKazooClient``, the client ``pvc_tasks.zkclient.connect`` makes); ``op`` is get, set, create, delete,
  exists, children, transaction, sync or other.
- ``pvc_step_duration_seconds{task,outcome}``: every Celery task this worker ran (a job's step, a flush pass),
  from Celery's ``task_prerun`` to ``task_postrun`` signals; ``task`` is its name (``pvc.<family>.<phase>``),
  ``outcome`` Celery's state (SUCCESS, FAILURE, RETRY).

A worker serves them on ``metrics_listen`` (``host:port``; empty: not served). That bind has no authentication:
keep it on loopback or a management network (docs/deployment.md); the figures are timings, never names or secrets.
"""

from __future__ import annotations

import threading
import time

from celery.signals import task_postrun, task_prerun
from kazoo.client import KazooClient
from prometheus_client import CollectorRegistry, Histogram, start_http_server

__all__ = ["REGISTRY", "STEP_SECONDS", "ZK_SECONDS", "TimedKazooClient", "serve"]

#: This process's metrics (not prometheus-client's global registry: nothing a library registers leaks in).
REGISTRY = CollectorRegistry()
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ZK_SECONDS = Histogram("pvc_zookeeper_request_seconds", "ZooKeeper requests of this process, by operation",
                       ["op"], buckets=_FAST, registry=REGISTRY)
STEP_SECONDS = Histogram("pvc_step_duration_seconds", "Celery tasks (job steps, flush passes) run by this worker",
                         ["task", "outcome"], buckets=_SLOW, registry=REGISTRY)

_OPS = {"GetData": "get", "SetData": "set", "Create": "create", "Create2": "create", "Delete": "delete",
        "Exists": "exists", "GetChildren": "children", "GetChildren2": "children", "Transaction": "transaction",
        "Sync": "sync"}


class TimedKazooClient(KazooClient):
    """A KazooClient that times each request (``pvc_zookeeper_request_seconds``): about 6 us of CPU per request
    (3 us here, the observation when it is answered; a request takes 300 us or more), measured with timeit."""

    def _call(self, request, async_object):
        histogram = ZK_SECONDS.labels(_OPS.get(type(request).__name__, "other"))
        started = time.monotonic()
        async_object.rawlink(lambda _result: histogram.observe(time.monotonic() - started))
        return super()._call(request, async_object)


#: Start times of the tasks running on this thread, by task id (a thread runs one task at a time; two copies of one
#: message, which share an id, run on two threads).
_STARTED = threading.local()


@task_prerun.connect
def _task_started(task_id: str | None = None, **_: object) -> None:
    _STARTED.at = (task_id, time.monotonic())


@task_postrun.connect
def _task_ended(task_id: str | None = None, task=None, state: str | None = None, **_: object) -> None:
    started = getattr(_STARTED, "at", None)
    if started and started[0] == task_id and task is not None:
        STEP_SECONDS.labels(task.name, state or "unknown").observe(time.monotonic() - started[1])
    _STARTED.at = None


def serve(listen: str) -> None:
    """Serve this process's metrics on ``host:port`` (a daemon thread of prometheus-client)."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=REGISTRY)
