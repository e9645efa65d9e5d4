"""bench/api_connections.py: can hostile or numerous clients starve pvc-api? pvc-api against the old server setup.

Both servers run in this process's cluster, one after the other, serving the same app on the same ZooKeeper:

- ``pvc-api``: pvc_web.wsgi (2000 connections, 256 per client, 15 s idle, 20 s per request, poll());
- ``baseline``: waitress as pvc-api ran it before (8 threads, waitress's defaults: 100 connections, 120 s idle).

Scenarios (the client timeout is 30 s everywhere):

1. ``concurrent``: 200 clients at once, each with its own keep-alive connection, 5 ``GET /api/v1/nodes`` each;
   counts the requests that failed or timed out and the latency percentiles.
2. ``idle``: 150 sockets opened and left silent, then one new client's ``GET /api/v1/nodes``: its time.
3. ``slow``: 150 sockets trickling request headers a byte a second, then one new client: its time.

    .venv/bin/python bench/api_connections.py [--clients 200] [--idle 150]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pvc_dev.cluster import LocalCluster, NodeSpec  # noqa: E402
from pvc_dev.services import Service, _await, free_port  # noqa: E402

#: The server as pvc-api started it before issue 15 (waitress.serve with 8 threads and waitress's defaults).
BASELINE = """
import os
from waitress import serve
from pvc_tasks.config import load_settings
from pvc_web.app import create_app
serve(create_app(load_settings()), host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), threads=8)
"""


def concurrent(url: str, token: str, clients: int, each: int = 5) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    barrier = threading.Barrier(clients)

    def client() -> None:
        session = requests.Session()
        session.headers["X-Api-Key"] = token
        barrier.wait(60)
        for _ in range(each):
            started = time.monotonic()
            try:
                r = session.get(f"{url}/api/v1/nodes", timeout=30)
                r.raise_for_status()
                latencies.append(time.monotonic() - started)
            except requests.RequestException as exc:
                failures.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {"ok": len(latencies), "failed": len(failures), "kinds": sorted(set(failures)),
            "p50": statistics.median(latencies) if latencies else float("nan"), "p99": pick(0.99),
            "max": latencies[-1] if latencies else float("nan")}


def newcomer(url: str, token: str) -> str:
    started = time.monotonic()
    try:
        requests.get(f"{url}/api/v1/nodes", headers={"X-Api-Key": token}, timeout=30).raise_for_status()
    except requests.RequestException as exc:
        return f"FAILED after {time.monotonic() - started:.2f} s ({type(exc).__name__})"
    return f"{time.monotonic() - started:.3f} s"


def with_sockets(url: str, token: str, count: int, trickle: bool) -> str:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(count):
        try:
            socks.append(socket.create_connection((host, int(port)), timeout=5))
        except OSError:
            break  # the listen backlog is full: the server stopped accepting
    stop = threading.Event()

    def drip() -> None:
        header = b"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"x" * 10_000
        for i in range(len(header)):
            for s in socks:
                try:
                    s.send(header[i:i + 1])
                except OSError:
                    pass
            if stop.wait(1):
                return

    if trickle:
        threading.Thread(target=drip, daemon=True).start()
        time.sleep(2)
    try:
        return newcomer(url, token)
    finally:
        stop.set()
        for s in socks:
            s.close()


def run(name: str, url: str, token: str, args: argparse.Namespace) -> None:
    c = concurrent(url, token, args.clients)
    print(f"{name:<9} concurrent {args.clients} clients x 5: ok {c['ok']}, failed {c['failed']} {c['kinds'] or ''}"
          f"  p50 {c['p50'] * 1000:.0f} ms  p99 {c['p99'] * 1000:.0f} ms  max {c['max'] * 1000:.0f} ms", flush=True)
    print(f"{name:<9} new client with {args.idle} idle sockets open: {with_sockets(url, token, args.idle, False)}",
          flush=True)
    print(f"{name:<9} new client with {args.idle} slow senders:      {with_sockets(url, token, args.idle, True)}",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--idle", type=int, default=150)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pvc-bench-api-"))
    cluster = LocalCluster(workdir, [NodeSpec(f"hv{i}", 8192) for i in (1, 2, 3)], flower=False, fencing=False)
    cluster.start()
    baseline: Service | None = None
    try:
        run("pvc-api", cluster.api_url, cluster.token, args)
        port = free_port()
        baseline = Service("baseline-api", [sys.executable, "-c", BASELINE], workdir / "baseline.log",
                           env={**cluster.env(), "BENCH_PORT": str(port), "PYTHONPATH": str(ROOT)})
        url = f"http://127.0.0.1:{port}"
        _await(baseline, lambda: requests.get(f"{url}/api/v1/health", timeout=2).ok, 30, "the baseline API")
        run("baseline", url, cluster.token, args)
    finally:
        if baseline is not None:
            baseline.stop()
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
