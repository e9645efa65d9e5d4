"""Idle, slow and greedy connections are cut by the API's server, and cannot keep other clients out."""

import select
import socket
import time

import pytest
import requests

from pvc_dev.services import start_api, wait_until


@pytest.fixture(scope="module")
def strict_api(cluster, tmp_path_factory):
    """A second pvc-api on the module's cluster with short bounds: 8 s idle, 2 s per request, 20 per client."""
    env = {**cluster.env(), "PVC_API_IDLE_TIMEOUT": "8", "PVC_API_REQUEST_TIMEOUT": "2",
           "PVC_API_CONNECTIONS_PER_CLIENT": "20"}
    svc = start_api(env, tmp_path_factory.mktemp("strict-api"))
    yield svc
    svc.stop()


def _connect(svc) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", int(svc.info["port"])), timeout=30)
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes the connection (EOF or reset) within ``within`` s."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_an_idle_connection_is_closed(strict_api):
    """A connection that sends nothing is closed after the idle bound."""
    with _connect(strict_api) as sock:
        assert _closed_by_server(sock, 30)


def test_a_slow_sender_is_cut_although_never_idle(strict_api):
    """Headers trickled a byte every 0.2 s (never idle for 8 s) are cut at the 2 s request bound."""
    request = f"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\nX-Padding: {'x' * 400}\r\n\r\n".encode()
    with _connect(strict_api) as sock:
        started, cut = time.monotonic(), False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if _closed_by_server(sock, 0.2):
                cut = True
                break
        assert cut, f"still open after {time.monotonic() - started:.1f} s and the whole request"


def test_one_client_cannot_take_every_connection(strict_api, cluster):
    """Connections beyond the per-client share are closed at once; those within it, and new ones once it frees
    up, are served."""
    socks = [_connect(strict_api) for _ in range(25)]
    try:
        closed: set[int] = set()
        deadline = time.monotonic() + 5  # the server accepts them all and closes 5, well within the 8 s idle bound
        while len(closed) < 5 and time.monotonic() < deadline:
            readable, _, _ = select.select([s for i, s in enumerate(socks) if i not in closed], [], [], 0.2)
            closed |= {socks.index(s) for s in readable if _closed_by_server(s, 0.1)}
        assert sorted(closed) == list(range(20, 25))
    finally:
        for s in socks:
            s.close()
    # Once the server has seen them close (its next poll), the client's share is free again.
    served = wait_until(lambda: requests.get(f"{strict_api.info['url']}/api/v1/nodes",
                                             headers={"X-Api-Key": cluster.token}, timeout=30).status_code == 200,
                        30, "a new connection of the client to be served")
    assert served


def test_a_client_is_served_while_150_idle_sockets_are_open(cluster):
    """150 idle connections (more than waitress's default limit of 100) do not keep a new client out."""
    host, port = cluster.api_url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(150)]
    try:
        r = requests.get(f"{cluster.api_url}/api/v1/nodes", headers={"X-Api-Key": cluster.token}, timeout=30)
        assert r.status_code == 200
    finally:
        for s in idle:
            s.close()
