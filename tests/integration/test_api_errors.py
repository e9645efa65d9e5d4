"""Bad requests get the documented error shape and status, and leave ZooKeeper exactly as it was."""

import pytest
import requests

from pvc_dev.cluster import domain_xml
from pvc_dev.invariants import zk_state
from tests.conftest import zk_snapshot


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message", "details"} and body["error"] == code and body["message"]
    return body


@pytest.fixture
def unchanged(cluster):
    """Asserts at the end of the test that no znode anywhere in the cluster tree was created, deleted or changed
    (keys that tick on their own, ``invariants.TICKING_KEYS``, aside)."""
    before = zk_state(cluster.zk)
    yield
    after = zk_state(cluster.zk)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, {p: (before.get(p), after.get(p)) for p in changed}


@pytest.mark.parametrize("headers", [{}, {"X-Api-Key": "wrong"}, {"X-Api-Key": ""}])
def test_missing_or_wrong_token_is_401(cluster, headers, unchanged):
    """Every endpoint but health needs the token; a wrong one is refused the same way as none."""
    for method, path in [("get", "/vms"), ("get", "/nodes"), ("post", "/vms"), ("get", "/jobs"),
                         ("get", "/openapi.json"), ("post", "/cluster/init")]:
        r = requests.request(method, f"{cluster.api_url}/api/v1{path}", headers=headers, json={}, timeout=5)
        body = assert_error(r, 401, "unauthorised")
        assert cluster.token not in body["message"]
        docs = path == "/openapi.json" and method == "get"
        assert r.headers["WWW-Authenticate"].startswith("Basic" if docs else "ApiKey")


def test_health_is_open_and_basic_auth_opens_only_the_browser_pages(cluster):
    """Health needs no token; a browser may send the token as the Basic password, for the pages it opens only
    (documentation, status page, Swagger UI's files), and only to read them."""
    assert requests.get(f"{cluster.api_url}/api/v1/health", timeout=5).json()["status"] == "ok"
    for path in ("/openapi.json", "/docs", "/docs/static/swagger-ui-bundle.js", "/status", "/status/status.js"):
        r = requests.get(f"{cluster.api_url}/api/v1{path}", auth=("anyone", cluster.token), timeout=5)
        assert r.status_code == 200, path
        assert requests.get(f"{cluster.api_url}/api/v1{path}", timeout=5).status_code == 401, path
    r = requests.post(f"{cluster.api_url}/api/v1/status", auth=("anyone", cluster.token), timeout=5)
    assert r.status_code == 401  # Basic never for a method that is not a read
    assert requests.get(f"{cluster.api_url}/api/v1/docs/static/index.html", auth=("anyone", cluster.token),
                        timeout=5).status_code == 404  # only the files Swagger UI's page loads
    r = requests.get(f"{cluster.api_url}/api/v1/nodes", auth=("anyone", cluster.token), timeout=5)
    assert "X-Api-Key" in assert_error(r, 401, "unauthorised")["message"]


@pytest.mark.parametrize("path,code", [("/vms/nope", "vm_not_found"), ("/nodes/nope", "node_not_found"),
                                       ("/jobs/00000000-0000-0000-0000-000000000000", "job_not_found"),
                                       ("/no/such/route", "not_found")])
def test_unknown_things_are_404(api, path, code, unchanged):
    """Unknown VM, node, job or route: 404 with a stable code."""
    assert_error(api.get(f"{api.base}{path}"), 404, code)


def test_mutations_on_unknown_vm_are_404(api, unchanged):
    """Changing the state of, or undefining, a VM that does not exist creates nothing."""
    assert_error(api.post(f"{api.base}/vms/nope/state", json={"state": "start"}), 404, "vm_not_found")
    assert_error(api.delete(f"{api.base}/vms/nope"), 404, "vm_not_found")
    assert_error(api.post(f"{api.base}/jobs/nope/cancel"), 404, "job_not_found")


def test_malformed_json_is_400(api, unchanged):
    """A body that is not JSON is refused before anything is read or written."""
    r = api.post(f"{api.base}/vms", data="{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 400, "invalid_request")


@pytest.mark.parametrize("body,field", [
    ({"xml": 5}, "xml"), ({}, "xml"), ({"xml": "<domain/>", "node": 3}, "node"),
    ({"xml": "<domain/>", "meta": {"autostart": "perhaps"}}, "meta.autostart"),
    ({"xml": "<domain/>", "meta": {"node_selector": "random"}}, "meta.node_selector"),
    ({"xml": "<domain/>", "meta": {"migration_method": "teleport"}}, "meta.migration_method"),
    ({"xml": "<domain/>", "colour": "blue"}, "colour"),
    ({"xml": "<not-xml"}, "xml"), ({"xml": "<vm/>"}, "xml"), ({"xml": "<domain><name>a b</name></domain>"}, "xml"),
    ({"xml": domain_xml("x").replace("256", "lots")}, "xml"),
    ({"xml": domain_xml("badlimit"), "meta": {"node_limit": ["hv1", "nosuch"]}}, "node_limit"),
    ({"xml": domain_xml("badnode"), "node": "nosuch"}, "node"),
])
def test_bad_define_is_400_naming_the_field(api, body, field, unchanged):
    """Wrong types, unknown fields, bad XML, unknown nodes: 400 whose details name the field."""
    body = assert_error(api.post(f"{api.base}/vms", json=body), 400, "invalid_request")
    assert field in body["details"], body
    assert field in body["message"]


def test_bad_job_filter_is_400(api, unchanged):
    """A job list filter with a value outside its domain is refused, not ignored."""
    assert "state" in assert_error(api.get(f"{api.base}/jobs", params={"state": "done"}), 400,
                                   "invalid_request")["details"]
    assert "limit" in assert_error(api.get(f"{api.base}/jobs", params={"limit": "x"}), 400,
                                   "invalid_request")["details"]


def test_conflicts_and_bad_state_changes(cluster, api):
    """A duplicate VM name or an action from the wrong state is 409; a bad action or timeout is 400."""
    assert cluster.define_vm("errvm", node="hv1", start=True)["state"] == "succeeded"
    before = zk_snapshot(cluster.zk, "/domains")
    jobs_before = cluster.zk.get_children("/jobs")
    assert_error(api.post(f"{api.base}/vms", json={"xml": domain_xml("errvm")}), 409, "vm_exists")
    body = assert_error(api.post(f"{api.base}/vms/errvm/state", json={"state": "start"}), 409, "invalid_state")
    assert "running" in body["message"]
    assert_error(api.delete(f"{api.base}/vms/errvm"), 409, "invalid_state")
    assert zk_snapshot(cluster.zk, "/domains") == before
    assert cluster.zk.get_children("/jobs") == jobs_before
    for body, field in [({"state": "explode"}, "state"), ({"state": "shutdown", "timeout": 0}, "timeout")]:
        assert field in assert_error(api.post(f"{api.base}/vms/errvm/state", json=body), 400,
                                     "invalid_request")["details"]


def test_define_that_fits_nowhere_is_409(api, unchanged):
    """A VM bigger than every node's free memory is refused with no_target and nothing written."""
    assert_error(api.post(f"{api.base}/vms", json={"xml": domain_xml("huge", 1_000_000)}), 409, "no_target")


def test_openapi_document_describes_every_route(api):
    """The OpenAPI 3 document lists every endpoint, the token scheme and the error schema."""
    doc = api.get(f"{api.base}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/api/v1/vms", "/api/v1/vms/{vm}/state", "/api/v1/jobs/{job_id}/cancel", "/api/v1/nodes/{node}"} \
        <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["ApiKey"]["name"] == "X-Api-Key"
    assert set(doc["components"]["schemas"]["Error"]["properties"]) == {"error", "message", "details"}
    assert api.get(f"{api.base}/docs").status_code == 200
