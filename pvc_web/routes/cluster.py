"""``/cluster``: status, creation (``init``), schema upgrade, migration limits and maintenance mode."""

from __future__ import annotations

import time
from collections import Counter

from flask import current_app

from pvc_tasks import slots
from pvc_tasks.backlog import backlog
from pvc_tasks.errors import Conflict, Invalid
from pvc_tasks.jobs import commit
from pvc_tasks.lifecycle import shutdown_force
from pvc_web.blueprint import Blueprint, handle
from pvc_web.schemas import (
    ClusterInitSchema,
    ClusterSchema,
    ClusterUpgradeSchema,
    LimitsSchema,
    MaintenanceSchema,
    SchemaChangeSchema,
    ShutdownForceSchema,
)
from pvc_web.views import faults_view, next_steps
from zk_schema import SchemaError, available_versions, init_cluster, upgrade_to_latest, workers_unable
from zk_schema.acl import secure_tree

PREFIX = "/cluster"
blp = Blueprint("cluster", __name__, description="Cluster status, creation, schema upgrades, limits, maintenance")


@blp.route("")
@blp.response(200, ClusterSchema)
def status():
    """Cluster configuration and counts of nodes, VMs and jobs by state."""
    h = handle()
    schema, zk = h.schema, h.zk

    def value(key: str) -> str:
        return zk.get(schema.path(key))[0].decode()

    nodes = h.node_records()
    jobs = h.jobs()
    maintenance = value("base.config.maintenance") == "true"
    return {
        "schema_version": schema.version,
        "latest_schema_version": available_versions()[-1],
        "maintenance": maintenance,
        "fencing": "disabled (maintenance mode)" if maintenance else "enabled",
        "shutdown_force": shutdown_force(zk, schema),
        "primary": value("base.config.primary_node"),
        "primary_node": value("base.config.primary_node"),
        "node_states": {n["name"]: {"daemon_state": n["daemon_state"], "router_state": n["router_state"],
                                    "domain_state": n["domain_state"], "alive": n["alive"],
                                    "next": next_steps(n, faults_view(n.get("faults")))} for n in nodes},
        "faults": faults_view(value("base.faults")) + [
            {"id": f"node:{n['name']}:{f['id']}", "message": f"{n['name']}: {f['message']}", "since": f["since"]}
            for n in nodes for f in faults_view(n.get("faults"))],
        "migration_selector": value("base.config.migration_selector"),
        "limits": slots.limit_fields(zk, schema),
        "migrations": len(slots.read_slots(zk, schema)[0]),
        "nodes": dict(Counter("alive" if n["alive"] else "absent" for n in nodes)),
        "vms": dict(Counter(d["state"] or "unknown" for d in h.vm_records())),
        "jobs": dict(Counter(str(j.state) for j in jobs)),
        "backlog": backlog(jobs, time.time(), current_app.extensions["pvc_settings"]),
    }


def _own_tree(h, whole_ensemble: bool) -> None:
    """Refuse to put pvc's keys and ACL at the root of an ensemble others may share (409 ``no_chroot``)."""
    if not h.zk.chroot and not whole_ensemble:
        raise Conflict("the API's zookeeper setting has no chroot (e.g. zk1:2181,zk2:2181/pvc): pvc would put its "
                       "ACL on every top-level node of the ensemble and lock out everyone else who uses it; set a "
                       "chroot on every pvc process, or say --whole-ensemble if this ensemble is pvc's alone",
                       code="no_chroot")


@blp.route("/init", methods=["POST"])
@blp.arguments(ClusterInitSchema, required=False)
@blp.response(200, SchemaChangeSchema)
@blp.alt_response(409, description="no chroot and not ``whole_ensemble`` (``no_chroot``); nothing was changed")
def init(args: dict):
    """Create the cluster's keys, readable by pvc's ZooKeeper identity alone (idempotent: on an existing cluster,
    adds only missing keys and puts pvc's ACL where it is missing)."""
    h = handle()
    _own_tree(h, args.get("whole_ensemble", False))
    try:
        schema, created = init_cluster(h.zk, args.get("version"))
    except SchemaError as exc:
        raise Invalid(f"version: {exc}", details={"version": [str(exc)]}) from exc
    secured = secure_tree(h.zk, h.zk.default_acl)
    h.refresh()
    return {"schema_version": schema.version, "created": created, "upgraded_through": [], "secured": secured}


@blp.route("/upgrade", methods=["POST"])
@blp.arguments(ClusterUpgradeSchema, required=False)
@blp.response(200, SchemaChangeSchema)
@blp.alt_response(409, description="a running worker cannot load the target schema (``workers_too_old``, "
                                   "``details.nodes``: node -> why), or no chroot and not ``whole_ensemble`` "
                                   "(``no_chroot``); nothing was changed")
def upgrade(args: dict):
    """Upgrade the cluster's ZooKeeper layout to the newest schema, one version at a time (workers re-exec), and
    put pvc's ACL on every node that lacks it."""
    h = handle()
    _own_tree(h, args.get("whole_ensemble", False))
    pending = [v for v in available_versions() if v > h.schema.version]  # 503 when no cluster exists yet
    unable = workers_unable(h.zk, h.schema, pending)
    if unable:
        raise Conflict(f"not upgraded: the running worker of {', '.join(sorted(unable))} cannot load schema "
                       f"{pending[-1]} and would exit when the cluster moves to it; install this pvc version on "
                       f"those nodes and restart their workers (one at a time; each keeps its VMs), then run the "
                       f"upgrade again", code="workers_too_old", details={"nodes": unable, "target": pending[-1]})
    steps = upgrade_to_latest(h.zk)
    secured = secure_tree(h.zk, h.zk.default_acl)
    schema = h.refresh()
    return {"schema_version": schema.version, "created": [], "upgraded_through": steps, "secured": secured}


@blp.route("/limits", methods=["PUT"])
@blp.arguments(LimitsSchema)
@blp.response(200, LimitsSchema)
def set_limits(args: dict):
    """Change the migration concurrency limits (out of a node, into a node, whole cluster); one transaction."""
    h = handle()
    if not args:
        raise Invalid("limits: nothing to change", details={"limits": ["give at least one limit"]})
    keys = {key.rsplit(".", 1)[1]: key for key in slots.LIMIT_KEYS.values()}
    commit(h.zk, [("set", h.schema.path(keys[name]), str(value).encode(), -1) for name, value in args.items()])
    return slots.limit_fields(h.zk, h.schema)


@blp.route("/maintenance", methods=["PUT"])
@blp.arguments(MaintenanceSchema)
@blp.response(200, MaintenanceSchema)
def set_maintenance(args: dict):
    """Maintenance mode on or off. While on, the primary fences no node (dead nodes are reported as faults)."""
    h = handle()
    h.zk.set(h.schema.path("base.config.maintenance"), b"true" if args["maintenance"] else b"false")
    return {"maintenance": args["maintenance"]}


@blp.route("/shutdown_force", methods=["PUT"])
@blp.arguments(ShutdownForceSchema)
@blp.response(200, ShutdownForceSchema)
def set_shutdown_force(args: dict):
    """Whether a VM whose graceful shutdown times out is forced off (default) or the job fails and it keeps
    running; a VM's meta ``shutdown_force`` overrides it."""
    h = handle()
    h.zk.set(h.schema.path("base.config.shutdown_force"), b"true" if args["shutdown_force"] else b"false")
    return {"shutdown_force": args["shutdown_force"]}
