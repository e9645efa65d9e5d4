"""``pvc job list|show|watch|cancel``."""

from __future__ import annotations

import json
import time

import click

from pvc_cli.complete import job_ids, node_names, vm_names
from pvc_cli.output import age, duration, emit, output_option, table
from pvc_cli.wait import EXIT_FAILED, EXIT_TIMEOUT, watch

STATES = ["queued", "running", "succeeded", "failed", "cancelled"]


@click.group("job")
def group() -> None:
    """Jobs: what they do, where, how far they got, and why they ended."""


def _by(j: dict) -> str:
    """Who asked: the API token's name, or pvc itself (a flush's or a fence's child job)."""
    if j.get("requested_by"):
        return j["requested_by"]
    return f"pvc (job {j['parent']})" if j.get("parent") else "pvc"


def _when(timestamp: float | None) -> str:
    """An absolute local time with the age beside it, or "-"."""
    if not timestamp:
        return "-"
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(timestamp))} ({age(timestamp)})"


def _took(j: dict) -> str:
    """Queued for how long, then ran for how long (so far, for a job that has not ended)."""
    if not j.get("started"):
        return f"queued {duration(time.time() - j['created'])} so far" if j["state"] == "queued" else "-"
    end = j.get("finished") or time.time()
    ran = duration(end - j["started"]) + ("" if j.get("finished") else " so far")
    return f"queued {duration(j['started'] - j['created'])}, ran {ran}"


def _result(result: dict) -> list[str]:
    """The result as one "key: value" line per entry (lists and maps as compact JSON), not a Python repr."""
    return [f"{k}: {v if isinstance(v, str | int | float | bool) else json.dumps(v, sort_keys=True)}"
            for k, v in sorted(result.items())]


def render_job(j: dict) -> str:
    rows = [("id", j["id"]), ("kind", j["kind"]), ("vm", j["vm"] or "-"), ("node", j["node"] or "-"),
            ("state", j["state"]), ("phase", f"{j['phase']} ({j['step']}/{j['steps']})"),
            ("percent", f"{j['percent']}%"), ("by", _by(j)), ("created", _when(j["created"])),
            ("started", _when(j.get("started"))), ("finished", _when(j["finished"])), ("took", _took(j)),
            ("reason", j["reason"] or "-")]
    lines = [f"{k:>10}: {v}" for k, v in rows]
    result = _result(j["result"] or {})
    lines += [f"{'result' if i == 0 else '':>10}: {line}" for i, line in enumerate(result)] or [f"{'result':>10}: -"]
    messages = j.get("messages") or []
    lines += [f"{'messages' if i == 0 else '':>10}: {time.strftime('%H:%M:%S', time.localtime(m['time']))} "
              f"{m['text']}" for i, m in enumerate(messages)]
    return "\n".join(lines)


@group.command("list")
@click.option("--state", type=click.Choice(STATES))
@click.option("--kind", help="e.g. start, define")
@click.option("--node", shell_complete=node_names)
@click.option("--vm", shell_complete=vm_names)
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@output_option
@click.pass_obj
def list_jobs(client, state, kind, node, vm, limit, output) -> None:
    """Jobs, newest first."""
    jobs = client().get("/jobs", state=state, kind=kind, node=node, vm=vm, limit=limit)
    emit(output, jobs, lambda rows: table(rows, [
        ("ID", lambda j: j["id"]), ("KIND", lambda j: j["kind"]), ("VM", lambda j: j["vm"]),
        ("NODE", lambda j: j["node"]), ("STATE", lambda j: j["state"]), ("%", lambda j: j["percent"]),
        ("CREATED", lambda j: age(j["created"])), ("BY", lambda j: j.get("requested_by") or "pvc"),
        ("REASON", lambda j: j["reason"][:60])]))


@group.command("show")
@click.argument("job_id", shell_complete=job_ids)
@output_option
@click.pass_obj
def show(client, job_id, output) -> None:
    """One job with its messages."""
    emit(output, client().get(f"/jobs/{job_id}"), render_job)


@group.command("watch")
@click.argument("job_id", shell_complete=job_ids)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=600.0, show_default=True)
@output_option
@click.pass_obj
def watch_job(client, job_id, timeout, output) -> None:
    """Follow a job to its end with a progress bar; exit 0 if it succeeded."""
    c = client()
    job, ended = watch(c, c.get(f"/jobs/{job_id}"), timeout, quiet=output == "json")
    emit(output, job, render_job)
    if not ended:
        raise SystemExit(EXIT_TIMEOUT)
    if job["state"] != "succeeded":
        raise SystemExit(EXIT_FAILED)


@group.command("cancel")
@click.argument("job_id", shell_complete=job_ids)
@output_option
@click.pass_obj
def cancel(client, job_id, output) -> None:
    """Cancel a job (a queued job ends at once; a running one stops at its next safe point)."""
    job = client().post(f"/jobs/{job_id}/cancel")
    emit(output, job, lambda j: f"job {j['id']}: {j['state']}"
         + (" (cancel requested; it stops at its next safe point)" if j["cancel_requested"] and
            j["state"] == "running" else ""))
