"""``pvc-flower``: Celery's Flower for pvc, locked down (``celery -A pvc_tasks.app flower`` plus three rules).

1. **Credentials from the environment only.** Flower's basic-auth password comes from ``FLOWER_BASIC_AUTH``
   (``user:password``) and the broker from ``CELERY_BROKER_URL``: a command line is readable by every user of the
   machine (``ps``). ``pvc-flower`` refuses to start without ``FLOWER_BASIC_AUTH`` or with a password on its
   command line.
2. **``/metrics`` needs the credentials too.** Flower serves it to anyone (it names every worker and task).
3. **Read-only API.** Flower's API can shut workers down, resize their pools, add and cancel consumers (a node
   that stops consuming its queue), revoke tasks and *send any task with any arguments*, which would act on VMs
   behind the back of pvc's jobs and their locks. Every non-GET request under ``/api/`` is answered 403 unless
   ``PVC_FLOWER_CONTROL=1``; the pages keep working (the task table's POST is not under ``/api/``). Cancel a job
   with ``pvc job cancel``; restart a worker through its supervisor.

Whoever holds Flower's credentials can read every task's arguments and, with control on, act on every worker:
they are admin-level credentials (docs/security.md).
"""

from __future__ import annotations

import os
import sys

import tornado.web

__all__ = ["main"]

CONTROL_ENV = "PVC_FLOWER_CONTROL"


def _lock_down(allow_control: bool) -> None:
    from flower.api import BaseApiHandler
    from flower.views import monitor

    monitor.Metrics.get = tornado.web.authenticated(monitor.Metrics.get)
    original = BaseApiHandler.prepare

    def prepare(self) -> None:
        if self.request.method not in ("GET", "HEAD") and not allow_control:
            raise tornado.web.HTTPError(403, f"pvc's Flower is read-only ({CONTROL_ENV}=1 enables its control API; "
                                             f"cancel jobs with `pvc job cancel`)")
        original(self)

    BaseApiHandler.prepare = prepare


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith("--basic-auth") or a.startswith("--basic_auth") or a.startswith("--broker") for a in args):
        print("pvc-flower: give credentials and the broker URL in FLOWER_BASIC_AUTH and CELERY_BROKER_URL, not on "
              "the command line (every user of the machine can read it)", file=sys.stderr)
        return 2
    if not os.environ.get("FLOWER_BASIC_AUTH"):
        print("pvc-flower: FLOWER_BASIC_AUTH (user:password) is not set; Flower would be open", file=sys.stderr)
        return 2
    _lock_down(os.environ.get(CONTROL_ENV) == "1")
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "pvc_tasks.app", "flower", *args]
    return celery_main()
