"""The lease registry of running steps (pvc_tasks.leases), on a clock the test moves."""

import threading

from pvc_tasks.leases import Leases


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_step_that_renews_is_never_overdue_and_one_that_stops_is_judged_once():
    """Renewals keep a lease alive however long the step runs; without them it is overdue once, then hung until its
    thread leaves the block."""
    clock = Clock()
    leases = Leases(clock)
    with leases.hold("j1", "pvc.vm.stop") as lease:
        for _ in range(10):
            clock.now += 4
            leases.renew()
            assert leases.overdue(5) == []
        clock.now += 6
        assert leases.overdue(5) == [lease] and lease.lapsed
        assert leases.overdue(5) == []  # judged once
        assert leases.hung() == [lease]
    assert leases.hung() == []


def test_renewals_belong_to_the_calling_thread():
    """A thread renews its own step only; a thread holding no lease renews nothing."""
    clock = Clock()
    leases = Leases(clock)
    leases.renew()  # no lease: nothing happens
    started, done = threading.Event(), threading.Event()

    def other() -> None:
        with leases.hold("j2", "pvc.vm.start"):
            started.set()
            done.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    assert started.wait(5)
    with leases.hold("j1", "pvc.vm.stop"):
        clock.now += 10
        leases.renew()
        assert [lease.job_id for lease in leases.overdue(5)] == ["j2"]
    done.set()
    thread.join(5)
    assert leases.hung() == []
