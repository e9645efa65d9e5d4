"""Tiny real guests for QEMU nodes: no OS, no download, built here.

``idle`` guests have no disk: they sit in SeaBIOS, ignore ACPI shutdown, and migrate in about a second (their
memory is zero pages). ``busy`` guests boot a 512-byte boot sector that rewrites 512 KiB of memory in a loop,
each pass with a new value: a guest that keeps dirtying memory, so a live migration has real data to copy, reports
real progress, and never converges when its bandwidth is capped (which is how the tests prove the convergence
timeout and cancel during a running migration). ``fill`` guests boot a sector that writes 4 MiB of a non-zero
pattern above 1 MiB once (BIOS block moves, INT 15h AH=87h) and then halts: a migration with a fixed amount of data
to copy, which at a 1 MiB/s cap lasts a known ~6 s and converges (the step-lease test).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["FILL_DONE", "boot_code_offset", "busy_boot_image", "fill_boot_image", "qemu_domain_xml",
           "running_boot_code", "virt_type"]

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


# Assembled with nasm from (org 0x7c00):
#   xor ax,ax; mov ds,ax; mov ss,ax; mov sp,0x7c00
#   mov ax,0x1000; mov es,ax; xor di,di; mov cx,0x8000; mov ax,0xA55A; rep stosw   ; 64 KiB pattern at 0x10000
#   xor ax,ax; mov es,ax; mov bl,0x10                                             ; es:si -> gdt; dest 1 MiB
#   copy: mov [gdt+0x1C],bl; mov si,gdt; mov cx,0x8000; mov ah,0x87; int 0x15     ; copy it to bl * 64 KiB
#         inc bl; cmp bl,0x50; jb copy                                            ; 64 blocks: 4 MiB
#   done: hlt; jmp done                                                            ; offset 0x33
#   align 8; gdt (0x38): 16 zero bytes, source (limit ffff, base 0x010000, 0x93), dest (base bl<<16), 16 zero
_FILL_4MIB = bytes([
    0x31, 0xC0, 0x8E, 0xD8, 0x8E, 0xD0, 0xBC, 0x00, 0x7C, 0xB8, 0x00, 0x10, 0x8E, 0xC0, 0x31, 0xFF, 0xB9, 0x00, 0x80,
    0xB8, 0x5A, 0xA5, 0xF3, 0xAB, 0x31, 0xC0, 0x8E, 0xC0, 0xB3, 0x10, 0x88, 0x1E, 0x54, 0x7C, 0xBE, 0x38, 0x7C, 0xB9,
    0x00, 0x80, 0xB4, 0x87, 0xCD, 0x15, 0xFE, 0xC3, 0x80, 0xFB, 0x50, 0x72, 0xEB, 0xF4, 0xEB, 0xFD, 0x90, 0x90,
    *([0] * 16), 0xFF, 0xFF, 0x00, 0x00, 0x01, 0x93, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00, 0x10, 0x93, 0x00, 0x00,
    *([0] * 16),
])
#: Offsets of the fill guest's final ``hlt; jmp`` loop, where it sits once its 4 MiB are written.
FILL_DONE = range(0x33, 0x36)


def _boot_image(path: Path, code: bytes) -> Path:
    sector = code.ljust(510, b"\x00") + b"\x55\xaa"
    path.write_bytes(sector.ljust(1474560, b"\x00"))  # a 1.44 MB floppy: SeaBIOS boots its first sector
    return path


def busy_boot_image(path: Path) -> Path:
    """Write the busy guest's boot floppy to ``path``."""
    return _boot_image(path, _BUSY_LOOP)


def fill_boot_image(path: Path) -> Path:
    """Write the fill guest's boot floppy to ``path``."""
    return _boot_image(path, _FILL_4MIB)


def virt_type() -> str:
    """``qemu`` (TCG, software emulation) unless ``PVC_GUEST_VIRT=kvm`` asks for KVM where /dev/kvm is usable.

    Why TCG by default: some machines of this workplace have no KVM, and those that have one offer a nested
    paravirtual KVM (kvm-pvm) under which these guests' SeaBIOS often halted before reaching the boot sector (about
    half the boots of one afternoon, 2026-12-02; never under TCG), so the same tests run the same way everywhere."""
    wanted = os.environ.get("PVC_GUEST_VIRT", "qemu")
    return "kvm" if wanted == "kvm" and os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"


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


def boot_code_offset(uri: str, name: str) -> int | None:
    """Where in its boot sector the guest executes (IP - 0x7c00, real mode, CS 0); None while SeaBIOS runs."""
    import libvirt
    import libvirt_qemu

    conn = libvirt.open(uri)
    try:
        registers = libvirt_qemu.qemuMonitorCommand(conn.lookupByName(name), "info registers", 1)
    finally:
        conn.close()
    cs, eip = re.search(r"\bCS\s*=([0-9a-f]+)", registers), re.search(r"\bEIP=([0-9a-f]+)", registers)
    if not (cs and eip) or int(cs.group(1), 16) != 0 or not 0x7C00 <= int(eip.group(1), 16) < 0x7E00:
        return None
    return int(eip.group(1), 16) - 0x7C00


def running_boot_code(uri: str, name: str) -> bool:
    """True once the guest executes its boot sector (the busy guest's memory is then changing). SeaBIOS takes a
    few seconds to get there on this machine."""
    return boot_code_offset(uri, name) is not None
