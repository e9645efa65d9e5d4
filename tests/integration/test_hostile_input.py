"""Names that are not names, wherever a client can put them, get a 4xx with the error shape and change nothing."""

import threading
import uuid
from urllib.parse import quote

import pytest

from pvc_dev.cluster import domain_xml
from pvc_tasks.names import JOB_ID
from tests.integration.test_api_errors import assert_error, unchanged  # noqa: F401 - fixture

#: Each broke a ZooKeeper path (kazoo ValueError / BadArgumentsError, SchemaError) before names were checked.
BAD_NAMES = [".", "..", "a\x00b", "a/b", "../config", " hv1", "hv1 ", "a b", "-x", "x" * 64, "é", "a\nb"]

#: (method, path template, body): ``{n}`` is replaced by the bad name, percent-encoded (so ``..`` is not resolved by
#: the client and ``/`` stays inside the component).
PATHS = [
    ("get", "/vms/{n}", None), ("post", "/vms/{n}/state", {"state": "start"}),
    ("post", "/vms/{n}/migrate", {}), ("post", "/vms/{n}/move", {}), ("post", "/vms/{n}/unmigrate", {}),
    ("delete", "/vms/{n}", None), ("put", "/vms/{n}/meta", {"autostart": True}),
    ("get", "/nodes/{n}", None), ("post", "/nodes/{n}/flush", {}), ("post", "/nodes/{n}/ready", None),
    ("get", "/sriov/vfs/{n}/ens1f0v0", None), ("get", "/sriov/vfs/hv1/{n}", None),
    ("put", "/sriov/vfs/{n}/ens1f0v0", {"vlan_id": 1}), ("get", "/jobs/{n}", None),
    ("post", "/jobs/{n}/cancel", None),
]
QUERIES = [("/jobs", "node"), ("/jobs", "vm"), ("/jobs", "parent"), ("/sriov/vfs", "node"), ("/sriov/vfs", "pf"),
           ("/sriov/pfs", "node")]


def _bodies(name: str, vm: str) -> list[tuple[str, str, dict]]:
    return [("post", "/vms", {"xml": domain_xml(vm, 64), "node": name}),
            ("post", "/vms", {"xml": domain_xml(vm, 64), "meta": {"node_limit": [name]}}),
            ("post", "/vms", {"xml": domain_xml(vm, 64).replace(f"<name>{vm}</name>", f"<name>{name}</name>")}),
            ("post", "/vms/no-such-vm/migrate", {"target": name}),
            ("put", "/vms/no-such-vm/meta", {"node_limit": [name]})]


def _is_client_error(r) -> bool:
    body = r.json()
    return 400 <= r.status_code < 500 and set(body) == {"error", "message", "details"}


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_anywhere_are_4xx(api, name, vm_name, unchanged):  # noqa: F811
    """Every bad name in every path, query and body field is answered 400 or 404 in the error shape."""
    failures = []
    for method, template, body in PATHS:
        r = api.request(method, api.base + template.format(n=quote(name, safe="")), json=body)
        if not _is_client_error(r):
            failures.append((method, template, r.status_code, r.text[:200]))
    for path, field in QUERIES:
        if field == "parent" and JOB_ID.match(name):
            continue  # a job id, not a name: "-x" is a well-formed id of no job
        r = api.get(f"{api.base}{path}", params={field: name})
        if not _is_client_error(r):
            failures.append(("get", f"{path}?{field}=", r.status_code, r.text[:200]))
    for method, path, body in _bodies(name, vm_name):
        r = api.request(method, api.base + path, json=body)
        if not _is_client_error(r):
            failures.append((method, path, sorted(body), r.status_code, r.text[:200]))
    assert failures == []


def test_a_bad_name_is_named_in_the_answer(api):
    """The error says which parameter and which rule."""
    body = assert_error(api.get(f"{api.base}/nodes/{quote('a b', safe='')}"), 400, "invalid_request")
    assert "node" in body["details"] and "letters, digits" in body["message"]
    body = assert_error(api.post(f"{api.base}/vms/x/migrate", json={"target": "a/b"}), 400, "invalid_request")
    assert "target" in body["details"]


def test_a_uuid_is_unique_in_the_cluster(cluster, api, vm_name):
    """A second VM with a UUID the cluster knows is refused; of defines racing with one new UUID exactly one wins."""
    taken = str(uuid.uuid4())
    with_uuid = lambda name, u: domain_xml(name, 64).replace("</name>", f"</name><uuid>{u}</uuid>")  # noqa: E731
    first = api.post(f"{api.base}/vms", json={"xml": with_uuid(vm_name, taken), "node": "hv1"})
    assert first.status_code == 202, first.text
    cluster.wait_job(first.json()["id"])
    body = assert_error(api.post(f"{api.base}/vms", json={"xml": with_uuid(vm_name + "b", taken)}), 409,
                        "uuid_exists")
    assert body["details"]["vm"] == vm_name
    fresh, barrier = str(uuid.uuid4()), threading.Barrier(4)
    answers: list = [None] * 4

    def define(i: int) -> None:
        session = cluster.session()
        barrier.wait(30)
        answers[i] = session.post(f"{api.base}/vms", json={"xml": with_uuid(f"{vm_name}r{i}", fresh)}, timeout=60)

    threads = [threading.Thread(target=define, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    codes = sorted(r.status_code for r in answers)
    assert codes == [202, 409, 409, 409], [r.text for r in answers]
    winner = next(r.json() for r in answers if r.status_code == 202)
    cluster.wait_job(winner["id"])
    assert [r.json()["error"] for r in answers if r.status_code == 409] == ["uuid_exists"] * 3
    for name in (vm_name, winner["vm"]):
        cluster.wait_job(api.delete(f"{api.base}/vms/{name}").json()["id"])
    again = api.post(f"{api.base}/vms", json={"xml": with_uuid(vm_name + "x", taken), "node": "hv1"})
    assert again.status_code == 202, f"an undefined VM's UUID is free again: {again.text}"
    assert cluster.wait_job(again.json()["id"])["state"] == "succeeded"
    cluster.wait_job(api.delete(f"{api.base}/vms/{vm_name}x").json()["id"])
