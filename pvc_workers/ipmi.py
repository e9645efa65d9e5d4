"""IPMI power control of a node's BMC through ``ipmitool`` (the adapter the fencer and the start-up check use).

Every command runs with a hard timeout (``ipmi_timeout``) and ``-N``/``-R`` so that ipmitool itself gives up
early; the password travels in the ``IPMI_PASSWORD`` environment variable (``-E``), never on a command line
that ``ps`` or a log could show. Power state is parsed case-insensitively from "Chassis Power is on|off": PVC
once matched a case-sensitive string and classed successful fences as failed.

Fence sequence (``fence``): power off -> verify off -> power on. A BMC that does not answer the first command
costs ONE timeout: the sequence stops there (PVC once waited for three timed-out commands).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass

from pvc_tasks import defaults

__all__ = ["Bmc", "FenceResult", "IpmiError", "chassis_power", "fence", "fencer", "ipmitool_argv", "parse_power",
           "power_status"]

log = logging.getLogger(__name__)

_POWER = re.compile(r"chassis\s+power\s+is\s+(on|off)", re.IGNORECASE)


class IpmiError(Exception):
    """The BMC did not answer, refused the credentials, or answered something we cannot read."""


def parse_power(output: str) -> bool:
    """True when ``chassis power status`` output says on, False when off; ``IpmiError`` otherwise."""
    match = _POWER.search(output)
    if match is None:
        raise IpmiError(f"unreadable power state: {output.strip()[:200]!r}")
    return match.group(1).lower() == "on"


@dataclass(frozen=True)
class Bmc:
    """A node's BMC: ``hostname`` may carry a port (``127.0.0.1:6230``)."""

    hostname: str
    username: str
    password: str
    timeout: float = defaults.IPMI_TIMEOUT
    cipher_suite: int = defaults.IPMI_CIPHER_SUITE

    def __repr__(self) -> str:  # never show the password
        return f"Bmc({self.hostname!r}, user={self.username!r})"

    @property
    def configured(self) -> bool:
        return bool(self.hostname and self.username)


def ipmitool_argv(bmc: Bmc, *command: str) -> list[str]:
    """The ipmitool command line for ``command`` against ``bmc`` (no password: it goes in the environment)."""
    host, _, port = bmc.hostname.partition(":")
    # -N: seconds per try, -R: tries; together they stay below the hard timeout.
    per_try = max(1, int(bmc.timeout / 2))
    argv = ["ipmitool", "-I", "lanplus", "-C", str(bmc.cipher_suite), "-H", host]
    if port:
        argv += ["-p", port]
    return argv + ["-U", bmc.username, "-E", "-N", str(per_try), "-R", "1", *command]


def _run(bmc: Bmc, *command: str) -> str:
    if not bmc.configured:
        raise IpmiError("no IPMI hostname/username configured for this node")
    env = {**os.environ, "IPMI_PASSWORD": bmc.password}
    try:
        done = subprocess.run(ipmitool_argv(bmc, *command), env=env, capture_output=True, text=True,
                              timeout=bmc.timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise IpmiError(f"BMC {bmc.hostname} did not answer within {bmc.timeout:g} s") from None
    except OSError as exc:
        raise IpmiError(f"cannot run ipmitool: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise IpmiError(f"BMC {bmc.hostname}: {detail[-1] if detail else f'ipmitool exit {done.returncode}'}")
    return done.stdout


def power_status(bmc: Bmc) -> bool:
    return parse_power(_run(bmc, "chassis", "power", "status"))


def chassis_power(bmc: Bmc, action: str) -> str:
    """``chassis power on|off|cycle|reset`` as an operator would send it; ipmitool's answer."""
    return _run(bmc, "chassis", "power", action)


@dataclass
class FenceResult:
    ok: bool
    reason: str
    steps: list[str]
    seconds: float


def fence(bmc: Bmc, settle: float = defaults.FENCE_SETTLE, verify_tries: int = defaults.FENCE_VERIFY_TRIES
          ) -> FenceResult:
    """Power off, verify off, power on. ``ok`` only when the node was seen off (so its VMs are dead)."""
    started, steps = time.monotonic(), []

    def result(ok: bool, reason: str) -> FenceResult:
        return FenceResult(ok, reason, steps, time.monotonic() - started)

    try:
        _run(bmc, "chassis", "power", "off")
        steps.append("power off sent")
    except IpmiError as exc:
        return result(False, f"power off failed: {exc}")
    off = False
    for attempt in range(verify_tries):
        time.sleep(settle if attempt else settle / 4)
        try:
            off = not power_status(bmc)
        except IpmiError as exc:
            return result(False, f"power state not verified: {exc}")
        if off:
            break
    if not off:
        return result(False, f"the node still reports power on after {verify_tries} checks")
    steps.append("verified off")
    try:
        _run(bmc, "chassis", "power", "on")
        steps.append("power on sent")
    except IpmiError as exc:  # the node is off: the fence holds even if it does not come back
        steps.append(f"power on failed: {exc}")
    return result(True, "")


def fencer(timeout: float, cipher_suite: int):
    """The ``NodeContext.fence`` callable: fence the BMC at (hostname, username, password); a plain dict back."""

    def run(hostname: str, username: str, password: str) -> dict:
        outcome = fence(Bmc(hostname, username, password, timeout, cipher_suite))
        return {"ok": outcome.ok, "reason": outcome.reason, "steps": outcome.steps,
                "seconds": round(outcome.seconds, 3)}

    return run
