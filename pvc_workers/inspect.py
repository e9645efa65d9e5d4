"""``pvc_domains``: a Celery remote-control command that answers with what this node's libvirt reports NOW.

ZooKeeper says where each VM should be; only the node's own hypervisor says where it is. The harness's invariant
checker (``pvc_dev.invariants``) and operators asking "is this VM really running twice?" need the second answer
without going through a job: a job waits behind the node's queue, a control command does not (it runs in the
worker's consumer thread, beside the task pool). With libvirt's test driver the hypervisor's state lives inside
this process, so no other process could read it at all.

Ask it with ``app.control.broadcast("pvc_domains", destination=["pvc@hv1"], reply=True)``; the reply is
``{"node": ..., "domains": {name: {"uuid", "state"}}}`` or ``{"error": ...}``. It reads and changes nothing else,
and returns names, UUIDs and states only (never XML, which may hold secrets such as disk credentials). Who can
send it: whoever can reach the node's Redis, the same peers that can send the node tasks.
"""

from __future__ import annotations

from celery.worker.control import inspect_command

from pvc_tasks.context import HypervisorError, current

__all__ = ["pvc_domains"]


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
