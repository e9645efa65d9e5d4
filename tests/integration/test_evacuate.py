"""Nodes that are down, by hand: ``pvc node evacuate`` recovers the VMs of a node that the cluster could not (or
would not) fence, and ``pvc node fence`` fences it through its BMC; both only for a node whose worker is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections import Counter

from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from pvc_workers.ipmi import chassis_power
from tests.integration.test_api_errors import assert_error
from tests.integration.test_cli import PVC
from tests.integration.test_fencing import HA_ENV, api, bmc, fence_of, jobs, nodes, vms
from tests.integration.test_fencing_policies import victim_of
from tests.integration.test_metrics import sample, scrape


def pvc(c, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in {**os.environ, **c.client_env()}.items() if k != "PVC_CLI_CONFIG"}
    return subprocess.run(PVC + list(args), capture_output=True, text=True, env=env, timeout=180)


def test_evacuate_after_a_failed_fence_recovers_each_vm_once_on_the_operators_word(make_cluster):
    """A node whose BMC is gone cannot be fenced and its VMs are marked failed: evacuate is refused while its worker
    runs and, once it is down, until the operator confirms that it is off; then each VM is recovered exactly once
    (those that ran are started, a stopped one is only defined), the statement is recorded with who made it, and
    the node, when it returns, starts nothing."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    victim = victim_of(c)
    for name in ("ev0", "ev1"):
        assert c.define_vm(name, 256, node=victim, start=True)["state"] == "succeeded"
    assert c.define_vm("evidle", 256, node=victim)["state"] == "succeeded"
    for path, body in ((f"/nodes/{victim}/evacuate", {"confirm_powered_off": True}), (f"/nodes/{victim}/fence", {})):
        assert_error(api(c, "post", path, json=body), 409, "node_present")

    c.bmc[victim].stop()
    c.workers[victim].kill()
    assert fence_of(c, victim)["state"] == "failed"
    assert {vms(c)[n]["state"] for n in ("ev0", "ev1")} == {"failed"}
    figures = scrape(c)
    assert (sample(figures, "pvc_fences_total", outcome="failed"), sample(figures, "pvc_fences_total", outcome="off")) \
        == (1, 0)
    assert any(f"pvc node evacuate {victim}" in step for step in api(c, "get", f"/nodes/{victim}").json()["next"])
    refused = pvc(c, "node", "evacuate", victim)
    assert refused.returncode == 3 and "--confirm-powered-off" in refused.stderr, refused

    done = pvc(c, "node", "evacuate", victim, "--confirm-powered-off", "--yes", "-o", "json")
    assert done.returncode == 0, done
    evac = json.loads(done.stdout)
    assert evac["state"] == "succeeded" and evac["requested_by"] == "admin", evac
    assert evac["params"]["off_by"] == "admin confirmed that it is powered off"
    recovered = [j for j in jobs(c, "recover") if j["parent"] == evac["id"]]
    assert Counter(j["vm"] for j in recovered) == {"ev0": 1, "ev1": 1, "evidle": 1}
    placed = vms(c)
    assert all(placed[n]["node"] not in ("", victim) and placed[n]["last_node"] == victim
               for n in ("ev0", "ev1", "evidle"))
    assert [placed[n]["state"] for n in ("ev0", "ev1", "evidle")] == ["running", "running", "stopped"]
    info = api(c, "get", f"/nodes/{victim}").json()
    assert info["fence"]["state"] == "evacuated" and info["domain_state"] == "flushed"

    c.power_on(victim)  # it was off after all: it boots, and its worker starts nothing of what left it
    c.wait_worker(victim)
    assert libvirt_domains(c)[victim] == {}
    running = Counter(n for node in libvirt_domains(c).values() for n, d in node.items() if d["state"] == "running")
    assert running == {"ev0": 1, "ev1": 1}


def test_evacuate_after_a_successful_fence_needs_no_confirmation(make_cluster):
    """A node fenced (seen off) that does not power on again, with successful_fence=none: its VMs stay failed on
    it until `pvc node evacuate`, which the fence's record allows without the operator's statement."""
    c = make_cluster(nodes(3), worker_env={**HA_ENV, "PVC_SUCCESSFUL_FENCE": "none"}, fencing=True)
    victim = victim_of(c)
    for name in ("sf0", "sf1"):
        assert c.define_vm(name, 256, node=victim, start=True)["state"] == "succeeded"
    c.power.refuse_on.add(victim)
    chassis_power(bmc(c, victim), "off")
    fence = fence_of(c, victim)
    assert fence["result"]["fence"]["ok"] is True and sorted(fence["result"]["stayed"]) == ["sf0", "sf1"]

    evac = c.wait_job(api(c, "post", f"/nodes/{victim}/evacuate").json()["id"], timeout=120)
    assert evac["state"] == "succeeded", evac
    assert evac["params"]["off_by"] == f"fence job {fence['id']} confirmed it powered off"
    assert Counter(j["vm"] for j in jobs(c, "recover")) == {"sf0": 1, "sf1": 1}
    assert all(v["node"] != victim and v["state"] == "running" for v in vms(c).values())


def test_manual_fence_of_a_node_that_died_in_maintenance(make_cluster):
    """In maintenance mode a dead node is not fenced by the monitor; the operator fences it by hand: of four
    requests at once exactly one creates the fence job (the others are told its id), which power-cycles the node
    through its BMC and recovers each VM once, recording who asked."""
    c = make_cluster(nodes(3), worker_env=HA_ENV, fencing=True)
    victim = victim_of(c)
    for name in ("mf0", "mf1"):
        assert c.define_vm(name, 256, node=victim, start=True)["state"] == "succeeded"
    assert api(c, "put", "/cluster/maintenance", json={"maintenance": True}).status_code == 200
    c.workers[victim].kill()
    wait_until(lambda: not api(c, "get", f"/nodes/{victim}").json()["alive"], 30, "the node's presence to go")

    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(api(c, "post", f"/nodes/{victim}/fence")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    created = [r.json() for r in answers if r.status_code == 202]
    assert len(created) == 1, [(r.status_code, r.text) for r in answers]
    busy = [r.json() for r in answers if r.status_code == 409]
    assert len(busy) == 3 and all(b["error"] == "node_busy" and b["details"]["job"] == created[0]["id"] for b in busy)

    fence = c.wait_job(created[0]["id"], timeout=120)
    assert fence["state"] == "succeeded" and fence["requested_by"] == "admin", fence
    assert fence["result"]["fence"]["steps"][:2] == ["power off sent", "verified off"]
    assert fence["params"]["why"] == "fenced by hand by admin"
    assert Counter(j["vm"] for j in jobs(c, "recover")) == {"mf0": 1, "mf1": 1}
    assert all(v["node"] != victim and v["state"] == "running" for v in vms(c).values())
    assert fence_of(c, victim)["id"] == fence["id"]  # the monitor added none of its own
    assert sample(scrape(c), "pvc_fences_total", outcome="off") == 1
    c.wait_worker(victim)  # powered on again by the fence
