"""The janitor: every worker ends the jobs nobody else can end, so no job waits forever.

Each pass (every ``janitor_interval`` s) over all job records:

* a non-terminal job of ANOTHER node whose worker is absent (no presence znode and a keepalive older than
  ``absent_after`` s) ends ``failed``: "node X's worker is not running";
* a job still ``queued`` after ``queue_timeout`` s ends ``failed``: its message was lost or its node is stuck;
* a terminal job older than ``job_retention`` s is deleted.

Every worker runs a janitor; they race harmlessly, because ending a job is a compare-and-set that does nothing
to a job already ended.
"""

from __future__ import annotations

import logging
import threading
import time

from kazoo.exceptions import KazooException, NoNodeError

from pvc_tasks.context import NodeContext
from pvc_tasks.jobs import JobState
from pvc_tasks.runner import handle_orphan
from pvc_tasks.state import keepalive_age, node_alive

__all__ = ["Janitor"]

log = logging.getLogger(__name__)


class Janitor(threading.Thread):
    def __init__(self, ctx: NodeContext, stop: threading.Event) -> None:
        super().__init__(name="janitor", daemon=True)
        self.ctx, self.stop = ctx, stop

    def _absent(self, node: str) -> float | None:
        """Seconds since the node's last keepalive when its worker counts as absent, else None."""
        if node_alive(self.ctx.zk, self.ctx.schema, node):
            return None
        age = keepalive_age(self.ctx.zk, self.ctx.schema, node)
        if age is None or age > self.ctx.settings.absent_after:
            return age if age is not None else float("inf")
        return None

    def sweep(self) -> None:
        settings, now = self.ctx.settings, time.time()
        absent: dict[str, float | None] = {}
        for job in self.ctx.jobs.all():
            if job.terminal:
                if job.finished and now - job.finished > settings.job_retention:
                    try:
                        self.ctx.zk.delete(self.ctx.jobs.path(job.id))
                    except NoNodeError:
                        pass
                continue
            if job.node and job.node != self.ctx.node:  # node "": a cluster job, resumed by each new primary
                if job.node not in absent:
                    absent[job.node] = self._absent(job.node)
                age = absent[job.node]
                if age is not None:
                    seen = "never" if age == float("inf") else f"{age:.0f} s ago"
                    handle_orphan(self.ctx.jobs, job, f"node {job.node}'s worker is not running (last keepalive "
                                                      f"{seen}); the job cannot proceed")
                    continue
            if job.state == JobState.QUEUED and now - job.created > settings.queue_timeout:
                handle_orphan(self.ctx.jobs, job, f"not started within {settings.queue_timeout:g} s: the task "
                                                  f"message was lost or node {job.node} is stuck")

    def run(self) -> None:
        while not self.stop.wait(self.ctx.settings.janitor_interval):
            try:
                self.sweep()
            except KazooException as exc:
                log.warning("janitor pass skipped: %s", exc)
            except Exception:
                log.exception("janitor pass failed")
