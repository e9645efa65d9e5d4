"""Which ended jobs the primary's janitor prunes (``pvc_tasks.jobs.past_history``): pure, no server."""

from pvc_tasks.jobs import Job, JobState, past_history

NOW = 1_000_000.0


def job(name: str, ended_ago: float | None, parent: str = "") -> Job:
    """A job called ``name``, ended ``ended_ago`` s before NOW (None: still running)."""
    j = Job.new("start", name, "hv1", {}, parent, stage="pvc.vm.start")
    j.id, j.created = name, NOW - 10_000
    if ended_ago is not None:
        j.state, j.finished = JobState.SUCCEEDED, NOW - ended_ago
    else:
        j.state = JobState.RUNNING
    return j


def names(jobs: list[Job]) -> set[str]:
    return {j.id for j in jobs}


def test_all_but_the_newest_ended_jobs_go():
    """Of five ended jobs, keeping three prunes the two that ended first; running jobs are never pruned."""
    jobs = [job(f"e{i}", ended_ago=10 * i) for i in range(5)] + [job("run", None)]
    assert names(past_history(jobs, NOW, keep=3, retention=1e9)) == {"e3", "e4"}


def test_ended_jobs_past_the_retention_go_however_few():
    """Retention prunes by age even below the count."""
    jobs = [job("old", ended_ago=100), job("new", ended_ago=5)]
    assert names(past_history(jobs, NOW, keep=10, retention=50)) == {"old"}


def test_children_of_an_unfinished_parent_stay_and_do_not_take_a_place():
    """A running flush's ended migrations are kept whatever their age and count, and the count goes to the others;
    once the flush has ended they are ordinary ended jobs."""
    flush = job("flush", None)
    kids = [job(f"kid{i}", ended_ago=1000 + i, parent="flush") for i in range(4)]
    others = [job(f"o{i}", ended_ago=10 * i) for i in range(3)]
    assert names(past_history([flush, *kids, *others], NOW, keep=2, retention=500)) == {"o2"}
    flush.state, flush.finished = JobState.SUCCEEDED, NOW
    assert names(past_history([flush, *kids, *others], NOW, keep=2, retention=500)) == {
        "o1", "o2", "kid0", "kid1", "kid2", "kid3"}
