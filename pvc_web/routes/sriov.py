"""``/sriov``: SR-IOV PFs and VFs as the nodes inventoried them; a VF's settings change by a job on its node."""

from __future__ import annotations

from pvc_tasks.sriov import submit_vf_config
from pvc_tasks.state import pf_records, vf_record, vf_records
from pvc_web.blueprint import Blueprint, accepted, handle
from pvc_web.idempotency import idempotent, origin
from pvc_web.schemas import JobSchema, PfSchema, VfConfigSchema, VfQuerySchema, VfSchema
from pvc_web.views import job_view, pf_view, vf_view

PREFIX = "/sriov"
blp = Blueprint("sriov", __name__, description="SR-IOV physical and virtual functions of the nodes' NICs")


@blp.route("/pfs")
@blp.arguments(VfQuerySchema(only=("node",)), location="query")
@blp.response(200, PfSchema(many=True))
def list_pfs(query: dict):
    """Every PF (``node`` filters), with how many of its VFs VMs use."""
    h = handle()
    node = query.get("node")
    vfs = vf_records(h.zk, h.schema, node, only=("pf", "used"))  # once, not once per PF
    return [pf_view(r, vfs) for r in pf_records(h.zk, h.schema, node)]


@blp.route("/vfs")
@blp.arguments(VfQuerySchema, location="query")
@blp.response(200, VfSchema(many=True))
def list_vfs(query: dict):
    """Every VF (``node`` and ``pf`` filter): desired and applied settings, use by VMs."""
    h = handle()
    return [vf_view(r) for r in vf_records(h.zk, h.schema, query.get("node"), query.get("pf"))]


@blp.route("/vfs/<string:node>/<string:vf>")
@blp.response(200, VfSchema)
def show_vf(node: str, vf: str):
    """One VF (404 ``node_not_found`` / ``vf_not_found``)."""
    h = handle()
    record = vf_record(h.zk, h.schema, node, vf)
    return vf_view(record)


@blp.route("/vfs/<string:node>/<string:vf>", methods=["PUT"])
@blp.arguments(VfConfigSchema)
@blp.response(202, JobSchema)
@blp.alt_response(409, description="the node's worker is absent")
@idempotent
def set_vf(changes: dict, node: str, vf: str):
    """Change some of a VF's settings: validated (400 naming each bad field, nothing written), stored in
    ZooKeeper with a ``vf_config`` job in one transaction, then applied by the node's worker."""
    h = handle()
    return accepted(job_view(submit_vf_config(h.zk, h.schema, node, vf, changes, origin=origin())))
