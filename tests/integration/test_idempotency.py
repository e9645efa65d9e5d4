"""Safe retries: a request sent again with the same Idempotency-Key gets the job the first one created, never a
second job; the key cannot be reused for another request."""

from __future__ import annotations

import uuid

from pvc_dev.invariants import libvirt_domains
from tests.conftest import race


def jobs_of(cluster, vm: str) -> list[dict]:
    return [j for j in cluster.session().get(f"{cluster.api_url}/api/v1/jobs", params={"vm": vm}, timeout=10).json()]


def test_a_retry_with_the_same_key_gets_the_same_job(cluster, api, vm_name):
    """The same start request sent three times with one key: one job, answered three times (the later two marked
    replayed), and the VM started once."""
    assert cluster.define_vm(vm_name, node="hv1")["state"] == "succeeded"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    answers = [api.post(f"{api.base}/vms/{vm_name}/state", json={"state": "start"}, headers=key, timeout=10)
               for _ in range(3)]
    assert [r.status_code for r in answers] == [202] * 3, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert [r.headers.get("Idempotent-Replayed") for r in answers] == [None, "true", "true"]
    assert cluster.wait_job(answers[0].json()["id"])["state"] == "succeeded"
    assert [j["kind"] for j in jobs_of(cluster, vm_name)] == ["start", "define"]
    again = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": "start"}, headers=key, timeout=10)
    assert again.status_code == 202 and again.json()["state"] == "succeeded"  # after the end too
    assert libvirt_domains(cluster)["hv1"][vm_name]["state"] == "running"


def test_the_same_key_for_another_request_is_409(cluster, api, vm_name):
    """A key already used for one request is refused for a different one (409 idempotency_key_reused), and a key
    that is not 1-255 printable ASCII characters is 400; neither creates a job."""
    assert cluster.define_vm(vm_name, node="hv2")["state"] == "succeeded"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": "start"}, headers=key, timeout=10)
    assert cluster.wait_job(first.json()["id"])["state"] == "succeeded"
    other = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": "stop"}, headers=key, timeout=10)
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused", other.text
    assert other.json()["details"]["job"] == first.json()["id"]
    bad = api.post(f"{api.base}/vms/{vm_name}/state", json={"state": "stop"},
                   headers={"Idempotency-Key": "x" * 256}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request", bad.text
    assert len(jobs_of(cluster, vm_name)) == 2  # define and the one start


def test_racing_twins_with_one_key_make_one_job(cluster, api, vm_name):
    """Eight identical define requests with one key, released at once: all answer the same job, one VM exists."""
    from pvc_dev.cluster import domain_xml

    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"xml": domain_xml(vm_name, 128), "node": "hv3"}
    answers = race(8, lambda _i: api.post(f"{api.base}/vms", json=body, headers=key, timeout=30))
    assert {r.status_code for r in answers} == {202}, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert cluster.wait_job(answers[0].json()["id"])["state"] == "succeeded"
    assert [j["kind"] for j in jobs_of(cluster, vm_name)] == ["define"]
    assert vm_name in libvirt_domains(cluster)["hv3"]
