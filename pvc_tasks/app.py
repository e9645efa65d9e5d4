"""The Celery application shared by the API (which sends) and the node workers (which consume).

Configuration follows Celery's own advice for this shape of work: explicit task names, routes decided by one
router (``pvc_tasks.routing``) with ``task_create_missing_queues`` off so that a misspelt queue fails loudly,
one message in flight per worker thread, and task events on so that Flower sees every task from "sent" to its
end.

Correctness never depends on redelivery (each job record is the outbox, and the re-driver publishes again a step
whose message was lost, ``pvc_tasks.redrive``); acknowledgements only decide how soon a message comes back:

* Redis: acks on receipt. A late ack would not help: Redis hands an unacknowledged message out again only after
  its visibility timeout (an hour), long after the re-driver (seconds) or a restarted worker's reconciler. A
  Redis broker uses our transport (``pvc_tasks.broker``), which survives Redis going away while messages are
  reserved.
* RabbitMQ: ``task_acks_late`` with ``task_reject_on_worker_lost``. RabbitMQ returns a dead consumer's unacked
  messages at once, so a step whose worker died before it began is delivered again within a second instead of
  after the re-driver's bound, and the step's compare-and-set makes the copy of a step that had begun harmless.
  Every step ends well within RabbitMQ's ``consumer_timeout`` (30 min): the longest bounds are the migration and
  shutdown timeouts (``pvc_tasks.defaults``). Queues are durable and messages persistent (kombu's defaults).

``worker_enable_prefetch_count_reduction`` is off: after a reconnect Celery lowers the prefetch count by the
tasks still running and restores it as they end; in our RabbitMQ chaos test a worker then received one message and
ran nothing more until its watchdog restarted it (3 of 7 runs, with or without late acks; 0 of 7 with it off).
"""

from __future__ import annotations

from celery import Celery

from pvc_tasks import defaults
from pvc_tasks.config import Settings

__all__ = ["app", "configure"]

def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def _transport(url: str) -> str | None:
    """Our Redis transport for a Redis broker (see pvc_tasks.broker); the URL's own for any other."""
    return "pvc_tasks.broker:Transport" if _is_redis(url) else None


#: A publish is retried briefly, then the dispatcher reports the broker down: the API answers at once (the job
#: record is the outbox) instead of hanging while the broker is gone.
_RETRY = {"max_retries": defaults.BROKER_PUBLISH_RETRIES, "interval_start": 0,
          "interval_step": defaults.BROKER_PUBLISH_RETRY_MAX / 2, "interval_max": defaults.BROKER_PUBLISH_RETRY_MAX}

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
    worker_enable_prefetch_count_reduction=False,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    result_expires=24 * 3600,
    broker_connection_retry_on_startup=True,
    # The API must not hang when Redis is gone: a bounded publish retry, then a clear 503.
    broker_transport_options=_RETRY,
    task_publish_retry_policy=_RETRY,
    broker_connection_timeout=defaults.BROKER_CONNECT_TIMEOUT,
    redis_socket_connect_timeout=defaults.BROKER_CONNECT_TIMEOUT,
    redis_socket_timeout=defaults.BROKER_SOCKET_TIMEOUT,
    worker_hijack_root_logger=False,
    # Every task module, through the one table of job kinds that imports them explicitly.
    include=["pvc_tasks.kinds"],
)


def configure(settings: Settings) -> Celery:
    """Point the app at the cluster's broker; call once at process start, before sending or consuming."""
    url = settings.broker_url
    app.conf.broker_url = url
    app.conf.broker_transport = _transport(url)
    # Nobody reads a Celery result (ZooKeeper holds every outcome); Redis keeps the backend Flower may show.
    app.conf.result_backend = url if _is_redis(url) else None
    app.conf.task_acks_late = app.conf.task_reject_on_worker_lost = not _is_redis(url)
    app.conf.pvc_publish_copies = settings.publish_copies
    return app
