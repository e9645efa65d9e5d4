"""Waiting for a job the way an operator expects: a progress bar on stderr, the job's messages as they come,
a bound on the wait, and an exit status that says how it ended.

Exit statuses of every ``pvc`` command:
    0  success (for a job: it succeeded)
    1  the job failed or was cancelled (its reason is printed)
    2  usage error (bad option or argument)
    3  the API refused the request (e.g. 404, 409); its message is printed
    4  timed out waiting; the job goes on (follow it with ``pvc job watch ID``)
    5  the API is unreachable
  130  interrupted (Ctrl-C); a job being waited for goes on, and the CLI says how to follow it
"""

from __future__ import annotations

import time

import click

from pvc_cli.client import Client
from pvc_cli.output import emit

__all__ = ["EXIT_API", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_TIMEOUT", "EXIT_UNREACHABLE", "Progress", "finish",
           "wait_options", "watch"]

EXIT_FAILED, EXIT_API, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 3, 4, 5, 130
TERMINAL = ("succeeded", "failed", "cancelled")
#: Seconds one long-poll request may wait for a change (below the client's HTTP timeout).
LONG_POLL = 10.0


def wait_options(fn):
    fn = click.option("--timeout", type=click.FloatRange(min=0.1), default=600.0, show_default=True,
                      help="seconds to wait before giving up (the job continues)")(fn)
    return click.option("--wait/--no-wait", default=True, show_default=True,
                        help="wait for the job to end, or print its id and return")(fn)


class Progress:
    """A one-line bar on a terminal (redrawn in place); on a pipe or file, one line per change of phase or
    percent, so logs of scripted runs still show how the job went."""

    WIDTH = 30

    def __init__(self, label: str, quiet: bool) -> None:
        self.label, self.quiet = label, quiet
        self.tty = click.get_text_stream("stderr").isatty()
        self.last: tuple[str, int] | None = None

    def message(self, text: str) -> None:
        if not self.quiet:
            click.echo(("\r\033[K" if self.tty else "") + f"  {text}", err=True)
            self.last = None if self.tty else self.last

    def update(self, phase: str, percent: int) -> None:
        if self.quiet or (phase, percent) == self.last:
            return
        self.last = (phase, percent)
        filled = self.WIDTH * percent // 100
        line = f"{self.label} [{'#' * filled}{'-' * (self.WIDTH - filled)}] {percent:3d}% {phase}"
        click.echo(f"\r\033[K{line}" if self.tty else line, err=True, nl=not self.tty)

    def close(self) -> None:
        """End the bar's line (once)."""
        if not self.quiet and self.tty:
            click.echo("", err=True)
        self.quiet = True


def watch(client: Client, job: dict, timeout: float, quiet: bool) -> tuple[dict, bool]:
    """Poll until the job ends or ``timeout`` s pass; returns (job, ended)."""
    deadline = time.monotonic() + timeout
    seen = 0
    progress = Progress(f"{job['kind']} {job['vm'] or job['node']}".strip(), quiet)
    try:
        while True:
            messages = job.get("messages") or []
            for message in messages[seen:]:
                progress.message(message["text"])
            seen = len(messages)
            progress.update(job.get("phase") or "", int(job.get("percent") or 0))
            if job["state"] in TERMINAL:
                return job, True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return job, False
            # Long-poll: the API answers as soon as the job changes (or after `wait` s with no change).
            job = client.get(f"/jobs/{job['id']}", wait=round(min(LONG_POLL, remaining), 3),
                             after=job.get("revision", -1))
    except KeyboardInterrupt:
        progress.close()
        click.echo(f"stopped waiting; job {job['id']} goes on: `pvc job watch {job['id']}` follows it, "
                   f"`pvc job cancel {job['id']}` stops it", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    finally:
        progress.close()


def _outcome(job: dict) -> str:
    result = job.get("result") or {}
    if job["kind"] in ("flush", "unflush", "fence", "evacuate"):
        head = f"job {job['id']} {job['kind']} {job['node'] or job['params'].get('target', '')}: {job['state']}"
        if result.get("noop"):
            return f"{head} (nothing to do: {result['noop']})"
        done, stayed = len(result.get("done", [])), result.get("stayed", {})
        lines = [f"{head}: {done} VM(s) done" + (f", {len(stayed)} stayed" if stayed else "")]
        lines += [f"  {vm} stayed: {why}" for vm, why in sorted(stayed.items())]
        if job["state"] != "succeeded" and job["reason"] and not stayed:
            lines.append(f"  {job['reason']}")
        return "\n".join(lines)
    where = f" on {result['node']}" if result.get("node") else ""
    if result.get("from"):
        where = f": now on {result['node']} (from {result['from']}, {result.get('how') or 'moved'})"
    state = f" (VM {result['state']})" if result.get("state") else ""
    subject = job["vm"] or f"{job['node']}/{job['params'].get('vf', '')}".rstrip("/")
    head = f"job {job['id']} {job['kind']} {subject}: {job['state']}"
    if job["kind"] == "vf_config" and job["state"] == "succeeded":
        return f"{head}: applied " + ", ".join(f"{k}={v}" for k, v in sorted(job["params"]["changes"].items()))
    if job["state"] == "succeeded":
        return head + where + state
    return f"{head}: {job['reason'] or 'no reason recorded'}"


def finish(client: Client, job: dict, wait: bool, timeout: float, output: str) -> None:
    """After a mutation: print the job id (``--no-wait``) or wait and print the outcome; exit accordingly."""
    if not wait:
        emit(output, job, lambda j: f"job {j['id']} {j['kind']} {j['vm']}: {j['state']} "
                                    f"(follow with `pvc job watch {j['id']}`)")
        return
    job, ended = watch(client, job, timeout, quiet=output == "json")
    if not ended:
        emit(output, job, lambda j: f"job {j['id']} still {j['state']} after {timeout:g} s "
                                    f"(phase {j['phase']}, {j['percent']}%); follow with `pvc job watch {j['id']}`")
        raise SystemExit(EXIT_TIMEOUT)
    emit(output, job, _outcome)
    if job["state"] != "succeeded":
        raise SystemExit(EXIT_FAILED)
