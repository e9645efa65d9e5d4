"""The baseline of the benches: a plain Celery app with one no-op task, nothing of pvc in it.

Run as a worker process by the benches (``celery -A bench.noop_app worker --pool threads``) on the same Redis as
the cluster under test, so the ratio printed compares pvc's job path with Celery's own hop cost on this machine.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bench", broker=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/15"),
             backend=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/15"))
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_prefetch_multiplier=1, task_default_queue="bench", worker_hijack_root_logger=False)


@app.task(name="bench.noop")
def noop(**kwargs) -> dict:
    return kwargs
