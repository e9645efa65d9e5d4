"""A worker that is alive but no longer consumes its queue notices it and restarts itself.

Celery's consumer can die or hang while the process lives (a broker reconnect bug, a stuck poll): the node would
look present and take nothing, and its jobs would wait. Every ``consumer_check_interval`` s the watchdog publishes
``pvc.node.ping`` to this node's own queue (``pvc_tasks.dispatch.ping``); the ping task below, run by this
worker's pool, records when one arrived. When no ping arrived for ``consumer_stall_after`` s while the pool had an
idle thread at every check of that span (a busy pool takes pings late; it is not stuck), the watchdog records the
node fault ``consumer_stuck`` saying why, closes its ZooKeeper session (so the node's presence goes at once) and
exits with status 75. Its supervisor starts it again: systemd's ``Restart=always`` (deploy/systemd/), or the dev
cluster's and the test harness's supervisor (``pvc_dev.cluster``). The new worker clears the fault at its first
ping.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery.worker import state as worker_state

from pvc_tasks import dispatch
from pvc_tasks.app import app
from pvc_tasks.context import NodeContext
from pvc_workers.health import set_fault

__all__ = ["EXIT_STUCK", "Watchdog", "ping", "restart_worker"]

log = logging.getLogger(__name__)

#: Exit status of a worker that found its consumer stuck (EX_TEMPFAIL: try again).
EXIT_STUCK = 75

_arrived = {"at": time.monotonic()}


@app.task(name=dispatch.PING)
def ping(node: str, sent: float) -> None:
    """Runs on ``node`` itself: proves that its consumer still takes messages from its queue."""
    _arrived["at"] = time.monotonic()


class Watchdog(threading.Thread):
    def __init__(self, ctx: NodeContext, stop: threading.Event) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.ctx, self.stop = ctx, stop

    def run(self) -> None:
        settings, node = self.ctx.settings, self.ctx.node
        if settings.consumer_stall_after <= 0:
            return
        started = idle_since = time.monotonic()
        _arrived["at"] = started
        cleared = False
        while not self.stop.wait(settings.consumer_check_interval):
            now = time.monotonic()
            if len(worker_state.active_requests) >= settings.worker_concurrency:
                idle_since = now  # a busy pool takes the ping late: the span of idleness starts again
            silent = now - max(_arrived["at"], idle_since)
            if _arrived["at"] > started and not cleared:
                set_fault(self.ctx, "node.faults", "consumer_stuck", None, node)  # a predecessor's, if any
                cleared = True
            if silent > settings.consumer_stall_after:
                self._restart(f"node {node}'s worker took no message from its queue for {silent:.0f} s while it "
                              f"had idle threads: its Celery consumer is stuck; the worker restarted itself")
                return
            dispatch.ping(node)

    def _restart(self, why: str) -> None:
        restart_worker(self.ctx, "consumer_stuck", why)


def restart_worker(ctx: NodeContext, fault_id: str, why: str) -> None:
    """Record the node fault ``fault_id`` saying ``why``, give up this node's presence, and exit 75 for the
    supervisor to start a new worker (which reconciles from ZooKeeper and the hypervisor). Never returns."""
    log.critical("%s", why)
    try:
        set_fault(ctx, "node.faults", fault_id, why, ctx.node)
        ctx.zk.stop()  # the node's presence goes now, not a session timeout later
    finally:
        os._exit(EXIT_STUCK)
