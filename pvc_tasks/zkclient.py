"""The one way a pvc process opens ZooKeeper: authenticated as pvc's identity, creating nodes only it can read.

``connect(settings)`` returns an unstarted ``KazooClient`` whose ``auth_data`` is the digest identity of the
``zookeeper_auth`` setting and whose ``default_acl`` gives that identity alone every right (``zk_schema.acl``).
A process without the setting does not start: a pvc client that could create world-readable nodes would undo
the ACLs for every key it writes. With ``zookeeper_tls_ca`` the connection is TLS (``tls_context``): the server's
certificate must be signed by that CA, the cluster's own (never the system's store of public CAs, whose every
customer could otherwise pose as the ensemble), and must name the host pvc dialled (``zookeeper_tls_check_hostname``,
on by default); ``zookeeper_tls_cert``/``_key`` add the client's certificate. kazoo's own TLS loads the system
store and checks no hostname, so the handler opens the TLS connection itself.
"""

from __future__ import annotations

import select
import socket
import ssl

from kazoo.client import KazooClient
from kazoo.handlers import utils
from kazoo.handlers.threading import SequentialThreadingHandler

from pvc_tasks import defaults
from pvc_tasks.config import Settings
from pvc_tasks.metrics import TimedKazooClient
from zk_schema.acl import acl_for, parse_identity

__all__ = ["MissingIdentity", "PollHandler", "connect", "tls_context"]


_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT


class PollHandler(SequentialThreadingHandler):
    """kazoo's threading handler, whose connection loop waits with one poll(2) call. kazoo's own ``select`` builds
    two dicts and an epoll selector (three system calls) at every wait, and its loop waits twice per request: a
    fifth of the time a busy worker held the GIL went there (py-spy --gil, a flush of 200 VMs). With ``tls`` it
    opens TLS connections with that context (``tls_context``) instead of kazoo's."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.tls = tls

    def create_connection(self, *args, **kwargs):
        if self.tls is None or not kwargs.get("use_ssl"):
            return super().create_connection(*args, **kwargs)
        plain = utils.create_tcp_connection(socket, kwargs["address"], timeout=kwargs.get("timeout"))
        try:
            return self.tls.wrap_socket(plain, server_hostname=kwargs.get("hostname"))
        except (ssl.SSLError, OSError):
            plain.close()
            raise

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
    context = tls_context(settings) if settings.zookeeper_tls_ca else None
    # Reconnect attempts at most a second apart: kazoo's default backoff doubles up to an hour, so after a ZooKeeper
    # outage of T s a client came back up to ~T s later still (seen: a keepalive 6 s stale after a 3 s outage).
    retry = {"max_tries": -1, "delay": 0.1, "backoff": 2, "max_jitter": 0.4,
             "max_delay": defaults.ZK_RECONNECT_MAX_DELAY}
    return TimedKazooClient(hosts=settings.zookeeper, timeout=timeout or settings.zk_session_timeout,
                       auth_data=[("digest", settings.zookeeper_auth)], connection_retry=retry,
                       default_acl=acl_for(settings.zookeeper_auth), handler=PollHandler(context),
                       use_ssl=context is not None)


def tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS to ZooKeeper: the cluster's CA alone, the server's name checked (unless ``zookeeper_tls_check_hostname``
    is off), TLS 1.2 at least, and the client's certificate when set. Read once per client: a missing or unreadable
    file is an ``OSError`` naming it, at start-up."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.zookeeper_tls_ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.zookeeper_tls_check_hostname
    if settings.zookeeper_tls_cert and settings.zookeeper_tls_key:
        context.load_cert_chain(settings.zookeeper_tls_cert, settings.zookeeper_tls_key)
    return context
