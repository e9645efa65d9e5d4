"""Every task message published twice, by the API and by every worker: every kind of job still runs each of its
steps once (the step takes its stage with a compare-and-set first), and ends as it would have."""

from __future__ import annotations

from pvc_dev.cluster import NodeSpec
from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from tests.conftest import task_returns

TWICE = {"PVC_PUBLISH_COPIES": "2"}


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=30, **kw)


def done(c, method: str, path: str, **kw) -> dict:
    r = api(c, method, path, **kw)
    assert r.status_code == 202, r.text
    job = c.wait_job(r.json()["id"], timeout=90)
    assert job["state"] == "succeeded", (job["reason"], job["messages"][-3:])
    return job


def both_returned(worker, task: str, job_id: str) -> list[str] | None:
    lines = task_returns(worker, task, job_id)
    return lines if len(lines) == 2 else None


def test_every_step_published_twice_runs_once(make_cluster):
    """Lifecycle, migration (each of its four steps), flush and ready, and a VF change, with every message sent
    twice: each job succeeds, each step ran once and its twin was skipped, and libvirt agrees."""
    c = make_cluster([NodeSpec("hv1", 8192), NodeSpec("hv2", 8192)], worker_env=TWICE, api_env=TWICE)
    assert c.define_vm("twin", 128, node="hv1", start=True)["state"] == "succeeded"
    for state in ("restart", "shutdown", "start", "stop", "start"):
        done(c, "post", "/vms/twin/state", json={"state": state})
    moved = done(c, "post", "/vms/twin/migrate", json={"target": "hv2"})
    for step, node in (("prepare", "hv2"), ("perform", "hv1"), ("finish", "hv2"), ("cleanup", "hv1")):
        # A step's own return is logged after its hand-over, so the job may end before its line is written.
        lines = wait_until(lambda s=step, n=node: both_returned(c.workers[n], f"pvc.migrate.{s}", moved["id"]), 10,
                           f"both {step} messages to return")
        assert sum("'state': 'skipped'" in line for line in lines) == 1, (step, lines)
    for i in range(4):
        assert c.define_vm(f"tw{i}", 128, node="hv2", start=True)["state"] == "succeeded"
    done(c, "post", "/nodes/hv2/flush")
    done(c, "post", "/nodes/hv2/ready")
    done(c, "put", "/sriov/vfs/hv1/ens1f0v1", json={"vlan_id": 42})
    placed = {name: node for node, domains in libvirt_domains(c).items() for name in domains or {}}
    # twin's home is hv1 (it was migrated from there): hv2's flush takes it home, and hv2's ready leaves it there
    assert placed == {"twin": "hv1", **{f"tw{i}": "hv2" for i in range(4)}}, placed
    assert all(f["state"] == "running" for f in libvirt_domains(c)["hv2"].values())
