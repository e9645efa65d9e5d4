"""Turning ZooKeeper records into API representations (strings into numbers, flat keys into objects).

A VM's XML, and a job's ``target_xml`` (a migration's XML for its target), may hold secrets: a display's password,
an attribute naming a secret. Only an admin token sees them as they are (it could define them anyway); a read-only
token, and the events stream that every token's page reads, see ``(redacted)`` in their place (``redact_xml``).
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict

from flask import has_request_context

from pvc_tasks.jobs import Job
from pvc_tasks.state import desired_vf_config
from pvc_web.auth import caller

__all__ = ["as_float", "faults_view", "job_view", "next_steps", "node_view", "pf_view", "redact_xml", "vf_view",
           "vm_view"]

#: Attributes whose values are secrets (VNC and SPICE ``passwd``, any ``password`` or ``secret``).
_SECRET = re.compile(r"passwd|password|secret", re.IGNORECASE)
REDACTED = "(redacted)"


def redact_xml(xml: str) -> str:
    """``xml`` with the value of every secret attribute replaced by ``(redacted)``; unchanged when it has none."""
    if not _SECRET.search(xml):
        return xml
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return REDACTED  # not XML pvc wrote: show nothing of it rather than a secret
    for element in root.iter():
        for name in element.attrib:
            if _SECRET.search(name.rsplit("}", 1)[-1]):
                element.set(name, REDACTED)
    return ET.tostring(root, encoding="unicode")


def _secrets_shown() -> bool:
    """Only an admin token's request sees secrets; a read-only token, or no request at all (the events feed)."""
    who = caller() if has_request_context() else None
    return who is not None and who.role == "admin"


def _int(value: str | None) -> int:
    try:
        return int(float(value or 0))
    except ValueError:
        return 0


def as_float(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


def faults_view(raw: str | None) -> list[dict]:
    """``node.faults`` / ``base.faults`` hold a JSON list of {"id", "message", "since"}."""
    try:
        faults = json.loads(raw or "[]")
    except ValueError:
        return [{"id": "unreadable", "message": raw, "since": None}] if raw else []
    if not isinstance(faults, list):
        return []
    return [{"id": str(f.get("id", "")), "message": str(f.get("message", "")), "since": f.get("since")}
            if isinstance(f, dict) else {"id": "fault", "message": str(f), "since": None} for f in faults]


def _json(raw: str | None) -> dict:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _ipmi_health(record: dict, faults: list[dict]) -> str:
    if not record.get("ipmi.hostname"):
        return "not configured: this node cannot be fenced"
    fault = next((f for f in faults if f["id"] == "ipmi"), None)
    return fault["message"] if fault else "ok"


def node_view(record: dict) -> dict:
    keepalive = as_float(record.get("keepalive"))
    faults = faults_view(record.get("faults"))
    fence = _json(record.get("fence"))
    fence.pop("steps", None)
    return {
        "name": record["name"],
        "alive": record["alive"],
        "daemon_state": record.get("daemon_state") or "",
        "domain_state": record.get("domain_state") or "",
        "router_state": record.get("router_state") or "",
        "keepalive_age": round(time.time() - keepalive, 3) if keepalive else None,
        "schema_version": record.get("schema_version") or "",
        "hypervisor": record.get("hypervisor") or "",
        "memory": {k: _int(record.get(f"memory.{k}")) for k in ("total", "used", "free", "allocated",
                                                                "provisioned")},
        "vcpu": {k: _int(record.get(f"vcpu.{k}")) for k in ("total", "allocated")},
        "load": as_float(record.get("load")),
        "vms": {k: _int(record.get(f"vms.{k}")) for k in ("total", "running")},
        "ipmi": {"hostname": record.get("ipmi.hostname") or "", "username": record.get("ipmi.username") or "",
                 "health": _ipmi_health(record, faults)},
        "faults": faults,
        "fence": fence,
        "self_fence_after": as_float(record.get("self_fence_after")),
        "active_job": record.get("active_job") or "",
        "next": next_steps(record, faults),
    }


def next_steps(record: dict, faults: list[dict]) -> list[str]:
    """What an operator can do next with this node, in the CLI's words."""
    node, state, job = record["name"], record.get("domain_state") or "", record.get("active_job") or ""
    steps = []
    if not record["alive"]:
        steps.append(f"start pvc-worker --node {node}: until it is back its VMs cannot be started, stopped or moved")
        steps.append(f"if {node} is down for good: `pvc node fence {node}` (through its BMC), then `pvc node evacuate "
                     f"{node}` starts its VMs on other nodes (without a successful fence: add --confirm-powered-off "
                     f"once you know it is off)")
    if state == "flush":
        steps.append(f"being flushed by job {job}: follow it with `pvc job watch {job}`, or `pvc node ready {node}` "
                     f"to cancel it (VMs already moved stay where they are)")
    elif state == "unflush":
        steps.append(f"being made ready by job {job}: follow it with `pvc job watch {job}`")
    elif state == "flushed":
        steps.append(f"no VM runs here; `pvc node ready {node}` brings its VMs back and starts its autostart VMs")
    if any(f["id"] == "flush" for f in faults):
        steps.append(f"a flush or unflush did not succeed (fault `flush`): `pvc node flush {node}` to try again, or "
                     f"`pvc node ready {node}` to bring back the VMs that left and clear the fault")
    return steps


def vm_view(record: dict, *, detail: bool = False) -> dict:
    max_downtime = record.get("meta.max_downtime")
    view = {
        "name": record["name"],
        "uuid": record.get("uuid") or "",
        "state": record.get("state") or "",
        "node": record.get("node") or "",
        "last_node": record.get("last_node") or "",
        "failed_reason": record.get("failed_reason") or "",
        "memory": _int(record.get("memory")),
        "vcpus": _int(record.get("vcpus")),
        "active_job": record.get("active_job") or "",
        "meta": {
            "node_limit": [n for n in (record.get("meta.node_limit") or "").split(",") if n],
            "node_selector": record.get("meta.node_selector") or "",
            "autostart": (record.get("meta.autostart") or "") == "true",
            "migration_method": record.get("meta.migration_method") or "default",
            "max_downtime": _int(max_downtime) if max_downtime else None,
            "shutdown_force": {"true": True, "false": False}.get(record.get("meta.shutdown_force") or ""),
        },
    }
    if detail:
        xml = record.get("xml") or ""
        view["xml"] = xml if _secrets_shown() else redact_xml(xml)
    return view


def pf_view(record: dict, vfs: list[dict]) -> dict:
    mine = [v for v in vfs if v["node"] == record["node"] and v["pf"] == record["name"]]
    return {"node": record["node"], "name": record["name"], "mtu": _int(record.get("mtu")),
            "vfcount": _int(record.get("vfcount")), "vfs_used": sum(v["used"] == "true" for v in mine)}


_FLAGS = ("spoof_check", "trust", "query_rss")
_NUMBERS = ("vlan_id", "vlan_qos", "tx_rate_min", "tx_rate_max")


def _vf_config(values: dict) -> dict:
    out = {}
    for key, value in values.items():
        if key in _FLAGS:
            out[key] = value == "true"
        elif key in _NUMBERS:
            out[key] = _int(value)
        elif key == "mtu":
            out[key] = _int(value) if value else None
        else:
            out[key] = value or ""
    return out


def vf_view(record: dict) -> dict:
    """A VF: what the NIC shows (mac, mtu, pci), its desired config, what its node last applied, and whether the
    two agree (``in_sync``)."""
    applied, desired = _json(record.get("applied")), desired_vf_config(record)
    pci = [str(record.get(f"pci.{k}") or "").removeprefix("0x") for k in ("domain", "bus", "slot", "function")]
    return {
        "node": record["node"], "name": record["name"], "pf": record.get("pf") or "",
        "index": _int(record.get("index")),
        "pci": f"{pci[0]}:{pci[1]}:{pci[2]}.{pci[3]}" if all(pci) else "",
        "mac": record.get("mac") or "", "phy_mac": record.get("phy_mac") or "", "mtu": _int(record.get("mtu")),
        "config": _vf_config(desired),
        "applied": {"config": _vf_config(applied.get("config") or {}), "errors": applied.get("errors") or {},
                    "at": applied.get("at"), "by": applied.get("by") or ""},
        "in_sync": applied.get("config") == desired and not applied.get("errors"),
        "used": record.get("used") == "true", "used_by": record.get("used_by") or "",
    }


def job_view(job: Job, revision: int | None = None) -> dict:
    view = asdict(job)
    if view["params"].get("target_xml") and not _secrets_shown():
        view["params"]["target_xml"] = redact_xml(view["params"]["target_xml"])
    if revision is not None:
        view["revision"] = revision
    return view
