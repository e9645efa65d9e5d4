"""Kombu's Redis transport, made to survive Redis going away while messages are reserved.

Two kombu bugs (celery/kombu 5.7), each seen killing a worker's consumer with "Unrecoverable error" (the worker
then stops) when Redis was killed under load in our chaos tests and soak:

* On a lost connection Celery closes its broken connection, and kombu's Redis channel then tries to put the
  messages it had reserved back into their queue. The connection is already gone at that point, so the restore
  raises ``AttributeError: 'NoneType' object has no attribute 'hostname'`` (from ``_connparams``), which
  ``ignore_errors`` does not catch. Here the channel does not restore on close (``do_restore = False``).
* A message received on the old connection is acknowledged after the channel closed (the ack runs later in the
  event loop): ``AttributeError: 'NoneType' object has no attribute 'client'``. Here an ack or reject on a closed
  channel is dropped.

And one cost: kombu builds a new redis-py client for every publish and every ack; here one per connection pool
is kept (``Channel._create_client``).

Neither restore nor ack matters for correctness: nothing depends on redelivery. A step whose reserved message is
dropped is published again from its job record by the re-driver (``pvc_tasks.redrive``), and the copy Redis keeps
in its unacked set comes back after the visibility timeout as a duplicate, which the step's compare-and-set
ignores.

Used for ``redis://`` and ``rediss://`` brokers (``pvc_tasks.app.configure``); other brokers keep their transport.
"""

from __future__ import annotations

import logging

from kombu.transport import redis

__all__ = ["Transport"]

log = logging.getLogger(__name__)


class QoS(redis.QoS):
    def _closed(self, delivery_tag) -> bool:
        if self.channel.connection is None:
            log.warning("message %s not acknowledged: its channel closed with the broker connection (Redis keeps "
                        "it unacked; the job's step is re-sent from its record if needed)", delivery_tag)
            return True
        return False

    def ack(self, delivery_tag) -> None:
        if not self._closed(delivery_tag):
            super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False) -> None:
        if not self._closed(delivery_tag):
            super().reject(delivery_tag, requeue=requeue)


class Channel(redis.Channel):
    QoS = QoS
    do_restore = False
    _sync_client: tuple | None = None

    def _create_client(self, asynchronous: bool = False):
        """One synchronous client per connection pool, not one per publish and per ack as kombu makes: building a
        redis-py client copies its ~150 response callbacks, 8 % of a busy worker's time under the GIL (py-spy,
        a flush of 200 VMs). A client over a pool is safe to share between threads; a new pool (after a lost
        connection) gets a new client."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool, cached = self.pool, self._sync_client
        if cached is None or cached[0] is not pool:
            cached = self._sync_client = (pool, super()._create_client())
        return cached[1]


class Transport(redis.Transport):
    Channel = Channel
