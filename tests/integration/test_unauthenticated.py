"""What a client without a token can make the API do: answer health from memory, and nothing that costs more."""

import statistics
import time
from dataclasses import replace

import pytest
import requests

from pvc_dev.services import wait_until
from pvc_tasks.config import load_settings
from pvc_web.app import create_app
from tests.integration.test_api_errors import assert_error, unchanged  # noqa: F401 - fixture

OPEN = ("/api/v1/health", "/favicon.ico")


def _worst_bodies(size: int) -> dict[str, bytes]:
    """Bodies of ``size`` bytes built to make a scan of JSON slow: unterminated strings full of escapes, lone
    backslashes, brackets deep and wide, and a plain string of the same size to compare against."""
    return {
        "plain": b'{"xml": "' + b"a" * (size - 11) + b'"}',
        "quote-then-escaped-quotes": b'"' + b'\\"' * ((size - 1) // 2),
        "quotes": b'"' * size,
        "backslashes": b"\\" * size,
        "escaped-backslashes-unterminated": b'"' + b"\\\\" * ((size - 1) // 2),
        "open-brackets": b"[" * size,
        "brackets-in-strings": b'"[' * (size // 2),
        "objects": b'{"a":' * (size // 5),
        "unicode-escapes": b'"' + b"\\u0022" * ((size - 1) // 6),
    }


def _seconds(send, body: bytes, rounds: int = 3) -> float:
    """The fastest of ``rounds`` requests with ``body`` (the fastest is the one the machine's noise touched least)."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        send(body)
        times.append(time.perf_counter() - started)
    return min(times)


@pytest.mark.parametrize("path", OPEN)
def test_open_endpoints_answer_only_get_and_head(cluster, path, unchanged):  # noqa: F811
    """Every other method is 405 with ``Allow``, in the error shape, before any other check."""
    assert requests.get(f"{cluster.api_url}{path}", timeout=10).status_code in (200, 204)  # favicon: empty
    assert requests.head(f"{cluster.api_url}{path}", timeout=10).status_code in (200, 204)
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = requests.request(method, f"{cluster.api_url}{path}", data=b'"' + b'\\"' * 1000, timeout=10,
                             headers={"Content-Type": "application/json"})
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("size", [64 * 1024, 4 * 1024 * 1024 - 4096], ids=["64KiB", "4MiB"])
def test_no_body_costs_much_more_than_a_plain_one(cluster, size, record_property):
    """The worst bodies we know cost at most 20x a plain JSON body of the same size (one long string), sent without a
    token to health and with one to /vms: linear, where 64 KiB of ``\\"`` after a quote once took seconds and 4 MiB
    hours. (Many small tokens cost more than one long string in any JSON reader: 4 MiB of ``[],`` takes
    ``json.loads`` 0.6 s here.)"""
    session = cluster.session()
    targets = {
        "no token, /health": lambda body: requests.post(f"{cluster.api_url}/api/v1/health", data=body, timeout=120,
                                                         headers={"Content-Type": "application/json"}),
        "admin token, /vms": lambda body: session.post(f"{cluster.api_url}/api/v1/vms", data=body, timeout=120,
                                                        headers={"Content-Type": "application/json"}),
    }
    ratios = {}
    for target, send in targets.items():
        bodies = _worst_bodies(size)
        plain = max(_seconds(send, bodies.pop("plain")), 0.002)  # a floor: sub-millisecond figures are all noise
        for name, body in bodies.items():
            assert send(body).status_code in (400, 405), name
            ratios[(target, name)] = round(_seconds(send, body) / plain, 2)
    record_property("figures", f"worst body / plain body of {size} bytes: max {max(ratios.values()):.2f} "
                               f"({max(ratios, key=ratios.get)}), median {statistics.median(ratios.values()):.2f}")
    assert {k: r for k, r in ratios.items() if r > 20} == {}


def test_a_path_cannot_forge_a_line_of_the_access_log(cluster):
    """A ``%0A`` (and any byte outside printable ASCII) in a path is written percent-encoded: one request, one line."""
    forged = "127.0.0.1 GET /api/v1/vms 200 1.0 ms token=admin id=forged client=127.0.0.1"
    path = "/api/v1/x%0A" + forged.replace(" ", "%20") + "%0D%09%E2%80%A8"
    assert requests.get(f"{cluster.api_url}{path}", timeout=10).status_code == 401
    lines = [line for line in cluster.api.log_tail(200).splitlines() if "id=forged" in line]
    assert len(lines) == 1, lines
    assert "token=-" in lines[0] and "/api/v1/x%0A127.0.0.1%20GET" in lines[0] and "%0D%09%E2%80%A8" in lines[0]


def test_health_answers_from_memory(cluster):
    """``/health`` does no I/O: with its looking thread stopped, ZooKeeper's session closed and the broker moved to a
    dead address, it still answers the last look; once that look is older than the bound it says ``stale``."""
    app = create_app(load_settings(env=cluster.env()))
    probe, handle = app.extensions["pvc_health"], app.extensions["pvc"]
    client = app.test_client()
    try:
        wait_until(lambda: client.get("/api/v1/health").status_code == 200, 30, "the probe's first look")
        probe.stop()
        handle.stop()
        probe.settings = replace(probe.settings, broker="redis://127.0.0.1:1/0", redis="redis://127.0.0.1:1/0")
        for _ in range(20):
            r = client.get("/api/v1/health")
            assert r.status_code == 200 and r.json["zookeeper"] and r.json["broker"] and not r.json["stale"], r.json
        probe.stale_after = 0.0
        r = client.get("/api/v1/health")
        assert r.status_code == 503 and r.json["stale"] and r.json["status"] == "degraded", r.json
    finally:
        probe.stop()
