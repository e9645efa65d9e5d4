"""The shared harness: real ZooKeeper, Redis, ``pvc-worker`` processes, ``pvc-api`` and Flower on loopback.

* ``zookeeper`` (session): one ZooKeeper server with 500 ms ticks; every cluster gets its own chroot in it.
* ``cluster`` (module): a 3-node cluster (hv1 4 GiB, hv2 8 GiB, hv3 2 GiB) with its own Redis, workers and API;
  tests in a module share it and use VM names of their own.
* ``make_cluster`` (function): a fresh cluster for tests that kill or restart processes.
* ``broker`` (module): ``redis`` (an ACL user with a password), or ``rabbitmq`` in modules marked ``BOTH_BROKERS``,
  whose tests run on each.

Every process is started with a free port and a temp dir and stopped by its PID at teardown. Worker settings are
fast (1 s keepalive and janitor, 2 s ZooKeeper sessions) so that absences are noticed within seconds.

Clusters start in maintenance mode (no fencing) unless a test asks for ``fencing=True``: a test that kills or
pauses a worker on purpose must not pass through a fence it did not mean. After every test that passed, each
cluster it used is checked by ``pvc_dev.invariants.check`` (jobs terminal; no VM on two nodes as their libvirt
says; ZooKeeper agrees with libvirt; no marker, slot, reservation, flush intent or VF use left behind). A test
that leaves a cluster broken on purpose says why with ``@pytest.mark.invariants_broken("reason")``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pvc_dev import invariants
from pvc_dev.cluster import LocalCluster, NodeSpec
from pvc_dev.services import start_rabbitmq, start_zookeeper, stop_epmd

FAST_WORKER_ENV = {"PVC_KEEPALIVE_INTERVAL": "1", "PVC_JANITOR_INTERVAL": "1", "PVC_ZK_SESSION_TIMEOUT": "2",
                   "PVC_SHUTDOWN_TIMEOUT": "5"}
#: For clusters whose tests pause a worker (SIGSTOP) to hold a job queued: a 10 s ZooKeeper session keeps the paused
#: node present, so the janitor does not end the job as "worker not running" (a path the test did not mean).
SLOW_SESSION = {"PVC_ZK_SESSION_TIMEOUT": "10"}
NODES = [NodeSpec("hv1", 4096), NodeSpec("hv2", 8192), NodeSpec("hv3", 2048)]
_names = itertools.count(1)


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory):
    server = start_zookeeper(tmp_path_factory.mktemp("zookeeper"))
    yield server
    server.stop()


#: Clusters of module-scoped fixtures that are running: checked after every test.
_shared: list[LocalCluster] = []


def _cluster(zookeeper, workdir: Path, nodes=None, flower: bool = False, own_zookeeper: bool = False,
             **kwargs) -> LocalCluster:
    """``own_zookeeper``: the cluster starts its own server (a test that restarts ZooKeeper), not the shared one;
    ``zookeeper_servers=3``: its own 3-server ensemble."""
    kwargs.setdefault("fencing", False)
    own_zookeeper = own_zookeeper or kwargs.get("zookeeper_servers", 1) > 1 or kwargs.get("zookeeper_tls", False)
    return LocalCluster(workdir, list(nodes or NODES), zookeeper=None if own_zookeeper else zookeeper, flower=flower,
                        worker_env=dict(FAST_WORKER_ENV, **kwargs.pop("worker_env", {})), **kwargs)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _check_after(request, clusters: list[LocalCluster]) -> None:
    """The invariant check after a test that passed (a failed test's cluster is broken already)."""
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.passed or request.node.get_closest_marker("invariants_broken"):
        return
    for c in clusters:
        if c.api is not None:
            invariants.check(c)


def pytest_terminal_summary(terminalreporter) -> None:
    """Figures a test records with ``record_property("figures", text)`` (the fuzzer's seed and counts, cost
    ratios), printed at the end of the run: pytest (and xdist's workers) would swallow a passing test's prints."""
    lines = [value for report in terminalreporter.stats.get("passed", [])
             for name, value in getattr(report, "user_properties", []) if name == "figures"]
    if lines:
        terminalreporter.write_sep("-", "figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _invariants_of_shared_clusters(request):
    yield
    _check_after(request, list(_shared))


@pytest.fixture(scope="session")
def shared_rabbitmq(tmp_path_factory):
    """One RabbitMQ server for the session's clusters on RabbitMQ, each on a vhost of its own (a server takes ~8 s
    to start); a test that stops or restarts its broker asks for its own with ``own_broker=True``."""
    server = start_rabbitmq(tmp_path_factory.mktemp("rabbitmq"), vhosts=len(_VHOSTS))
    yield server
    server.stop()
    stop_epmd(int(server.info["epmd"]))


_VHOSTS = [f"pvc-{i}" for i in range(1, 65)]


def _broker_kwargs(request, broker: str, kwargs: dict) -> dict:
    """``broker`` for ``_cluster``, and the shared RabbitMQ with a fresh vhost unless the test wants its own."""
    own = kwargs.pop("own_broker", False)
    kwargs.setdefault("broker", broker)
    if kwargs["broker"] == "rabbitmq" and not own and _VHOSTS:
        kwargs.update(shared_rabbitmq=request.getfixturevalue("shared_rabbitmq"), vhost=_VHOSTS.pop(0))
    return kwargs


@pytest.fixture(scope="module")
def broker(request) -> str:
    """The broker of the clusters a test starts: ``redis``, unless the module runs on both with
    ``pytestmark = BOTH_BROKERS`` (then each of its tests runs once on Redis and once on a private RabbitMQ)."""
    return getattr(request, "param", "redis")


#: Run a module's tests on Redis and on RabbitMQ (``pytestmark = BOTH_BROKERS``).
BOTH_BROKERS = pytest.mark.parametrize("broker", ["redis", "rabbitmq"], indirect=True, scope="module")


@pytest.fixture(scope="module")
def shared_cluster(zookeeper, tmp_path_factory, broker, request):
    """Start a module-scoped cluster with ``shared_cluster(name, nodes)``; checked after each test."""
    started: list[LocalCluster] = []

    def make(name: str, nodes=None, **kwargs) -> LocalCluster:
        kwargs = _broker_kwargs(request, broker, kwargs)
        c = _cluster(zookeeper, tmp_path_factory.mktemp(name), nodes, **kwargs).start()
        started.append(c)
        _shared.append(c)
        return c

    yield make
    for c in started:
        _shared.remove(c)
        c.stop()


@pytest.fixture(scope="module")
def cluster(shared_cluster):
    return shared_cluster("cluster")


@pytest.fixture
def make_cluster(zookeeper, tmp_path, request, broker):
    made: list[LocalCluster] = []

    def make(nodes=None, *, start: bool = True, **kwargs) -> LocalCluster:
        kwargs = _broker_kwargs(request, broker, kwargs)
        c = _cluster(zookeeper, tmp_path / f"cluster{len(made)}", nodes, **kwargs)
        made.append(c)
        return c.start() if start else c

    yield make
    try:
        _check_after(request, made)
    finally:
        for c in made:
            c.stop()


@pytest.fixture
def api(cluster):
    """An authenticated requests session on the module's cluster, with ``url(path)``."""
    s = cluster.session()
    s.base = f"{cluster.api_url}/api/v1"  # type: ignore[attr-defined]
    return s


@pytest.fixture
def vm_name(request) -> str:
    """A VM name unique in the session."""
    return f"vm{next(_names)}-{request.node.name[:20].replace('[', '-').replace(']', '')}".replace("_", "-")


def zk_snapshot(zk, path: str = "/") -> dict[str, bytes]:
    """Every znode below ``path`` with its data (for "nothing changed" checks of one subtree)."""
    return invariants.zk_snapshot(zk, path)


@contextlib.contextmanager
def paused(worker, max_seconds: float = 8) -> Iterator[None]:
    """SIGSTOP a worker for the block, SIGCONT after it whatever happens. A pause longer than ``max_seconds``
    (below the session of ``SLOW_SESSION``) fails the test: the node would have looked absent, and the test would
    have passed through the janitor's path instead of the one it meant."""
    os.kill(worker.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        yield
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    held = time.monotonic() - started
    assert held < max_seconds, f"{worker.name} was paused {held:.1f} s, long enough to look absent"


def consumer(c: LocalCluster, node: str, on: bool) -> None:
    """Stop or resume ``node``'s worker consuming its queue (``LocalCluster.consume``)."""
    c.consume(node, on)


def task_returns(worker, task: str, job_id: str) -> list[str]:
    """The worker's log lines of ``task`` messages for the job that returned (Celery logs each with its return
    value: ``Task <task>[<id>] succeeded in <s>: {'job': ..., 'state': ...}``)."""
    return [line for line in worker.log_tail(400).splitlines()
            if f"Task {task}[" in line and " succeeded in " in line and job_id in line]


def step_returned(worker, task: str, job_id: str) -> bool:
    """``task`` returned for the job: a step that hands over has sent the next message."""
    return bool(task_returns(worker, task, job_id))


def race(n: int, request: Callable[[int], object], timeout: float = 30) -> list:
    """Run ``request(i)`` for i in 0..n-1, each in its own thread, released at once by a barrier; every wait is
    bounded. Returns the answers in order of arrival."""
    barrier, answers, errors = threading.Barrier(n), [], []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout)
            answers.append(request(i))
        except Exception as exc:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"a racing request did not finish within {timeout:g} s"
    assert not errors, errors
    return answers
