"""The one way a pvc process opens ZooKeeper: authenticated as pvc's identity, creating nodes only it can read.

``connect(settings)`` returns an unstarted ``KazooClient`` whose ``auth_data`` is the digest identity of the
``zookeeper_auth`` setting and whose ``default_acl`` gives that identity alone every right (``zk_schema.acl``).
A process without the setting does not start: a pvc client that could create world-readable nodes would undo
the ACLs for every key it writes. With ``zookeeper_tls_ca`` the connection is TLS, verifying the server's
certificate against that CA (and presenting ``zookeeper_tls_cert``/``_key`` when set).
"""

from __future__ import annotations

import select

from kazoo.client import KazooClient
from kazoo.handlers.threading import SequentialThreadingHandler

from pvc_tasks import defaults
from pvc_tasks.config import Settings
from pvc_tasks.metrics import TimedKazooClient
from zk_schema.acl import acl_for, parse_identity

__all__ = ["MissingIdentity", "PollHandler", "connect"]


_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT


class PollHandler(SequentialThreadingHandler):
    """kazoo's threading handler, whose connection loop waits with one poll(2) call. kazoo's own ``select`` builds
    two dicts and an epoll selector (three system calls) at every wait, and its loop waits twice per request: a
    fifth of the time a busy worker held the GIL went there (py-spy --gil, a flush of 200 VMs)."""

    def select(self, rlist: list, wlist: list, xlist: list, timeout: float | None = None) -> tuple[list, list, list]:
        poller, masks, objects = select.poll(), {}, {}
        for objs, mask in ((rlist, _READ), (wlist, _WRITE)):
            for obj in objs:
                fd = obj if isinstance(obj, int) else obj.fileno()
                masks[fd] = masks.get(fd, 0) | mask
                objects.setdefault(fd, []).append((obj, mask))
        for fd, mask in masks.items():
            poller.register(fd, mask)
        readable, writable = [], []
        for fd, events in poller.poll(None if timeout is None else timeout * 1000):
            # An error or a hang-up wakes both sides, as select(2) would: the next read or write raises it.
            for obj, mask in objects[fd]:
                if events & (mask | select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    (readable if mask == _READ else writable).append(obj)
        return readable, writable, []


class MissingIdentity(ValueError):
    """``zookeeper_auth`` is not set (or not ``user:password``)."""


def connect(settings: Settings, *, timeout: float | None = None) -> KazooClient:
    if not settings.zookeeper_auth:
        raise MissingIdentity("zookeeper_auth is not set: every pvc process authenticates to ZooKeeper as "
                              "'user:password' (PVC_ZOOKEEPER_AUTH or the config file; docs/security.md)")
    try:
        parse_identity(settings.zookeeper_auth)
    except ValueError as exc:
        raise MissingIdentity(str(exc)) from None
    tls = {}
    if settings.zookeeper_tls_ca:
        tls = {"use_ssl": True, "verify_certs": True, "ca": settings.zookeeper_tls_ca,
               "certfile": settings.zookeeper_tls_cert or None, "keyfile": settings.zookeeper_tls_key or None}
    # Reconnect attempts at most a second apart: kazoo's default backoff doubles up to an hour, so after a ZooKeeper
    # outage of T s a client came back up to ~T s later still (seen: a keepalive 6 s stale after a 3 s outage).
    retry = {"max_tries": -1, "delay": 0.1, "backoff": 2, "max_jitter": 0.4,
             "max_delay": defaults.ZK_RECONNECT_MAX_DELAY}
    return TimedKazooClient(hosts=settings.zookeeper, timeout=timeout or settings.zk_session_timeout,
                       auth_data=[("digest", settings.zookeeper_auth)], connection_retry=retry,
                       default_acl=acl_for(settings.zookeeper_auth), handler=PollHandler(), **tls)
