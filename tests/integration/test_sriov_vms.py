"""VMs with SR-IOV VFs: used/used_by with define and undefine, hostdev migrations, macvtap migrations that commit
or abort, and fence recovery — VF records and the VM's XML stay consistent on both nodes."""

from __future__ import annotations

import os
import signal
import xml.etree.ElementTree as ET

from pvc_dev.services import wait_until
from pvc_workers.ipmi import chassis_power
from tests.conftest import zk_snapshot
from tests.integration.test_fencing import HA_ENV, bmc, fence_of, jobs, primary


def vf_xml(name: str, macvtap: tuple[str, ...] = (), hostdev: tuple[str, ...] = ()) -> str:
    """A test-driver domain with macvtap VFs (by name) and hostdev VFs (by PCI address "0000:3c:00.1")."""
    devices = "".join(f"<interface type='direct'><source dev='{dev}' mode='passthrough'/></interface>"
                      for dev in macvtap)
    for pci in hostdev:
        domain, bus, rest = pci.split(":")
        slot, function = rest.split(".")
        devices += (f"<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x{domain}' "
                    f"bus='0x{bus}' slot='0x{slot}' function='0x{function}'/></source></interface>")
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64'>hvm</type></os><devices>{devices}</devices></domain>")


def call(c, method: str, path: str, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=15, **kw)


def vf(c, node: str, name: str) -> dict:
    return call(c, "get", f"/sriov/vfs/{node}/{name}").json()


def used_by(c, vm: str) -> list[tuple[str, str]]:
    """(node, VF) pairs whose used_by is ``vm`` (and used is true), cluster-wide."""
    return sorted((v["node"], v["name"]) for v in call(c, "get", "/sriov/vfs").json()
                  if v["used_by"] == vm and v["used"])


def pfs_count_what_vfs_say(c) -> bool:
    """Every PF's ``vfs_used`` is the number of its VFs that /sriov/vfs shows used."""
    vfs = call(c, "get", "/sriov/vfs").json()
    return all(p["vfs_used"] == sum(v["used"] for v in vfs if (v["node"], v["pf"]) == (p["node"], p["name"]))
               for p in call(c, "get", "/sriov/pfs").json())


def vm_xml(c, vm: str) -> ET.Element:
    return ET.fromstring(call(c, "get", f"/vms/{vm}").json()["xml"])


def macvtap_devs(c, vm: str) -> list[str]:
    return [s.get("dev") for s in vm_xml(c, vm).iter("source") if s.get("dev")]


def test_a_vf_is_marked_used_by_its_vm_and_refused_to_a_second_one(cluster, vm_name):
    """Define marks the VF used by the VM; a second VM naming it gets 409 with nothing written; undefine frees it."""
    job = cluster.define_vm(vm_name, node="hv1", xml=vf_xml(vm_name, macvtap=("ens1f0v0",)))
    assert job["state"] == "succeeded", job["reason"]
    assert used_by(cluster, vm_name) == [("hv1", "ens1f0v0")]
    pf = next(p for p in call(cluster, "get", "/sriov/pfs?node=hv1").json() if p["name"] == "ens1f0")
    assert pf["vfs_used"] >= 1 and pfs_count_what_vfs_say(cluster)
    zk, schema = cluster.zk, cluster.schema
    before = zk_snapshot(zk, schema.root("sriov_vf", "hv1", "ens1f0v0"))
    second = f"{vm_name}-b"
    r = call(cluster, "post", "/vms", json={"xml": vf_xml(second, macvtap=("ens1f0v0",)), "node": "hv1"})
    assert r.status_code == 409 and r.json()["error"] == "vf_in_use", r.text
    assert vm_name in r.json()["message"]
    assert zk.exists(schema.path("domain", second)) is None
    assert zk_snapshot(zk, schema.root("sriov_vf", "hv1", "ens1f0v0")) == before
    # Without a node, the selector places the second VM where that VF is still free.
    chosen = cluster.define_vm(second, xml=vf_xml(second, macvtap=("ens1f0v0",)))
    assert chosen["state"] == "succeeded" and chosen["node"] != "hv1"
    assert used_by(cluster, second) == [(chosen["node"], "ens1f0v0")]
    job = call(cluster, "delete", f"/vms/{vm_name}").json()
    assert cluster.wait_job(job["id"])["state"] == "succeeded"
    assert used_by(cluster, vm_name) == [] and vf(cluster, "hv1", "ens1f0v0")["used_by"] == ""


def test_a_hostdev_vm_always_migrates_by_shutdown(cluster, vm_name):
    """Live is refused with a reason; the default method becomes shutdown, and the VF use and PCI address move."""
    job = cluster.define_vm(vm_name, node="hv2", start=True, xml=vf_xml(vm_name, hostdev=("0000:3d:00.1",)))
    assert job["state"] == "succeeded", job["reason"]
    assert used_by(cluster, vm_name) == [("hv2", "ens1f1v1")]
    for body in ({"target": "hv3", "method": "live"}, {"target": "hv3", "force_live": True}):
        r = call(cluster, "post", f"/vms/{vm_name}/migrate", json=body)
        assert r.status_code == 409 and r.json()["error"] == "live_refused", r.text
        assert "ens1f1v1" in r.json()["message"] and "shutdown" in r.json()["message"]
    r = call(cluster, "post", f"/vms/{vm_name}/migrate", json={"target": "hv3"})
    assert r.status_code == 202, r.text
    done = cluster.wait_job(r.json()["id"])
    assert done["state"] == "succeeded", done["reason"]
    assert done["params"]["method"] == "shutdown" and done["result"]["how"] == "shutdown"
    target_vf = done["params"]["vf_map"]["ens1f1v1"]
    assert used_by(cluster, vm_name) == [("hv3", target_vf)]
    assert vf(cluster, "hv2", "ens1f1v1")["used"] is False
    address = next(vm_xml(cluster, vm_name).iter("address")).attrib
    assert f"0000:{address['bus'][2:]}:{address['slot'][2:]}.{address['function'][2:]}" == \
        vf(cluster, "hv3", target_vf)["pci"]


def test_a_macvtap_migration_commits_vf_use_and_xml_together(cluster, vm_name):
    """The target's same-named VF is taken, so another VF of the PF is picked; the commit moves use and XML."""
    blocker = f"{vm_name}-blk"
    assert cluster.define_vm(blocker, node="hv3", xml=vf_xml(blocker, macvtap=("ens1f0v2",)))["state"] == "succeeded"
    assert cluster.define_vm(vm_name, node="hv1", start=True,
                             xml=vf_xml(vm_name, macvtap=("ens1f0v2",)))["state"] == "succeeded"
    r = call(cluster, "post", f"/vms/{vm_name}/migrate", json={"target": "hv3"})
    done = cluster.wait_job(r.json()["id"])
    assert done["state"] == "succeeded", done["reason"]
    picked = done["params"]["vf_map"]["ens1f0v2"]
    assert picked != "ens1f0v2" and picked.startswith("ens1f0v")
    assert used_by(cluster, vm_name) == [("hv3", picked)]
    assert used_by(cluster, blocker) == [("hv3", "ens1f0v2")]
    assert vf(cluster, "hv1", "ens1f0v2")["used"] is False
    assert macvtap_devs(cluster, vm_name) == [picked]
    assert call(cluster, "get", f"/vms/{vm_name}").json()["node"] == "hv3"
    # unmigrate takes it back to hv1 on a free VF of the same PF (the same name as on hv3, when free).
    r = call(cluster, "post", f"/vms/{vm_name}/unmigrate", json={})
    back = cluster.wait_job(r.json()["id"])
    assert back["state"] == "succeeded", back["reason"]
    home = back["params"]["vf_map"][picked]
    assert used_by(cluster, vm_name) == [("hv1", home)] and macvtap_devs(cluster, vm_name) == [home]
    assert vf(cluster, "hv3", picked)["used"] is False


def test_a_node_without_a_free_vf_on_the_pf_is_no_target(cluster, vm_name):
    """An explicit target without a free VF on the PF is refused naming the PF; the selector skips such nodes."""
    names = [f"{vm_name}-f{i}" for i in range(2)]
    for name, dev in zip(names, ("ens1f1v0", "ens1f1v1")):  # fill hv2's ens1f1
        assert cluster.define_vm(name, node="hv2", xml=vf_xml(name, macvtap=(dev,)))["state"] == "succeeded"
    r = call(cluster, "post", "/vms", json={"xml": vf_xml(vm_name, macvtap=("ens1f1v0",)), "node": "hv1"})
    assert cluster.wait_job(r.json()["id"])["state"] == "succeeded"
    r = call(cluster, "post", f"/vms/{vm_name}/migrate", json={"target": "hv2"})
    assert r.status_code == 409 and r.json()["error"] == "no_target" and "PF ens1f1" in r.json()["message"]
    r = call(cluster, "post", f"/vms/{vm_name}/migrate", json={})
    assert r.status_code == 202 and cluster.wait_job(r.json()["id"])["result"]["node"] == "hv3"


def test_an_aborted_macvtap_migration_leaves_both_nodes_as_before(make_cluster):
    """Cancelled after the target defined its copy (with the target's VF): the rollback leaves the VM running on
    the source with its VF and XML, the target's VF free and no reservation."""
    # Long ZooKeeper sessions and slow suspicion: the source's worker is paused for a moment below.
    c = make_cluster(flower=False, worker_env={"PVC_ZK_SESSION_TIMEOUT": "10", "PVC_SUSPECT_AFTER_INTERVALS": "30"})
    vm = "mv1"
    assert c.define_vm(vm, node="hv1", start=True, xml=vf_xml(vm, macvtap=("ens1f0v1",)))["state"] == "succeeded"
    xml_before = call(c, "get", f"/vms/{vm}").json()["xml"]
    source = c.workers["hv1"]
    os.kill(source.pid, signal.SIGSTOP)  # perform (on hv1) cannot start until we let it
    try:
        job = call(c, "post", f"/vms/{vm}/migrate", json={"target": "hv2"}).json()
        wait_until(lambda: call(c, "get", f"/jobs/{job['id']}").json()["phase"] == "perform", 30,
                   "prepare on hv2 to hand over to hv1")
        wait_until(lambda: call(c, "get", "/nodes/hv2").json()["vms"]["total"] == 1, 15, "hv2 to define its copy")
        assert c.zk.get(c.schema.path("node.reserved", "hv2"))[0] != b"{}"
        assert call(c, "post", f"/jobs/{job['id']}/cancel").status_code == 200
    finally:
        os.kill(source.pid, signal.SIGCONT)
    ended = c.wait_job(job["id"])
    assert ended["state"] == "cancelled", ended
    record = call(c, "get", f"/vms/{vm}").json()
    assert (record["node"], record["state"], record["xml"]) == ("hv1", "running", xml_before)
    assert used_by(c, vm) == [("hv1", "ens1f0v1")]
    assert vf(c, "hv2", ended["params"]["vf_map"]["ens1f0v1"])["used"] is False
    assert c.zk.get(c.schema.path("node.reserved", "hv2"))[0] == b"{}"
    wait_until(lambda: call(c, "get", "/nodes/hv2").json()["vms"]["total"] == 0, 15, "hv2 to drop its copy")


def test_fence_recovery_moves_vf_use_to_the_target(make_cluster):
    """A fenced node's VMs with a macvtap and a hostdev VF are recovered once each on nodes with free VFs of the
    same PFs; the dead node's VFs are released and each XML names its new VF."""
    c = make_cluster(worker_env=HA_ENV, fencing=True)
    victim = next(n for n in ("hv2", "hv3") if n != primary(c))
    assert c.define_vm("mac1", node=victim, start=True, xml=vf_xml("mac1", macvtap=("ens1f0v3",)))["state"] == \
        "succeeded"
    assert c.define_vm("pci1", node=victim, start=True, xml=vf_xml("pci1", hostdev=("0000:3d:00.0",)))["state"] == \
        "succeeded"
    chassis_power(bmc(c, victim), "off")
    fence = fence_of(c, victim)
    assert fence["state"] == "succeeded", fence
    recovered = {j["vm"]: j for j in jobs(c, "recover") if j["parent"] == fence["id"]}
    assert sorted(recovered) == ["mac1", "pci1"] and all(j["state"] == "succeeded" for j in recovered.values())
    for vm, source_vf in (("mac1", "ens1f0v3"), ("pci1", "ens1f1v0")):
        node = call(c, "get", f"/vms/{vm}").json()["node"]
        target_vf = recovered[vm]["params"]["vf_map"][source_vf]
        assert node != victim and used_by(c, vm) == [(node, target_vf)]
        assert vf(c, victim, source_vf)["used"] is False
    assert macvtap_devs(c, "mac1") == [recovered["mac1"]["params"]["vf_map"]["ens1f0v3"]]


def test_flush_moves_vf_vms_by_the_same_rules(make_cluster):
    """A hostdev VM leaves by shutdown migration; a VM no other node can give a VF on its PF is shut down (the flush
    allows it: the capacity guard counts memory, not VFs) and marked autostart, keeping its VF; ready starts it
    again."""
    c = make_cluster(flower=False)
    for node in ("hv2", "hv3"):  # every ens1f1 VF outside hv1 is taken
        for i in range(2):
            name = f"blk-{node}-{i}"
            assert c.define_vm(name, node=node, xml=vf_xml(name, macvtap=(f"ens1f1v{i}",)))["state"] == "succeeded"
    assert c.define_vm("pci2", node="hv1", start=True, xml=vf_xml("pci2", hostdev=("0000:3c:00.0",)))["state"] == \
        "succeeded"
    assert c.define_vm("mac2", node="hv1", start=True, xml=vf_xml("mac2", macvtap=("ens1f1v1",)))["state"] == \
        "succeeded"
    flush = c.wait_job(call(c, "post", "/nodes/hv1/flush", json={"allow_shutdown": True}).json()["id"], timeout=120)
    assert flush["state"] == "succeeded", flush
    children = {j["vm"]: j for j in call(c, "get", "/jobs", params={"parent": flush["id"]}).json()}
    assert children["mac2"]["kind"] == "shutdown" and children["mac2"]["state"] == "succeeded"
    child = children["pci2"]
    assert child["params"]["method"] == "shutdown" and child["state"] == "succeeded"
    moved = call(c, "get", "/vms/pci2").json()
    assert moved["node"] != "hv1" and used_by(c, "pci2") == [(moved["node"], child["params"]["vf_map"]["ens1f0v0"])]
    stayed = call(c, "get", "/vms/mac2").json()
    assert (stayed["node"], stayed["state"], stayed["meta"]["autostart"]) == ("hv1", "stopped", True)
    assert used_by(c, "mac2") == [("hv1", "ens1f1v1")]
    ready = c.wait_job(call(c, "post", "/nodes/hv1/ready").json()["id"], timeout=120)
    assert ready["state"] == "succeeded", ready
    assert call(c, "get", "/vms/mac2").json()["state"] == "running"
