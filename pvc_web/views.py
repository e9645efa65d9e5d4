"""Turning ZooKeeper records into API representations (strings into numbers, flat keys into objects)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from pvc_tasks.jobs import Job

__all__ = ["job_view", "node_view", "vm_view"]


def _int(value: str | None) -> int:
    try:
        return int(float(value or 0))
    except ValueError:
        return 0


def _float(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


def _faults(raw: str | None) -> list[str]:
    """``node.faults`` holds a JSON list of strings."""
    try:
        faults = json.loads(raw or "[]")
    except ValueError:
        return [raw] if raw else []
    return [str(f) for f in faults] if isinstance(faults, list) else [str(faults)]


def node_view(record: dict) -> dict:
    keepalive = _float(record.get("keepalive"))
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
        "load": _float(record.get("load")),
        "vms": {k: _int(record.get(f"vms.{k}")) for k in ("total", "running")},
        "ipmi": {"hostname": record.get("ipmi.hostname") or "", "username": record.get("ipmi.username") or ""},
        "faults": _faults(record.get("faults")),
    }


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
        },
    }
    if detail:
        view["xml"] = record.get("xml") or ""
    return view


def job_view(job: Job, revision: int | None = None) -> dict:
    view = asdict(job)
    if revision is not None:
        view["revision"] = revision
    return view
