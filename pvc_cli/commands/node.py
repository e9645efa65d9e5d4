"""``pvc node list|info``."""

from __future__ import annotations

import click

from pvc_cli.output import emit, output_option, table
from pvc_cli.wait import finish, wait_options


@click.group("node")
def group() -> None:
    """Nodes: workers, states and resources; flush (drain) and ready."""


def _keepalive(n: dict) -> str:
    return "-" if n["keepalive_age"] is None else f"{n['keepalive_age']:.1f}s"


def render_node(n: dict) -> str:
    m = n["memory"]
    rows = [("name", n["name"]), ("worker", "alive" if n["alive"] else "ABSENT"),
            ("daemon state", n["daemon_state"]), ("router state", n["router_state"]),
            ("domain state", n["domain_state"]),
            ("keepalive age", _keepalive(n)), ("hypervisor", n["hypervisor"]),
            ("memory MiB", f"total {m['total']}, allocated {m['allocated']}, free {m['free']}, "
                           f"provisioned {m['provisioned']}"),
            ("vCPUs", f"total {n['vcpu']['total']}, allocated {n['vcpu']['allocated']}"), ("load", n["load"]),
            ("VMs", f"{n['vms']['total']} ({n['vms']['running']} running)"),
            ("IPMI", (f"{n['ipmi']['username']}@{n['ipmi']['hostname']}: " if n["ipmi"]["hostname"] else "")
             + n["ipmi"]["health"]),
            ("self-fence", f"after {n['self_fence_after']:g} s without ZooKeeper" if n["self_fence_after"] else "off"),
            ("last fence", f"{n['fence']['state']} (job {n['fence']['job']})" + (f": {n['fence']['reason']}"
                                                                               if n["fence"].get("reason") else "")
             if n["fence"] else "never"),
            ("faults", "; ".join(f"{f['id']}: {f['message']}" for f in n["faults"]) or "none"),
            *[("next" if i == 0 else "", step) for i, step in enumerate(n.get("next") or [])]]
    return "\n".join(f"{k:>13}: {v}" for k, v in rows)


@group.command("list")
@output_option
@click.pass_obj
def list_nodes(client, output) -> None:
    """Every node."""
    emit(output, client().get("/nodes"), lambda rows: table(rows, [
        ("NODE", lambda n: n["name"]), ("WORKER", lambda n: "alive" if n["alive"] else "ABSENT"),
        ("DAEMON", lambda n: n["daemon_state"]), ("ROUTER", lambda n: n["router_state"]),
        ("DOMAIN", lambda n: n["domain_state"]),
        ("VMS", lambda n: f"{n['vms']['running']}/{n['vms']['total']}"),
        ("MEM FREE/TOTAL", lambda n: f"{n['memory']['free']}/{n['memory']['total']}"),
        ("VCPU", lambda n: f"{n['vcpu']['allocated']}/{n['vcpu']['total']}"), ("LOAD", lambda n: n["load"]),
        ("KEEPALIVE", _keepalive), ("FAULTS", lambda n: len(n["faults"]))]))


@group.command("info")
@click.argument("node")
@output_option
@click.pass_obj
def info(client, node, output) -> None:
    """One node in detail (never shows the IPMI password)."""
    emit(output, client().get(f"/nodes/{node}"), render_node)


@group.command("flush")
@click.argument("node")
@click.option("--allow-shutdown", is_flag=True,
              help="shut down (and mark autostart) running VMs that have nowhere to go, instead of refusing")
@wait_options
@output_option
@click.pass_obj
def flush(client, node, allow_shutdown, wait, timeout, output) -> None:
    """Drain a node: every VM leaves by a migration; the node then runs no VM and takes none until `pvc node
    ready`. Refused (exit 3, naming the VMs) when its running VMs would not fit on the other ready nodes, unless
    --allow-shutdown. Ctrl-C stops waiting, not the flush."""
    c = client()
    finish(c, c.post(f"/nodes/{node}/flush", {"allow_shutdown": True} if allow_shutdown else {}), wait, timeout,
           output)


@group.command("ready")
@click.argument("node")
@wait_options
@output_option
@click.pass_obj
def ready(client, node, wait, timeout, output) -> None:
    """Make a node ready: cancels a running flush, or brings back the VMs whose home it is (and starts its autostart
    VMs); also after a failed flush, whose fault it clears."""
    c = client()
    finish(c, c.post(f"/nodes/{node}/ready"), wait, timeout, output)
