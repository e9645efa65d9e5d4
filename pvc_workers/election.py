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
never both fence one node: declaring a node dead is a version-checked transaction. A primary that hands over
(shutdown, or an operator's request) waits for its running fence passes first (``fencing.IN_FLIGHT``): its
successor frees their leases at takeover.

Moving the role by hand (``pvc node primary N`` / ``pvc node secondary N``) writes ``config.primary_request``
(``{"node": N, "want": "primary" | "secondary"}``); every coordinator watches it. The holder of the lock hands over
when the request names another node that is waiting in the lock's queue (``primary``), or names itself while
another coordinator waits (``secondary``); a coordinator that wins the lock while the request wants another node
that is waiting in the queue releases it at once, without taking over, and queues again behind it. The node that
satisfies the request clears it at takeover. A request older than ``PRIMARY_REQUEST_TTL`` (by ZooKeeper's clock)
or naming a node that is not in the queue is ignored: nobody ever stands aside for a node that cannot lead.
"""

from __future__ import annotations

import json
import logging
import threading

from kazoo.client import KazooState
from kazoo.exceptions import CancelledError, KazooException

from pvc_tasks import defaults
from pvc_tasks.context import NodeContext
from pvc_tasks.fencing import IN_FLIGHT, resume
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
        self.wake = threading.Event()  # the primary request changed
        ctx.zk.add_listener(self._on_state)
        if "base.config.primary_request" in ctx.schema.keys:  # schema 7 on
            ctx.zk.DataWatch(ctx.schema.path("base.config.primary_request"), lambda *_: self.wake.set())

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
                if self.stop.is_set():  # leave() came before this lock existed: it cancelled the previous one
                    break
                try:
                    if not self.lock.acquire():
                        continue
                except (CancelledError, KazooException):
                    continue
                if self._yield_now(self.lock):  # won, but the operator wants a node that waits behind us
                    log.warning("%s stands aside for the primary request", self.ctx.node)
                    self._release(self.lock)
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
        self._clear_request()
        log.warning("%s is primary (%d unfinished cluster job(s) resumed)", ctx.node, resumed)
        while not self.stop.is_set() and self._holding(lock):
            self.wake.wait(ctx.settings.keepalive_interval / 2)
            self.wake.clear()
            if self._yield_now(lock):
                log.warning("%s hands the primary role over, as requested", ctx.node)
                return

    def _clear_crashed_leaders(self) -> None:
        """A primary that crashed never wrote ``secondary``: we hold the lock, so no other node leads; say so."""
        ctx = self.ctx
        for record in node_records(ctx.zk, ctx.schema):
            if record["name"] != ctx.node and not record["alive"]:
                path = ctx.schema.path("node.router_state", record["name"])
                if ctx.zk.get(path)[0].decode() in LEADING:
                    ctx.zk.set(path, b"secondary")

    def _request(self) -> dict:
        """The operator's primary request while it is fresh (by ZooKeeper's clock), else {}."""
        ctx = self.ctx
        if "base.config.primary_request" not in ctx.schema.keys:
            return {}
        data, stat = ctx.zk.get(ctx.schema.path("base.config.primary_request"))
        try:
            request = json.loads(data or b"{}")
        except ValueError:
            return {}
        now = ctx.zk.exists(ctx.schema.path("node.keepalive", ctx.node)).mtime  # written every interval
        fresh = (now - stat.mtime) / 1000 < defaults.PRIMARY_REQUEST_TTL
        return request if isinstance(request, dict) and fresh else {}

    def _yield_now(self, lock) -> bool:
        """The request asks this holder of the lock to let a node waiting in the queue lead instead."""
        request = self._request()
        if not request:
            return False
        try:
            others = [c for c in lock.contenders() if c != self.ctx.node]
        except KazooException:
            return False
        if request.get("want") == "primary":
            return request.get("node") != self.ctx.node and request.get("node") in others
        return request.get("node") == self.ctx.node and bool(others)

    def _clear_request(self) -> None:
        """At takeover: a request this takeover satisfies is done."""
        request = self._request()
        mine = request.get("node") == self.ctx.node
        if request and mine == (request.get("want") == "primary"):
            path = self.ctx.schema.path("base.config.primary_request")
            try:
                self.ctx.zk.set(path, b"", self.ctx.zk.exists(path).version)
            except KazooException:
                pass  # a new request came meanwhile: it stands

    def _release(self, lock) -> None:
        try:
            lock.release()
        except KazooException as exc:
            log.warning("release of the primary lock by %s failed (%s); it dies with the session", self.ctx.node, exc)

    def _relinquish(self, lock) -> None:
        ctx = self.ctx
        log.warning("%s relinquishes primary", ctx.node)
        if self.monitor is not None:
            self.monitor.halt()
            self.monitor = None
        self.consumer.call_soon(self.consumer.cancel_task_queue, CLUSTER_QUEUE.name)
        if self.session_ok.is_set() and not IN_FLIGHT.wait_idle(defaults.HANDOVER_WAIT):
            log.warning("%s hands over with a fence pass still running after %g s", ctx.node, defaults.HANDOVER_WAIT)
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
        self.wake.set()
        if self.lock is not None:
            self.lock.cancel()  # a contender still waiting stops waiting (and removes its znode)
        self.released.wait(timeout)
