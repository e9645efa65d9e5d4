"""pvc-api SIGKILLed during a burst of requests: every job it created ends, and clients that retry with their
Idempotency-Key get the job their first attempt created, never a second one (checked in libvirt too)."""

from __future__ import annotations

import threading
import time
import uuid

import requests

from pvc_dev.cluster import NodeSpec
from pvc_dev.invariants import libvirt_domains
from pvc_dev.services import wait_until
from tests.chaos.scenarios import BOUND, FAULTY, assert_no_crash


def test_api_killed_during_a_burst_of_40_starts(make_cluster):
    """40 start requests at once, the API SIGKILLed after the first answers: once it is back, every job created
    for them ends, a retry of each request with its key creates no second job, and every VM runs once."""
    c = make_cluster([NodeSpec("hv1", 16384), NodeSpec("hv2", 16384)], worker_env=FAULTY)
    names = [f"b{i:02d}" for i in range(40)]
    for i, name in enumerate(names):
        assert c.define_vm(name, 64, node=f"hv{1 + i % 2}")["state"] == "succeeded"
    keys = {name: str(uuid.uuid4()) for name in names}
    first: dict[str, dict | str] = {}
    url, session = c.api_url, c.session()

    def start(name: str) -> None:
        try:
            r = session.post(f"{url}/api/v1/vms/{name}/state", json={"state": "start"},
                             headers={"Idempotency-Key": keys[name]}, timeout=30)
            first[name] = r.json() if r.status_code == 202 else f"{r.status_code} {r.text}"
        except requests.RequestException as exc:
            first[name] = f"connection broke: {type(exc).__name__}"

    threads = [threading.Thread(target=start, args=(name,), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(first) >= 3, 30, "the first answers")
    fault = time.monotonic()
    c.restart_api()
    for thread in threads:
        thread.join(timeout=40)
    broke = [name for name, answer in first.items() if not isinstance(answer, dict)]
    assert broke, "the API answered everything before it was killed: the fault was not injected"
    assert all(str(first[name]).startswith("connection broke") for name in broke), first
    retried = {name: c.session().post(f"{c.api_url}/api/v1/vms/{name}/state", json={"state": "start"},
                                      headers={"Idempotency-Key": keys[name]}, timeout=30) for name in names}
    assert {name: r.status_code for name, r in retried.items() if r.status_code != 202} == {}
    for name, answer in first.items():
        if isinstance(answer, dict):  # an answered request: its retry is the same job
            assert retried[name].json()["id"] == answer["id"] and retried[name].headers["Idempotent-Replayed"]
    ended = [c.wait_job(r.json()["id"], timeout=BOUND) for r in retried.values()]
    print(f"\n{len(broke)} of 40 requests broke; every job ended {time.monotonic() - fault:.1f} s after the kill")
    assert {j["vm"]: j["state"] for j in ended} == dict.fromkeys(names, "succeeded")
    starts = [j for j in c.session().get(f"{c.api_url}/api/v1/jobs", params={"kind": "start"}, timeout=10).json()]
    assert sorted(j["vm"] for j in starts) == names  # one start job per VM, whatever broke
    running = {name for domains in libvirt_domains(c).values() for name, f in (domains or {}).items()
               if f["state"] == "running"}
    assert running == set(names)
    assert_no_crash(c)
