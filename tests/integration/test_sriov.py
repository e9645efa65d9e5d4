"""SR-IOV: inventory in ZooKeeper, VF settings applied by the owning node's worker, validation, restarts.

Nodes are libvirt test-driver nodes whose NICs are simulated (pvc_workers.sriov.SimulatedNic): PFs ens1f0 (4 VFs)
and ens1f1 (2 VFs) as libvirt node devices, applied settings in ``<workdir>/nodes/<node>.nic.json``.
"""

from __future__ import annotations

import json

import requests

from pvc_dev.services import wait_until
from tests.conftest import zk_snapshot


def nic_state(c, node: str) -> dict:
    """The node's simulated NIC: settings per VF and the ip commands production would have run."""
    path = c.workdir / "nodes" / f"{node}.nic.json"
    return json.loads(path.read_text()) if path.exists() else {"vfs": {}, "commands": {}}


def test_each_worker_inventories_its_pfs_and_vfs_into_zookeeper(cluster, api):
    """Every node's PFs and VFs appear in ZooKeeper at the schema's paths and through the API."""
    zk, schema = cluster.zk, cluster.schema
    for node in ("hv1", "hv2", "hv3"):
        assert sorted(zk.get_children(schema.path("node.sriov.pf", node))) == ["ens1f0", "ens1f1"]
        assert zk.get(schema.path("sriov_pf.vfcount", node, "ens1f0"))[0] == b"4"
        assert zk.get(schema.path("sriov_vf.pf", node, "ens1f1v1"))[0] == b"ens1f1"
    pfs = api.get(f"{api.base}/sriov/pfs", params={"node": "hv2"}).json()
    assert [(p["name"], p["vfcount"], p["mtu"]) for p in pfs] == [("ens1f0", 4, 9000), ("ens1f1", 2, 9000)]
    vfs = api.get(f"{api.base}/sriov/vfs", params={"node": "hv2", "pf": "ens1f0"}).json()
    assert [v["name"] for v in vfs] == ["ens1f0v0", "ens1f0v1", "ens1f0v2", "ens1f0v3"]
    vf = api.get(f"{api.base}/sriov/vfs/hv2/ens1f0v2").json()
    assert (vf["index"], vf["pci"], vf["used"], vf["in_sync"]) == (2, "0000:3c:00.2", False, True)
    assert vf["config"]["spoof_check"] is True and vf["config"]["vlan_id"] == 0
    assert api.get(f"{api.base}/sriov/vfs/hv2/nope").json()["error"] == "vf_not_found"


def test_a_vf_change_is_applied_by_its_nodes_worker(cluster, api):
    """A PUT runs pvc.sriov.configure on pvc@hv2 (seen in Flower), which applies the settings to hv2's NIC."""
    flower = cluster.start_flower()
    url, auth = flower.info["url"], (cluster.flower_user, cluster.flower_password)
    # Flower names a task from its "received" event: wait until it listens to the workers' events.
    wait_until(lambda: "pvc@hv2" in requests.get(f"{url}/api/workers?refresh=1", auth=auth, timeout=10).json(), 30,
               "Flower to see the workers")
    change = {"vlan_id": 100, "vlan_qos": 3, "tx_rate_min": 100, "tx_rate_max": 1000, "spoof_check": False,
              "link_state": "enable", "trust": True, "query_rss": True, "mtu": 1400, "mac": "02:aa:bb:cc:dd:01"}
    r = api.put(f"{api.base}/sriov/vfs/hv2/ens1f0v1", json=change)
    assert r.status_code == 202, r.text
    job = cluster.wait_job(r.json()["id"])
    assert job["state"] == "succeeded", job["reason"]
    applied = nic_state(cluster, "hv2")["vfs"]["ens1f0v1"]
    assert applied == {"vlan_id": "100", "vlan_qos": "3", "tx_rate_min": "100", "tx_rate_max": "1000",
                       "spoof_check": "false", "link_state": "enable", "trust": "true", "query_rss": "true",
                       "mtu": "1400", "mac": "02:aa:bb:cc:dd:01"}
    assert ["ip", "link", "set", "dev", "ens1f0", "vf", "1", "vlan", "100", "qos", "3"] in \
        nic_state(cluster, "hv2")["commands"]["ens1f0v1"]
    assert nic_state(cluster, "hv1")["vfs"]["ens1f0v1"]["vlan_id"] == "0"  # only hv2's NIC changed
    vf = api.get(f"{api.base}/sriov/vfs/hv2/ens1f0v1").json()
    assert vf["in_sync"] and vf["applied"]["by"] == job["id"] and (vf["mac"], vf["mtu"]) == ("02:aa:bb:cc:dd:01", 1400)

    def task():
        t = requests.get(f"{url}/api/task/info/{job['id']}", auth=auth, timeout=5)
        return t.json() if t.ok and t.json().get("state") == "SUCCESS" else None

    info = wait_until(task, 30, "Flower to record the task")
    assert (info["name"], info["worker"]) == ("pvc.sriov.configure", "pvc@hv2")


def test_invalid_vf_settings_are_rejected_with_nothing_written(cluster, api):
    """Out-of-range values, min above max, a multicast MAC or an unknown VF: 400/404 naming the field, no job,
    no ZooKeeper change."""
    zk = cluster.zk
    root = cluster.schema.root("sriov_vf", "hv1", "ens1f0v3")
    before, jobs_before = zk_snapshot(zk, root), len(zk.get_children(cluster.schema.path("base.job")))
    bad = [({"vlan_id": 4096}, "vlan_id"), ({"vlan_qos": 8, "vlan_id": 5}, "vlan_qos"), ({"vlan_qos": 2}, "vlan_qos"),
           ({"tx_rate_min": 500, "tx_rate_max": 100}, "tx_rate_min"), ({"mac": "01:00:5e:00:00:01"}, "mac"),
           ({"mac": "zz:00:00:00:00:01"}, "mac"), ({"link_state": "up"}, "link_state"), ({"mtu": 20000}, "mtu"),
           ({"vlan_id": "ten"}, "vlan_id"), ({"colour": "blue"}, "colour"), ({}, "settings")]
    for body, field in bad:
        r = api.put(f"{api.base}/sriov/vfs/hv1/ens1f0v3", json=body)
        assert r.status_code == 400, (body, r.text)
        assert field in r.json()["details"], (body, r.json())
    assert api.put(f"{api.base}/sriov/vfs/hv1/ens9f9v9", json={"vlan_id": 1}).status_code == 404
    assert api.put(f"{api.base}/sriov/vfs/hv9/ens1f0v0", json={"vlan_id": 1}).status_code == 404
    assert zk_snapshot(zk, root) == before
    assert len(zk.get_children(cluster.schema.path("base.job"))) == jobs_before


def test_vf_config_survives_a_worker_restart_and_a_cold_boot(make_cluster):
    """ZooKeeper's config is re-applied when the worker starts (even onto a NIC reset by a cold boot) and never
    overwritten by what the NIC shows."""
    c = make_cluster(flower=False)
    s = c.session()
    url = f"{c.api_url}/api/v1/sriov/vfs/hv1/ens1f1v0"
    job = s.put(url, json={"vlan_id": 42, "trust": True, "mac": "02:00:00:00:42:00"}).json()
    assert c.wait_job(job["id"])["state"] == "succeeded"
    config_path = c.schema.path("sriov_vf.config.vlan_id", "hv1", "ens1f1v0")
    root = c.schema.root("sriov_vf", "hv1", "ens1f1v0")

    def config() -> dict:
        return {k: v for k, v in zk_snapshot(c.zk, root).items() if "/config/" in k}

    config_before = config()

    c.workers["hv1"].stop()
    (c.workdir / "nodes" / "hv1.nic.json").unlink()  # cold boot: the NIC comes back with factory settings
    c.start_worker("hv1")
    c.wait_worker("hv1")
    assert config() == config_before
    assert c.zk.get(config_path)[0] == b"42"
    assert nic_state(c, "hv1")["vfs"]["ens1f1v0"]["vlan_id"] == "42"
    vf = s.get(url).json()
    assert vf["in_sync"] and vf["applied"]["by"] == "worker start" and vf["mac"] == "02:00:00:00:42:00"


def test_a_pf_removed_from_the_configuration_takes_its_vfs_along(make_cluster):
    """Restarting a worker without ens1f1 in its sriov_pfs removes that PF and its VFs; ens1f0's stay as they were."""
    c = make_cluster(flower=False)
    zk, schema = c.zk, c.schema
    kept = zk_snapshot(zk, schema.root("sriov_vf", "hv2", "ens1f0v0"))
    c.workers["hv2"].stop()
    c.start_worker("hv2", {"PVC_SRIOV_PFS": "ens1f0"})
    c.wait_worker("hv2")
    assert zk.get_children(schema.path("node.sriov.pf", "hv2")) == ["ens1f0"]
    assert sorted(zk.get_children(schema.path("node.sriov.vf", "hv2"))) == [f"ens1f0v{i}" for i in range(4)]
    after = zk_snapshot(zk, schema.root("sriov_vf", "hv2", "ens1f0v0"))
    assert {k: v for k, v in after.items() if not k.endswith("/applied")} == \
        {k: v for k, v in kept.items() if not k.endswith("/applied")}
    assert sorted(zk.get_children(schema.path("node.sriov.pf", "hv1"))) == ["ens1f0", "ens1f1"]


def test_a_setting_the_nic_refuses_fails_the_job_and_the_others_apply(make_cluster):
    """A NIC that refuses one setting (the simulated NIC told to, as a driver without query_rss would): the job
    fails naming it, every other setting is applied, and ZooKeeper keeps the desired config (never the NIC's)."""
    c = make_cluster(flower=False)
    state = c.workdir / "nodes" / "hv1.nic.json"
    state.write_text(json.dumps({**nic_state(c, "hv1"), "refuse": {"query_rss": "RTNETLINK answers: Operation "
                                                                                "not supported"}}))
    s, base = c.session(), f"{c.api_url}/api/v1"
    r = s.put(f"{base}/sriov/vfs/hv1/ens1f0v2", json={"vlan_id": 42, "query_rss": True, "trust": True})
    ended = c.wait_job(r.json()["id"])
    assert ended["state"] == "failed", ended
    assert ended["reason"] == "VF ens1f0v2 on hv1 refused: query_rss: RTNETLINK answers: Operation not supported"
    applied = nic_state(c, "hv1")["vfs"]["ens1f0v2"]
    assert (applied["vlan_id"], applied["trust"]) == ("42", "true") and applied.get("query_rss") != "true"
    vf = s.get(f"{base}/sriov/vfs/hv1/ens1f0v2").json()
    assert vf["config"]["query_rss"] is True and vf["in_sync"] is False
    assert vf["applied"]["errors"] == {"query_rss": "RTNETLINK answers: Operation not supported"}


def test_two_racing_vf_changes_leave_the_nic_with_the_winners_config(make_cluster):
    """Two changes of one VF sent at once: each is answered (202 or 409, never 500), and when every job has ended
    the NIC holds exactly ZooKeeper's desired config."""
    from tests.conftest import race

    c = make_cluster(flower=False)
    s, base = c.session(), f"{c.api_url}/api/v1"
    answers = race(2, lambda i: c.session().put(f"{base}/sriov/vfs/hv2/ens1f1v0", json={"vlan_id": 10 + i,
                                                                                        "vlan_qos": i}))
    assert sorted(a.status_code for a in answers) in ([202, 202], [202, 409]), [a.text for a in answers]
    for a in answers:
        if a.status_code == 202:
            assert c.wait_job(a.json()["id"])["state"] == "succeeded"
    vf = s.get(f"{base}/sriov/vfs/hv2/ens1f1v0").json()
    applied = nic_state(c, "hv2")["vfs"]["ens1f1v0"]
    assert vf["in_sync"] and (applied["vlan_id"], applied["vlan_qos"]) == (str(vf["config"]["vlan_id"]),
                                                                          str(vf["config"]["vlan_qos"]))
    assert vf["config"]["vlan_id"] in (10, 11)


def test_a_shrunk_nic_keeps_used_and_missing_pf_records(make_cluster):
    """After a restart with fewer VFs on ens1f0 and ens1f1 gone from the system (still configured): a vanished
    free VF is removed, a vanished VF a VM uses is kept, and the missing PF is left alone (a driver reload must
    not wipe its VFs' config)."""
    from dataclasses import replace

    from pvc_dev.cluster import domain_xml

    c = make_cluster(flower=False)
    s, base = c.session(), f"{c.api_url}/api/v1"
    xml = domain_xml("vfkeep").replace("</domain>", "<devices><interface type='direct'><source dev='ens1f0v3' "
                                                    "mode='passthrough'/></interface></devices></domain>")
    assert c.wait_job(s.post(f"{base}/vms", json={"xml": xml, "node": "hv1"}).json()["id"])["state"] == "succeeded"
    ens1f1 = zk_snapshot(c.zk, c.schema.root("sriov_pf", "hv1", "ens1f1"))
    c.workers["hv1"].stop()
    c.nodes = [replace(n, sriov=(("ens1f0", 2),)) if n.name == "hv1" else n for n in c.nodes]
    c.start_worker("hv1", {"PVC_SRIOV_PFS": "ens1f0,ens1f1"})
    c.wait_worker("hv1")
    vfs = sorted(c.zk.get_children(c.schema.path("node.sriov.vf", "hv1")))
    assert vfs == ["ens1f0v0", "ens1f0v1", "ens1f0v3", "ens1f1v0", "ens1f1v1"]  # v2 gone, v3 kept for vfkeep
    assert s.get(f"{base}/sriov/vfs/hv1/ens1f0v3").json()["used_by"] == "vfkeep"
    assert zk_snapshot(c.zk, c.schema.root("sriov_pf", "hv1", "ens1f1")) == ens1f1
    assert "ens1f0v3" in c.workers["hv1"].log_path.read_text()  # the kept VF is reported


def test_a_duplicated_vf_change_message_does_nothing(make_cluster):
    """The configure message of a finished VF change, delivered again, is ignored: the NIC is not touched."""
    from celery import Celery

    from pvc_tasks.routing import node_queue

    c = make_cluster(flower=False)
    s, base = c.session(), f"{c.api_url}/api/v1"
    job = s.put(f"{base}/sriov/vfs/hv3/ens1f0v0", json={"vlan_id": 7}).json()
    assert c.wait_job(job["id"])["state"] == "succeeded"
    before = nic_state(c, "hv3")
    Celery("duplicate", broker=c.redis_url).send_task(
        "pvc.sriov.configure", kwargs={"job_id": job["id"], "vm": "", "node": "hv3"}, queue=node_queue("hv3"))
    wait_until(lambda: f"stale pvc.sriov.configure message for job {job['id']}" in c.workers["hv3"].log_tail(100),
               15, "the duplicate to be ignored")
    assert nic_state(c, "hv3") == before
    assert s.get(f"{base}/jobs/{job['id']}").json()["state"] == "succeeded"
