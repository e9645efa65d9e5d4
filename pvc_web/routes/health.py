"""``GET /health``: the one unauthenticated endpoint; 200 when ZooKeeper and the broker answer, else 503.

It also shows how old the oldest unfinished jobs are, how often steps were re-sent and how many jobs are past
their kind's bound (figures only: job ids and VM names need a token, ``GET /cluster``)."""

from __future__ import annotations

import time

import redis
from flask import current_app
from kazoo.exceptions import KazooException
from kombu import Connection

from pvc_tasks.backlog import backlog
from pvc_tasks.jobs import JobStore
from pvc_web.blueprint import Blueprint, handle
from pvc_web.schemas import HealthSchema

PREFIX = "/health"
blp = Blueprint("health", __name__, description="Liveness of the API and its dependencies (no token needed)")


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


@blp.route("")
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=HealthSchema, description="a dependency is down")
@blp.doc(security=[])
def health():
    """Health of the API, ZooKeeper and the broker."""
    h = handle()
    zk_ok = h.zk.connected
    version, jobs = None, None
    if zk_ok:
        try:
            schema = h.refresh()
            version = schema.version if schema else None
            if schema:
                settings = current_app.extensions["pvc_settings"]
                figures = backlog(JobStore(h.zk, schema).unfinished(), time.time(), settings)
                jobs = dict(figures, over_bound=len(figures["over_bound"]))
        except KazooException:
            zk_ok = False
    broker_ok = _broker_ok(current_app.extensions["pvc_settings"].broker_url)
    ok = zk_ok and broker_ok
    body = {"status": "ok" if ok else "degraded", "zookeeper": zk_ok, "broker": broker_ok,
            "cluster_initialised": version is not None, "schema_version": version, "jobs": jobs}
    return body, 200 if ok else 503
