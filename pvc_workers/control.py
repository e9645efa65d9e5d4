"""Remote control of a pvc worker: what whoever holds the broker's credentials may ask it, and ``pvc_domains``.

Celery workers answer control commands broadcast through the broker (``app.control``). Out of the box those include
``shutdown``, ``pool_restart`` (with module reloads), ``pool_grow``/``shrink``, ``autoscale``, ``rate_limit``,
``time_limit``, ``revoke`` (with terminate) and ``add_consumer`` of ANY queue: a node consuming another node's queue
would take that node's steps, which then fail as "task for node X reached node Y". A pvc worker keeps only
(``restrict``, applied when this module is imported, before the worker starts):

- inspection that reads and changes nothing (``READ_ONLY``: ping, stats, active, reserved, registered, active
  queues, conf with secrets masked, ...), and the events switches Flower uses;
- ``add_consumer`` / ``cancel_consumer`` of the node's OWN queue only (the harness holds a node's jobs that way;
  another queue is refused);
- ``pvc_domains``, below.

What a holder of the broker's credentials can still do, and why it is bounded: drop or hold messages (the job record
is the outbox: the re-driver publishes them again, or ends the job with a reason), publish task messages (a step acts
only when its job record in ZooKeeper names that step on that node, so a forged message finds nothing to do), stop a
node consuming its own queue, and read task
arguments (job ids, VM and node names: never XML or secrets). A node that stops consuming its queue is seen by its
watchdog (its ping through the queue stops arriving) and restarts its worker (``pvc_workers.watchdog``). The
broker must still be reachable by pvc alone (docs/security.md).

``pvc_domains`` answers with what this node's libvirt reports NOW. ZooKeeper says where each VM should be; only the
node's own hypervisor says where it is. The harness's invariant checker (``pvc_dev.invariants``) and operators
asking "is this VM really running twice?" need the second answer without going through a job: a job waits behind
the node's queue, a control command does not (it runs in the worker's consumer thread, beside the task pool). With
libvirt's test driver the hypervisor's state lives inside this process, so no other process could read it at all.
Ask it with ``app.control.broadcast("pvc_domains", destination=["pvc@hv1"], reply=True)``; the reply is
``{"node": ..., "domains": {name: {"uuid", "state"}}}`` or ``{"error": ...}``: names, UUIDs and states only (never
XML, which may hold secrets such as disk credentials).
"""

from __future__ import annotations

from collections.abc import Callable

from celery.worker.control import Panel, inspect_command

from pvc_tasks.context import HypervisorError, current
from pvc_tasks.routing import node_queue

__all__ = ["READ_ONLY", "pvc_domains", "restrict"]

#: Celery's commands (and their aliases) that read and change nothing, plus the events switches Flower sends.
READ_ONLY = frozenset({
    "ping", "stats", "report", "clock", "hello", "active", "dump_active", "reserved", "dump_reserved", "scheduled",
    "dump_schedule", "revoked", "dump_revoked", "registered", "dump_tasks", "active_queues", "query_task", "conf",
    "dump_conf", "enable_events", "disable_events", "heartbeat",
})
_OWN_QUEUE_ONLY = ("add_consumer", "cancel_consumer")


@inspect_command()
def pvc_domains(state: object) -> dict:
    """This node's libvirt domains: name -> uuid and state (running | stopped | paused | crashed)."""
    try:
        ctx = current()
        live = ctx.hypervisor.domains()
    except (HypervisorError, RuntimeError) as exc:
        return {"error": str(exc)}
    return {"node": ctx.node,
            "domains": {name: {"uuid": facts.uuid, "state": facts.state} for name, facts in live.items()}}


def _own_queue(name: str, command: Callable) -> Callable:
    def guarded(state: object, queue: str, **kwargs) -> dict:
        own = node_queue(current().node).name
        if queue != own:
            return {"error": f"refused: a pvc worker takes {name} of its own queue {own} only, not {queue}"}
        return command(state, queue, **kwargs)

    return guarded


def restrict() -> None:
    """Leave Celery's control panel with the commands of the module docstring only (idempotent)."""
    for name in list(Panel.data):
        if name in _OWN_QUEUE_ONLY and not getattr(Panel.data[name], "pvc_guarded", False):
            Panel.data[name] = _own_queue(name, Panel.data[name])
            Panel.data[name].pvc_guarded = True  # type: ignore[attr-defined]
        elif name not in READ_ONLY and name not in _OWN_QUEUE_ONLY and name != "pvc_domains":
            del Panel.data[name]


restrict()
