"""Log lines for people (``log_format = "text"``, the default) or for machines (``"json"``, one object per line).

Every line of a worker names its node; every line written while a task of a job runs also names the job and its VM
(taken from the task's ``job_id``/``vm``/``node`` arguments by Celery's ``task_prerun`` signal, kept in a context
variable for the task's thread, so a line logged deep in a library call carries them too). The API's access log
(``pvc_web.access``) adds its request's fields. JSON keys: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, then ``node``, ``job``, ``vm``, the record's own fields, and ``exception`` with the traceback.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

from celery.signals import task_postrun, task_prerun

__all__ = ["FORMATS", "JsonFormatter", "setup"]

FORMATS = ("text", "json")
#: The job a task of this thread is running: {"job", "vm", "node"} (only those it has). Each pool thread has its own
#: context, and a task runs start to end on one thread: set at its start, cleared at its end (no token to keep: two
#: copies of one message, which share a task id, may run at once on two threads).
_JOB: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("pvc_job", default=None)


@task_prerun.connect
def _enter(kwargs: dict | None = None, **_: object) -> None:
    kwargs = kwargs or {}
    context = {"job": kwargs.get("job_id"), "vm": kwargs.get("vm"), "node": kwargs.get("node")}
    _JOB.set({k: str(v) for k, v in context.items() if v})


@task_postrun.connect
def _leave(**_: object) -> None:
    _JOB.set(None)


class _Context(logging.Filter):
    """Puts the process's fixed fields (the worker's node) and the running job's on each record as ``pvc``."""

    def __init__(self, fixed: dict[str, str]) -> None:
        super().__init__()
        self.fixed = fixed

    def filter(self, record: logging.LogRecord) -> bool:
        record.pvc = {**self.fixed, **(_JOB.get() or {}), **getattr(record, "pvc", {})}
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{record.msecs:03.0f}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                **getattr(record, "pvc", {})}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _TextFormatter(logging.Formatter):
    """The classic line, with ``[job=... vm=...]`` appended while a job's task runs."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = getattr(record, "pvc", {})
        tags = " ".join(f"{k}={context[k]}" for k in ("job", "vm") if context.get(k))
        return f"{text} [{tags}]" if tags else text


def setup(level: str, log_format: str, prefix: str, **fixed: str) -> None:
    """Configure the root logger once per process: ``prefix`` (e.g. ``[hv1]``) in text lines, ``fixed`` fields
    (e.g. ``node``) on every line."""
    handler = logging.StreamHandler()
    handler.addFilter(_Context({k: v for k, v in fixed.items() if v}))
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         _TextFormatter(f"%(asctime)s %(levelname)s {prefix} %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("kazoo").setLevel(logging.WARNING)
