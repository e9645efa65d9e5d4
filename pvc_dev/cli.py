"""``pvc-dev up|down|status|secret-key``: the dev cluster of the README's first command.

``up`` starts ZooKeeper, Redis, three node workers (libvirt test driver; hv1 8 GiB, hv2 16 GiB, hv3 4 GiB), the
API and Flower (basic auth) on loopback with free ports, creates a few VMs, prints how to reach everything, and
stays in the foreground: Ctrl-C (or ``pvc-dev down`` from another shell) stops every process it started, by PID.

Re-running is safe: a live dev cluster is reported, not duplicated; processes left by a launcher that was killed
hard are stopped (only the PIDs recorded in the state file, and only if they still run the command we started).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pvc_dev.bmc import BMC_PASSWORD, BMC_USER
from pvc_dev.cluster import LocalCluster, NodeSpec
from pvc_dev.guests import qemu_domain_xml
from pvc_dev.services import write_private
from pvc_tasks.secrets import new_key

__all__ = ["main"]

DEV_NODES = [NodeSpec("hv1", 8192, 4), NodeSpec("hv2", 16384, 8), NodeSpec("hv3", 4096, 2)]
#: --hypervisor qemu: the same three nodes, each with its own libvirtd + QEMU (real guests, live migration).
QEMU_NODES = [NodeSpec(n.name, hypervisor="qemu") for n in DEV_NODES]
#: (name, MiB, node, start): spread over the nodes so that `pvc node list` shows some variety.
DEMO_VMS = [("web1", 1024, "hv1", True), ("web2", 1024, "hv2", True), ("db1", 2048, "hv2", True),
            ("batch1", 512, "hv3", False)]


def _state_file(workdir: Path) -> Path:
    return workdir / "state.json"


def _running(pid: int, argv0: str | None = None) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv0 is None or any(argv0.encode() in part for part in cmdline)


def _read_state(workdir: Path) -> dict | None:
    try:
        return json.loads(_state_file(workdir).read_text())
    except (OSError, ValueError):
        return None


def _stop_recorded(state: dict) -> int:
    """Stop the processes a previous launcher recorded; returns how many were still running."""
    stopped = 0
    for proc in state.get("processes", []):
        if _running(proc["pid"], proc["argv0"]):
            os.kill(proc["pid"], signal.SIGTERM)
            stopped += 1
    deadline = time.monotonic() + 15
    for proc in state.get("processes", []):
        while _running(proc["pid"], proc["argv0"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _running(proc["pid"], proc["argv0"]):
            os.kill(proc["pid"], signal.SIGKILL)
    return stopped


def _secret(workdir: Path, name: str, length: int) -> str:
    """A secret kept across runs so that exported tokens keep working after a restart."""
    path = workdir / name
    if not path.exists():
        write_private(path, secrets.token_urlsafe(length))
    return path.read_text().strip()


def _tls_note(c: LocalCluster) -> str:
    if not c.zookeeper_tls:
        return ""
    return f" over mutual TLS (the cluster's own CA: {c.zookeeper.info['ca']})"


def _banner(c: LocalCluster, workdir: Path) -> str:
    cli_config = workdir / "cli.toml"
    return f"""
pvc dev cluster is up ({len(c.nodes)} nodes, {c.nodes[0].hypervisor} hypervisor).
Ctrl-C here, or `pvc-dev down`, stops it.

  API       {c.api_url}/api/v1        (admin token: {c.token}; read-only token: {c.read_token})
  Status    {c.api_url}/api/v1/status (a live page; browser: any user name, the token as password)
  Swagger   {c.api_url}/api/v1/docs   (browser: any user name, the token as password; then Authorize with it)
  Metrics   {c.api_url}/api/v1/metrics (Prometheus; the token as the Basic password)
  Flower    {c.flower_url}            (user {c.flower_user}, password {c.flower_password})
  ZooKeeper {c.zk_hosts}{_tls_note(c)}
  Broker    {c.broker_url}
  BMCs      {", ".join(f"{n} {b.info['hostname']}" for n, b in c.bmc.items()) or "none"}
            (ipmi_sim; `ipmitool -I lanplus -C 3 -H 127.0.0.1 -p <port> -U {BMC_USER} -P {BMC_PASSWORD}
             chassis power off` cuts a node's power: the primary fences it within ~10 s, recovers its VMs
            elsewhere and its BMC powers it on again; `pvc node ready <node>` brings them back)
  Logs      {workdir}

Use the CLI (in another shell):
  source .venv/bin/activate
  source {workdir / "env"}     # PVC_CLI_CONFIG={cli_config}, PVC_API_URL, PVC_API_TOKEN, BMC ports
  pvc node list
  pvc vm list
  pvc vm start batch1          # waits with a progress bar, exits 0
  pvc vm start batch1          # again: refused (409, already running), exits 3
  pvc vm migrate web1 --target hv3   # a migration job: prepare on hv3, perform on hv1, finish, cleanup
  pvc vm unmigrate web1
  pvc job list
"""


def _write_env(c: LocalCluster, workdir: Path) -> None:
    """``<workdir>/env``, for ``source``: what the README's examples use (the CLI's config, the API's URL and
    admin token for curl, each node's BMC port for ipmitool). Mode 0600: it holds the token."""
    lines = [f"export PVC_CLI_CONFIG={workdir / 'cli.toml'}", f"export PVC_API_URL={c.api_url}",
             f"export PVC_API_TOKEN={c.token}"]
    lines += [f"export PVC_DEV_BMC_PORT_{node.upper()}={str(bmc.info['hostname']).rpartition(':')[2]}"
              for node, bmc in c.bmc.items()]
    write_private(workdir / "env", "\n".join(lines) + "\n")


def up(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    previous = _read_state(workdir)
    if previous and _running(previous["launcher"], "pvc-dev"):
        print(f"a dev cluster is already running (launcher PID {previous['launcher']}):\n{previous['banner']}")
        return 0
    if previous and _stop_recorded(previous):
        print("stopped processes left over by a previous dev cluster")
    for sub in ("zookeeper", "redis", "api", "flower", "workers", "nodes"):
        # A fresh cluster each time: old ZooKeeper data would describe VMs the new test-driver nodes do not have.
        shutil.rmtree(workdir / sub, ignore_errors=True)
    qemu = args.hypervisor == "qemu"
    cluster = LocalCluster(workdir, QEMU_NODES if qemu else DEV_NODES, token=_secret(workdir, "token", 24),
                           read_token=_secret(workdir, "read-token", 24),
                           flower_password=_secret(workdir, "flower-password", 12), zookeeper_tls=True)
    print("starting ZooKeeper, Redis, 3 workers, the API and Flower ...", flush=True)
    cluster.start()
    try:
        write_private(workdir / "cli.toml", f'api_url = "{cluster.api_url}"\ntoken = "{cluster.token}"\n')
        _write_env(cluster, workdir)
        if not args.no_vms:
            for name, memory, node, start in DEMO_VMS:
                # Real guests are tiny (64 MiB, no disk: they idle in SeaBIOS) so that three nodes fit anywhere.
                xml = qemu_domain_xml(name) if qemu else None
                job = cluster.define_vm(name, memory, node=node, start=start, xml=xml)
                print(f"  VM {name}: {job['kind']} {job['state']} on {job['node']}")
        banner = _banner(cluster, workdir)

        def record() -> None:
            """The launcher and every process of the cluster, for `status`, `down` and the next `up` (a worker
            started again after a power cycle has a new PID)."""
            write_private(_state_file(workdir), json.dumps({  # the banner holds the tokens and passwords
                "launcher": os.getpid(), "banner": banner,
                "processes": [{"name": s.name, "pid": s.pid, "argv0": Path(s.argv[0]).name}
                              for s in cluster.services]}))

        record()
        print(banner, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return _watch(cluster, record)
    except KeyboardInterrupt:
        return 0
    finally:
        print("\nstopping the dev cluster ...", flush=True)
        cluster.stop()
        _state_file(workdir).unlink(missing_ok=True)
        print("stopped.")


def _watch(cluster: LocalCluster, record: Callable[[], None]) -> int:
    """Stay up while the cluster runs; 1 when one of its processes exits and nothing brings it back. Not fatal: a
    worker that its node's BMC powered off (``ipmitool ... chassis power off``, a fence's power cycle): the node
    is off, as a real one would be, until its BMC powers it on (a new worker); and a worker or the API that
    crashed, which the cluster's supervisor restarts (unless it exited 2, a configuration error). The README's
    fencing demo does the first."""
    reported: set[int] = set()
    recorded = {s.pid for s in cluster.services}
    while True:
        if (pids := {s.pid for s in cluster.services}) != recorded:
            record()
            recorded = pids
        for service in list(cluster.services):
            if service.alive() or service.pid in reported:
                continue
            reported.add(service.pid)
            supervised = service is cluster.api or service in cluster.workers.values()
            if service.expected_exit:
                print(f"{service.name} stopped: its node was powered off, or it was replaced", flush=True)
            elif supervised and service.proc.returncode != 2:
                print(f"{service.name} exited ({service.proc.returncode}); the supervisor starts it again "
                      f"(supervisor.log)", flush=True)
            else:
                print(f"{service.name} exited ({service.proc.returncode}); its log: {service.log_path}")
                return 1
        time.sleep(1)


def down(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    state = _read_state(workdir)
    if not state:
        print("no dev cluster recorded in", workdir)
        return 0
    if _running(state["launcher"], "pvc-dev"):
        os.kill(state["launcher"], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _running(state["launcher"], "pvc-dev") and time.monotonic() < deadline:
            time.sleep(0.1)
    _stop_recorded(state)
    _state_file(workdir).unlink(missing_ok=True)
    print("dev cluster stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    state = _read_state(Path(args.workdir).resolve())
    if not state or not _running(state["launcher"], "pvc-dev"):
        print("no dev cluster running")
        return 1
    print(state["banner"])
    for proc in state["processes"]:
        print(f"  {proc['name']:<12} PID {proc['pid']:<8} {'running' if _running(proc['pid']) else 'EXITED'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pvc-dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=".dev-cluster", help="logs, data and state (default: .dev-cluster)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the dev cluster in the foreground")
    p_up.add_argument("--no-vms", action="store_true", help="do not create the demo VMs")
    p_up.add_argument("--hypervisor", choices=["test", "qemu"], default="test",
                      help="test: libvirt's test driver (default); qemu: a libvirtd + real QEMU guests per node")
    sub.add_parser("down", help="stop a dev cluster started from this directory")
    sub.add_parser("status", help="is a dev cluster running, and where")
    sub.add_parser("secret-key", help="print a new secret_key (seals IPMI passwords in ZooKeeper; the same on "
                                      "every node)")
    args = parser.parse_args(argv)
    if args.command == "secret-key":
        print(new_key())
        return 0
    return {"up": up, "down": down, "status": status}[args.command](args)
