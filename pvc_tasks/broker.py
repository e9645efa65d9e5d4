"""Kombu's Redis transport without the restore of unacknowledged messages when a channel closes.

Why: when Redis goes away, Celery's consumer closes its broken connection, and kombu's Redis channel then tries to
put the messages it had reserved back into their queue. The connection is already gone at that point, so the
restore raises ``AttributeError: 'NoneType' object has no attribute 'hostname'`` (from ``_connparams``), which
``ignore_errors`` does not catch: the consumer dies with "Unrecoverable error" and the worker stops (seen in our
chaos tests with celery/kombu 5.7; a known class of kombu/Redis reconnect bugs). The restore is also useless here:
correctness never depends on redelivery. A step whose reserved message is dropped is published again from its job
record by the re-driver (``pvc_tasks.redrive``), and the copy Redis keeps in its unacked set comes back after the
visibility timeout as a duplicate, which the step's compare-and-set ignores.

Used for ``redis://`` and ``rediss://`` brokers (``pvc_tasks.app.configure``); other brokers keep their transport.
"""

from __future__ import annotations

from kombu.transport import redis

__all__ = ["Transport"]


class Channel(redis.Channel):
    do_restore = False


class Transport(redis.Transport):
    Channel = Channel
