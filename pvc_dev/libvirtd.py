"""One root libvirtd + QEMU per simulated node on one machine (recipe in ../shared/reference/machine-recipes.md).

Each daemon runs in its own mount namespace (``unshare -m``) with private bind mounts over the directories libvirt
keeps state in, its own socket directory (outside those mounts, so workers and the peer daemon can reach it), a
distinct ``host_uuid`` (equal UUIDs make libvirt refuse "migrate to the same host"), its own migration port range,
and the subreaper (``pvc_dev.subreaper``) so exited QEMUs are reaped at once. The node's libvirt URI is
``qemu+unix:///system?socket=<dir>/libvirt-sock``; live migration between two such nodes is libvirt's
peer-to-peer migration over TCP on loopback.
"""

from __future__ import annotations

import shlex
import sys
import uuid
from pathlib import Path

from pvc_dev.services import Service, _await, free_port

__all__ = ["LIBVIRT_DIRS", "start_libvirtd"]

#: Directories where a system libvirtd keeps state; each node gets private copies (bind mounts).
LIBVIRT_DIRS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")

QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
migration_port_min = {port_min}
migration_port_max = {port_max}
"""


def start_libvirtd(node: str, workdir: Path) -> Service:
    """Start ``node``'s libvirtd; ``service.info["uri"]`` is its libvirt URI."""
    base = workdir / node
    private = {d: base / "fs" / d.strip("/").replace("/", "_") for d in LIBVIRT_DIRS}
    for path in private.values():
        path.mkdir(parents=True, exist_ok=True)
    sockets = base / "sock"
    sockets.mkdir(parents=True, exist_ok=True)
    conf = base / "libvirtd.conf"
    conf.write_text(f'unix_sock_dir = "{sockets}"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
                    f'unix_sock_rw_perms = "0770"\nhost_uuid = "{uuid.uuid5(uuid.NAMESPACE_DNS, str(base))}"\n'
                    'log_outputs = "3:stderr"\n')
    port = free_port()
    (private["/etc/libvirt"] / "qemu.conf").write_text(QEMU_CONF.format(port_min=port, port_max=port + 63))
    mounts = " && ".join(f"mkdir -p {d} && mount --bind {shlex.quote(str(p))} {d}" for d, p in private.items())
    daemon = f"exec {shlex.quote(sys.executable)} -m pvc_dev.subreaper /usr/sbin/libvirtd -f {shlex.quote(str(conf))}" \
             f" -p {shlex.quote(str(base / 'libvirtd.pid'))}"
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && {daemon}"]
    socket = sockets / "libvirt-sock"
    uri = f"qemu+unix:///system?socket={socket}"
    svc = Service(f"libvirtd-{node}", argv, base / "libvirtd.log", uri=uri)
    return _await(svc, socket.exists, 30, f"libvirtd of {node}")
