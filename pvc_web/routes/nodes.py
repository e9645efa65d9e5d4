"""``/nodes``: the nodes registered by their workers; flush and ready; fence and evacuate a node that is down."""

from __future__ import annotations

from pvc_tasks.evacuate import submit_evacuate, submit_fence
from pvc_tasks.flush import submit_node_action
from pvc_tasks.handover import request_handover
from pvc_tasks.state import node_record
from pvc_web.blueprint import Blueprint, accepted, handle
from pvc_web.idempotency import idempotent, origin
from pvc_web.schemas import EvacuateSchema, FlushSchema, HandoverSchema, JobSchema, NodeSchema
from pvc_web.views import job_view, node_view

PREFIX = "/nodes"
blp = Blueprint("nodes", __name__, description="Nodes, their workers and resources; flush and ready; fence and "
                                              "evacuate a node that is down")


@blp.route("")
@blp.response(200, NodeSchema(many=True))
def list_nodes():
    """Every node, sorted by name."""
    return [node_view(r) for r in handle().node_records()]


@blp.route("/<string:node>")
@blp.response(200, NodeSchema)
def show_node(node: str):
    """One node (404 ``node_not_found`` when unknown)."""
    h = handle()
    return node_view(node_record(h.zk, h.schema, node))


@blp.route("/<string:node>/flush", methods=["POST"])
@blp.arguments(FlushSchema, required=False)
@blp.response(202, JobSchema)
@blp.alt_response(409, description="the node's worker is absent, it is being made ready, or its running VMs would "
                                   "not fit on the other ready nodes (``insufficient_capacity``: ``details.vms`` "
                                   "would be shut down, ``details.shortfall_mib``)")
@idempotent
def flush(args: dict, node: str):
    """Flush (drain) a node: every VM leaves by a child migration job; the node ends ``flushed`` (no VM runs on
    it). Refused when its running VMs would not fit elsewhere, unless ``allow_shutdown``. On a node that is already
    flushed (or flushing) this answers that job."""
    h = handle()
    return accepted(job_view(submit_node_action(h.zk, h.schema, node, "flush", origin=origin(),
                                                allow_shutdown=(args or {}).get("allow_shutdown", False))))


@blp.route("/<string:node>/ready", methods=["POST"])
@blp.response(202, JobSchema)
@idempotent
def ready(node: str):
    """Make a node ready: during a flush, cancel it; otherwise unflush (start its autostart VMs, bring back the VMs
    whose last node it is, and clear the fault a failed flush left). With nothing to do, a no-op job."""
    h = handle()
    return accepted(job_view(submit_node_action(h.zk, h.schema, node, "ready", origin=origin())))


@blp.route("/<string:node>/fence", methods=["POST"])
@blp.response(202, JobSchema)
@blp.alt_response(409, description="the node's worker is running (``node_present``), or a fence or evacuation of "
                                   "it is under way (``node_busy``, ``details.job``)")
@idempotent
def fence(node: str):
    """Fence a node whose worker is down, now: IPMI power off, verify, power on, then the fencing policies for the
    VMs that ran on it, as after an automatic fence, in maintenance mode too. The job records who asked."""
    h = handle()
    return accepted(job_view(submit_fence(h.zk, h.schema, node, origin=origin())))


@blp.route("/<string:node>/evacuate", methods=["POST"])
@blp.arguments(EvacuateSchema, required=False)
@blp.response(202, JobSchema)
@blp.alt_response(409, description="the node's worker is running (``node_present``), the node is not known to be "
                                   "off (``not_fenced``: fence it, or confirm_powered_off), or a fence or "
                                   "evacuation of it is under way (``node_busy``, ``details.job``)")
@idempotent
def evacuate(args: dict, node: str):
    """Recover every VM of a node that is down on other nodes (one ``recover`` job each; those that ran are
    started), after its fence succeeded or on your statement that it is powered off (``confirm_powered_off``,
    recorded in the job with who said it)."""
    h = handle()
    return accepted(job_view(submit_evacuate(h.zk, h.schema, node, (args or {}).get("confirm_powered_off", False),
                                             origin=origin())))


def _handover(node: str, want: str):
    h = handle()
    answer = request_handover(h.zk, h.schema, node, want, origin())
    return answer, 200 if answer["done"] else 202


@blp.route("/<string:node>/primary", methods=["POST"])
@blp.response(202, HandoverSchema)
@blp.alt_response(200, schema=HandoverSchema, description="the node already is primary: nothing requested")
@blp.alt_response(409, description="not a coordinator (``not_coordinator``), worker absent (``node_unavailable``), "
                                   "or the cluster's schema predates requests (``schema_too_old``)")
def make_primary(node: str):
    """Ask for a coordinated handover to this node: the primary relinquishes, this node takes over (its monitor and
    the ``cluster`` queue move with the role). Follow it with ``GET /cluster`` (``primary``)."""
    return _handover(node, "primary")


@blp.route("/<string:node>/secondary", methods=["POST"])
@blp.response(202, HandoverSchema)
@blp.alt_response(200, schema=HandoverSchema, description="the node is not primary: nothing requested")
@blp.alt_response(409, description="the only live coordinator (``no_other_coordinator``), not a coordinator, or "
                                   "the cluster's schema predates requests")
def make_secondary(node: str):
    """Ask the primary to hand its role to another live coordinator (the next one waiting for the lock)."""
    return _handover(node, "secondary")
