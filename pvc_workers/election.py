"""Primary election among coordinator nodes, through a ZooKeeper lock (kazoo's Lock recipe on ``lock.primary``).

The holder of the lock is the primary. Its duties start and stop with visible states in the node's
``router_state`` (PVC's names), so a reader always knows whether a switch is in progress:

    secondary -> takeover -> primary      won the lock: record ``config.primary_node``, start consuming the
                                          ``cluster`` queue, re-send unfinished cluster jobs (``fencing.resume``:
                                          the old primary's prefetched messages may be gone with it), start the
                                          fencing monitor;
    primary -> relinquish -> secondary    shutdown, or the ZooKeeper session is suspended or lost (the lock may
                                          be someone else's by now): stop the monitor, stop consuming ``cluster``,
                                          release the lock.

Non-coordinators never contend (``router_state`` ``client``). A clean shutdown relinquishes BEFORE the Celery
worker stops, so another coordinator takes over at once instead of after the session timeout. Two primaries can
never both fence one node: declaring a node dead is a version-checked transaction.
"""

from __future__ import annotations

import logging
import threading

from kazoo.client import KazooState
from kazoo.exceptions import CancelledError, KazooException

from pvc_tasks.context import NodeContext
from pvc_tasks.fencing import resume
from pvc_tasks.routing import CLUSTER_QUEUE
from pvc_tasks.state import LEADING, node_records
from pvc_workers.monitor import Monitor

__all__ = ["Election"]

log = logging.getLogger(__name__)


class Election(threading.Thread):
    def __init__(self, ctx: NodeContext, consumer) -> None:
        super().__init__(name="election", daemon=True)
        self.ctx, self.consumer = ctx, consumer
        self.stop = threading.Event()
        self.released = threading.Event()
        self.session_ok = threading.Event()
        self.session_ok.set()
        self.monitor: Monitor | None = None
        self.lock = None
        ctx.zk.add_listener(self._on_state)

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self.session_ok.set()
        else:
            self.session_ok.clear()

    def _router_state(self, state: str) -> None:
        self.ctx.zk.set(self.ctx.schema.path("node.router_state", self.ctx.node), state.encode())

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.session_ok.wait(self.ctx.settings.keepalive_interval):
                    continue
                # One contender znode, waiting without a timeout (no churn in ZooKeeper); ``leave`` cancels it.
                self.lock = self.ctx.zk.Lock(self.ctx.schema.path("base.lock.primary"), identifier=self.ctx.node)
                try:
                    if not self.lock.acquire():
                        continue
                except (CancelledError, KazooException):
                    continue
                try:
                    self._lead(self.lock)
                finally:
                    self._relinquish(self.lock)
        finally:
            self.released.set()

    def _holding(self, lock) -> bool:
        if not self.session_ok.is_set() or lock.node is None:
            return False
        try:
            return self.ctx.zk.exists(f"{lock.path}/{lock.node}") is not None
        except KazooException:
            return False

    def _lead(self, lock) -> None:
        ctx = self.ctx
        log.warning("%s won the primary election: taking over", ctx.node)
        self._router_state("takeover")
        ctx.zk.set(ctx.schema.path("base.config.primary_node"), ctx.node.encode())
        self._clear_crashed_leaders()
        self.consumer.call_soon(self.consumer.add_task_queue, CLUSTER_QUEUE.name)
        resumed = resume(ctx.jobs)
        self.monitor = Monitor(ctx, lambda: self._holding(lock))
        self.monitor.start()
        self._router_state("primary")
        log.warning("%s is primary (%d unfinished cluster job(s) resumed)", ctx.node, resumed)
        while not self.stop.wait(ctx.settings.keepalive_interval / 2) and self._holding(lock):
            pass

    def _clear_crashed_leaders(self) -> None:
        """A primary that crashed never wrote ``secondary``: we hold the lock, so no other node leads; say so."""
        ctx = self.ctx
        for record in node_records(ctx.zk, ctx.schema):
            if record["name"] != ctx.node and not record["alive"]:
                path = ctx.schema.path("node.router_state", record["name"])
                if ctx.zk.get(path)[0].decode() in LEADING:
                    ctx.zk.set(path, b"secondary")

    def _relinquish(self, lock) -> None:
        ctx = self.ctx
        log.warning("%s relinquishes primary", ctx.node)
        if self.monitor is not None:
            self.monitor.halt()
            self.monitor = None
        self.consumer.call_soon(self.consumer.cancel_task_queue, CLUSTER_QUEUE.name)
        try:
            if self.session_ok.is_set():
                self._router_state("relinquish")
                data, stat = ctx.zk.get(ctx.schema.path("base.config.primary_node"))
                if data.decode() == ctx.node:
                    ctx.zk.set(ctx.schema.path("base.config.primary_node"), b"", stat.version)
            lock.release()
            if self.session_ok.is_set():
                self._router_state("secondary")
        except KazooException as exc:
            log.warning("relinquish of %s incomplete (%s); the lock dies with the session", ctx.node, exc)

    def leave(self, timeout: float) -> None:
        """Clean handover at shutdown: relinquish now and wait (bounded) until the lock is released."""
        self.stop.set()
        if self.lock is not None:
            self.lock.cancel()  # a contender still waiting stops waiting (and removes its znode)
        self.released.wait(timeout)
