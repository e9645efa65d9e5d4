"""Where every task runs: the only module that names a queue.

Queues
    ``node.<name>``  consumed only by the worker of node <name> (``pvc-worker --node <name>``, Celery hostname
                     ``pvc@<name>``). Work that touches a node's libvirt, NICs or local state goes here.
    ``cluster``      consumed by the primary coordinator only (``pvc_workers.election`` adds and cancels the
                     consumer on takeover and relinquish), so cluster work queued during a failover waits in
                     Redis and runs on the new primary.

Families (task name prefix -> queue, and why)
    ``pvc.vm.*``     ``node.<node>`` where ``node`` is the task's ``node`` keyword argument, the node that holds
                     the VM's libvirt domain: a lifecycle step must run against that node's hypervisor.
    ``pvc.migrate.*`` ``node.<node>``, the node that owns what the step touches: ``prepare``, ``finish`` and
                     ``abort_target`` on the TARGET (its libvirt, its reservation), ``perform``, ``cleanup`` and
                     ``abort_source`` on the SOURCE (see pvc_tasks.migration). The sender names the node.
    ``pvc.flush.*``  ``node.<node>``, the node being flushed or made ready: its engine runs beside its hypervisor.
    ``pvc.recover.*`` ``node.<node>``, the TARGET of a fenced node's VM (never the dead node): the VM is defined
                     and started there.
    ``pvc.sriov.*``  ``node.<node>``, the node whose NIC holds the VF: its settings are applied there with
                     ``ip link`` (or to that node's simulated NIC).
    ``pvc.cluster.*`` ``cluster``: work for the cluster as a whole (fencing a node), run by the primary.
    ``pvc.node.*``   ``node.<node>``: a worker's ping through its own queue, which proves that it still consumes
                     it (``pvc_workers.watchdog``); not a job.

Callers never pass a queue: they call a task with its keyword arguments and the router below picks the queue
from the task's family. A task name outside every family is an error, never a silent default queue.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

__all__ = ["CLUSTER_QUEUE", "RoutingError", "node_queue", "route_task", "worker_hostname", "worker_queues"]


class RoutingError(LookupError):
    """A task whose destination cannot be decided."""


_EXCHANGE = Exchange("pvc", type="direct", durable=True)

CLUSTER_QUEUE = Queue("cluster", _EXCHANGE, routing_key="cluster")

#: Task name prefix -> (keyword argument naming the node, or None for the cluster queue; why the task runs there).
FAMILIES: dict[str, tuple[str | None, str]] = {
    "pvc.vm.": ("node", "a VM lifecycle step acts on the libvirt domain, which lives on the VM's node"),
    "pvc.migrate.": ("node", "each migration step acts on the hypervisor of the node that owns its resource"),
    "pvc.flush.": ("node", "the flush/unflush engine of a node runs on that node"),
    "pvc.recover.": ("node", "a fenced node's VM is recovered by its target node, which defines and starts it"),
    "pvc.sriov.": ("node", "a VF's settings are applied by the node whose NIC holds the VF"),
    "pvc.cluster.": (None, "cluster-wide work (fencing) runs on the primary coordinator, whoever that is now"),
    "pvc.node.": ("node", "a worker pings itself through its own queue to prove that it still consumes it"),
}


def node_queue(node: str) -> Queue:
    """The queue consumed only by ``node``'s worker."""
    if not node or "." in node or "/" in node:
        raise RoutingError(f"invalid node name for a queue: {node!r}")
    return Queue(f"node.{node}", _EXCHANGE, routing_key=f"node.{node}")


def worker_hostname(node: str) -> str:
    """The Celery hostname of a node's worker, as Flower shows it."""
    return f"pvc@{node}"


def worker_queues(node: str) -> list[Queue]:
    """The queues a node's worker consumes at start."""
    return [node_queue(node)]


def route_task(name: str, args: Any, kwargs: dict, options: dict, task: Any = None, **_: Any) -> dict:
    """Celery router: the destination of task ``name`` from its family and keyword arguments."""
    for prefix, (argument, _why) in FAMILIES.items():
        if name.startswith(prefix):
            if argument is None:
                return {"queue": CLUSTER_QUEUE}
            node = (kwargs or {}).get(argument)
            if not node:
                raise RoutingError(f"task {name} needs the keyword argument {argument!r} to be routed")
            return {"queue": node_queue(node)}
    raise RoutingError(f"no route for task {name!r}: add its family to pvc_tasks.routing.FAMILIES")
