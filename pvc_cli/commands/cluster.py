"""``pvc cluster status|init|upgrade|limits|maintenance``."""

from __future__ import annotations

import click

from pvc_cli.output import emit, output_option


@click.group("cluster")
def group() -> None:
    """The cluster as a whole: status, creation, schema upgrades, limits, maintenance mode."""


def _counts(counts: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"


def _backlog(b: dict) -> str:
    ages = [f"oldest {state} {b[state]['oldest_s']:.0f} s" for state in ("queued", "running")
            if b[state]["oldest_s"] is not None]
    over = f"{len(b['over_bound'])} past their bound (see faults)" if b["over_bound"] else "none past their bound"
    return ", ".join(ages + [f"{b['resends']} step(s) re-sent", over])


@group.command("status")
@output_option
@click.pass_obj
def status(client, output) -> None:
    """Schema version, primary, maintenance and fencing, node daemon states, faults, and counts by state."""
    emit(output, client().get("/cluster"), lambda c: "\n".join([
        f"schema version: {c['schema_version']} (newest known: {c['latest_schema_version']})",
        f"   maintenance: {'on' if c['maintenance'] else 'off'} (fencing {c['fencing']})",
        f"     shutdowns: {'forced off' if c['shutdown_force'] else 'fail'} after their timeout",
        f"  primary node: {c['primary'] or '- (election in progress)'}",
        *[f"{'node states' if i == 0 else '':>14}: {name}: daemon {s['daemon_state']}, router {s['router_state']}, "
          f"domain {s['domain_state']}{'' if s['alive'] else ', ABSENT'}"
          for i, (name, s) in enumerate(sorted(c["node_states"].items()))],
        *[f"{'next' if i == 0 else '':>14}: {name}: {step}"
          for i, (name, step) in enumerate((name, step) for name, s in sorted(c["node_states"].items())
                                           for step in s.get("next") or [])],
        f"      selector: {c['migration_selector']}",
        f"        limits: {c['limits']['migrate_out_per_node']} out / {c['limits']['migrate_in_per_node']} in per "
        f"node, {c['limits']['migrate_cluster']} in the cluster ({c['migrations']} running)",
        f"         nodes: {_counts(c['nodes'])}",
        f"           VMs: {_counts(c['vms'])}",
        f"          jobs: {_counts(c['jobs'])}",
        f"       backlog: {_backlog(c['backlog'])}",
        *[f"{'faults' if i == 0 else '':>14}: {f['message']}" for i, f in enumerate(c["faults"])],
        *([] if c["faults"] else ["        faults: none"])]))


_WHOLE = click.option("--whole-ensemble", is_flag=True,
                      help="the API's ZooKeeper setting has no chroot and the ensemble is pvc's alone (without it, "
                           "refused: pvc's ACL would lock everyone else out of every top-level node)")


@group.command("init")
@click.option("--version", type=click.IntRange(min=0), help="schema version to create (default: the newest)")
@_WHOLE
@output_option
@click.pass_obj
def init(client, version, whole_ensemble, output) -> None:
    """Create the cluster in ZooKeeper, readable by pvc's identity alone (safe to repeat: adds only missing keys
    and puts pvc's ACL on any node that lacks it)."""
    body = {"version": version} if version is not None else {}
    if whole_ensemble:
        body["whole_ensemble"] = True
    emit(output, client().post("/cluster/init", body),
         lambda r: f"cluster at schema version {r['schema_version']}; {len(r['created'])} key(s) created; "
                   f"ACL set on {r['secured']} node(s)")


@group.command("upgrade")
@_WHOLE
@output_option
@click.pass_obj
def upgrade(client, whole_ensemble, output) -> None:
    """Upgrade the ZooKeeper layout to the newest schema (workers re-exec themselves to load it) and put pvc's ACL
    on every node of the cluster that lacks it (a cluster created before ACLs existed)."""
    emit(output, client().post("/cluster/upgrade", {"whole_ensemble": True} if whole_ensemble else None),
         lambda r: f"cluster at schema version {r['schema_version']}"
                   + (f" (upgraded through {r['upgraded_through']})" if r["upgraded_through"] else " (no change)")
                   + f"; ACL set on {r['secured']} node(s)")


@group.command("limits")
@click.option("--out", "migrate_out_per_node", type=click.IntRange(min=1), help="migrations out of one node")
@click.option("--in", "migrate_in_per_node", type=click.IntRange(min=1), help="migrations into one node")
@click.option("--cluster", "migrate_cluster", type=click.IntRange(min=1), help="migrations in the whole cluster")
@output_option
@click.pass_obj
def limits(client, output, **values) -> None:
    """Show or change the migration concurrency limits."""
    body = {k: v for k, v in values.items() if v is not None}
    c = client()
    result = c.request("PUT", "/cluster/limits", json=body) if body else c.get("/cluster")["limits"]
    emit(output, result, lambda r: "\n".join(f"{k}: {v}" for k, v in sorted(r.items())))


@group.command("maintenance")
@click.argument("state", type=click.Choice(["on", "off"]))
@output_option
@click.pass_obj
def maintenance(client, state, output) -> None:
    """Maintenance mode on or off. While on, no node is fenced: dead nodes are only reported as faults."""
    result = client().request("PUT", "/cluster/maintenance", json={"maintenance": state == "on"})
    emit(output, result, lambda r: "maintenance mode on: fencing is DISABLED" if r["maintenance"]
         else "maintenance mode off: fencing is enabled")


@group.command("shutdown-force")
@click.argument("state", type=click.Choice(["on", "off"]))
@output_option
@click.pass_obj
def shutdown_force(client, state, output) -> None:
    """On (default, as PVC): a VM whose graceful shutdown times out is forced off, and the job says so. Off: the
    job fails and the VM keeps running. A VM's own `pvc vm meta --shutdown-force` overrides it."""
    result = client().request("PUT", "/cluster/shutdown_force", json={"shutdown_force": state == "on"})
    emit(output, result, lambda r: "shutdowns that time out: " + ("forced off" if r["shutdown_force"] else
                                                                  "the job fails, the VM keeps running"))
