"""The one rule for names that become ZooKeeper path components: VMs, nodes, SR-IOV PFs and VFs, and job ids.

A name is 1-63 characters: letters, digits, ``_``, ``.`` and ``-``, starting with a letter or a digit. That keeps
out everything ZooKeeper or a path would read differently: ``.`` and ``..`` (relative components), ``/``, NUL,
whitespace and control characters. The API checks it on every path, query and body field (``pvc_web``) and on a
VM's ``<name>``, exactly as written (no trimming: libvirt would keep the spaces).
"""

from __future__ import annotations

import re

__all__ = ["JOB_ID", "NAME", "NAME_RULE", "is_name"]

#: Anchored (``\\A``...``\\Z``), so that ``match`` (what marshmallow's Regexp calls) checks the whole value too.
NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
#: Job ids are UUIDs; the rule is looser so that a mistyped id is answered ``job_not_found``, never a path error.
JOB_ID = re.compile(r"\A[A-Za-z0-9-]{1,64}\Z")
NAME_RULE = "1-63 letters, digits, '_', '.' or '-', starting with a letter or a digit"


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None
