"""The shared harness: real ZooKeeper, Redis, ``pvc-worker`` processes, ``pvc-api`` and Flower on loopback.

* ``zookeeper`` (session): one ZooKeeper server with 500 ms ticks; every cluster gets its own chroot in it.
* ``cluster`` (module): a 3-node cluster (hv1 4 GiB, hv2 8 GiB, hv3 2 GiB) with its own Redis, workers and API;
  tests in a module share it and use VM names of their own.
* ``make_cluster`` (function): a fresh cluster for tests that kill or restart processes.

Every process is started with a free port and a temp dir and stopped by its PID at teardown. Worker settings are
fast (1 s keepalive and janitor, 2 s ZooKeeper sessions) so that absences are noticed within seconds.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from pvc_dev.cluster import LocalCluster, NodeSpec
from pvc_dev.services import start_zookeeper

FAST_WORKER_ENV = {"PVC_KEEPALIVE_INTERVAL": "1", "PVC_JANITOR_INTERVAL": "1", "PVC_ZK_SESSION_TIMEOUT": "2",
                   "PVC_SHUTDOWN_TIMEOUT": "5"}
NODES = [NodeSpec("hv1", 4096), NodeSpec("hv2", 8192), NodeSpec("hv3", 2048)]
_names = itertools.count(1)


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory):
    server = start_zookeeper(tmp_path_factory.mktemp("zookeeper"))
    yield server
    server.stop()


def _cluster(zookeeper, workdir: Path, nodes=None, flower: bool = False, **kwargs) -> LocalCluster:
    return LocalCluster(workdir, list(nodes or NODES), zookeeper=zookeeper, flower=flower,
                        worker_env=dict(FAST_WORKER_ENV, **kwargs.pop("worker_env", {})), **kwargs)


@pytest.fixture(scope="module")
def cluster(zookeeper, tmp_path_factory):
    c = _cluster(zookeeper, tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


@pytest.fixture
def make_cluster(zookeeper, tmp_path):
    made: list[LocalCluster] = []

    def make(nodes=None, *, start: bool = True, **kwargs) -> LocalCluster:
        c = _cluster(zookeeper, tmp_path / f"cluster{len(made)}", nodes, **kwargs)
        made.append(c)
        return c.start() if start else c

    yield make
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


def zk_snapshot(zk: KazooClient, path: str = "/") -> dict[str, bytes]:
    """Every znode below ``path`` with its data (for "nothing changed" checks)."""
    out: dict[str, bytes] = {}

    def walk(p: str) -> None:
        data, _ = zk.get(p)
        out[p] = data
        for child in zk.get_children(p):
            walk(f"{p.rstrip('/')}/{child}")

    walk(path)
    return out
