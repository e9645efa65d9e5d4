"""The only code that builds task messages and publishes them (the role of Nova's ``rpcapi``).

A message names a job and nothing else the task could not read from it: ``{"job_id", "vm", "node"}`` (and
``periodic`` for an engine's safety pass). The job record says which task may act next (``stage``) and on whose
queue (``node``; "" is the cluster queue), so a message can be rebuilt from the record at any time. That is what
makes the record the outbox: whoever writes a stage publishes it right after the write commits, and if that
publish is lost (the broker refused it, lost it, or the publisher died in between) the re-driver publishes it
again from the record (``pvc_tasks.redrive``). A duplicate is harmless: every step takes its stage with a
compare-and-set first (``pvc_tasks.runner``).

Every send ignores the result backend (``ignore_result``): nobody waits on a Celery result (ZooKeeper records every
job's outcome), and Redis's result consumer would subscribe to each task's result channel at send time, which made
a send with Redis down fail with a ``RuntimeError`` instead of the broker's error.

When the broker refuses a message, ``publish`` logs it and returns False; it never raises and never changes the
job. Callers carry on as if it had been sent (the API answers 202 with the job): the job waits in ZooKeeper and
runs once the broker answers again, or ends ``failed`` with the reason when the re-driver gives up.

The queue is decided by ``pvc_tasks.routing`` from the task's name and the ``node`` keyword; nothing here names a
queue.
"""

from __future__ import annotations

import logging
import time

from kombu import Connection
from kombu.exceptions import ChannelError

from pvc_tasks.app import app
from pvc_tasks.errors import describe
from pvc_tasks.jobs import Job, JobState
from pvc_tasks.routing import CLUSTER_QUEUE, node_queue

__all__ = ["PING", "message", "message_count", "ping", "publish", "waiting"]

#: A worker's ping through its own queue (``pvc_workers.watchdog``): the one message that is not a job's.
PING = "pvc.node.ping"

log = logging.getLogger(__name__)


def message(job: Job, *, periodic: bool = False) -> tuple[str, dict]:
    """The task name and keyword arguments that drive ``job``'s current stage."""
    kwargs: dict = {"job_id": job.id, "vm": job.vm, "node": job.node}
    if periodic:
        kwargs["periodic"] = True
    return job.stage, kwargs


def publish(job: Job, *, countdown: float | None = None, periodic: bool = False) -> bool:
    """Publish the message for ``job``'s current stage; False (logged) when the broker did not take it."""
    name, kwargs = message(job, periodic=periodic)
    options: dict = {"ignore_result": True, **({"countdown": countdown} if countdown else {})}
    if job.state == JobState.QUEUED:
        options["task_id"] = job.id  # a job's first message carries its id: Flower shows the job's task by it
    try:
        # Fault tests set pvc_publish_copies to 2 to prove that a duplicated message is harmless.
        for _copy in range(max(int(app.conf.get("pvc_publish_copies") or 1), 1)):
            app.send_task(name, kwargs=kwargs, **options)
    except Exception as exc:  # noqa: BLE001 - kombu and the Redis client raise many kinds; none may escape
        log.warning("job %s: the broker did not take %s for %s (%s); the re-driver publishes it again",
                    job.id, name, job.node or "the cluster queue", describe(exc))
        return False
    return True


def ping(node: str) -> bool:
    """Publish a ping to ``node``'s own queue; False when the broker did not take it."""
    try:
        app.send_task(PING, kwargs={"node": node, "sent": time.time()}, ignore_result=True)
    except Exception as exc:  # noqa: BLE001 - as in publish
        log.warning("ping of %s not published: %s", node, describe(exc))
        return False
    return True


def message_count(connection: Connection, node: str) -> int:
    """Messages waiting in ``node``'s queue ("" for the cluster queue) on ``connection``'s broker."""
    queue = node_queue(node) if node else CLUSTER_QUEUE
    try:
        return connection.default_channel.queue_declare(queue=queue.name, passive=True).message_count
    except ChannelError:
        return 0  # Redis deletes an empty list: a queue that does not exist holds nothing


def waiting(node: str) -> int | None:
    """Messages waiting in ``node``'s queue ("" for the cluster queue): a queue that is not empty is behind, not
    lossy. None when the broker cannot be asked."""
    try:
        with app.connection_for_write() as connection:
            return message_count(connection, node)
    except Exception as exc:  # noqa: BLE001 - as in publish: the broker cannot say, so nothing is re-sent now
        log.warning("cannot read the queue length of node %s: %s", node or "the cluster", describe(exc))
        return None
