"""Printing: aligned tables and key/value blocks for people, JSON for scripts (``-o json``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import click

__all__ = ["age", "confirmed", "duration", "emit", "output_option", "table"]


def output_option(fn: Callable) -> Callable:
    return click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
                        help="table for people, json for scripts")(fn)


def table(rows: Iterable[dict], columns: list[tuple[str, Callable[[dict], Any]]]) -> str:
    cells = [[h for h, _ in columns]] + [[str(get(r)) for _, get in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def emit(output: str, data: Any, render: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True) if output == "json" else render(data))


def duration(seconds: float) -> str:
    """``0.42 s``, ``12.3 s``, ``4m05s``, ``2h03m``."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def age(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    seconds = max(time.time() - timestamp, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def confirmed(question: str, yes: bool) -> bool:
    """Ask before a destructive command (unless ``--yes``). Declining is not a failure: it prints that nothing was
    done and the command exits 0. No answer at all (stdin closed or not a terminal) is a usage error (exit 2): a
    script must say ``--yes``."""
    if yes:
        return True
    try:
        if click.confirm(question, err=True):
            return True
    except click.Abort:
        raise click.UsageError("no answer to the confirmation (stdin closed); pass --yes to go ahead") from None
    click.echo("nothing done", err=True)
    return False
