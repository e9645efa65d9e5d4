"""What the chaos tests share: the cluster they fault, the bound every job must end within, and a flush with a
fault injected part-way through it."""

from __future__ import annotations

import time
from collections.abc import Callable

from pvc_dev.cluster import NodeSpec
from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from tests.conftest import SLOW_SESSION

#: Seconds within which every job ends after the fault (re-drive after 2 s, a few janitor passes, the work itself):
#: far below ``queue_timeout`` (an hour), so no job waited for it.
BOUND = 120
NODES = [NodeSpec("hv1", 16384), NodeSpec("hv2", 16384), NodeSpec("hv3", 16384)]
#: A 10 s ZooKeeper session (a worker killed and restarted, or paused, keeps its presence) and a quick re-driver.
FAULTY = {**SLOW_SESSION, "PVC_REDRIVE_AFTER": "2"}


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=30, **kw)


def progress(c, job_id: str) -> int:
    return len(api(c, "get", f"/jobs/{job_id}").json()["result"].get("done", []))


def running_on(c, nodes: set[str]) -> dict[str, str]:
    """VM -> node for every running VM, as the nodes' libvirt says."""
    found = {}
    for node, domains in libvirt_domains(c).items():
        for name, facts in (domains or {}).items():
            if node in nodes and facts["state"] == "running":
                found[name] = node
    return found


def assert_no_crash(c) -> None:
    """No process exited by itself (the supervisor restarted none): a fault survived by crashing is a defect."""
    assert c.restarts == {}, f"crashed and restarted by the supervisor: {c.restarts} (see supervisor.log)"


def assert_flush_survives(c, vms: int, after: int, fault: Callable[[], object], what: str) -> dict:
    """Flush hv1 with ``vms`` running VMs, call ``fault()`` once ``after`` of them left, and require that the flush
    succeeds within ``BOUND`` s and every VM then runs once, on hv2 or hv3. Returns the flush job."""
    names = [f"f{i:03d}" for i in range(vms)]
    for name in names:
        assert c.define_vm(name, 64, node="hv1", start=True)["state"] == "succeeded"
    flush = api(c, "post", "/nodes/hv1/flush").json()
    wait_until(lambda: progress(c, flush["id"]) >= after, 120, f"{after} VMs to leave hv1")
    started = time.monotonic()
    fault()
    ended = c.wait_job(flush["id"], timeout=BOUND)
    print(f"\nflush of {vms} VMs ended {time.monotonic() - started:.1f} s after {what}")
    assert ended["state"] == "succeeded", (ended["reason"], ended["messages"][-5:])
    placed = running_on(c, {"hv1", "hv2", "hv3"})
    missing = {n: (c.zk.get(c.schema.path("domain.node", n))[0].decode(),
                   c.zk.get(c.schema.path("domain.state", n))[0].decode()) for n in names if n not in placed}
    # Said in full when it fails (twice seen under two test processes, never alone): which VMs no libvirt runs,
    # where ZooKeeper places them, and what each node's libvirt answered (None: it did not answer in time).
    assert not missing and set(placed.values()) <= {"hv2", "hv3"}, (missing, placed, libvirt_domains(c))
    assert_no_crash(c)
    return ended
