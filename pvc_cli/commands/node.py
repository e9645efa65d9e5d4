"""``pvc node list|info|wait|flush|ready|fence|evacuate|primary|secondary``."""

from __future__ import annotations

import time

import click

from pvc_cli.complete import node_names
from pvc_cli.output import confirmed, emit, output_option, table
from pvc_cli.wait import EXIT_INTERRUPTED, EXIT_TIMEOUT, Progress, finish, wait_options


@click.group("node")
def group() -> None:
    """Nodes: workers, states and resources; flush (drain) and ready; fence and evacuate a node that is down."""


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
@click.argument("node", shell_complete=node_names)
@output_option
@click.pass_obj
def info(client, node, output) -> None:
    """One node in detail (never shows the IPMI password)."""
    emit(output, client().get(f"/nodes/{node}"), render_node)


@group.command("flush")
@click.argument("node", shell_complete=node_names)
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
@click.argument("node", shell_complete=node_names)
@wait_options
@output_option
@click.pass_obj
def ready(client, node, wait, timeout, output) -> None:
    """Make a node ready: cancels a running flush, or brings back the VMs whose home it is (and starts its autostart
    VMs); also after a failed flush, whose fault it clears."""
    c = client()
    finish(c, c.post(f"/nodes/{node}/ready"), wait, timeout, output)


@group.command("fence")
@click.argument("node", shell_complete=node_names)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@wait_options
@output_option
@click.pass_obj
def fence(client, node, yes, wait, timeout, output) -> None:
    """Fence a node whose worker is down, now, through its BMC: power off, verify off, power on; then its VMs are
    recovered elsewhere (or marked failed) by the fencing policies, as after an automatic fence, in maintenance
    mode too. Refused (exit 3) while the node's worker runs."""
    if not confirmed(f"Power-cycle node {node} through its BMC?", yes):
        return
    c = client()
    finish(c, c.post(f"/nodes/{node}/fence"), wait, timeout, output)


@group.command("evacuate")
@click.argument("node", shell_complete=node_names)
@click.option("--confirm-powered-off", is_flag=True,
              help="you know that the node is powered off (it was not fenced, or its fence failed); recorded in "
                   "the job with your token's name")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@wait_options
@output_option
@click.pass_obj
def evacuate(client, node, confirm_powered_off, yes, wait, timeout, output) -> None:
    """Recover every VM of a node that is down on the other nodes (those that ran are started there), after its
    fence succeeded or with --confirm-powered-off. Refused (exit 3) while its worker runs, or when it is not known
    to be off."""
    if confirm_powered_off and not confirmed(
            f"Node {node} is powered off and runs no VM? Its VMs will be started elsewhere", yes):
        return
    c = client()
    finish(c, c.post(f"/nodes/{node}/evacuate", {"confirm_powered_off": True} if confirm_powered_off else {}),
           wait, timeout, output)


@group.command("wait")
@click.argument("node", shell_complete=node_names)
@click.option("--state", "want", type=click.Choice(["run", "dead", "stop"]), default="run", show_default=True,
              help="the daemon state to wait for (run: its worker is up and takes jobs; dead: declared dead by the "
                   "primary, which fences it)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="seconds to wait (exit 4 after them)")
@output_option
@click.pass_obj
def wait_for_state(client, node, want, timeout, output) -> None:
    """Wait until a node reaches a daemon state: after a power cut, `--state dead` (its fence has begun), then
    `--state run` (it is back). Prints the node; exit 4 when the state is not reached in time."""
    c = client()
    progress = Progress(f"node {node}", quiet=output == "json")
    deadline = time.monotonic() + timeout
    try:
        while True:
            n = c.get(f"/nodes/{node}")
            if n["daemon_state"] == want and (n["alive"] or want != "run"):
                break
            if time.monotonic() >= deadline:
                progress.close()
                emit(output, n, lambda n: f"{node} is still {n['daemon_state']} "
                                          f"({'alive' if n['alive'] else 'worker absent'}) after {timeout:g} s")
                raise SystemExit(EXIT_TIMEOUT)
            progress.update(f"{n['daemon_state']} ({'alive' if n['alive'] else 'worker absent'}), waiting for "
                            f"{want}", 0)
            time.sleep(0.5)
    except KeyboardInterrupt:
        progress.close()
        raise SystemExit(EXIT_INTERRUPTED) from None
    progress.close()
    emit(output, n, lambda n: f"{node} is {n['daemon_state']} ({'alive' if n['alive'] else 'worker absent'}), "
                              f"{n['domain_state']}")


def _handover(client, node: str, want: str, timeout: float, output: str) -> None:
    """Request the handover, then wait (bounded) until ``GET /cluster`` shows it carried out."""
    c = client()
    answer = c.post(f"/nodes/{node}/{want}")
    progress = Progress(f"{want} {node}", quiet=output == "json")
    deadline = time.monotonic() + timeout
    while not answer["done"]:
        primary = c.get("/cluster")["primary"]
        answer["done"] = primary == node if want == "primary" else primary not in ("", node)
        answer["primary_now"] = primary
        if answer["done"]:
            break
        if time.monotonic() >= deadline:
            emit(output, answer, lambda a: f"no handover after {timeout:g} s (primary: {a['primary_now'] or 'none'});"
                                           f" `pvc cluster status` shows where it stands")
            raise SystemExit(EXIT_TIMEOUT)
        progress.update(f"waiting for the handover (primary: {primary or 'none'})", 50)
        time.sleep(0.5)
    progress.close()
    answer.setdefault("primary_now", answer["primary"])
    emit(output, answer, lambda a: f"{a['primary_now']} is primary" + (
        f" (was {a['primary']})" if a["primary"] != a["primary_now"] else ""))


def _handover_command(want: str, doc: str) -> None:
    @click.argument("node", shell_complete=node_names)
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
                  help="seconds to wait for the handover")
    @output_option
    @click.pass_obj
    def command(client, node, timeout, output) -> None:
        _handover(client, node, want, timeout, output)

    command.__doc__ = doc
    group.command(want)(command)


_handover_command("primary", """Make a coordinator the primary: the primary relinquishes and NODE takes over (with the
    fencing monitor and the cluster queue). Refused (exit 3) for a node that is not a coordinator or whose worker is
    absent.""")
_handover_command("secondary", """Make the primary step down: another live coordinator takes over. Refused (exit 3)
    when NODE is the only live coordinator.""")
