"""Flushes an operator can trust: the capacity guard under a burst, one job per node, no VM shut down unless
allowed, never a target that is being drained, and an unflush that keeps autostart until its start succeeded."""

from collections import Counter

from pvc_dev.cluster import NodeSpec
from tests.conftest import SLOW_SESSION, paused, race

FOUR = [NodeSpec(f"hv{i}", 4096) for i in range(1, 5)]


def api(c, method, path, **kw):
    return c.session().request(method, f"{c.api_url}/api/v1{path}", timeout=30, **kw)


def vms(c) -> dict[str, dict]:
    return {v["name"]: v for v in api(c, "get", "/vms").json()}


def jobs(c, **params) -> list[dict]:
    return api(c, "get", "/jobs", params={"limit": 10000, **params}).json()


def test_burst_of_flushes_of_every_node_accepts_only_what_fits(make_cluster):
    """Flush requests for all 4 nodes at once (each runs 3 x 512 MiB of 4 GiB): exactly the two that fit together
    are accepted, one job each; the others get 409 insufficient_capacity naming their VMs; no VM is shut down, and
    no migration is ever placed on a node after its flush was accepted."""
    c = make_cluster(FOUR)
    for node in ("hv1", "hv2", "hv3", "hv4"):
        for i in range(3):
            assert c.define_vm(f"{node}-r{i}", 512, node=node, start=True)["state"] == "succeeded"
        assert c.define_vm(f"{node}-s", 512, node=node)["state"] == "succeeded"  # stopped: never at risk
    answers = race(4, lambda i: api(c, "post", f"/nodes/hv{i + 1}/flush"))
    accepted = [r.json() for r in answers if r.status_code == 202]
    refused = [r.json() for r in answers if r.status_code != 202]
    assert len(accepted) == 2 and len(refused) == 2, [r.text for r in answers]
    for body in refused:
        assert body["error"] == "insufficient_capacity", body
        named = body["details"]["vms"]  # the node's running VMs, possibly some that had just arrived from another
        assert named and all("-r" in n for n in named), body
        assert body["details"]["shortfall_mib"] == 512 * len(named) and named[0] in body["message"], body
    ended = [c.wait_job(j["id"], timeout=180) for j in accepted]
    assert [e["state"] for e in ended] == ["succeeded", "succeeded"], ended
    flushed = {e["node"] for e in ended}
    assert Counter(j["node"] for j in jobs(c, kind="flush")) == Counter(flushed)  # one flush job per node
    placed = vms(c)
    assert all(v["state"] == "running" for n, v in placed.items() if "-r" in n)  # 0 VMs shut down
    assert not any(v["node"] in flushed and v["state"] == "running" for v in placed.values())
    flush_created = {e["node"]: c.zk.exists(c.schema.path("job", e["id"])).czxid for e in ended}
    for child in jobs(c, kind="migrate"):
        target = child["params"]["target"]
        if target in flush_created:
            created = c.zk.exists(c.schema.path("job", child["id"])).czxid
            assert created < flush_created[target], f"{child['vm']} was placed on {target} while it was flushing"
    for node in flushed:
        assert api(c, "post", f"/nodes/{node}/ready").status_code == 202


def test_burst_for_one_node_makes_one_job(make_cluster):
    """Eight flush requests for one node at once answer one and the same job; so do eight ready requests after it;
    three rounds, and the node has exactly three flush and three unflush jobs."""
    c = make_cluster(FOUR, worker_env=SLOW_SESSION)
    for i in range(2):
        assert c.define_vm(f"b{i}", 256, node="hv1", start=True)["state"] == "succeeded"
    for _round in range(3):
        for action in ("flush", "ready"):
            # hv1 paused: its job stays queued through the burst, so no request comes after it ended (that one
            # would rightly get a job of its own).
            with paused(c.workers["hv1"]):
                answers = race(8, lambda _i, action=action: api(c, "post", f"/nodes/hv1/{action}"))
            assert all(r.status_code == 202 for r in answers), [r.text for r in answers]
            ids = {r.json()["id"] for r in answers}
            assert len(ids) == 1, f"{action}: {len(ids)} jobs from one burst"
            assert c.wait_job(ids.pop(), timeout=60)["state"] == "succeeded"
    kinds = Counter(j["kind"] for j in jobs(c) if j["node"] == "hv1" and j["kind"] in ("flush", "unflush"))
    assert kinds == {"flush": 3, "unflush": 3}, kinds


def test_vm_left_without_a_target_stays_running_and_the_node_ready(make_cluster):
    """A VM that loses its last target after the guard accepted the flush is not shut down (no allow_shutdown): it
    stays running on N, the flush ends failed naming it, and N is ready with a fault (never flushed with a VM
    running)."""
    c = make_cluster(FOUR[:2], worker_env=SLOW_SESSION)
    assert c.define_vm("keeper", 512, node="hv1", start=True)["state"] == "succeeded"
    assert c.define_vm("mover", 512, node="hv1", start=True)["state"] == "succeeded"
    with paused(c.workers["hv1"]):  # the flush's first pass waits in hv1's queue
        job = api(c, "post", "/nodes/hv1/flush").json()
        assert api(c, "put", "/vms/keeper/meta", json={"node_limit": ["hv1"]}).status_code == 200
    ended = c.wait_job(job["id"], timeout=60)
    assert ended["state"] == "failed" and "keeper" in ended["reason"] and "not allowed to shut" in ended["reason"]
    placed = vms(c)
    assert (placed["keeper"]["node"], placed["keeper"]["state"]) == ("hv1", "running")
    assert placed["mover"]["node"] == "hv2"
    node = api(c, "get", "/nodes/hv1").json()
    assert node["domain_state"] == "ready" and "still on hv1: keeper" in node["faults"][-1]["message"]


def test_unflush_whose_start_fails_keeps_autostart(make_cluster):
    """An unflush whose start of an autostart VM fails leaves autostart set (and says so in a fault); once the
    cause is fixed, ready starts it and only then clears the flag."""
    c = make_cluster([NodeSpec("hv1", 16384), NodeSpec("hv2", 4096)])
    assert c.define_vm("big", 9000, node="hv1", start=True)["state"] == "succeeded"
    flushed = c.wait_job(api(c, "post", "/nodes/hv1/flush", json={"allow_shutdown": True}).json()["id"], timeout=60)
    assert flushed["state"] == "succeeded" and vms(c)["big"]["meta"]["autostart"] is True
    xml_path = c.schema.path("domain.xml", "big")
    good = c.zk.get(xml_path)[0]
    c.zk.set(xml_path, b"<domain type='test'><name>big</name>")  # broken: the restarted node cannot define it
    c.workers["hv1"].kill()
    c.start_worker("hv1")
    c.wait_worker("hv1")
    failed = c.wait_job(api(c, "post", "/nodes/hv1/ready").json()["id"], timeout=90)
    assert failed["state"] == "failed" and "big" in failed["reason"], failed
    assert vms(c)["big"]["meta"]["autostart"] is True
    node = api(c, "get", "/nodes/hv1").json()
    assert node["domain_state"] == "ready" and "big" in next(f for f in node["faults"] if f["id"] == "flush")["message"]
    c.zk.set(xml_path, good)
    back = c.wait_job(api(c, "post", "/nodes/hv1/ready").json()["id"], timeout=60)
    assert back["state"] == "succeeded", back
    big = vms(c)["big"]
    assert (big["state"], big["meta"]["autostart"]) == ("running", False)
    assert not api(c, "get", "/nodes/hv1").json()["faults"]
