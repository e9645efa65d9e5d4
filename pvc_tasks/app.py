"""The Celery application shared by the API (which sends) and the node workers (which consume).

Configuration follows Celery's own advice for this shape of work: explicit task names, routes decided by one
router (``pvc_tasks.routing``) with ``task_create_missing_queues`` off so that a misspelt queue fails loudly,
one message in flight per worker thread, and task events on so that Flower sees every task from "sent" to its
end.

Acks on receipt, not ``task_acks_late``: correctness never depends on redelivery (each job record is the outbox,
and the re-driver publishes again a step whose message was lost, ``pvc_tasks.redrive``), and a late ack would not
help on Redis, which hands an unacknowledged message out again only after its visibility timeout (an hour), long
after the re-driver (seconds) or a restarted worker's reconciler. ``reject_on_worker_lost`` concerns prefork
children; our workers run threads. A Redis broker uses our transport (``pvc_tasks.broker``), which survives
Redis going away while messages are reserved.
"""

from __future__ import annotations

from celery import Celery

from pvc_tasks import defaults
from pvc_tasks.config import Settings

__all__ = ["app", "configure"]

def _transport(url: str) -> str | None:
    """Our Redis transport for a Redis broker (see pvc_tasks.broker); the URL's own for any other."""
    return "pvc_tasks.broker:Transport" if url.startswith(("redis://", "rediss://")) else None


app = Celery("pvc", broker=defaults.REDIS, backend=defaults.REDIS)
app.conf.update(
    broker_transport=_transport(defaults.REDIS),
    task_ignore_result=True,
    task_create_missing_queues=False,
    task_routes=("pvc_tasks.routing.route_task",),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    result_expires=24 * 3600,
    broker_connection_retry_on_startup=True,
    # The API must not hang when Redis is gone: a bounded publish retry, then a clear 503.
    broker_transport_options={"max_retries": defaults.BROKER_PUBLISH_RETRIES, "interval_start": 0,
                              "interval_step": defaults.BROKER_PUBLISH_RETRY_MAX / 2,
                              "interval_max": defaults.BROKER_PUBLISH_RETRY_MAX},
    redis_socket_connect_timeout=defaults.BROKER_CONNECT_TIMEOUT,
    redis_socket_timeout=defaults.BROKER_SOCKET_TIMEOUT,
    worker_hijack_root_logger=False,
    # Every task module, through the one table of job kinds that imports them explicitly.
    include=["pvc_tasks.kinds"],
)


def configure(settings: Settings) -> Celery:
    """Point the app at the cluster's Redis; call once at process start, before sending or consuming."""
    app.conf.broker_url = settings.redis
    app.conf.broker_transport = _transport(settings.redis)
    app.conf.result_backend = settings.redis
    app.conf.pvc_publish_copies = settings.publish_copies
    return app
