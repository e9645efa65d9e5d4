"""``python -m pvc_dev.subreaper CMD ...``: run CMD as a child subreaper and reap every orphan promptly.

PID 1 on these machines reaps exited processes slowly, so libvirtd believes a QEMU that exited still runs
(destroy takes 1.7 s, migrations 2-3 s). Making the launcher of libvirtd a subreaper (PR_SET_CHILD_SUBREAPER)
makes orphaned QEMUs its children, and this loop reaps them at once (destroy 0.2 s). SIGTERM is passed to CMD;
the exit status is CMD's.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -m pvc_dev.subreaper CMD [ARGS...]", file=sys.stderr)
        return 2
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = os.fork()
    if child == 0:
        os.execvp(sys.argv[1], sys.argv[1:])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: os.kill(child, s))
    status = 0
    while True:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            return status
        except InterruptedError:
            continue
        if pid == child:
            status = os.waitstatus_to_exitcode(raw)
            _end_orphans()
            return status if status >= 0 else 128 - status


def _end_orphans() -> None:
    """Kill the descendants left when CMD ended (QEMUs of a stopped libvirtd, reparented to us) and reap them."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = fh.read().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        if ppid == me:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


if __name__ == "__main__":
    sys.exit(main())
