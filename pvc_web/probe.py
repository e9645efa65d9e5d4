"""``GET /health``'s answer, made ahead of time: a thread looks at ZooKeeper and the broker every
``HEALTH_INTERVAL`` s, and the endpoint, which needs no token, answers from the last look without any I/O.

So a client without a token can neither make the API wait on ZooKeeper or the broker nor spend its threads on them,
however often it asks; and a health check still answers at once while a dependency hangs. A look older than
``HEALTH_STALE`` s (its thread is stuck in a call) is answered ``degraded`` with ``stale`` true.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from kazoo.exceptions import KazooException
from kombu import Connection

from pvc_tasks import defaults
from pvc_tasks.backlog import backlog
from pvc_tasks.config import Settings
from pvc_tasks.jobs import JobStore
from pvc_web.cluster import ClusterHandle

__all__ = ["HealthProbe"]

log = logging.getLogger(__name__)


def _broker_ok(url: str) -> bool:
    """The broker accepts our credentials within a second (Redis: PING; RabbitMQ: an AMQP connection)."""
    if url.startswith(("redis://", "rediss://")):
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False
    try:
        with Connection(url, connect_timeout=1) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=1)
        return True
    except Exception:  # noqa: BLE001 - amqp and socket errors of many kinds all mean "not reachable"
        return False


class HealthProbe:
    """The API process's view of its dependencies, refreshed on a daemon thread."""

    def __init__(self, handle: ClusterHandle, settings: Settings, interval: float = defaults.HEALTH_INTERVAL,
                 stale_after: float = defaults.HEALTH_STALE) -> None:
        self.handle, self.settings = handle, settings
        self.interval, self.stale_after = interval, stale_after
        self._last: tuple[float, dict] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def start(self) -> HealthProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def look(self) -> dict:
        """One look at ZooKeeper (the schema version, the unfinished jobs' figures) and the broker."""
        h = self.handle
        zk_ok, version, jobs = h.zk.connected, None, None
        if zk_ok:
            try:
                schema = h.refresh()
                version = schema.version if schema else None
                if schema:
                    figures = backlog(JobStore(h.zk, schema).unfinished(), time.time(), self.settings)
                    jobs = dict(figures, over_bound=len(figures["over_bound"]))
            except KazooException:
                zk_ok = False
        broker_ok = _broker_ok(self.settings.broker_url)
        return {"zookeeper": zk_ok, "broker": broker_ok, "cluster_initialised": version is not None,
                "schema_version": version, "jobs": jobs}

    def answer(self) -> tuple[dict, int]:
        """The body and status of ``GET /health``, from memory: 200 when the last look found both dependencies up and
        is fresh, else 503."""
        last = self._last
        if last is None:
            body = {"zookeeper": False, "broker": False, "cluster_initialised": False, "schema_version": None,
                    "jobs": None}
            age = None
        else:
            body, age = dict(last[1]), round(time.monotonic() - last[0], 1)
        stale = age is None or age > self.stale_after
        ok = body["zookeeper"] and body["broker"] and not stale
        return dict(body, status="ok" if ok else "degraded", checked_s_ago=age, stale=stale), 200 if ok else 503

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._last = (time.monotonic(), self.look())
            except Exception:  # a look that fails unexpectedly must not end the looking
                log.exception("health: a look at ZooKeeper and the broker failed")
            self._stop.wait(self.interval)
