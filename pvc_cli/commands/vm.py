"""``pvc vm list|info|define|start|shutdown|stop|restart|undefine``."""

from __future__ import annotations

from xml.dom import minidom
from xml.parsers.expat import ExpatError

import click

from pvc_cli.complete import node_names, vm_names
from pvc_cli.output import confirmed, emit, output_option, table
from pvc_cli.wait import finish, wait_options

SELECTORS = ["mem", "memprov", "load", "vcpus", "vms"]


@click.group("vm")
def group() -> None:
    """Virtual machines and their lifecycle."""


def render_vm(v: dict) -> str:
    m = v["meta"]
    rows = [("name", v["name"]), ("state", v["state"]), ("node", v["node"]), ("last node", v["last_node"] or "-"),
            ("memory MiB", v["memory"]), ("vCPUs", v["vcpus"]), ("uuid", v["uuid"] or "-"),
            ("active job", v["active_job"] or "-"), ("failed reason", v["failed_reason"] or "-"),
            ("node limit", ",".join(m["node_limit"]) or "any"), ("selector", m["node_selector"] or "cluster default"),
            ("autostart", m["autostart"]), ("migration", m["migration_method"]),
            ("max downtime", f"{m['max_downtime']} ms" if m.get("max_downtime") else "-"),
            ("force off", {True: "on", False: "off"}.get(m.get("shutdown_force"), "cluster default"))]
    return "\n".join(f"{k:>13}: {val}" for k, val in rows)


@group.command("list")
@click.option("--node", help="only VMs on this node", shell_complete=node_names)
@click.option("--state", help="only VMs in this state (running, stopped, ...)")
@output_option
@click.pass_obj
def list_vms(client, node, state, output) -> None:
    """Every VM."""
    vms = [v for v in client().get("/vms") if (not node or v["node"] == node) and (not state or v["state"] == state)]
    emit(output, vms, lambda rows: table(rows, [
        ("VM", lambda v: v["name"]), ("STATE", lambda v: v["state"]), ("NODE", lambda v: v["node"]),
        ("MEM", lambda v: v["memory"]), ("VCPU", lambda v: v["vcpus"]),
        ("JOB", lambda v: v["active_job"][:8] or "-"), ("REASON", lambda v: v["failed_reason"][:50])]))


def indented(xml: str) -> str:
    """The XML as defined when it has lines; a one-line definition (as scripts often send) indented for reading.
    Display only: what libvirt runs is the stored XML, unchanged."""
    if "\n" in xml.strip():
        return xml
    try:
        pretty = minidom.parseString(xml).documentElement.toprettyxml(indent="  ")
    except ExpatError:
        return xml
    return "\n".join(line for line in pretty.splitlines() if line.strip())


@group.command("info")
@click.argument("vm", shell_complete=vm_names)
@click.option("--xml", "show_xml", is_flag=True, help="print the libvirt XML too")
@output_option
@click.pass_obj
def info(client, vm, show_xml, output) -> None:
    """One VM in detail."""
    emit(output, client().get(f"/vms/{vm}"), lambda v: render_vm(v) + (f"\n\n{indented(v['xml'])}" if show_xml else ""))


@group.command("define")
@click.argument("xml_file", type=click.File("rb"))
@click.option("--node", help="node to define it on (default: chosen by the selector)",
              shell_complete=node_names)
@click.option("--limit", "node_limit", help="comma-separated nodes the VM may run on")
@click.option("--selector", type=click.Choice(SELECTORS), help="node selector for this VM")
@click.option("--autostart/--no-autostart", default=False, show_default=True)
@click.option("--method", "migration_method", type=click.Choice(["default", "live", "shutdown"]))
@wait_options
@output_option
@click.pass_obj
def define(client, xml_file, node, node_limit, selector, autostart, migration_method, wait, timeout, output) -> None:
    """Define a VM from a libvirt XML file ('-' for stdin)."""
    meta: dict = {"autostart": autostart}
    if node_limit:
        meta["node_limit"] = [n.strip() for n in node_limit.split(",") if n.strip()]
    if selector:
        meta["node_selector"] = selector
    if migration_method:
        meta["migration_method"] = migration_method
    try:
        xml = xml_file.read().decode()
    except UnicodeDecodeError:
        raise click.BadParameter(f"{xml_file.name} is not a text file (libvirt domain XML, UTF-8)",
                                 param_hint="XML_FILE") from None
    body = {"xml": xml, "meta": meta, **({"node": node} if node else {})}
    c = client()
    finish(c, c.post("/vms", body), wait, timeout, output)


def _state_command(action: str, doc: str, with_timeout: bool = False):
    @click.argument("vm", shell_complete=vm_names)
    @wait_options
    @output_option
    @click.pass_obj
    def command(client, vm, wait, timeout, output, shutdown_timeout=None) -> None:
        body: dict = {"state": action}
        if shutdown_timeout:
            body["timeout"] = shutdown_timeout
        c = client()
        finish(c, c.post(f"/vms/{vm}/state", body), wait, timeout, output)

    command.__doc__ = doc
    if with_timeout:
        command = click.option("--shutdown-timeout", type=click.FloatRange(min=1),
                               help="seconds the guest gets to shut down before the job fails "
                                    "(default: the cluster's, 180)")(command)
    return group.command(action)(command)


_state_command("start", "Start a VM on its node.")
_state_command("shutdown", "Shut a VM down gracefully (fails with a reason if the guest does not stop in time).",
               with_timeout=True)
_state_command("stop", "Force a VM off (like pulling the power).")
_state_command("restart", "Shut a VM down gracefully, then start it.", with_timeout=True)


@group.command("undefine")
@click.argument("vm", shell_complete=vm_names)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@wait_options
@output_option
@click.pass_obj
def undefine(client, vm, yes, wait, timeout, output) -> None:
    """Remove a stopped VM from its node and from the cluster."""
    if not confirmed(f"Undefine VM {vm}?", yes):
        return
    c = client()
    finish(c, c.delete(f"/vms/{vm}"), wait, timeout, output)


def _migration_command(kind: str, doc: str):
    @click.argument("vm", shell_complete=vm_names)
    @wait_options
    @output_option
    @click.pass_obj
    def command(client, vm, wait, timeout, output, target=None, live=False, method=None,
                shutdown_timeout=None, force=False) -> None:
        body: dict = {"force_live": live, **({"force": True} if force else {})}
        for key, value in (("target", target), ("method", method), ("timeout", shutdown_timeout)):
            if value:
                body[key] = value
        c = client()
        finish(c, c.post(f"/vms/{vm}/{kind}", body), wait, timeout, output)

    command.__doc__ = doc
    command = click.option("--shutdown-timeout", type=click.FloatRange(min=1),
                           help="graceful shutdown bound (s) when the migration shuts the VM down")(command)
    command = click.option("--method", type=click.Choice(["default", "live", "shutdown"]),
                           help="override the VM's migration_method")(command)
    command = click.option("--live", is_flag=True, help="force a live migration (no fallback to shutdown)")(command)
    if kind != "unmigrate":
        command = click.option("--target", help="target node (default: chosen by the VM's selector)",
                               shell_complete=node_names)(command)
    if kind == "migrate":
        command = click.option("--force", is_flag=True,
                               help="migrate a VM that is already away from its home; it keeps that home")(command)
    return group.command(kind)(command)


_migration_command("migrate", "Migrate a VM to another node; `pvc vm unmigrate` brings it back.")
_migration_command("move", "Move a VM to another node for good (forgets where it came from); with --target its "
                           "current node, make its temporary migration permanent.")
_migration_command("unmigrate", "Return a migrated VM to the node it came from.")


@group.command("meta")
@click.argument("vm", shell_complete=vm_names)
@click.option("--limit", "node_limit", help="comma-separated nodes the VM may run on ('' for any)")
@click.option("--selector", type=click.Choice([*SELECTORS, "default"]), help="node selector ('default': cluster's)")
@click.option("--autostart/--no-autostart", default=None)
@click.option("--method", "migration_method", type=click.Choice(["default", "live", "shutdown"]))
@click.option("--max-downtime", type=click.IntRange(min=1), help="live migration max downtime (ms)")
@click.option("--shutdown-force", type=click.Choice(["on", "off", "default"]),
              help="force the VM off when a graceful shutdown times out ('default': the cluster's setting)")
@output_option
@click.pass_obj
def meta(client, vm, node_limit, selector, autostart, migration_method, max_downtime, shutdown_force,
         output) -> None:
    """Show or change a VM's placement and migration meta."""
    body: dict = {}
    if node_limit is not None:
        body["node_limit"] = [n.strip() for n in node_limit.split(",") if n.strip()]
    if selector is not None:
        body["node_selector"] = "" if selector == "default" else selector
    if autostart is not None:
        body["autostart"] = autostart
    if migration_method:
        body["migration_method"] = migration_method
    if max_downtime:
        body["max_downtime"] = max_downtime
    if shutdown_force:
        body["shutdown_force"] = {"on": True, "off": False}.get(shutdown_force)
    c = client()
    result = c.request("PUT", f"/vms/{vm}/meta", json=body) if body else c.get(f"/vms/{vm}")
    emit(output, result["meta"] if output == "json" else result, render_vm)
