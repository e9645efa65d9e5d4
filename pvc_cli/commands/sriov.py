"""``pvc sriov pf list``, ``pvc sriov vf list|info|set``."""

from __future__ import annotations

import click

from pvc_cli.complete import node_names
from pvc_cli.output import age, emit, output_option, table
from pvc_cli.wait import finish, wait_options


@click.group("sriov")
def group() -> None:
    """SR-IOV NICs: physical functions (PFs) and their virtual functions (VFs)."""


@group.group("pf")
def pf() -> None:
    """Physical functions, as each node's worker inventoried them."""


@group.group("vf")
def vf() -> None:
    """Virtual functions: settings (applied by the node's worker), use by VMs."""


@pf.command("list")
@click.option("--node", help="only this node's PFs")
@output_option
@click.pass_obj
def list_pfs(client, node, output) -> None:
    """Every PF with its MTU and VF use."""
    emit(output, client().get("/sriov/pfs", node=node), lambda rows: table(rows, [
        ("NODE", lambda p: p["node"]), ("PF", lambda p: p["name"]), ("MTU", lambda p: p["mtu"]),
        ("VFS", lambda p: p["vfcount"]), ("USED", lambda p: p["vfs_used"])]))


def _vlan(c: dict) -> str:
    return f"{c['vlan_id']}" + (f" qos {c['vlan_qos']}" if c["vlan_qos"] else "") if c["vlan_id"] else "-"


@vf.command("list")
@click.option("--node", help="only this node's VFs")
@click.option("--pf", help="only VFs of this PF")
@output_option
@click.pass_obj
def list_vfs(client, node, pf, output) -> None:
    """Every VF: PCI address, MAC, VLAN, use, and whether the node applied its settings (SYNC)."""
    emit(output, client().get("/sriov/vfs", node=node, pf=pf), lambda rows: table(rows, [
        ("NODE", lambda v: v["node"]), ("VF", lambda v: v["name"]), ("PF", lambda v: v["pf"]),
        ("PCI", lambda v: v["pci"]), ("MAC", lambda v: v["mac"]), ("MTU", lambda v: v["mtu"]),
        ("VLAN", lambda v: _vlan(v["config"])), ("USED BY", lambda v: v["used_by"] or "-"),
        ("SYNC", lambda v: "yes" if v["in_sync"] else "NO")]))


def render_vf(v: dict) -> str:
    c, a = v["config"], v["applied"]
    rate = f"min {c['tx_rate_min']} max {c['tx_rate_max'] or 'unlimited'} Mb/s"
    rows = [("VF", f"{v['name']} on {v['node']} (PF {v['pf']}, vf {v['index']}, PCI {v['pci']})"),
            ("MAC", f"{v['mac']} (hardware {v['phy_mac']})"), ("MTU", v["mtu"]),
            ("used by", v["used_by"] or "-"), ("vlan", _vlan(c)), ("tx rate", rate),
            ("spoof check", c["spoof_check"]), ("link state", c["link_state"]), ("trust", c["trust"]),
            ("query rss", c["query_rss"]), ("desired mtu", c["mtu"] or "as is"), ("desired mac", c["mac"] or "as is"),
            ("applied", f"{age(a['at'])} by {a['by'] or '-'}" + ("" if v["in_sync"] else "  (NOT in sync)")),
            ("errors", "; ".join(f"{k}: {m}" for k, m in sorted(a["errors"].items())) or "none")]
    return "\n".join(f"{k:>11}: {val}" for k, val in rows)


@vf.command("info")
@click.argument("node", shell_complete=node_names)
@click.argument("vf_name", metavar="VF")
@output_option
@click.pass_obj
def info(client, node, vf_name, output) -> None:
    """One VF: desired settings, what its node last applied, its VM."""
    emit(output, client().get(f"/sriov/vfs/{node}/{vf_name}"), render_vf)


def _flag(name: str, help_text: str):
    return click.option(f"--{name}/--no-{name}", name.replace("-", "_"), default=None, help=help_text)


@vf.command("set")
@click.argument("node", shell_complete=node_names)
@click.argument("vf_name", metavar="VF")
@click.option("--vlan-id", type=int, help="0-4095 (0: untagged)")
@click.option("--vlan-qos", type=int, help="0-7, priority of the VLAN tag (needs a VLAN)")
@click.option("--tx-rate-min", type=int, help="Mb/s guaranteed, 0: none")
@click.option("--tx-rate-max", type=int, help="Mb/s cap, 0: none")
@_flag("spoof-check", "drop frames whose source MAC is not the VF's")
@click.option("--link-state", type=click.Choice(["auto", "enable", "disable"]))
@_flag("trust", "let the VM change its MAC and use promiscuous modes")
@_flag("query-rss", "let the VM query the RSS configuration")
@click.option("--mtu", type=int, help="68 - the PF's MTU")
@click.option("--mac", help="a unicast MAC")
@wait_options
@output_option
@click.pass_obj
def set_vf(client, node, vf_name, wait, timeout, output, **settings) -> None:
    """Change a VF's settings; its node's worker applies them (the command waits for that job). Only the options
    given change; the node applies the VF's whole desired config."""
    body = {k: v for k, v in settings.items() if v is not None}
    if not body:
        raise click.UsageError("give at least one setting to change (see --help)")
    c = client()
    finish(c, c.put(f"/sriov/vfs/{node}/{vf_name}", body), wait, timeout, output)
