"""Tiny real guests for QEMU nodes: no OS, no download, built here.

``idle`` guests have no disk: they sit in SeaBIOS, ignore ACPI shutdown, and migrate in about a second (their
memory is zero pages). ``busy`` guests boot a 512-byte boot sector that rewrites 512 KiB of memory in a loop,
each pass with a new value: a guest that keeps dirtying memory, so a live migration has real data to copy, reports
real progress, and never converges when its bandwidth is capped (which is how the tests prove the convergence
timeout and cancel during a running migration).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["busy_boot_image", "qemu_domain_xml", "virt_type"]

# Real-mode x86, loaded at 0x7c00 (offsets in the comments):
_BUSY_LOOP = bytes([
    0xFA,                    # 0  cli
    0x31, 0xC0,              # 1  xor ax, ax
    0xBB, 0x00, 0x10,        # 3  outer: mov bx, 0x1000        ; first segment 0x10000
    0x8E, 0xC3,              # 6  segment: mov es, bx
    0x31, 0xFF,              # 8  xor di, di
    0xB9, 0x00, 0x80,        # 10 mov cx, 0x8000              ; 64 KiB as words
    0xF3, 0xAB,              # 13 rep stosw                   ; es:di <- ax
    0x40,                    # 15 inc ax                      ; a new value each time: pages really change
    0x81, 0xC3, 0x00, 0x10,  # 16 add bx, 0x1000
    0x81, 0xFB, 0x00, 0x90,  # 20 cmp bx, 0x9000              ; up to 0x8ffff
    0x72, 0xEC,              # 24 jb segment (-20)
    0xEB, 0xE7,              # 26 jmp outer (-25)
])


def busy_boot_image(path: Path) -> Path:
    """Write the busy guest's boot floppy to ``path``."""
    sector = _BUSY_LOOP.ljust(510, b"\x00") + b"\x55\xaa"
    path.write_bytes(sector.ljust(1474560, b"\x00"))  # a 1.44 MB floppy: SeaBIOS boots its first sector
    return path


def virt_type() -> str:
    """``kvm`` where this machine has a usable /dev/kvm, else ``qemu`` (TCG, software emulation): some machines of
    this workplace have KVM and some have none, and the same tests must run on both."""
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"


def qemu_domain_xml(name: str, memory_mib: int = 64, boot_image: Path | None = None) -> str:
    """A tiny real guest. No <cpu> element: ``-cpu host`` aborts QEMU under this machine's nested virtualisation
    (machine-recipes.md). With ``boot_image``, the busy guest."""
    # A read-only floppy: libvirt accepts migrating it without shared storage, and the guest only reads it once.
    disk = (f"<disk type='file' device='floppy'><driver name='qemu' type='raw'/><source file='{boot_image}'/>"
            "<target dev='fda' bus='fdc'/><readonly/></disk>") if boot_image else ""
    boot = "<boot dev='fd'/>" if boot_image else ""
    return (f"<domain type='{virt_type()}'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os><features><acpi/></features>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"{disk}<video><model type='none'/></video><memballoon model='none'/></devices></domain>")


def running_boot_code(uri: str, name: str) -> bool:
    """True once the busy guest executes its boot sector (real mode, CS 0, IP inside 0x7c00-0x7dff): its memory
    is then changing. SeaBIOS takes a few seconds to get there on this machine."""
    import libvirt
    import libvirt_qemu

    conn = libvirt.open(uri)
    try:
        registers = libvirt_qemu.qemuMonitorCommand(conn.lookupByName(name), "info registers", 1)
    finally:
        conn.close()
    cs, eip = re.search(r"\bCS\s*=([0-9a-f]+)", registers), re.search(r"\bEIP=([0-9a-f]+)", registers)
    return bool(cs and eip) and int(cs.group(1), 16) == 0 and 0x7C00 <= int(eip.group(1), 16) < 0x7E00
