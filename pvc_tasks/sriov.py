"""SR-IOV VF settings: desired in ZooKeeper, applied by the worker of the node that owns the NIC.

Settings (``SETTINGS``; each a ``sriov_vf.config.*`` key, named after ``ip link set dev <pf> vf <n>``): vlan_id
(0-4095) with vlan_qos (0-7, needs a VLAN), tx_rate_min / tx_rate_max (Mb/s, 0 = no limit, min <= max), spoof_check,
link_state (auto | enable | disable), trust, query_rss, mtu (68 - the PF's MTU) and mac (a unicast MAC); an empty
mtu or mac means "leave it as the NIC has it".

Protocol of a change (``PUT /sriov/vfs/<node>/<vf>``, job kind ``vf_config``)
    API        validate every value against the VF's current settings (nothing is written on a bad one); ONE
               transaction: the job + the changed ``config.*`` keys (version-checked, unchanged ones checked too,
               so two racing changes never combine into a pair that was never validated)
                                                                        -> pvc.sriov.configure @ node.<node>
    configure  on the node: under a per-VF lock, read the VF's WHOLE desired config from ZooKeeper, apply it
               through the node's NIC adapter (``pvc_workers.sriov``), write ``applied`` (config, errors by
               setting, time, by whom) and the observed mac/mtu; the job fails naming any refused setting.

The task applies what ZooKeeper holds when it runs, not what its request asked for: of two quick changes the NIC
always ends with the later one, and a duplicated or re-sent message is harmless. The worker applies every VF's
desired config the same way when it starts (``apply_all``), so a cold boot or a daemon restart puts ZooKeeper's
config on the NIC, never the NIC's on ZooKeeper. The inventory (``pvc_workers.vf_inventory``) writes only what it
observes (PCI address, index, current mac/mtu), never ``config.*`` of a VF it already knows.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError

from pvc_tasks import dispatch
from pvc_tasks.context import NicError, NodeContext
from pvc_tasks.errors import Conflict, Invalid, NotFound
from pvc_tasks.jobs import Job, JobStore, Origin, commit
from pvc_tasks.runner import JobFailed, JobRun, job_task
from pvc_tasks.state import desired_vf_config, node_alive, supported, vf_record, vf_records
from zk_schema import Schema

__all__ = ["CONFIGURE", "DEFAULT_LIVE", "SETTINGS", "apply_all", "apply_vf", "submit_vf_config", "validate_config"]

CONFIGURE = "pvc.sriov.configure"
SETTINGS = ("vlan_id", "vlan_qos", "tx_rate_min", "tx_rate_max", "spoof_check", "link_state", "trust", "query_rss",
            "mtu", "mac")
LINK_STATES = ("auto", "enable", "disable")
#: A VF's settings as a NIC creates it (what ``ip link`` shows for a fresh VF).
DEFAULT_LIVE = {"vlan_id": "0", "vlan_qos": "0", "tx_rate_min": "0", "tx_rate_max": "0", "spoof_check": "true",
                "link_state": "auto", "trust": "false", "query_rss": "false", "mac": ""}
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_TRUE, _FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


# ---- validation (pure) ------------------------------------------------------------------------------------------
def _integer(low: int, high: int):
    def parse(value) -> str:
        if isinstance(value, bool) or not re.fullmatch(r"\d+", str(value).strip()):
            raise ValueError(f"{value!r} is not a whole number")
        number = int(str(value).strip())
        if not low <= number <= high:
            raise ValueError(f"{number} is outside {low}-{high}")
        return str(number)

    return parse


def _boolean(value) -> str:
    text = str(value).strip().lower()
    if text in _TRUE:
        return "true"
    if text in _FALSE:
        return "false"
    raise ValueError(f"{value!r} is not true or false")


def _link_state(value) -> str:
    if str(value) not in LINK_STATES:
        raise ValueError(f"{value!r} is not one of {', '.join(LINK_STATES)}")
    return str(value)


def _mac(value) -> str:
    text = str(value).strip().lower().replace("-", ":")
    if not text:
        return ""
    if not _MAC.match(text):
        raise ValueError(f"{value!r} is not a MAC address (six hex pairs)")
    if int(text[:2], 16) & 1:
        raise ValueError(f"{text} is a multicast address; a VF needs a unicast MAC")
    if text == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 is not a usable MAC")
    return text


def _mtu(value) -> str:
    return "" if str(value).strip() == "" else _integer(68, 65535)(value)


_PARSERS = {"vlan_id": _integer(0, 4095), "vlan_qos": _integer(0, 7), "tx_rate_min": _integer(0, 10**7),
            "tx_rate_max": _integer(0, 10**7), "spoof_check": _boolean, "link_state": _link_state,
            "trust": _boolean, "query_rss": _boolean, "mtu": _mtu, "mac": _mac}


def validate_config(changes: dict, current: dict[str, str], pf_mtu: int) -> dict[str, str]:
    """The changed settings, normalised; ``Invalid`` naming every bad field (checked against ``current``)."""
    problems: dict[str, list[str]] = {}
    values: dict[str, str] = {}
    for key, value in changes.items():
        if key not in _PARSERS:
            problems[key] = [f"unknown setting; known: {', '.join(SETTINGS)}"]
            continue
        try:
            values[key] = _PARSERS[key](value)
        except ValueError as exc:
            problems[key] = [str(exc)]
    if not problems:
        merged = {**DEFAULT_LIVE, **current, **values}
        if int(merged["vlan_qos"] or 0) and not int(merged["vlan_id"] or 0):
            problems["vlan_qos"] = ["a QoS priority needs a vlan_id of 1-4095"]
        low, high = int(merged["tx_rate_min"] or 0), int(merged["tx_rate_max"] or 0)
        if high and low > high:
            problems["tx_rate_min"] = [f"{low} Mb/s is above tx_rate_max {high} Mb/s"]
        if merged.get("mtu") and int(merged["mtu"]) > pf_mtu:
            problems["mtu"] = [f"{merged['mtu']} is above the PF's MTU {pf_mtu}"]
    if problems:
        summary = "; ".join(f"{key}: {msgs[0]}" for key, msgs in sorted(problems.items()))
        raise Invalid(f"invalid VF settings: {summary}", details=problems)
    if not values:
        raise Invalid("nothing to change: give at least one setting", details={"settings": list(SETTINGS)})
    return values


# ---- API side ---------------------------------------------------------------------------------------------------
def submit_vf_config(zk: KazooClient, schema: Schema, node: str, vf: str, changes: dict,
                     origin: Origin | None = None) -> Job:
    """Validate, then ONE transaction: job + changed config keys (all config keys version-checked); enqueue."""
    store = JobStore(zk, schema)
    for _attempt in range(5):
        pf = vf_record(zk, schema, node, vf)["pf"]
        paths = {key: schema.path(f"sriov_vf.config.{key}", node, vf) for key in SETTINGS}
        # Values WITH their versions (the transaction checks them), read in parallel.
        pending = {key: zk.get_async(path) for key, path in paths.items()}
        read = {key: result.get() for key, result in pending.items()}
        current = {key: data.decode() for key, (data, _stat) in read.items()}
        try:
            pf_mtu = int(zk.get(schema.path("sriov_pf.mtu", node, pf))[0] or 0)
        except NoNodeError:
            pf_mtu = 65535
        values = validate_config(changes, current, pf_mtu)
        if not node_alive(zk, schema, node):
            raise Conflict(f"node {node}'s worker is not running, so it cannot apply VF settings; nothing was "
                           f"changed", code="node_unavailable", details={"node": node})
        job = Job.new("vf_config", "", node, {"vf": vf, "changes": values}, stage=CONFIGURE, origin=origin)
        ops = store.create_ops(job)
        for key, (_data, stat) in read.items():
            ops.append(("set", paths[key], values[key].encode(), stat.version) if key in values
                       else ("check", paths[key], stat.version))
        try:
            commit(zk, ops)
        except BadVersionError:
            continue  # another change landed between our read and write: validate against it
        break
    else:
        raise Conflict(f"VF {vf} on {node} kept changing under this request; retry", code="busy")
    dispatch.publish(job)
    return job


# ---- on the node ------------------------------------------------------------------------------------------------
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _lock(vf: str) -> threading.Lock:
    with _locks_guard:
        return _locks[vf]


def apply_vf(ctx: NodeContext, vf: str, by: str) -> dict:
    """Apply the VF's desired config from ZooKeeper to this node's NIC and record what was applied; returns that
    record ({"config", "errors", "at", "by"}). Serialised per VF, so the NIC always ends with the latest config."""
    if ctx.nic is None or not supported(ctx.schema):
        raise NicError(f"node {ctx.node} has no SR-IOV configuration, or the cluster's layout predates it")
    with _lock(vf):
        record = vf_record(ctx.zk, ctx.schema, ctx.node, vf)
        config = desired_vf_config(record)
        try:
            errors = ctx.nic.apply(record["pf"], int(record["index"] or 0), vf, config)
        except NicError as exc:
            errors = {key: str(exc) for key in SETTINGS}
        applied = {"config": {k: v for k, v in config.items() if k not in errors}, "errors": errors,
                   "at": round(time.time(), 3), "by": by}
        schema, node = ctx.schema, ctx.node
        ops = [("set", schema.path("sriov_vf.applied", node, vf), json.dumps(applied, sort_keys=True).encode(), -1)]
        ops += [("set", schema.path(f"sriov_vf.{key}", node, vf), config[key].encode(), -1)
                for key in ("mac", "mtu") if config[key] and key not in errors]
        commit(ctx.zk, ops)
    return applied


def apply_all(ctx: NodeContext) -> dict[str, int]:
    """Worker start: every VF of this node gets ZooKeeper's desired config (counts of applied / with errors)."""
    counts = {"applied": 0, "errors": 0}
    for record in vf_records(ctx.zk, ctx.schema, ctx.node):
        applied = apply_vf(ctx, record["name"], "worker start")
        counts["errors" if applied["errors"] else "applied"] += 1
    return counts


@job_task(CONFIGURE)
def configure(run: JobRun, vm: str, node: str, vf: str, **_params) -> dict:
    """Runs on the VF's node: apply the VF's desired config (all of it, as ZooKeeper holds it now)."""
    run.phase("apply", 1, 1, f"applying the settings of VF {vf} on {node} ({run.ctx.nic.kind if run.ctx.nic else '-'})")
    try:
        applied = apply_vf(run.ctx, vf, run.job.id)
    except (NicError, NotFound) as exc:
        raise JobFailed(str(exc)) from exc
    if applied["errors"]:
        refused = "; ".join(f"{key}: {msg}" for key, msg in sorted(applied["errors"].items()))
        raise JobFailed(f"VF {vf} on {node} refused: {refused}")
    return {"node": node, "vf": vf, "applied": applied["config"]}
