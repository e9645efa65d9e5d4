"""A returning node that still runs a stale copy of a VM that ZooKeeper now places elsewhere destroys that copy.

Only real QEMU nodes can show it: a libvirt test-driver node loses every domain with its worker, but a QEMU guest
outlives a crashed worker. The path: a node's worker crashes (its guest keeps running), its BMC is gone so the
fence fails, and ``failed_fence=migrate`` recovers the VM elsewhere after the node's self-fence interval (a
crashed worker cannot self-fence: that policy's known risk, docs/fencing.md). When the worker comes back, its
reconcile must destroy and undefine the stale copy: ZooKeeper is the truth, and a VM never runs twice for longer
than that.
"""

import re

import libvirt

from pvc_dev.cluster import NodeSpec
from pvc_dev.guests import qemu_domain_xml
from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from tests.integration.test_fencing import HA_ENV, fence_of, jobs, primary, vms
from tests.integration.test_migration_qemu import qemu_pid

NODES = [NodeSpec(f"hq{i}", hypervisor="qemu") for i in (1, 2, 3)]


def test_returning_node_destroys_its_stale_running_copy(make_cluster):
    """After its VM was recovered elsewhere, a node whose guest survived its worker's crash destroys that guest
    when its worker returns; the VM then runs on exactly one node, as both nodes' libvirt say."""
    env = {**HA_ENV, "PVC_FAILED_FENCE": "migrate", "PVC_SELF_FENCE_AFTER": "2"}
    c = make_cluster(NODES, worker_env=env, fencing=True)
    victim = next(n for n in ("hq2", "hq3") if n != primary(c))
    assert c.define_vm("twin", node=victim, start=True, xml=qemu_domain_xml("twin"))["state"] == "succeeded"
    stale_pid = qemu_pid(c, victim, "twin")
    assert stale_pid
    c.bmc[victim].stop()
    c.workers[victim].kill()  # the worker crashes; its QEMU guest keeps running
    fence = fence_of(c, victim)
    assert fence["result"]["fence"]["ok"] is False, fence
    (recovered,) = [j for j in jobs(c, "recover") if j["vm"] == "twin"]
    assert recovered["state"] == "succeeded", recovered
    target = vms(c)["twin"]["node"]
    assert target not in (victim, "") and qemu_pid(c, target, "twin")
    assert qemu_pid(c, victim, "twin") == stale_pid  # running twice now: what the returning worker must end

    c.start_worker(victim)
    c.wait_worker(victim)
    wait_until(lambda: qemu_pid(c, victim, "twin") is None, 30, "the stale copy to be destroyed")
    log = c.workers[victim].log_path.read_text()
    assert f"VM twin runs here but ZooKeeper places it on {target}: destroying this copy" in log
    assert "'stale_removed': 1" in log
    domains = libvirt_domains(c)
    assert [n for n, d in domains.items() if d and "twin" in d] == [target]
    assert domains[target]["twin"]["state"] == "running"


def test_a_migration_never_takes_over_a_stale_copy_on_its_target(make_cluster):
    """A target whose libvirt still holds a stopped copy of the VM from an earlier life (here: 32 MiB, where
    ZooKeeper says 64) gets ZooKeeper's definition: the migration removes the stale copy before defining the VM."""
    c = make_cluster(NODES[:2])
    assert c.define_vm("ghost", node="hq1", xml=qemu_domain_xml("ghost", 64))["state"] == "succeeded"
    detail = c.session().get(f"{c.api_url}/api/v1/vms/ghost", timeout=10).json()
    stale = re.sub(r"<memory[^>]*>\d+</memory>", "<memory unit='MiB'>32</memory>", detail["xml"])
    stale = re.sub(r"<currentMemory[^>]*>\d+</currentMemory>", "", stale)
    conn = libvirt.open(str(c.libvirtds["hq2"].info["uri"]))
    try:
        conn.defineXML(stale)
        assert conn.lookupByName("ghost").maxMemory() == 32 * 1024

        job = c.session().post(f"{c.api_url}/api/v1/vms/ghost/migrate", json={"target": "hq2"}, timeout=10).json()
        done = c.wait_job(job["id"], timeout=120)
        assert done["state"] == "succeeded", done
        assert any("removing a stale copy of ghost" in m["text"] for m in done["messages"]), done["messages"]
        assert conn.lookupByName("ghost").maxMemory() == 64 * 1024
        assert vms(c)["ghost"]["node"] == "hq2"
    finally:
        conn.close()
