"""The worker's ZooKeeper session: presence after a session loss, and self-fencing.

Presence
    ``presence`` is an ephemeral znode: it dies with the session. A worker that was paused or cut off longer
    than the session timeout gets a NEW session when it reconnects (kazoo does that by itself) and must take
    its presence again, or the cluster would think it absent forever. If, meanwhile, the cluster declared this
    node dead (``daemon_state`` ``dead``: a fence is under way or has failed), the worker does NOT carry on as if
    nothing happened: it exits with status 4, so that its service manager restarts it and start-up reconciles
    from ZooKeeper (``pvc_workers.reconcile``, which then starts nothing).

Self-fence (``self_fence_after`` s, 0 = off, as in PVC)
    A worker cut off from ZooKeeper (session suspended or lost) for longer than ``self_fence_after`` destroys
    every running VM on its node: the rest of the cluster may be about to fence it and recover those VMs, and if
    that fence cannot be confirmed (a dead BMC) this is what still prevents a split brain. Set it below the
    fencing delay (``keepalive_interval`` x (``suspect_after_intervals`` + ``saving_throws``)), so the VMs are
    down before anyone recovers them. When the session returns, the VMs it stopped are recorded ``stopped`` with
    the reason (unless they have meanwhile been recovered elsewhere) and nothing restarts them by itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from kazoo.client import KazooState
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError

from pvc_tasks import defaults
from pvc_tasks.context import HypervisorError, NodeContext
from pvc_tasks.jobs import commit

__all__ = ["EXIT_DECLARED_DEAD", "SessionWatch"]

log = logging.getLogger(__name__)

#: Exit status of a worker that found itself declared dead when its ZooKeeper session came back.
EXIT_DECLARED_DEAD = 4


class SessionWatch(threading.Thread):
    def __init__(self, ctx: NodeContext, stop: threading.Event) -> None:
        super().__init__(name="session-watch", daemon=True)
        self.ctx, self.stop = ctx, stop
        self.lost_since: float | None = None
        self.session_lost = False
        self.fenced = False
        self.fenced_vms: list[str] = []
        self.fenced_after = 0.0
        self.wake = threading.Event()
        ctx.zk.add_listener(self._on_state)

    def _on_state(self, state: str) -> None:  # kazoo's thread: no ZooKeeper calls here
        if state == KazooState.CONNECTED:
            self.lost_since = None
        else:
            self.lost_since = self.lost_since or time.monotonic()
            self.session_lost = self.session_lost or state == KazooState.LOST
        self.wake.set()

    def run(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(defaults.SESSION_WATCH_INTERVAL)
            self.wake.clear()
            lost = self.lost_since
            limit = self.ctx.settings.self_fence_after
            if lost is not None:
                if limit > 0 and not self.fenced and time.monotonic() - lost > limit:
                    self._self_fence(time.monotonic() - lost)
                continue
            try:
                if self.session_lost:
                    self._rejoin()
                if self.fenced:
                    self._record_self_fence()
            except KazooException as exc:
                log.warning("re-syncing with ZooKeeper failed (%s); will retry", exc)

    def _self_fence(self, seconds: float) -> None:
        hv = self.ctx.hypervisor
        running = [name for name, facts in hv.domains().items() if facts.state in ("running", "paused")]
        log.error("SELF-FENCE: cut off from ZooKeeper for %.1f s (limit %g s): destroying %d VM(s): %s", seconds,
                  self.ctx.settings.self_fence_after, len(running), ", ".join(running) or "none")
        for name in running:
            try:
                hv.destroy(name)
            except HypervisorError as exc:
                log.error("self-fence could not destroy %s: %s", name, exc)
        self.fenced, self.fenced_vms, self.fenced_after = True, running, seconds

    def _rejoin(self) -> None:
        ctx = self.ctx
        state = ctx.zk.get(ctx.schema.path("node.daemon_state", ctx.node))[0].decode()
        if state == "dead":
            log.error("this node was declared dead while its ZooKeeper session was lost: exiting (status %d) "
                      "so that a restart reconciles it", EXIT_DECLARED_DEAD)
            logging.shutdown()
            os._exit(EXIT_DECLARED_DEAD)
        try:
            ctx.zk.create(ctx.schema.path("node.presence", ctx.node), str(os.getpid()).encode(), ephemeral=True)
        except NodeExistsError:
            pass
        self.session_lost = False
        log.warning("ZooKeeper session of %s was lost and is back: presence taken again", ctx.node)

    def _record_self_fence(self) -> None:
        ctx, reason = self.ctx, f"self-fenced: node {self.ctx.node} was cut off from ZooKeeper for " \
                                f"{self.fenced_after:.0f} s"
        for vm in self.fenced_vms:
            node_path, marker = ctx.schema.path("domain.node", vm), ctx.schema.path("domain.active_job", vm)
            try:
                if ctx.zk.get(node_path)[0].decode() != ctx.node or ctx.zk.get(marker)[0]:
                    continue  # recovered elsewhere, or a job owns it now
                observed = ctx.hypervisor.state(vm)
                commit(ctx.zk, [("check", marker, ctx.zk.exists(marker).version),
                                ("set", ctx.schema.path("domain.state", vm),
                                 (observed if observed != "missing" else "stopped").encode(), -1),
                                ("set", ctx.schema.path("domain.failed_reason", vm), reason.encode(), -1)])
            except (BadVersionError, KazooException) as exc:
                log.warning("could not record the self-fence of %s: %s", vm, exc)
        self.fenced, self.fenced_vms = False, []
