"""The fencing monitor: runs on the primary only, decides which nodes are dead and declares them.

``MONITOR_PASSES`` times per ``keepalive_interval`` it reads each node's keepalive znode. A node's keepalive AGE
is measured on ZooKeeper's clock, never with the timestamp the node wrote: the znode's modification time
(``mtime``, stamped by the ZooKeeper leader when it applied the write) against ZooKeeper's "now", which is this
primary's own keepalive's ``mtime`` plus the time that passed on this process's monotonic clock since that write's
commit returned (so "now" can only lag, by a round trip: ages are never overstated). A node with a skewed clock is
not fenced for it, and a new primary does not start counting from zero at takeover: the keepalive of a primary
that died stopped ageing in nobody's head, its ``mtime`` says when it was last written (docs/fencing.md, "Primary
loss"). When this primary itself loses its ZooKeeper connection, ages count again from when it is back: it cannot
tell who else reached ZooKeeper meanwhile, and an outage of ZooKeeper stops every keepalive at once.

    alive     its keepalive changed within ``suspect_after_intervals`` intervals;
    suspect   it did not (fault ``keepalive_missed`` on the node, so ``pvc cluster status`` shows it);
              each further interval is a saving throw: a keepalive now makes it alive again;
    dead      ``saving_throws`` throws failed: ``pvc_tasks.fencing.declare_dead`` (one transaction, once).

Only nodes whose ``daemon_state`` is ``run`` are judged: a node that stopped cleanly (``stop``), is starting
(``init``) or is already ``dead`` is never fenced again. Two guards stop fencing and say so:

    maintenance  ``pvc cluster maintenance on``: dead nodes are reported (node fault), not fenced;
    storm        ``storm_guard``: when TWO OR MORE nodes look dead at once and they are at least
                 ``fence_storm_fraction`` of the nodes in play, nothing is fenced; cluster fault ``fence_storm``.

Why the storm rule is safe and enough (docs/fencing.md, "Storm guard"): a primary cut off from the others is
also cut off from ZooKeeper's quorum, or its session expires and it loses the primary lock; either way it cannot
commit the transaction that declares a node dead. So one node looking dead is never evidence against the primary
(in a 2-node cluster, too); the guard is for correlated failures (a switch, a PDU, an overloaded ZooKeeper making
several keepalives late at once), where fencing many nodes does more harm than asking the operator. Nodes in
play: the primary and every node in ``run``; a node declared dead earlier whose fence has ended (fenced or
failed) and that stayed down is out of play, so it does not make a later single failure look like a storm.
"""

from __future__ import annotations

import logging
import threading
import time

from kazoo.client import KazooState
from kazoo.exceptions import KazooException

from pvc_tasks import defaults
from pvc_tasks.context import NodeContext
from pvc_tasks.fencing import declare_dead
from pvc_tasks.state import fence_record, names
from pvc_workers.health import set_fault

__all__ = ["Monitor", "storm_guard"]

log = logging.getLogger(__name__)


def storm_guard(looking_dead: int, in_play: int, fraction: float) -> bool:
    """True when fencing must wait for an operator: at least two nodes look dead at once and they are at least
    ``fraction`` of the nodes in play (the primary included)."""
    return looking_dead >= 2 and looking_dead >= fraction * in_play


class Monitor(threading.Thread):
    """Started at takeover, stopped at relinquish (``halt``)."""

    def __init__(self, ctx: NodeContext, still_primary) -> None:
        super().__init__(name="fence-monitor", daemon=True)
        self.ctx, self.still_primary = ctx, still_primary
        self.halted = threading.Event()
        #: (this node's keepalive mtime in ms, the monotonic time it was first seen): ZooKeeper's clock
        self.own: tuple[int, float] | None = None
        #: ZooKeeper's time (ms) when this monitor could read it again after losing its connection: nobody's age
        #: counts from before it (see ``_on_state``).
        self.baseline = 0.0
        self.reconnected = False
        #: The saving throw each suspect node is at, as last logged.
        self.throws: dict[str, int] = {}
        ctx.zk.add_listener(self._on_state)

    def halt(self) -> None:
        self.halted.set()
        self.ctx.zk.remove_listener(self._on_state)

    def _on_state(self, state: str) -> None:
        """While this primary cannot reach ZooKeeper it cannot tell who else can: when it is back, every node's
        keepalive age counts from that moment (an outage of ZooKeeper itself stops every keepalive at once)."""
        if state != KazooState.CONNECTED:
            self.reconnected = True

    def run(self) -> None:
        interval = self.ctx.settings.keepalive_interval / defaults.MONITOR_PASSES
        while not self.halted.wait(interval):
            try:
                self.check()
            except KazooException as exc:
                log.warning("fence monitor pass skipped: %s", exc)
            except Exception:
                log.exception("fence monitor pass failed")

    def _server_now(self) -> float:
        """ZooKeeper's clock now (ms), from this node's own keepalive writes (see the module docstring): the mtime
        its keepalive thread got back from its last commit, or, before that thread's first beat, the mtime read
        here (first seen up to an interval after the write, so "now" then lags by up to that much)."""
        if self.ctx.last_beat is not None:
            mtime, seen = self.ctx.last_beat
            return mtime + (time.monotonic() - seen) * 1000
        mtime = self.ctx.zk.exists(self.ctx.schema.path("node.keepalive", self.ctx.node)).mtime
        if self.own is None or self.own[0] != mtime:
            self.own = (mtime, time.monotonic())
        return mtime + (time.monotonic() - self.own[1]) * 1000

    def _age(self, node: str, now: float) -> float:
        """Seconds since the node's keepalive was last written, on ZooKeeper's clock."""
        written = self.ctx.zk.exists(self.ctx.schema.path("node.keepalive", node)).mtime
        return max(0.0, now - max(written, self.baseline)) / 1000

    def check(self) -> None:
        ctx, settings = self.ctx, self.ctx.settings
        zk, schema = ctx.zk, ctx.schema
        now = self._server_now()
        if self.reconnected:
            self.reconnected, self.baseline = False, now
        nodes = [n for n in names(zk, schema, "base.node") if n != ctx.node]
        states = {n: zk.get(schema.path("node.daemon_state", n))[0].decode() for n in nodes}
        suspect_after, throws = settings.suspect_after_intervals, settings.saving_throws
        looking_dead, dead, ages = [], [], {}
        for node in nodes:
            ages[node] = self._age(node, now)
            missed = ages[node] / settings.keepalive_interval
            if states[node] == "dead":
                looking_dead.append(node)
                continue
            if states[node] != "run" or missed < suspect_after:  # back, starting, or stopped cleanly
                set_fault(ctx, "node.faults", "keepalive_missed", None, node)
                continue
            looking_dead.append(node)
            spent = int(missed - suspect_after)
            if spent < throws:
                set_fault(ctx, "node.faults", "keepalive_missed", f"no keepalive for {int(missed)} intervals; "
                          f"saving throw {spent + 1} of {throws}", node)
                if self.throws.get(node) != spent:  # once per throw, not at every pass
                    log.warning("node %s missed %.1f keepalive intervals: saving throw %d/%d", node, missed,
                                spent + 1, throws)
                self.throws[node] = spent
            else:
                dead.append(node)
        fencing = {n for n in nodes if states[n] == "dead"
                   and fence_record(zk.get(schema.path("node.fence", n))[0]).get("state") == "fencing"}
        in_play = 1 + sum(states[n] == "run" for n in nodes) + len(fencing)
        looking_dead = [n for n in looking_dead if states[n] == "run" or n in fencing]
        storm = storm_guard(len(looking_dead), in_play, settings.fence_storm_fraction)
        set_fault(ctx, "base.faults", "fence_storm",
                  f"{len(looking_dead)} of {in_play} nodes look dead at once ({', '.join(looking_dead)}): nothing "
                  f"is fenced; check the network and power they share, then fence or evacuate them by hand "
                  f"(docs/fencing.md)" if storm else None)
        maintenance = zk.get(schema.path("base.config.maintenance"))[0].decode() == "true"
        for node in dead:
            why = (f"no keepalive for {ages[node]:.1f} s by ZooKeeper's clock (dead after "
                   f"{suspect_after + throws} intervals of {settings.keepalive_interval:g} s)")
            if storm or maintenance:
                guard = "maintenance mode is on" if maintenance else "fence storm guard"
                set_fault(ctx, "node.faults", "keepalive_missed", f"{why}; NOT fenced: {guard}", node)
                continue
            if not self.still_primary():
                return
            job = declare_dead(zk, schema, node, why)
            if job is not None:
                log.error("node %s is dead (%s): fence job %s", node, why, job.id)
                set_fault(ctx, "node.faults", "keepalive_missed", f"{why}; fenced by job {job.id}", node)
