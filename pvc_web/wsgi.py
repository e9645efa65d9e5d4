"""``pvc-api``'s HTTP server: waitress, hardened so that idle, slow or greedy clients cannot starve the others.

Waitress reads every request in full on its event loop before a worker thread sees it, so a slow client costs a
socket, never a thread. What is left to bound is sockets, and this module bounds them:

- **total**: ``api_connection_limit`` (2000) open connections, polled with ``poll()`` (``select()`` stops at
  1024 descriptors), and the process's descriptor limit raised to fit;
- **per client address**: ``api_connections_per_client`` (256); a connection beyond it is closed as soon as it
  is accepted, so one host cannot take the whole budget;
- **idle**: a keep-alive connection with no request for ``api_idle_timeout`` (15 s) is closed;
- **slow**: a request whose headers and body have not all arrived ``api_request_timeout`` (20 s) after its first
  byte is cut (a client trickling a byte at a time would otherwise never be idle);
- **size**: a body larger than ``api_max_body`` (4 MiB) is answered 413 from its Content-Length, before it is
  read; headers are limited to 64 KiB.

The event loop checks the idle and slow bounds every second. bench/api_connections.py measures the result.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter

from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

from pvc_tasks.config import Settings

__all__ = ["GuardedServer", "serve"]

log = logging.getLogger(__name__)


class GuardedChannel(HTTPChannel):
    """A connection that counts against its client's share and remembers when its current request began."""

    def __init__(self, server: GuardedServer, sock, addr, adj, map=None) -> None:
        super().__init__(server, sock, addr, adj, map)
        self.peer = addr[0] if isinstance(addr, tuple) else str(addr)
        self.partial_since: float | None = None
        server.peers[self.peer] += 1
        if server.peers[self.peer] > server.per_client:
            log.warning("closing a connection from %s: it holds %d (api_connections_per_client %d)", self.peer,
                        server.peers[self.peer] - 1, server.per_client)
            self.will_close = True

    def received(self, data: bytes) -> bool:
        if self.request is None and self.partial_since is None:
            self.partial_since = time.monotonic()
        result = super().received(data)
        if self.request is None:
            self.partial_since = None  # nothing half-read: the last request arrived whole
        return result

    def del_channel(self, map=None) -> None:
        if self._fileno is not None and self._fileno in self.server.active_channels:
            self.server.peers[self.peer] -= 1
            if self.server.peers[self.peer] <= 0:
                del self.server.peers[self.peer]
        super().del_channel(map)


class GuardedServer(TcpWSGIServer):
    channel_class = GuardedChannel

    def __init__(self, application, *, per_client: int, request_timeout: float, **adjustments) -> None:
        self.peers: Counter[str] = Counter()
        self.per_client, self.request_timeout = per_client, request_timeout
        super().__init__(application, **adjustments)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # the idle bound (channel_timeout)
        cutoff = time.monotonic() - self.request_timeout
        for channel in list(self.active_channels.values()):
            since = getattr(channel, "partial_since", None)
            if since is not None and since < cutoff and not channel.requests:
                channel.will_close = True


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(app, settings: Settings, host: str, port: int) -> None:
    """Serve ``app`` until the process is stopped."""
    _raise_fd_limit(settings.api_connection_limit + 256)
    server = GuardedServer(
        app, per_client=settings.api_connections_per_client, request_timeout=settings.api_request_timeout,
        host=host, port=port, threads=settings.api_threads, ident="pvc-api",
        connection_limit=settings.api_connection_limit, channel_timeout=settings.api_idle_timeout,
        cleanup_interval=1, max_request_body_size=settings.api_max_body, max_request_header_size=64 * 1024,
        asyncore_use_poll=True, backlog=1024,
        # Read while a request is served, so that a client that closes an event stream is seen at once (waitress
        # then says so to the stream, pvc_web.events); without it a stream kept its thread until its next write.
        channel_request_lookahead=1)
    log.info("serving on http://%s:%s (%d threads, %d connections, %d per client)", host, port,
             settings.api_threads, settings.api_connection_limit, settings.api_connections_per_client)
    server.run()
