"""Moving the primary role by hand: ``pvc node primary`` / ``pvc node secondary`` hand it over in order
(relinquish, then takeover), with cluster work queued at that moment run once, by the new primary or before the
old one lets go."""

from __future__ import annotations

import json
from collections import Counter

from pvc_tasks.fencing import declare_dead
from tests.integration.test_api_errors import assert_error
from tests.integration.test_evacuate import pvc
from tests.integration.test_fencing import HA_ENV, api, fence_of, jobs, nodes, primary, vms


def test_primary_switch_by_hand_with_a_queued_cluster_task(make_cluster):
    """A fence job is queued on the cluster queue as the operator moves the primary role: the role moves to the
    node asked for (the old primary shows secondary), the fence runs once and recovers each VM once, the request
    is cleared; `secondary` then moves the role on; impossible requests are refused."""
    c = make_cluster(nodes(4), worker_env=HA_ENV, fencing=True)
    boss = primary(c)
    target, victim = [n for n in ("hv1", "hv2", "hv3", "hv4") if n != boss][:2]
    for name in ("hp0", "hp1"):
        assert c.define_vm(name, 256, node=victim, start=True)["state"] == "succeeded"
    c.workers[victim].kill()
    assert declare_dead(c.zk, c.schema, victim, "declared as the operator moves the primary role") is not None

    moved = pvc(c, "node", "primary", target, "-o", "json")
    assert moved.returncode == 0, moved
    assert json.loads(moved.stdout)["primary_now"] == target
    states = {n["name"]: n["router_state"] for n in api(c, "get", "/nodes").json()}
    assert states[target] == "primary" and states[boss] == "secondary", states
    assert fence_of(c, victim)["state"] == "succeeded"
    assert len([j for j in jobs(c, "fence") if j["params"]["target"] == victim]) == 1
    assert Counter(j["vm"] for j in jobs(c, "recover")) == {"hp0": 1, "hp1": 1}
    assert all(v["node"] != victim and v["state"] == "running" for v in vms(c).values())
    assert c.zk.get(c.schema.path("base.config.primary_request"))[0] == b""

    again = api(c, "post", f"/nodes/{target}/primary")
    assert again.status_code == 200 and again.json()["done"] is True
    stepped = pvc(c, "node", "secondary", target, "-o", "json")
    assert stepped.returncode == 0, stepped
    assert json.loads(stepped.stdout)["primary_now"] not in ("", target)
    assert_error(api(c, "post", "/nodes/nosuch/primary"), 404, "node_not_found")


def test_the_only_live_coordinator_cannot_step_down(make_cluster):
    """`secondary` for the primary of a cluster whose other coordinators are down is refused, and nothing is
    recorded; `primary` for a node whose worker is down is refused."""
    c = make_cluster(nodes(2), worker_env=HA_ENV, fencing=True)
    assert api(c, "put", "/cluster/maintenance", json={"maintenance": True}).status_code == 200
    boss = primary(c)
    other = next(n for n in ("hv1", "hv2") if n != boss)
    c.workers[other].stop()
    assert_error(api(c, "post", f"/nodes/{boss}/secondary"), 409, "no_other_coordinator")
    assert_error(api(c, "post", f"/nodes/{other}/primary"), 409, "node_unavailable")
    assert c.zk.get(c.schema.path("base.config.primary_request"))[0] == b""
    assert primary(c) == boss
