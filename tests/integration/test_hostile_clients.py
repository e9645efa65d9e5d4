"""Hostile clients: huge and deep bodies, cross-site forms, read-only tokens; none gets a 500 or acts, and the
clients next to them keep being served."""

import re
import threading
import uuid

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from pvc_dev.cluster import domain_xml
from pvc_tasks.config import load_settings
from pvc_tasks.defaults import XML_MAX_BYTES
from pvc_tasks.errors import Invalid
from pvc_tasks.jobs import commit
from pvc_tasks.zkclient import connect
from pvc_web.app import create_app
from tests.integration.test_api_errors import assert_error, unchanged  # noqa: F401 - fixture
from tests.integration.test_cli import pvc  # noqa: F401 - fixture


def _serve_others(api, stop: threading.Event, answers: list[int]) -> None:
    while not stop.is_set():
        answers.append(api.get(f"{api.base}/nodes", timeout=30).status_code)


def test_oversized_xml_is_400_and_other_clients_are_served(cluster, api, vm_name, unchanged):  # noqa: F811
    """XML over the byte limit (though under it in characters) is a 400 naming ``xml``; requests of another
    client running at the same time all succeed."""
    filler = "é" * (XML_MAX_BYTES // 2 + 1000)  # 2 bytes each in UTF-8
    xml = domain_xml(vm_name, 64).replace("</name>", f"</name><description>{filler}</description>")
    assert len(xml) < XML_MAX_BYTES < len(xml.encode())
    other, stop, answers = cluster.session(), threading.Event(), []
    other.base = api.base
    thread = threading.Thread(target=_serve_others, args=(other, stop, answers))
    thread.start()
    try:
        for _ in range(5):
            body = assert_error(api.post(f"{api.base}/vms", json={"xml": xml}), 400, "invalid_request")
            assert "xml" in body["details"] and "bytes" in body["message"]
    finally:
        stop.set()
        thread.join(60)
    assert answers and set(answers) == {200}


def test_a_transaction_too_big_for_zookeeper_is_refused_before_it_is_sent(cluster):
    """A transaction over jute.maxbuffer is refused as ``too_large`` by pvc, and the session stays connected (sent,
    the server would drop the connection and every request in flight on it)."""
    zk = connect(load_settings(env={"PVC_ZOOKEEPER": cluster.zk_hosts, "PVC_ZOOKEEPER_AUTH": cluster.zookeeper_auth}))
    zk.start(timeout=15)
    dropped = []
    zk.add_listener(dropped.append)
    try:
        path = f"/too-big-{uuid.uuid4().hex[:6]}"
        with pytest.raises(Invalid) as refused:
            commit(zk, [("create", path, b"x" * (1024 * 1024 + 1))])
        assert refused.value.code == "too_large"
        assert zk.exists(path) is None and dropped == []
    finally:
        zk.stop()
        zk.close()


@pytest.mark.parametrize("depth", [33, 5000, 100_000])
def test_deeply_nested_json_is_400(api, depth, unchanged):  # noqa: F811
    """JSON nested deeper than 32 levels is refused before it is parsed."""
    body = "[" * depth + "]" * depth
    r = api.post(f"{api.base}/vms", data=body, headers={"Content-Type": "application/json"})
    assert "nested deeper" in assert_error(r, 400, "invalid_request")["message"]


def test_a_huge_body_is_refused_before_it_is_sent(cluster):
    """A Content-Length of 1 GiB is answered 413 from the headers alone: the client never has to send the body."""
    import socket

    host, port = cluster.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /api/v1/vms HTTP/1.1\r\nHost: x\r\nX-Api-Key: {cluster.token}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {2**30}\r\n\r\n".encode())
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 413"), answer


def test_a_cross_site_form_post_cannot_act(cluster, api, unchanged):  # noqa: F811
    """The form another site makes a browser post (Basic credentials cached, a form content type) is refused, and
    so is a form content type even with the token."""
    url = f"{cluster.api_url}/api/v1/nodes/hv1/flush"
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"}
    r = requests.post(url, data="allow_shutdown=true", headers=form, auth=("u", cluster.token), timeout=10)
    assert_error(r, 401, "unauthorised")
    r = requests.post(f"{cluster.api_url}/api/v1/nodes/hv1/ready", headers=form, auth=("u", cluster.token),
                      timeout=10)
    assert_error(r, 401, "unauthorised")
    for kind, data in [("application/x-www-form-urlencoded", ""), ("text/plain", '{"allow_shutdown": true}'),
                       ("multipart/form-data; boundary=x", "--x--")]:
        r = api.post(url, data=data, headers={"Content-Type": kind, "Origin": "http://evil.example"})
        assert_error(r, 415, "unsupported_media_type")


def _example(rule) -> str:
    values = {"vm": "some-vm", "node": "hv1", "vf": "ens1f0v0", "job_id": str(uuid.uuid4())}
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], rule.rule)


def test_a_read_only_token_gets_403_on_every_mutation(cluster, unchanged):  # noqa: F811
    """Every route and method of the app's url_map that is not GET/HEAD/OPTIONS refuses the read-only token."""
    settings = load_settings(env=cluster.env())
    app = create_app(settings)
    try:
        mutations = [(method, _example(rule)) for rule in app.url_map.iter_rules()
                     for method in sorted(rule.methods - {"GET", "HEAD", "OPTIONS"})]
    finally:
        app.extensions["pvc"].stop()
    assert len(mutations) >= 15
    reader = requests.Session()
    reader.headers["X-Api-Key"] = cluster.read_token
    for method, path in mutations:
        r = reader.request(method, f"{cluster.api_url}{path}", json={}, timeout=10)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path, r.text)
    assert reader.get(f"{cluster.api_url}/api/v1/nodes", timeout=10).status_code == 200


def test_jobs_show_who_asked_for_them(cluster, api, pvc):  # noqa: F811
    """A job records the name of the token that asked for it; the API and ``pvc job show/list`` show it."""
    r = api.post(f"{api.base}/nodes/hv3/ready")
    assert r.status_code == 202, r.text
    job = cluster.wait_job(r.json()["id"])
    assert job["requested_by"] == "admin"
    shown = pvc("job", "show", job["id"])
    assert shown.returncode == 0 and re.search(r"by: admin", shown.stdout), shown.stdout
    listed = pvc("job", "list", "--node", "hv3", "-o", "json")
    assert any(j["id"] == job["id"] and j["requested_by"] == "admin" for j in __import__("json").loads(listed.stdout))


def test_redis_serves_only_pvcs_user(cluster):
    """The broker refuses a client without credentials, the default user and a wrong password; pvc's ACL user,
    which every worker and the API use, is served."""
    port, password = int(cluster.redis.info["port"]), str(cluster.redis.info["password"])

    def client(**auth) -> redis.Redis:
        # No retries: redis-py retries a refused AUTH (a ConnectionError) with backoff, which says nothing here.
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0), **auth)

    with pytest.raises(redis.AuthenticationError):
        client().ping()
    for auth in ({"password": password}, {"username": "default", "password": password},
                 {"username": "pvc", "password": password + "x"}):
        with pytest.raises(redis.AuthenticationError):
            client(**auth).ping()
    assert client(username="pvc", password=password).ping()
    assert cluster.broker_url.startswith("redis://pvc:")


def test_a_read_only_token_never_sees_the_secrets_in_a_vms_xml(cluster, vm_name):
    """A display password in a VM's XML (and in the target XML a migration keeps in its job's params) is shown to
    an admin token and replaced by ``(redacted)`` for a read-only token; the same holds in job lists."""
    xml = domain_xml(vm_name, 64).replace("</domain>", "<devices><graphics type='vnc' passwd='hunter2vnc'/>"
                                                       "<interface type='direct'><source dev='ens1f0v2' "
                                                       "mode='passthrough'/></interface></devices></domain>")
    assert cluster.define_vm(vm_name, node="hv1", xml=xml)["state"] == "succeeded"
    admin, reader = cluster.session(), requests.Session()
    reader.headers["X-Api-Key"] = cluster.read_token
    base = f"{cluster.api_url}/api/v1"
    job = admin.post(f"{base}/vms/{vm_name}/migrate", json={"target": "hv2"}, timeout=10).json()
    assert cluster.wait_job(job["id"])["state"] == "succeeded"
    assert "hunter2vnc" in admin.get(f"{base}/vms/{vm_name}", timeout=10).json()["xml"]
    assert "hunter2vnc" in admin.get(f"{base}/jobs/{job['id']}", timeout=10).json()["params"]["target_xml"]
    shown = reader.get(f"{base}/vms/{vm_name}", timeout=10).json()["xml"]
    assert "hunter2vnc" not in shown and "passwd=\"(redacted)\"" in shown
    for answer in (reader.get(f"{base}/jobs/{job['id']}", timeout=10), reader.get(f"{base}/jobs", timeout=10,
                                                                                  params={"vm": vm_name})):
        assert answer.status_code == 200 and "hunter2vnc" not in answer.text and "(redacted)" in answer.text
    assert cluster.wait_job(admin.delete(f"{base}/vms/{vm_name}", timeout=10).json()["id"])["state"] == "succeeded"
