"""Real servers on loopback with free ports and private directories, each stopped by its own PID.

Used by the dev cluster (``pvc-dev up``), the test harness (``tests/conftest.py``) and the benches. Nothing here
fakes anything: ZooKeeper is the Debian package's server, Redis is redis-server, workers are ``pvc-worker``
processes, the API is ``pvc-api`` and Flower is Celery's Flower.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "REDIS_ACL",
    "Ensemble",
    "Service",
    "ServiceDied",
    "free_port",
    "on_a_free_port",
    "start_api",
    "start_ensemble",
    "start_flower",
    "start_rabbitmq",
    "start_redis",
    "start_worker",
    "start_zookeeper",
    "stop_epmd",
    "wait_until",
    "write_private",
    "zk_stats",
]

ZK_CLASSPATH = ":".join(f"/usr/share/java/{jar}" for jar in (
    "zookeeper.jar", "zookeeper-jute.jar", "slf4j-api.jar", "slf4j-log4j12.jar", "log4j-1.2.jar",
    "netty-handler.jar", "netty-common.jar", "netty-buffer.jar", "netty-transport.jar", "netty-codec.jar",
    "netty-resolver.jar", "netty-transport-native-epoll.jar", "netty-transport-native-unix-common.jar",
    "metrics-core.jar", "snappy-java.jar", "commons-cli.jar"))


#: The Redis ACL of pvc's user: every key and channel, every command but the dangerous ones (FLUSHALL, CONFIG,
#: KEYS, DEBUG, SHUTDOWN, MONITOR, CLIENT KILL, MIGRATE, ...). docs/configuration.md, "The broker".
REDIS_ACL = "~* &* +@all -@dangerous"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def write_private(path: Path, data: str | bytes) -> Path:
    """Write a file that holds a secret: mode 0600 from its creation (never readable by others, not even for the
    moment between a write and a chmod), and 0600 again when it existed with another mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    return path


def free_port(udp: bool = False) -> int:
    """A TCP (or ``udp``) port nobody uses at the moment of asking, chosen at random BELOW the kernel's ephemeral
    range. Why not bind(0): that hands out a port from the ephemeral range, which the kernel also gives every
    outgoing connection and UDP client (ipmitool's, a client's), so another process could take it before our server
    binds it; seen with two pytest-xdist processes: ipmi_sim "Unable to bind to LAN port: Address already in use"."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    low = _ephemeral_low()
    for _ in range(200) if low > 11000 else ():
        port = random.randint(10000, low - 1)
        with socket.socket(type=kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(type=kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll until ``predicate`` returns something truthy; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ServiceDied:
            raise
        except Exception:  # noqa: BLE001 - not ready yet looks like an error from many clients
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _bin(name: str) -> str:
    """A console script of this environment (next to the running interpreter), else from PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


class ServiceDied(RuntimeError):
    """A process we started exited while we waited for it; the message carries its log's tail."""


class Service:
    """A child process we started: its PID, log and how to stop it."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, **info: object) -> None:
        self.name, self.argv, self.log_path, self.info = name, argv, log, info
        #: True once we stopped or killed it on purpose: a supervisor restarts only a process that exited by itself.
        self.expected_exit = False
        self.log_file = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check(self) -> None:
        if not self.alive():
            raise ServiceDied(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.expected_exit = True
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM without waiting (``stop`` waits): to stop several processes at once."""
        self.expected_exit = True
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s; only this PID (its own session) is signalled."""
        self.expected_exit = True
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def on_a_free_port(start: Callable[[int], Service], *, udp: bool = False, attempts: int = 3) -> Service:
    """``start(port)`` on a free port, and again on another when that one was taken in between (``free_port``
    only looked; another process of a busy machine bound it first: the service died saying "Address already in
    use"). Seen with the BMC simulators under two test processes."""
    for attempt in range(attempts):
        try:
            return start(free_port(udp=udp))
        except ServiceDied as exc:
            if "Address already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _await(svc: Service, ready: Callable[[], object], timeout: float, what: str) -> Service:
    """Wait until ``svc`` is ready; if it never gets there, stop it before raising so nothing is left behind."""
    try:
        wait_until(lambda: svc.check() or ready(), timeout, what)
    except BaseException:
        svc.stop()
        raise
    return svc


def _zk_ok(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"ruok")
        return sock.recv(8) == b"imok"


def zk_stats(port: int) -> dict[str, str]:
    """A ZooKeeper server's ``srvr`` answer as ``{"Zxid": "0x...", "Received": "123", ...}`` (benches read it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"srvr")
        text = b""
        while chunk := sock.recv(4096):
            text += chunk
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.decode().splitlines()) if v}


def _tls_files(workdir: Path) -> tuple[Path, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (``client.crt``,
    ``client.key``), both signed by it (openssl), in ``workdir/tls`` (0700): (the CA's PEM, the server's key +
    certificate PEM)."""
    tls = workdir / "tls"
    tls.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, key, server = tls / "ca.pem", tls / "ca.key", tls / "server.pem"
    if not server.exists():
        def run(*argv: str) -> None:
            subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60, cwd=tls)
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(ca), "-days", "30",
            "-subj", "/CN=pvc-dev-ca")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
            "/CN=127.0.0.1")
        (tls / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", "server.csr", "-CA", str(ca), "-CAkey", str(key), "-CAcreateserial", "-out",
            "server.crt", "-days", "30", "-extfile", "san.cnf")
        write_private(server, (tls / "server.key").read_bytes() + (tls / "server.crt").read_bytes())
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=pvc")
        run("x509", "-req", "-in", "client.csr", "-CA", str(ca), "-CAkey", str(key), "-CAcreateserial", "-out",
            "client.crt", "-days", "30")
        for private in (key, tls / "server.key", tls / "client.key"):
            private.chmod(0o600)  # openssl writes keys with the process's umask
    return ca, server


def _tls_cfg(workdir: Path, secure_port: int) -> str:
    """A TLS client port beside the plain one (the plain one stays for ``ruok``/``srvr``; production drops it);
    clients must show a certificate of the same CA (``ssl.clientAuth=need``)."""
    ca, server = _tls_files(workdir)
    return (f"secureClientPort={secure_port}\nsecureClientPortAddress=127.0.0.1\n"
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
            f"ssl.keyStore.location={server}\nssl.keyStore.type=PEM\n"
            f"ssl.trustStore.location={ca}\nssl.trustStore.type=PEM\nssl.clientAuth=need\n")


def _zoo_cfg(workdir: Path, port: int, tick_ms: int, peers: list[tuple[int, int]], extra: str = "") -> Path:
    """The server's configuration. Of the four-letter words only ``ruok`` (liveness) and ``srvr`` (mode, zxid,
    counters) are answered: ``envi``, ``conf``, ``cons``, ``dump`` and ``wchp`` tell anyone who connects about the
    machine, the session ids and the paths being watched."""
    cfg = workdir / "zoo.cfg"
    servers = "".join(f"server.{i}=127.0.0.1:{peer}:{election}\n" for i, (peer, election) in enumerate(peers, 1))
    cfg.write_text(f"tickTime={tick_ms}\ndataDir={workdir / 'data'}\nclientPort={port}\nclientPortAddress=127.0.0.1\n"
                   "admin.enableServer=false\nforceSync=no\nmaxSessionTimeout=60000\n"
                   "4lw.commands.whitelist=ruok,srvr\ninitLimit=10\nsyncLimit=5\n" + servers + extra)
    (workdir / "log4j.properties").write_text("log4j.rootLogger=WARN, F\n"
                                              "log4j.appender.F=org.apache.log4j.FileAppender\n"
                                              f"log4j.appender.F.File={workdir / 'zookeeper.log'}\n"
                                              "log4j.appender.F.layout=org.apache.log4j.PatternLayout\n"
                                              "log4j.appender.F.layout.ConversionPattern=%d %p %c: %m%n\n")
    return cfg


def _zookeeper(workdir: Path, port: int, tick_ms: int, peers: list[tuple[int, int]], myid: int = 0,
               secure_port: int = 0) -> Service:
    # 0700: the snapshots and the transaction log hold every key's data (ACLs guard only the wire).
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    workdir.chmod(0o700)
    (workdir / "data").mkdir(mode=0o700, exist_ok=True)
    if myid:
        (workdir / "data" / "myid").write_text(f"{myid}\n")
    cfg = _zoo_cfg(workdir, port, tick_ms, peers, _tls_cfg(workdir, secure_port) if secure_port else "")
    argv = ["java", "-Xmx256m", "-XX:+UseSerialGC", f"-Dlog4j.configuration=file:{workdir / 'log4j.properties'}",
            "-cp", ZK_CLASSPATH, "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)]
    tls = {"tls_hosts": f"127.0.0.1:{secure_port}", "ca": str(workdir / "tls" / "ca.pem"),
           "client_cert": str(workdir / "tls" / "client.crt"),
           "client_key": str(workdir / "tls" / "client.key")} if secure_port else {}
    return Service("zookeeper", argv, workdir / "stdout.log", port=port, hosts=f"127.0.0.1:{port}", myid=myid,
                   **tls)


def start_zookeeper(workdir: Path, *, tick_ms: int = 500, port: int | None = None, tls: bool = False,
                    secure_port: int | None = None) -> Service:
    """One ZooKeeper server; ``tick_ms`` 500 allows 1 s sessions for tests (forceSync off: data is disposable, but
    it survives a SIGKILL of the server, which the OS has already been given). ``port``: restart a server on the
    port its clients use, with the data it had. ``tls``: also a TLS client port (``info["tls_hosts"]``) with a
    certificate of a throwaway CA (``info["ca"]``), on ``secure_port`` when restarting."""
    port = port or free_port()
    svc = _zookeeper(workdir, port, tick_ms, [], secure_port=(secure_port or free_port()) if tls else 0)
    return _await(svc, lambda: _zk_ok(port), 30, "ZooKeeper to answer ruok")


def _zk_mode(port: int) -> str:
    """'leader', 'follower' or '' (down, or not serving: no quorum) from the server's ``srvr`` answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"srvr")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError:
        return ""
    found = re.search(rb"^Mode: (\w+)", answer, re.MULTILINE)
    return found.group(1).decode() if found else ""


class Ensemble:
    """A ZooKeeper ensemble on loopback (``start_ensemble``). It stands in for one server where a cluster takes one:
    ``info["hosts"]`` lists every member, so clients fail over by themselves."""

    def __init__(self, workdir: Path, size: int, tick_ms: int) -> None:
        self.workdir, self.tick_ms = workdir, tick_ms
        self.ports = [free_port() for _ in range(size)]
        self.peers = [(free_port(), free_port()) for _ in range(size)]
        self.members: list[Service] = []
        self.info = {"hosts": ",".join(f"127.0.0.1:{port}" for port in self.ports)}

    def _member(self, i: int) -> Service:
        return _zookeeper(self.workdir / f"zk{i + 1}", self.ports[i], self.tick_ms, self.peers, myid=i + 1)

    def start(self) -> Ensemble:
        try:
            self.members = [self._member(i) for i in range(len(self.ports))]
            self.leader()
        except BaseException:
            self.stop()
            raise
        return self

    def leader(self, timeout: float = 60) -> Service:
        """The member that leads, once a quorum serves (it waits for an election to end)."""
        def find() -> Service | None:
            for member in self.members:
                if not member.expected_exit:
                    member.check()  # one that died by itself (a port taken meanwhile): say so, do not wait
                if member.alive() and _zk_mode(int(member.info["port"])) == "leader":
                    return member
            return None

        return wait_until(find, timeout, "a ZooKeeper ensemble leader")  # type: ignore[return-value]

    def kill_leader(self) -> Service:
        """SIGKILL the leader (the others elect a new one); returns the killed member."""
        leader = self.leader()
        leader.kill()
        return leader

    def restart(self, member: Service) -> Service:
        """Start a killed member again with its data, on its ports."""
        i = self.members.index(member)
        member.log_file.close()
        self.members[i] = self._member(i)
        return self.members[i]

    def alive(self) -> bool:
        return any(m.alive() for m in self.members)

    def stop(self) -> None:
        for member in reversed(self.members):
            member.stop()


def start_ensemble(workdir: Path, size: int = 3, *, tick_ms: int = 500) -> Ensemble:
    """``size`` ZooKeeper servers on loopback forming one ensemble; returns once a leader serves."""
    return Ensemble(workdir, size, tick_ms).start()


def start_redis(workdir: Path, port: int | None = None, password: str | None = None) -> Service:
    """Redis with its append-only file (``appendfsync everysec``), as docs/configuration.md recommends: a restart
    keeps the queued messages but the last second's. Only the ACL user ``pvc`` may connect (the default user is
    off); its password is in a 0600 config file, never in argv. ``port``, ``password``: restart on the port
    clients already use, for the same user."""
    workdir.mkdir(parents=True, exist_ok=True)
    if port is None:
        return on_a_free_port(lambda free: start_redis(workdir, free, password))
    password = password or secrets.token_urlsafe(16)
    conf = write_private(workdir / "redis.conf",
                         f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly yes\nappendfsync everysec\n'
                         f'daemonize no\ndir "{workdir}"\nuser default off\nuser pvc on >{password} {REDIS_ACL}\n'
                         f'user audit on >{password}-audit +acl|log +ping\n')
    svc = Service("redis", ["redis-server", str(conf)], workdir / "redis.log", port=port, password=password,
                  url=f"redis://pvc:{password}@127.0.0.1:{port}/0")

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(f"AUTH pvc {password}\r\nPING\r\n".encode())
            answer = b""
            while answer.count(b"\r\n") < 2 and (chunk := sock.recv(64)):
                answer += chunk
            return answer == b"+OK\r\n+PONG\r\n"

    return _await(svc, ping, 15, "Redis to answer PING")


def _rabbitmq_definitions(password: str, vhosts: list[str]) -> str:
    """RabbitMQ definitions imported at boot (again after its data is lost): the user ``pvc`` (salted SHA-256, as
    RabbitMQ stores it) with every right on ``vhosts``."""
    salt = secrets.token_bytes(4)
    digest = base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()
    return json.dumps({
        "users": [{"name": "pvc", "password_hash": digest, "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": ["administrator"]}],
        "vhosts": [{"name": v} for v in vhosts],
        "permissions": [{"user": "pvc", "vhost": v, "configure": ".*", "write": ".*", "read": ".*"} for v in vhosts],
    })


def start_rabbitmq(workdir: Path, port: int | None = None, password: str | None = None, vhosts: int = 0) -> Service:
    """A private RabbitMQ server (Debian's rabbitmq-server, run as root straight into the Erlang VM, so our PID is
    the broker's) with its own node name, ports and Erlang port mapper, and one user ``pvc`` whose password is in a
    0600 definitions file (never argv), on the vhost ``/`` and on ``vhosts`` more (``pvc-1`` ...: one per cluster of
    a test session sharing this server). ``port``: restart on the port clients use, with the data it had."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf, definitions = workdir / "rabbitmq.conf", workdir / "definitions.json"
    if port is None or password is None:
        port, password = free_port(), secrets.token_urlsafe(16)
        epmd = free_port()
        write_private(definitions, _rabbitmq_definitions(password, ["/"] + [f"pvc-{i}" for i in range(1, vhosts + 1)]))
        conf.write_text(f"listeners.tcp.1 = 127.0.0.1:{port}\nload_definitions = {definitions}\n"
                        "loopback_users = none\nlog.console = false\nlog.file.level = warning\n"
                        f"# epmd {epmd} dist {free_port()} node pvc-{secrets.token_hex(4)}\n")
        (workdir / "enabled_plugins").write_text("[].\n")
    found = re.search(r"# epmd (\d+) dist (\d+) node (\S+)", conf.read_text())
    assert found, conf
    epmd, dist, node = found.groups()
    env = {"HOME": str(workdir), "RABBITMQ_NODENAME": f"{node}@localhost", "RABBITMQ_CONFIG_FILE": str(conf),
           "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"), "RABBITMQ_LOG_BASE": str(workdir / "log"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
           "RABBITMQ_PID_FILE": str(workdir / "pid"), "RABBITMQ_DIST_PORT": dist, "ERL_EPMD_PORT": epmd,
           "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(port),
           "RUNNING_UNDER_SYSTEMD": "1"}  # the start script then execs the VM instead of waiting on it
    url = f"amqp://pvc:{password}@127.0.0.1:{port}//"
    svc = Service("rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"], workdir / "rabbitmq.log", env=env,
                  port=port, url=url, password=password, epmd=int(epmd), vhosts=vhosts)

    def ready() -> bool:
        from kombu import Connection

        with Connection(url, connect_timeout=1) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0)
        return True

    return _await(svc, ready, 60, "RabbitMQ to accept user pvc")


def stop_epmd(port: int) -> None:
    """Stop the Erlang port mapper a private RabbitMQ started on ``port`` (it outlives the broker by design)."""
    subprocess.run(["epmd", "-port", str(port), "-kill"], capture_output=True, timeout=10, check=False)


def start_worker(node: str, env: dict[str, str], workdir: Path) -> Service:
    """``pvc-worker --node NODE`` with settings from ``env`` (PVC_* variables)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Service(f"worker-{node}", [sys.executable, "-m", "pvc_workers", "--node", node],
                   workdir / f"worker-{node}.log", env=env, node=node)


def start_api(env: dict[str, str], workdir: Path, port: int | None = None) -> Service:
    """pvc-api on ``port`` (default: a free one; a restart keeps the port its clients use)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if port is None:
        return on_a_free_port(lambda free: start_api(env, workdir, free))
    svc = Service("api", [_bin("pvc-api")], workdir / "api.log",
                  env={**env, "PVC_API_LISTEN": f"127.0.0.1:{port}"}, port=port, url=f"http://127.0.0.1:{port}")
    return _await(svc, lambda: urllib.request.urlopen(f"{svc.info['url']}/api/v1/health", timeout=2), 30,
                  "the API's /health")


def start_flower(broker: str, user: str, password: str, workdir: Path) -> Service:
    """``pvc-flower`` (Flower behind basic auth, ``/metrics`` included, its control API off), listening to the
    workers' events on ``broker``. The broker URL and the password go through the environment (Celery's
    ``CELERY_BROKER_URL``, Flower's ``FLOWER_BASIC_AUTH``): argv is visible to every user of the machine."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [_bin("pvc-flower"), "--address=127.0.0.1", f"--port={port}", "--persistent=False",
            f"--db={workdir / 'flower.db'}"]
    env = {"CELERY_BROKER_URL": broker, "FLOWER_BASIC_AUTH": f"{user}:{password}"}
    svc = Service("flower", argv, workdir / "flower.log", env=env, port=port, url=f"http://127.0.0.1:{port}")
    return _await(svc, lambda: urllib.request.urlopen(f"{svc.info['url']}/healthcheck", timeout=2), 30,
                  "Flower's /healthcheck")
