"""Metrics of this process (prometheus-client), for a worker and the API alike; the cluster's own figures (jobs,
nodes, VMs, queues) are the API's (``pvc_web.metrics``).

- ``pvc_zookeeper_request_seconds{op}``: every ZooKeeper request of this process, from its queueing to its answer
  (``TimedKazooClient``, the client ``pvc_tasks.zkclient.connect`` makes); ``op`` is get, set, create, delete,
  exists, children, transaction, sync or other.
- ``pvc_step_duration_seconds{task,outcome}``: every Celery task this worker ran (a job's step, a flush pass),
  from Celery's ``task_prerun`` to ``task_postrun`` signals; ``task`` is its name (``pvc.<family>.<phase>``),
  ``outcome`` Celery's state (SUCCESS, FAILURE, RETRY).

A worker serves them on ``metrics_listen`` (``host:port``; empty: not served) with a bounded server (a small thread
pool, a timeout per connection: ``BoundedServer``). That bind has no authentication: keep it on loopback or a
management network (docs/deployment.md); the figures are timings, never names or secrets.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

from celery.signals import task_postrun, task_prerun
from kazoo.client import KazooClient
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from pvc_tasks import defaults

__all__ = ["REGISTRY", "STEP_SECONDS", "ZK_SECONDS", "BoundedServer", "TimedKazooClient", "serve"]

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


class _MetricsHandler(BaseHTTPRequestHandler):
    """``GET /metrics`` (or ``/``): the registry in Prometheus' text format; nothing else. One request per
    connection; a client that sends nothing is cut after ``METRICS_TIMEOUT`` s (the socket's timeout)."""

    timeout = defaults.METRICS_TIMEOUT

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/", "/metrics"):
            self.send_error(404)
            return
        body = generate_latest(REGISTRY)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        """Scrapes are not worth a log line each."""


class BoundedServer(HTTPServer):
    """prometheus-client's own server spends a thread per connection, without a timeout: enough idle sockets on
    ``metrics_listen`` and a worker's threads (its keepalive among them) starve, and the node is fenced. Here a
    fixed pool of ``METRICS_THREADS`` serves connections; at most ``METRICS_PENDING`` more wait, and any beyond
    that are closed at once; each connection has ``METRICS_TIMEOUT`` s to send its request."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _MetricsHandler)
        self.pool = ThreadPoolExecutor(defaults.METRICS_THREADS, thread_name_prefix="metrics")
        self.slots = threading.BoundedSemaphore(defaults.METRICS_THREADS + defaults.METRICS_PENDING)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: this client waits for no one
            return
        self.pool.submit(self._serve, request, client_address)

    def _serve(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a broken client must not end the pool's thread
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that went away or timed out: nothing to report."""


def serve(listen: str) -> BoundedServer:
    """Serve this process's metrics on ``host:port`` (``BoundedServer``, on a daemon thread)."""
    host, _, port = listen.rpartition(":")
    server = BoundedServer((host.strip("[]") or "127.0.0.1", int(port)))
    threading.Thread(target=server.serve_forever, name="metrics-accept", daemon=True).start()
    return server
