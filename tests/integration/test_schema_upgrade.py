"""A populated live cluster upgraded from schema 0 to the newest keeps every value; running workers re-exec into it."""

from pvc_dev.cluster import domain_xml
from pvc_dev.services import wait_until
from pvc_tasks.jobs import commit
from pvc_tasks.secrets import unseal
from tests.conftest import SLOW_SESSION, paused
from zk_schema import Schema


def opened(c, stored: str) -> str:
    """A stored IPMI value as the fencer reads it (the password is sealed with the workers' key)."""
    return unseal(stored, c.secret_key)


def test_upgrade_from_0_keeps_every_value_and_workers_reexec(make_cluster):
    """Upgraded 0 -> newest, step by step: values move, removed keys go, added keys get defaults; workers reload."""
    v0 = Schema.load(0)
    uuids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(3)]
    xmls = [domain_xml(f"old{i}", 128 * (i + 1)).replace("</name>", f"</name><uuid>{u}</uuid>")
            for i, u in enumerate(uuids)]
    vms = {f"old{i}": {"xml": xmls[i], "node": "hv1", "state": "running", "memory": str(128 * (i + 1)), "vcpus": "1",
                       "uuid": uuids[i], "last_node": "hv2",
                       "meta.node_limit": "hv1,hv2", "meta.node_selector": "load", "node_autostart": "true",
                       "meta.migration_method": "live", "console.log": f"boot log {i}"} for i in range(3)}

    def seed(zk):
        """VMs as a release on schema 0 wrote them."""
        for name, values in vms.items():
            commit(zk, [("create", p, d) for p, d in v0.create_ops("domain", name, values=values)])

    node_values = {"ipmi.hostname": "bmc-hv2.example", "ipmi.username": "admin", "ipmi.password": "s3cret"}
    c = make_cluster(start=False, worker_env={f"PVC_{k.replace('.', '_').upper()}": v
                                              for k, v in node_values.items()})
    c.nodes = c.nodes[:2]
    c.start(schema_version=0, seed=seed)
    assert c.zk.get(Schema.load(0).path("node.schema_version", "hv1"))[0] == b"0"
    for key, value in node_values.items():  # the workers registered their IPMI settings at the v0 paths
        assert opened(c, c.zk.get(v0.path(f"node.{key}", "hv2"))[0].decode()) == value
    pids = {n: w.pid for n, w in c.workers.items()}

    s = c.session()
    r = s.post(f"{c.api_url}/api/v1/cluster/upgrade")
    assert r.status_code == 200, r.text
    # secured 0: every node was created with pvc's ACL already (kazoo's default_acl), the chroot included.
    assert r.json() == {"schema_version": 8, "created": [], "upgraded_through": [1, 2, 3, 4, 5, 6, 7, 8],
                        "secured": 0}

    # Where each v0 value must be now, written out by hand from the version files (not derived from the upgrade
    # code under test): meta moved under /meta, node_autostart became meta/autostart, the console log was dropped,
    # the IPMI keys moved under /ipmi.
    moved = {"xml": "xml", "node": "node", "state": "state", "memory": "memory", "vcpus": "vcpus", "uuid": "uuid",
             "last_node": "last_node", "node_limit": "meta/node_limit", "node_selector": "meta/node_selector",
             "node_autostart": "meta/autostart", "migration_method": "meta/migration_method"}
    v0_names = {"meta.node_limit": "node_limit", "meta.node_selector": "node_selector",
                "meta.migration_method": "migration_method", "console.log": "consolelog"}
    for name, values in vms.items():
        for key, value in values.items():
            old = v0_names.get(key, key)
            assert v0.path(f"domain.{key}", name) == f"/domains/{name}/{old}"  # the seed wrote where we think
            if old == "consolelog":
                assert not c.zk.exists(f"/domains/{name}/consolelog"), "the removed console log is gone"
                continue
            assert c.zk.get(f"/domains/{name}/{moved[old]}")[0].decode() == value, (name, key)
            if moved[old] != old:
                assert not c.zk.exists(f"/domains/{name}/{old}"), (name, key)
        assert c.zk.get(f"/domains/{name}/meta/max_downtime")[0] == b"300"  # added later, with its default
        assert c.zk.get(f"/domains/{name}/meta/shutdown_force")[0] == b""  # v6: follow the cluster's setting
    for key, value in node_values.items():
        field = key.split(".")[1]
        assert opened(c, c.zk.get(f"/nodes/hv2/ipmi/{field}")[0].decode()) == value
        assert not c.zk.exists(f"/nodes/hv2/ipmi{field}")
    v1 = Schema.latest()  # the layout the cluster is on now
    assert v1.version == 8 and v1.missing(c.zk) == []
    assert c.zk.get("/config/shutdown_force")[0] == b"true"  # v6, PVC's default: force off after the timeout
    assert c.zk.get("/config/primary_request")[0] == b""  # v7: no request
    # v8: each VM's UUID is indexed (a define with one of them is refused without reading every VM).
    assert {u: c.zk.get(f"/uuids/{u}")[0].decode() for u in uuids} == {u: f"old{i}" for i, u in enumerate(uuids)}
    assert c.zk.get_children("/jobs_open") == []

    # Each worker saw the version change and re-executed itself (same PID: execv) on the new layout.
    for node in pids:
        wait_until(lambda n=node: c.zk.get(v1.path("node.schema_version", n))[0] == str(v1.version).encode()
                   and c.zk.get(v1.path("node.daemon_state", n))[0] == b"run", 60, f"{node} to re-exec")
        assert c.workers[node].pid == pids[node] and c.workers[node].alive()
        assert "restarting this worker to reload it" in c.workers[node].log_path.read_text()
    # The API serves the new layout too: the VM shows its moved meta, and jobs still run end to end.
    node = s.get(f"{c.api_url}/api/v1/nodes/hv2").text
    assert "bmc-hv2.example" in node and "s3cret" not in node  # the IPMI password never leaves ZooKeeper
    assert "s3cret" not in c.workers["hv2"].log_path.read_text()
    vm = s.get(f"{c.api_url}/api/v1/vms/old1").json()
    assert vm["meta"]["autostart"] is True and vm["meta"]["node_limit"] == ["hv1", "hv2"]
    job = s.post(f"{c.api_url}/api/v1/vms/old1/state", json={"state": "stop"}).json()
    assert c.wait_job(job["id"])["state"] == "succeeded"
    # Upgrading again is a no-op.
    assert s.post(f"{c.api_url}/api/v1/cluster/upgrade").json()["upgraded_through"] == []


def test_upgrade_is_refused_while_a_running_worker_cannot_load_the_target(make_cluster):
    """A cluster on schema 7 whose running workers say they cannot load 8 (an older pvc on the node; one says
    nothing at all, as a worker from before schema 7): the upgrade is refused with 409 naming each node and why,
    and nothing moves; once their workers run a pvc that can, or are stopped, it goes through."""
    c = make_cluster(start=False)
    c.nodes = c.nodes[:2]
    c.start(schema_version=7)
    latest = Schema.latest()
    loadable = {n: latest.path("node.schema_loadable", n) for n in ("hv1", "hv2")}
    assert c.zk.get(loadable["hv1"])[0] == ",".join(str(v) for v in range(9)).encode()
    c.zk.set(loadable["hv1"], b"0,1,2,3,4,5,6,7")  # what an older pvc on hv1 would publish
    c.zk.delete(loadable["hv2"])  # and a pvc older than schema 7 publishes nothing
    pids = {n: w.pid for n, w in c.workers.items()}

    s = c.session()
    r = s.post(f"{c.api_url}/api/v1/cluster/upgrade")
    assert r.status_code == 409 and r.json()["error"] == "workers_too_old", r.text
    assert r.json()["details"] == {"target": 8, "nodes": {
        "hv1": "its worker cannot load schema 8 (it loads up to 7)",
        "hv2": "its worker does not say which schema versions it can load (it predates schema 7)"}}
    assert "hv1, hv2" in r.json()["message"] and "restart their workers" in r.json()["message"]
    assert c.zk.get(latest.path("base.schema.version"))[0] == b"7"
    assert {n: w.pid for n, w in c.workers.items()} == pids and all(w.alive() for w in c.workers.values())

    c.workers["hv1"].stop()  # hv1 gets this pvc: its new worker says it can load 8
    c.start_worker("hv1")
    c.wait_worker("hv1")
    c.workers["hv2"].stop()  # hv2 stays down for now: a node without a worker is not asked
    r = s.post(f"{c.api_url}/api/v1/cluster/upgrade")
    assert r.status_code == 200 and r.json()["upgraded_through"] == [8], r.text
    c.start_worker("hv2")
    c.wait_worker("hv2")


def test_upgrade_to_8_indexes_uuids_and_unfinished_jobs(make_cluster):
    """A cluster on schema 7 with VMs and a job waiting in a paused node's queue moves to 8: each VM's UUID and the
    waiting job are indexed; the job still runs, its entry goes once it ended, a UUID in the index is refused, and
    an unfinished job missing from the index (a schema-7 writer during the upgrade) is indexed again."""
    c = make_cluster(start=False, worker_env={**SLOW_SESSION, "PVC_HISTORY_INTERVAL": "1",
                                                              "PVC_JANITOR_INTERVAL": "1"})
    c.nodes = c.nodes[:2]
    c.start(schema_version=7)
    s = c.session()
    defined = {name: c.define_vm(name, node=node) for name, node in (("idx1", "hv1"), ("idx2", "hv2"))}
    assert all(job["state"] == "succeeded" for job in defined.values())
    with paused(c.workers["hv1"]):
        queued = s.post(f"{c.api_url}/api/v1/vms/idx1/state", json={"state": "start"}).json()
        r = s.post(f"{c.api_url}/api/v1/cluster/upgrade")
        assert r.status_code == 200 and r.json()["upgraded_through"] == [8], r.text
        new = Schema.load(8)
        uuids = {c.zk.get(new.path("domain.uuid", name))[0].decode(): name for name in defined}
        assert {u: c.zk.get(new.path("domain_uuid", u))[0].decode() for u in uuids} == uuids
        assert c.zk.get_children(new.path("base.job_open")) == [queued["id"]]
    assert c.wait_job(queued["id"])["state"] == "succeeded"
    wait_until(lambda: c.zk.get_children(new.path("base.job_open")) == [], 30, "the ended job's entry to go")

    twin = domain_xml("idx3", 64).replace("</name>", f"</name><uuid>{next(iter(uuids))}</uuid>")
    r = s.post(f"{c.api_url}/api/v1/vms", json={"xml": twin})
    assert r.status_code == 409 and r.json()["error"] == "uuid_exists", r.text

    other = "hv2" if c.zk.get(new.path("base.config.primary_node"))[0] == b"hv1" else "hv1"
    vm, action = ("idx1", "stop") if other == "hv1" else ("idx2", "start")
    with paused(c.workers[other]):  # a job waiting on the node that is not primary: the primary's janitor runs
        waiting = s.post(f"{c.api_url}/api/v1/vms/{vm}/state", json={"state": action}).json()
        c.zk.delete(new.path("job_open", waiting["id"]))
        wait_until(lambda: c.zk.exists(new.path("job_open", waiting["id"])), 5, "the primary to index the job again")
    assert c.wait_job(waiting["id"])["state"] == "succeeded"
