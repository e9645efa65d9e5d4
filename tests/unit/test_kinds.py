"""The one table of job kinds, the one publisher, and the outbox's pure rule."""

import ast
from pathlib import Path

import pytest

from pvc_tasks import kinds, migration
from pvc_tasks.app import app
from pvc_tasks.jobs import Job, JobState
from pvc_tasks.redrive import overdue
from pvc_tasks.routing import route_task

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ("end_ops", "orphaned", "cancel_ops")


@pytest.mark.parametrize("name", sorted(kinds.KINDS))
def test_every_kind_has_every_hook_and_its_tasks_are_registered_and_routed(name):
    """Each kind names registered tasks that route to a queue, says where they run, and has every hook."""
    kind = kinds.get(name)
    assert kind.name == name and kind.tasks and kind.runs_on
    assert all(callable(getattr(kind, hook)) for hook in HOOKS)
    # A stuck step of a kind with a rollback restarts its worker: a rollback beside its live operation is unsafe.
    assert kind.stuck == ("restart" if kind.orphaned is migration.orphaned else "fail"), kind.stuck
    for task in kind.tasks:
        assert task in app.tasks, task
        cluster = name in ("fence", "evacuate")  # the primary's work
        queue = route_task(task, (), {"node": "" if cluster else "hv1"}, {})["queue"].name
        assert queue == ("cluster" if cluster else "node.hv1")


def test_an_unknown_kind_fails_loudly():
    """A job of a kind the table does not hold is an error, never a silent default."""
    with pytest.raises(kinds.UnknownKind, match="'frobnicate'"):
        kinds.get("frobnicate")


def test_every_job_task_belongs_to_a_kind():
    """No Celery task of ours is outside the table (a step nobody could re-drive)."""
    from pvc_tasks.dispatch import PING
    from pvc_workers import watchdog  # noqa: F401 - registers the ping, the one task that is not a job's

    ours = {name for name in app.tasks if name.startswith("pvc.")}
    assert ours == {task for kind in kinds.KINDS.values() for task in kind.tasks} | {PING}


def _calls(package: str, names: set[str]) -> list[str]:
    found = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.attr}")
    return found


def test_only_the_dispatcher_publishes():
    """No module but pvc_tasks/dispatch.py calls send_task, apply_async or delay (bench scripts measure raw Celery
    on purpose and are not part of the product)."""
    calls = [c for package in ("pvc_tasks", "pvc_workers", "pvc_web", "pvc_cli")
             for c in _calls(package, {"send_task", "apply_async", "delay"})]
    assert [c for c in calls if not c.startswith("pvc_tasks/dispatch.py")] == []


def _job(**fields) -> Job:
    job = Job.new("start", "vm", "hv1", stage="pvc.vm.start")
    job.created = job.sent = 100.0
    for key, value in fields.items():
        setattr(job, key, value)
    return job


@pytest.mark.parametrize(("fields", "now", "expected"), [
    ({}, 105.0, False),                                    # published 5 s ago: not yet
    ({}, 111.0, True),                                     # nobody took it within 10 s
    ({"stage_taken": "pvc.vm.start"}, 500.0, False),       # taken: the step runs
    ({"state": JobState.SUCCEEDED}, 500.0, False),         # ended
    ({"stage": ""}, 500.0, False),                         # nothing to publish
    ({"sent": 0.0}, 111.0, True),                          # never published (the API died): counted from creation
    ({"sent": 108.0, "resends": 2}, 111.0, False),         # re-sent 3 s ago
])
def test_overdue_means_untaken_long_after_the_last_publish(fields, now, expected):
    """A step is overdue when it is untaken ``after`` s past its last publish (or its creation)."""
    assert overdue(_job(**fields), now, 10.0) is expected


def test_backlog_counts_ages_resends_and_jobs_past_their_bound():
    """The oldest unfinished job per state, the re-sends, and the jobs past their kind's bound, oldest first."""
    from pvc_tasks.backlog import backlog, fault_message
    from pvc_tasks.config import Settings

    settings = Settings(job_bound=10, shutdown_timeout=100, migration_timeout=200)
    jobs = [_job(created=95.0), _job(created=50.0, state=JobState.RUNNING, resends=2),
            _job(created=0.0, state=JobState.SUCCEEDED)]
    migration = Job.new("migrate", "m", "hv2", stage="pvc.migrate.prepare")
    migration.created = 0.0  # 100 s old, but a migration's bound is 100 + 200 + 10 s
    figures = backlog([*jobs, migration], 100.0, settings)
    assert figures["queued"] == {"count": 2, "oldest_s": 100.0}
    assert figures["running"] == {"count": 1, "oldest_s": 50.0}
    assert figures["resends"] == 2
    assert [(j["age_s"], j["bound_s"]) for j in figures["over_bound"]] == [(50.0, 10)]
    assert fault_message(figures).startswith("1 job(s) unfinished past their bound; oldest: start job ")
    assert fault_message(backlog(jobs[:1], 100.0, settings)) is None


def test_an_engine_pass_whose_lease_lapsed_is_overdue():
    """A flush whose pass took its stage and died: overdue once its lease lapsed ``after`` s ago, not before."""
    job = Job.new("flush", "", "hv1", stage="pvc.flush.tick")
    job.stage_taken, job.params["lease"] = job.stage, {"token": "t", "until": 100.0}
    assert not overdue(job, 105.0, 10.0)
    assert overdue(job, 111.0, 10.0)
    job.kind = "start"  # a one-step job's taken step is never re-sent by the re-driver
    assert not overdue(job, 500.0, 10.0)
