"""``/nodes``: the nodes registered by their workers (read-only in this version)."""

from __future__ import annotations

from pvc_tasks.state import node_record, node_records
from pvc_web.blueprint import Blueprint, handle
from pvc_web.schemas import NodeSchema
from pvc_web.views import node_view

PREFIX = "/nodes"
blp = Blueprint("nodes", __name__, description="Nodes, their workers and resources")


@blp.route("")
@blp.response(200, NodeSchema(many=True))
def list_nodes():
    """Every node, sorted by name."""
    h = handle()
    return [node_view(r) for r in node_records(h.zk, h.schema)]


@blp.route("/<string:node>")
@blp.response(200, NodeSchema)
def show_node(node: str):
    """One node (404 ``node_not_found`` when unknown)."""
    h = handle()
    return node_view(node_record(h.zk, h.schema, node))
