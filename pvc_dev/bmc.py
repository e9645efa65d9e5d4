"""Simulated BMCs: one ``ipmi_sim`` (OpenIPMI's simulator) per node whose chassis power really powers the node.

``ipmi_sim`` answers real IPMI-over-LAN (``ipmitool -I lanplus``) on a loopback port. Its ``chassis_control``
program (``<script> <node> get power`` / ``<script> <node> set power 0|1``) is a tiny client of the cluster's
``PowerSwitch``, a unix-socket server in the process that owns the node workers (the test harness, ``pvc-dev``,
a bench): power off SIGKILLs the node's worker, and with it the node's hypervisor state (the libvirt test
driver's world lives in that process), power on starts a new worker. Fencing is therefore tested end to end
through IPMI, exactly the path production takes.
"""

from __future__ import annotations

import os
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from pvc_dev.services import Service, ServiceDied, _await, on_a_free_port, write_private

__all__ = ["BMC_PASSWORD", "BMC_USER", "PowerSwitch", "power_client", "start_bmc"]

BMC_USER = "admin"
#: The simulators' password: a fixed test credential, used only on loopback.
BMC_PASSWORD = "pvc-bmc-secret"

_EMU = "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n" \
       "sel_enable 0x20 1000 0x0a\nmc_enable 0x20\n"


class PowerSwitch:
    """Answers ``<node> get power`` and ``<node> set power 0|1`` on a unix socket, calling ``on``/``off``."""

    def __init__(self, path: Path, on: Callable[[str], None], off: Callable[[str], None]) -> None:
        self.path, self.on, self.off = path, on, off
        self.powered: dict[str, bool] = {}
        #: Nodes whose board ignores power commands (a stuck relay): the BMC says "ok", the power stays as it was,
        #: so a fence's "verify off" fails. Tests add node names here.
        self.stuck: set[str] = set()
        #: Nodes whose "power on" fails (a broken PSU): the BMC answers with an error, the node stays off.
        self.refuse_on: set[str] = set()
        #: Every power change made, in order: (node, on?); tests count power cycles with it.
        self.changes: list[tuple[str, bool]] = []
        self.lock = threading.Lock()
        switch = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                words = self.rfile.readline().decode().split()
                self.wfile.write((switch.command(words) + "\n").encode())

        if path.exists():
            path.unlink()
        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="power-switch", daemon=True).start()

    def command(self, words: list[str]) -> str:
        if len(words) >= 3 and words[1:3] == ["get", "power"]:
            return f"power:{int(self.powered.get(words[0], True))}"
        if len(words) >= 4 and words[1:3] == ["set", "power"]:
            node, want = words[0], words[3] == "1"
            if want and node in self.refuse_on:
                return "error"
            with self.lock:  # one power change at a time per cluster: start/kill are not reentrant
                if node not in self.stuck and self.powered.get(node, True) != want:
                    self.powered[node] = want
                    self.changes.append((node, want))
                    (self.on if want else self.off)(node)
            return "ok"
        return "error"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.path.unlink(missing_ok=True)


def power_client(argv: list[str]) -> int:
    """``python -m pvc_dev.bmc SOCKET NODE get|set power [0|1]``: what ipmi_sim runs as chassis_control."""
    sock_path, *words = argv
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(sock_path)
        sock.sendall((" ".join(words) + "\n").encode())
        reply = sock.makefile().readline().strip()
    if words[1:2] == ["get"]:
        print(reply)
    return 0 if reply != "error" else 1


#: An RMCP/ASF presence ping (DMTF ASF 2.0): any IPMI-over-LAN endpoint answers it with a pong.
_RMCP_PING = bytes.fromhex("0600ff06000011be80000000")


def start_bmc(node: str, switch: PowerSwitch, workdir: Path, port: int | None = None) -> Service:
    """An ``ipmi_sim`` for ``node`` on a free loopback UDP port (IPMI over RMCP+; another one if that port is
    taken before the simulator binds it); ``info["hostname"]`` is ``127.0.0.1:<port>``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if port is None:
        return on_a_free_port(lambda free: start_bmc(node, switch, workdir, free), udp=True)
    script = workdir / "chassis-control"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m pvc_dev.bmc {switch.path} \"$@\"\n")
    script.chmod(0o755)
    write_private(workdir / "lan.conf",
        f'name "{node}"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n'
        + "".join(f"    allowed_auths_{who} none md2 md5 straight\n"
                  for who in ("callback", "user", "operator", "admin"))
        + f"    guid {os.urandom(16).hex()}\n  endlan\n  chassis_control \"{script} {node}\"\n"
        f'  user 2 true "{BMC_USER}" "{BMC_PASSWORD}" admin 10 none md2 md5 straight\n')
    (workdir / "bmc.emu").write_text(_EMU)
    (workdir / "state").mkdir(exist_ok=True)
    log = workdir / "ipmi_sim.log"
    mine = log.stat().st_size if log.exists() else 0  # what this start writes comes after an earlier start's lines
    svc = Service(f"bmc-{node}", ["ipmi_sim", "-c", str(workdir / "lan.conf"), "-f", str(workdir / "bmc.emu"),
                                  "-s", str(workdir / "state"), "-n"], log,
                  port=port, hostname=f"127.0.0.1:{port}")

    def answers() -> bool:
        """An RMCP presence ping is answered (a pong): the simulator, not another process holding the port."""
        if b"Unable to bind" in log.read_bytes()[mine:]:
            raise ServiceDied(f"{svc.name} could not bind its port:\n{svc.log_tail()}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.settimeout(0.5)
            probe.sendto(_RMCP_PING, ("127.0.0.1", port))
            try:
                return probe.recv(64)[:4] == _RMCP_PING[:4]
            except OSError:
                return False

    return _await(svc, answers, 10, f"ipmi_sim of {node} to listen")


if __name__ == "__main__":
    sys.exit(power_client(sys.argv[1:]))
