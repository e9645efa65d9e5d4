"""``/vms``: list, show, define, change state, undefine. Mutations create a job and answer 202 + Location."""

from __future__ import annotations

from flask import current_app

from pvc_tasks.migration_submit import submit_migration
from pvc_tasks.state import domain_record
from pvc_tasks.submit import set_meta, submit_define, submit_vm_action
from pvc_web.blueprint import Blueprint, accepted, handle
from pvc_web.idempotency import idempotent, origin
from pvc_web.render import CachedList
from pvc_web.schemas import (
    JobSchema,
    MetaSchema,
    MigrateSchema,
    VmDefineSchema,
    VmDetailSchema,
    VmSchema,
    VmStateSchema,
)
from pvc_web.views import job_view, vm_view

PREFIX = "/vms"
blp = Blueprint("vms", __name__, description="Virtual machines and their lifecycle jobs")
_LISTED = CachedList(VmSchema(), vm_view)


@blp.route("")
@blp.response(200, VmSchema(many=True))
def list_vms():
    """Every VM, sorted by name (without its XML: see one VM for that)."""
    return _LISTED.response(handle().vm_records())


@blp.route("", methods=["POST"])
@blp.arguments(VmDefineSchema)
@blp.response(202, JobSchema, headers={"Location": {"schema": {"type": "string"}, "description": "the job"}})
@blp.alt_response(409, description="a VM of that name exists, the node is not available, or nothing fits")
@idempotent
def define_vm(args: dict):
    """Define a VM from libvirt XML on ``node`` or on the node the selector picks. The XML is read as libvirt reads
    it (400 ``invalid_request`` with libvirt's reason when it cannot), must pass the XML policy (400
    ``xml_not_allowed`` naming each offending element: host paths where the policy allows none, another VM's files,
    interfaces onto unconfigured networks, ``qemu:`` elements, host devices that are not the cluster's VFs) and its
    UUID must be new (409 ``uuid_exists``). The node checks the XML again before its libvirt sees it."""
    h = handle()
    job = submit_define(h.zk, h.schema, args["xml"], args.get("node"), args.get("meta"), origin=origin(),
                        policy=current_app.extensions["pvc_settings"].xml_policy)
    return accepted(job_view(job))


@blp.route("/<string:vm>")
@blp.response(200, VmDetailSchema)
def show_vm(vm: str):
    """One VM with its XML (404 ``vm_not_found`` when unknown)."""
    h = handle()
    return vm_view(domain_record(h.zk, h.schema, vm), detail=True)


@blp.route("/<string:vm>/state", methods=["POST"])
@blp.arguments(VmStateSchema)
@blp.response(202, JobSchema)
@blp.alt_response(409, description="the VM has an active job, is in the wrong state, or its node is absent")
@idempotent
def change_state(args: dict, vm: str):
    """Start, shut down (graceful, bounded), stop (force off) or restart a VM."""
    h = handle()
    params = {"timeout": args["timeout"]} if "timeout" in args else {}
    return accepted(job_view(submit_vm_action(h.zk, h.schema, vm, args["state"], params, origin=origin())))


@blp.route("/<string:vm>", methods=["DELETE"])
@blp.response(202, JobSchema)
@blp.alt_response(409, description="the VM has an active job or is running")
@idempotent
def undefine_vm(vm: str):
    """Undefine a stopped VM (removes it from its node's libvirt and from the cluster)."""
    h = handle()
    return accepted(job_view(submit_vm_action(h.zk, h.schema, vm, "undefine", origin=origin())))


@blp.route("/<string:vm>/meta", methods=["PUT"])
@blp.arguments(MetaSchema(partial=True))
@blp.response(200, VmDetailSchema)
def update_meta(args: dict, vm: str):
    """Change a VM's meta (node_limit, node_selector, autostart, migration_method, max_downtime); validated, one
    transaction, effective for the next placement."""
    h = handle()
    set_meta(h.zk, h.schema, vm, args)
    return vm_view(domain_record(h.zk, h.schema, vm), detail=True)


def _migration(kind: str, doc: str):
    @blp.arguments(MigrateSchema, required=False)
    @blp.response(202, JobSchema)
    @blp.alt_response(409, description="busy VM, same node, no target that fits, node not ready or absent")
    @idempotent
    def endpoint(args: dict, vm: str):
        h = handle()
        job = submit_migration(h.zk, h.schema, vm, kind, args.get("target"), args.get("method"),
                               args.get("force_live", False), args.get("timeout"), origin=origin(),
                               force=args.get("force", False))
        return accepted(job_view(job))

    endpoint.__doc__ = doc
    endpoint.__name__ = f"{kind}_vm"
    blp.route(f"/<string:vm>/{kind}", methods=["POST"])(endpoint)


_migration("migrate", "Migrate a VM to another node temporarily (its last_node remembers where it came from).")
_migration("move", "Move a VM to another node permanently (clears last_node); to the node it is on: make its "
                   "temporary migration permanent.")
_migration("unmigrate", "Return a migrated VM to its last_node.")
