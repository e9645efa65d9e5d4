"""A whole local cluster on loopback: ZooKeeper, Redis, one ``pvc-worker`` per node, ``pvc-api`` and Flower.

Shared by the dev cluster (``pvc-dev up``), the test harness and the benches, so all three run the same real
processes. Each node is described by its own libvirt test-driver file (CPUs, memory) under the work directory.
Several clusters may share one ZooKeeper server: each gets its own chroot; each gets its own Redis.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from kazoo.client import KazooClient
from kombu import Connection
from kombu.exceptions import ChannelError

from pvc_dev.bmc import BMC_PASSWORD, BMC_USER, PowerSwitch, start_bmc
from pvc_dev.libvirtd import start_libvirtd
from pvc_dev.services import (
    Ensemble,
    Service,
    start_api,
    start_ensemble,
    start_flower,
    start_rabbitmq,
    start_redis,
    start_worker,
    start_zookeeper,
    stop_epmd,
    wait_until,
)
from pvc_tasks.config import load_settings
from pvc_tasks.defaults import XML_IMAGE_PATHS
from pvc_tasks.dispatch import message_count
from pvc_tasks.routing import node_queue
from pvc_tasks.secrets import new_key
from pvc_tasks.zkclient import connect
from pvc_web.auth import entry
from zk_schema import Schema, init_cluster

__all__ = ["LocalCluster", "NodeSpec", "domain_xml", "node_xml"]


@dataclass(frozen=True)
class NodeSpec:
    """A node of a local cluster. ``hypervisor`` is ``test`` (libvirt's test driver, described by a node file
    with ``memory_mib`` and ``cpus``), ``qemu`` (real QEMU guests under the node's own libvirtd, see
    ``pvc_dev.libvirtd``; live migration between such nodes) or ``qemu-embed`` (real QEMU guests through libvirt's
    embedded driver inside the worker process; no migration). QEMU nodes report the host's real memory and CPUs."""

    name: str
    memory_mib: int = 8192
    cpus: int = 4
    hypervisor: str = "test"
    #: Simulated SR-IOV NICs of a test-driver node: (PF name, VF count) pairs, described as libvirt node devices
    #: in the node file and managed by the worker (``PVC_SRIOV_PFS``); VF ``n`` of PF ``p`` is named ``<p>v<n>``.
    sriov: tuple[tuple[str, int], ...] = (("ens1f0", 4), ("ens1f1", 2))


#: qemu.conf of an embedded QEMU node: root without a security driver, logs to files (no virtlogd), no cgroups.
QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
"""


def node_xml(spec: NodeSpec) -> str:
    """A libvirt test-driver node file: the node's CPUs and memory, its SR-IOV NICs as node devices, no domains."""
    return (f"<node>\n  <cpu><nodes>1</nodes><sockets>1</sockets><cores>{spec.cpus}</cores><threads>1</threads>"
            f"<active>{spec.cpus}</active><mhz>2000</mhz><model>x86_64</model></cpu>\n"
            f"  <memory>{spec.memory_mib * 1024}</memory>\n{_sriov_devices(spec)}</node>\n")


def _pci_device(name: str, bus: int, slot: int, function: int, product: str, inner: str) -> str:
    return (f"  <device><name>{name}</name><parent>computer</parent><capability type='pci'><domain>0</domain>"
            f"<bus>{bus}</bus><slot>{slot}</slot><function>{function}</function>{product}"
            f"<vendor id='0x15b3'>Mellanox Technologies (simulated)</vendor>{inner}</capability></device>\n")


def _net_device(parent: str, interface: str, mac: str) -> str:
    return (f"  <device><name>net_{interface}_{mac.replace(':', '_')}</name><parent>{parent}</parent>"
            f"<capability type='net'><interface>{interface}</interface><address>{mac}</address></capability>"
            f"</device>\n")


def _sriov_devices(spec: NodeSpec) -> str:
    """PF ``k`` is PCI 0000:3b:00.k; its VFs sit on bus 0x3c+k, eight functions per slot. MACs are locally
    administered (02:...) and unique per node name."""
    tag = int(hashlib.sha1(spec.name.encode()).hexdigest()[:4], 16)
    out = []
    for k, (pf, count) in enumerate(spec.sriov):
        pf_pci = f"pci_0000_3b_00_{k}"
        vfs = [(0x3C + k, i // 8, i % 8) for i in range(count)]
        addresses = "".join(f"<address domain='0x0000' bus='{b:#04x}' slot='{s:#04x}' function='{f:#x}'/>"
                            for b, s, f in vfs)
        out.append(_pci_device(pf_pci, 0x3B, 0, k, "<product id='0x1015'>ConnectX-4 Lx</product>",
                               f"<capability type='virt_functions' maxCount='{count}'>{addresses}</capability>"))
        out.append(_net_device(pf_pci, pf, f"02:{tag >> 8:02x}:{tag & 255:02x}:{k:02x}:00:00"))
        for i, (b, s, f) in enumerate(vfs):
            vf_pci = f"pci_0000_{b:02x}_{s:02x}_{f}"
            out.append(_pci_device(vf_pci, b, s, f, "<product id='0x1016'>ConnectX-4 Lx VF</product>",
                                   "<capability type='phys_function'><address domain='0x0000' bus='0x3b' "
                                   f"slot='0x00' function='{k:#x}'/></capability>"))
            out.append(_net_device(vf_pci, f"{pf}v{i}", f"02:{tag >> 8:02x}:{tag & 255:02x}:{k:02x}:01:{i:02x}"))
    return "".join(out)


@dataclass
class LocalCluster:
    """Start with ``start()``, stop with ``stop()``; every process is stopped by its own PID."""

    workdir: Path
    nodes: list[NodeSpec]
    zookeeper: Service | Ensemble | None = None  # shared server (tests); None: start our own
    #: Servers of our own ZooKeeper when we start one: 1, or 3 for an ensemble (``zookeeper_ensemble``).
    zookeeper_servers: int = 1
    #: Our own ZooKeeper server speaks TLS (a throwaway CA); every client of the cluster connects with it.
    zookeeper_tls: bool = False
    #: The Celery broker: ``redis`` (we start one) or ``rabbitmq`` (no Redis then): a private RabbitMQ server we
    #: start, or ``vhost`` of ``shared_rabbitmq``, a server of the test session (never restarted by a cluster).
    broker: str = "redis"
    shared_rabbitmq: Service | None = None
    vhost: str = "/"
    flower: bool = True
    flower_user: str = "admin"
    #: The API token of the admin ``admin`` and of the read-only ``reader`` (the API is given their hashes only).
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    read_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    #: pvc's ZooKeeper identity (``user:password``): every process of the cluster and the harness authenticate.
    zookeeper_auth: str = field(default_factory=lambda: f"pvc:{secrets.token_urlsafe(18)}", repr=False)
    #: Seals the IPMI passwords in ZooKeeper; given to the workers only (the API never needs it).
    secret_key: str = field(default_factory=new_key, repr=False)
    flower_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    worker_env: dict[str, str] = field(default_factory=dict)
    #: More ``PVC_*`` settings for the API process (e.g. ``PVC_PUBLISH_COPIES`` in the duplicate-message tests).
    api_env: dict[str, str] = field(default_factory=dict)
    #: One ipmi_sim per node whose chassis power kills / starts that node's worker (``pvc_dev.bmc``).
    bmcs: bool = True
    #: False: the cluster starts in maintenance mode, so no node is ever fenced (tests that restart or pause
    #: workers on purpose and are not about HA must not race a fence's power cycle).
    fencing: bool = True

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.services: list[Service] = []
        self.workers: dict[str, Service] = {}
        self.own_zookeeper = self.zookeeper is None
        self.chroot = f"/pvc-{uuid.uuid4().hex[:8]}"
        self.redis: Service | None = None
        self.rabbitmq: Service | None = None
        self.api: Service | None = None
        self.flower_service: Service | None = None
        self._zk: KazooClient | None = None
        self._qemu_roots: dict[str, Path] = {}
        self.libvirtds: dict[str, Service] = {}
        self.bmc: dict[str, Service] = {}
        self.worker_extra_env: dict[str, dict[str, str]] = {}
        self.power: PowerSwitch | None = None
        self._workers_lock = threading.RLock()
        #: Processes the supervisor restarted because they exited by themselves (name -> count), as systemd's
        #: ``Restart=always`` would (deploy/systemd/); logged in ``supervisor.log``.
        self.restarts: dict[str, int] = {}
        self._supervising = threading.Event()

    # ---- addresses ------------------------------------------------------------------------------------------
    @property
    def zk_servers(self) -> str:
        """The servers' client addresses (their TLS ports on a ``zookeeper_tls`` cluster)."""
        assert self.zookeeper is not None
        return str(self.zookeeper.info["tls_hosts" if self.zookeeper_tls else "hosts"])

    @property
    def zk_hosts(self) -> str:
        return f"{self.zk_servers}{self.chroot}"

    @property
    def redis_url(self) -> str:
        assert self.redis is not None, "this cluster's broker is not Redis"
        return str(self.redis.info["url"])

    @property
    def broker_service(self) -> Service:
        service = self.rabbitmq or self.redis
        assert service is not None
        return service

    @property
    def broker_url(self) -> str:
        """The Celery broker's URL, credentials included (``redis://pvc:...`` or ``amqp://pvc:.../vhost``)."""
        url = str(self.broker_service.info["url"])
        return url if self.rabbitmq is None else f"{url.rstrip('/')}/{'' if self.vhost == '/' else self.vhost}"

    @property
    def api_url(self) -> str:
        assert self.api is not None
        return str(self.api.info["url"])

    @property
    def flower_url(self) -> str:
        assert self.flower_service is not None
        return str(self.flower_service.info["url"])

    def env(self) -> dict[str, str]:
        """PVC_* settings every process of this cluster shares."""
        broker = {"PVC_BROKER": self.broker_url} if self.rabbitmq else {"PVC_REDIS": self.redis_url}
        tokens = [entry("admin", "admin", self.token), entry("reader", "read-only", self.read_token)]
        # Guests' boot images (read-only) live in the cluster's directory: shared images to the XML policy.
        images = ",".join([*XML_IMAGE_PATHS, str(self.workdir.resolve())])
        tls = self._zk_tls()
        return {"PVC_ZOOKEEPER": self.zk_hosts, "PVC_ZOOKEEPER_AUTH": self.zookeeper_auth, **tls, **broker,
                "PVC_API_TOKENS": ",".join(tokens), "PVC_XML_IMAGE_PATHS": images, "PVC_CONFIG": ""}

    def client_env(self) -> dict[str, str]:
        """What the ``pvc`` CLI needs to talk to this cluster."""
        return {"PVC_API_URL": self.api_url, "PVC_API_TOKEN": self.token}

    @property
    def zk(self) -> KazooClient:
        """A kazoo client on this cluster's chroot, for inspection."""
        if self._zk is None:
            self._zk = self.client(self.zk_hosts)
            self._zk.start(timeout=15)
        return self._zk

    def _zk_tls(self) -> dict[str, str]:
        """The ``PVC_ZOOKEEPER_TLS_*`` settings of a ``zookeeper_tls`` cluster (paths, no secret in them)."""
        if not self.zookeeper_tls:
            return {}
        info = self.zookeeper.info
        return {"PVC_ZOOKEEPER_TLS_CA": str(info["ca"]), "PVC_ZOOKEEPER_TLS_CERT": str(info["client_cert"]),
                "PVC_ZOOKEEPER_TLS_KEY": str(info["client_key"])}

    def client(self, hosts: str) -> KazooClient:
        """An unstarted kazoo client with this cluster's identity (the one ``pvc_tasks.zkclient`` gives pvc)."""
        tls = self._zk_tls()
        return connect(load_settings(env={"PVC_ZOOKEEPER": hosts, "PVC_ZOOKEEPER_AUTH": self.zookeeper_auth, **tls}),
                       timeout=10)

    @property
    def schema(self) -> Schema:
        from zk_schema import cluster_version

        return Schema.load(cluster_version(self.zk))

    # ---- life cycle -----------------------------------------------------------------------------------------
    def start(self, *, schema_version: int | None = None,
              seed: Callable[[KazooClient], None] | None = None) -> LocalCluster:
        """Start everything; the cluster is created at ``schema_version`` (default newest) and ``seed`` may
        write to ZooKeeper before the workers start (tests of upgrades and reconciliation)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.zookeeper is None and self.zookeeper_servers > 1:
                self.zookeeper = start_ensemble(self.workdir / "zookeeper", self.zookeeper_servers)
                self.services.extend(self.zookeeper.members)
            elif self.zookeeper is None:
                self.zookeeper = start_zookeeper(self.workdir / "zookeeper", tls=self.zookeeper_tls)
                self.services.append(self.zookeeper)
            root = self.client(self.zk_servers)
            root.start(timeout=15)
            root.ensure_path(self.chroot)  # with the cluster's ACL, as everything below it
            root.stop()
            root.close()
            if self.broker == "rabbitmq" and self.shared_rabbitmq is not None:
                self.rabbitmq = self.shared_rabbitmq
            elif self.broker == "rabbitmq":
                self.rabbitmq = start_rabbitmq(self.workdir / "rabbitmq")
                self.services.append(self.rabbitmq)
            else:
                self.redis = start_redis(self.workdir / "redis")
                self.services.append(self.redis)
            init_cluster(self.zk, schema_version)
            if not self.fencing and "base.config.maintenance" in self.schema.keys:
                self.zk.set(self.schema.path("base.config.maintenance"), b"true")
            if seed:
                seed(self.zk)
            if self.bmcs:
                self.power = PowerSwitch(self._short_dir("pvcp-") / "power.sock", self.power_on, self.power_off)
                for spec in self.nodes:
                    self.bmc[spec.name] = start_bmc(spec.name, self.power, self.workdir / "bmc" / spec.name)
                    self.services.append(self.bmc[spec.name])
            for spec in self.nodes:
                self.start_worker(spec.name)
            for spec in self.nodes:
                self.wait_worker(spec.name)
            self.api = start_api({**self.env(), **self.api_env}, self.workdir / "api")
            self.services.append(self.api)
            if self.flower:
                self.start_flower()
            threading.Thread(target=self._supervise, name="supervisor", daemon=True).start()
        except BaseException:
            self.stop()
            raise
        return self

    def restart_zookeeper(self, *, down: float = 0.0) -> Service:
        """SIGKILL this cluster's own ZooKeeper server, keep it down ``down`` s, start it again on its port with its
        data: the clients' sessions survive an outage shorter than their timeout."""
        assert self.own_zookeeper and isinstance(self.zookeeper, Service), "only a cluster's own server is restarted"
        old = self.zookeeper
        old.kill()
        old.log_file.close()
        time.sleep(down)
        secure = int(str(old.info["tls_hosts"]).rsplit(":", 1)[1]) if self.zookeeper_tls else None
        self.zookeeper = start_zookeeper(self.workdir / "zookeeper", port=int(old.info["port"]), tls=self.zookeeper_tls,
                                         secure_port=secure)
        self.services[self.services.index(old)] = self.zookeeper
        return self.zookeeper

    @property
    def zookeeper_ensemble(self) -> Ensemble:
        """Our own ensemble (``zookeeper_servers`` > 1), to kill its leader or restart a member."""
        assert self.own_zookeeper and isinstance(self.zookeeper, Ensemble), "this cluster has no ensemble of its own"
        return self.zookeeper

    def kill_zookeeper_leader(self, *, down: float = 0.0) -> Service:
        """SIGKILL the ensemble's leader (the others elect a new one), and start it again after ``down`` s as a
        follower with its data; returns the new member."""
        ensemble = self.zookeeper_ensemble
        old = ensemble.kill_leader()
        time.sleep(down)
        new = ensemble.restart(old)
        self.services[self.services.index(old)] = new
        return new

    def restart_api(self) -> Service:
        """SIGKILL the API, as a crash would, and start a new one on the same port."""
        assert self.api is not None
        old = self.api
        old.kill()
        old.log_file.close()
        self.api = start_api({**self.env(), **self.api_env}, self.workdir / "api", int(old.info["port"]))
        self.services[self.services.index(old)] = self.api
        return self.api

    def restart_redis(self, *, kill: bool = True, down: float = 0.0, lose: bool = False) -> Service:
        """``restart_broker`` of a cluster whose broker is Redis (``lose``: its append-only files removed, as with a
        Redis without persistence)."""
        assert self.redis is not None, "this cluster's broker is not Redis"
        return self.restart_broker(kill=kill, down=down, lose=lose)

    def restart_broker(self, *, kill: bool = True, down: float = 0.0, lose: bool = False) -> Service:
        """Kill (or stop) the broker, whichever it is, keep it down ``down`` s, start it again on its port for the
        same user, with its data or without (``lose``: every queued message and declared queue gone; RabbitMQ
        creates its user again from its config file)."""
        assert self.shared_rabbitmq is None, "a shared RabbitMQ is never restarted by one of its clusters"
        old = self.broker_service
        if kill:
            old.kill()
        else:
            old.stop()
        old.log_file.close()
        rabbit = old is self.rabbitmq
        workdir = self.workdir / ("rabbitmq" if rabbit else "redis")
        if lose:
            shutil.rmtree(workdir / ("mnesia" if rabbit else "appendonlydir"), ignore_errors=True)
        time.sleep(down)
        start = start_rabbitmq if rabbit else start_redis
        new = start(workdir, int(old.info["port"]), str(old.info["password"]))
        if rabbit:
            self.rabbitmq = new
        else:
            self.redis = new
        self.services[self.services.index(old)] = new
        return new

    def start_flower(self) -> Service:
        if self.flower_service is None:
            self.flower_service = start_flower(self.broker_url, self.flower_user, self.flower_password,
                                               self.workdir / "flower")
            self.services.append(self.flower_service)
        return self.flower_service

    def spec(self, node: str) -> NodeSpec:
        return next(s for s in self.nodes if s.name == node)

    def libvirt_uri(self, node: str) -> str:
        """Write the node's hypervisor description and return its libvirt URI."""
        spec = self.spec(node)
        if spec.hypervisor == "qemu":
            if node not in self.libvirtds:
                self.libvirtds[node] = start_libvirtd(node, self._short_dir("pvcl-"))
                self.services.insert(0, self.libvirtds[node])  # stopped after the workers
            return str(self.libvirtds[node].info["uri"])
        if spec.hypervisor == "qemu-embed":
            # QEMU's monitor sockets live under the root and a unix socket path has at most 108 bytes: keep the
            # root short, outside the (long) work directory, and remove it at stop.
            root = self._short_dir(f"pvcq-{node}-")
            (root / "etc").mkdir(exist_ok=True)
            (root / "etc" / "qemu.conf").write_text(QEMU_CONF)
            return f"qemu:///embed?root={root}"
        if spec.hypervisor != "test":
            raise ValueError(f"unknown hypervisor {spec.hypervisor!r} for node {node}")
        xml = self.workdir / "nodes" / f"{node}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(node_xml(spec))
        return f"test://{xml}"

    def _short_dir(self, prefix: str) -> Path:
        """A short private directory (unix socket paths have at most 108 bytes), removed at stop."""
        if prefix not in self._qemu_roots:
            self._qemu_roots[prefix] = Path(tempfile.mkdtemp(prefix=prefix))
        return self._qemu_roots[prefix]

    def start_worker(self, node: str, extra_env: dict[str, str] | None = None) -> Service:
        bmc = {"PVC_IPMI_HOSTNAME": str(self.bmc[node].info["hostname"]), "PVC_IPMI_USERNAME": BMC_USER,
               "PVC_IPMI_PASSWORD": BMC_PASSWORD} if node in self.bmc else {}
        spec = self.spec(node)
        sriov = {"PVC_SRIOV_PFS": ",".join(pf for pf, _count in spec.sriov)} if spec.hypervisor == "test" else {}
        env = {**self.env(), "PVC_SECRET_KEY": self.secret_key, "PVC_LIBVIRT_URI": self.libvirt_uri(node), **bmc,
               **sriov, **self.worker_env,
               **(extra_env or {})}
        if self.spec(node).hypervisor == "qemu":
            env.setdefault("PVC_MIGRATION_URI", "tcp://127.0.0.1")  # migration data over loopback
        with self._workers_lock:
            self.worker_extra_env[node] = dict(extra_env or {})
            worker = start_worker(node, env, self.workdir / "workers")
            old = self.workers.get(node)
            if old in self.services:
                self.services.remove(old)
            self.workers[node] = worker
            self.services.append(worker)
        return worker

    def power_off(self, node: str) -> None:
        """What the node's BMC does on ``chassis power off``: the node's worker dies at once (SIGKILL), and with
        it the node's hypervisor state (the test driver's world lives in the worker process)."""
        with self._workers_lock:
            self.workers[node].kill()

    def power_on(self, node: str) -> None:
        """``chassis power on``: the node boots, i.e. a new worker starts with the same settings."""
        with self._workers_lock:
            if not self.workers[node].alive():
                self.start_worker(node, self.worker_extra_env.get(node))

    def wait_worker(self, node: str, timeout: float = 60) -> None:
        """Until THIS worker process consumes its queue: presence holds its PID (not a dead predecessor's, whose
        session may not have expired yet) and daemon_state is ``run`` (written by Celery's ready signal)."""
        worker, schema = self.workers[node], self.schema
        presence, state = schema.path("node.presence", node), schema.path("node.daemon_state", node)

        def ready() -> bool:
            worker.check()
            return (self.zk.exists(presence) is not None and self.zk.get(presence)[0] == str(worker.pid).encode()
                    and self.zk.get(state)[0] == b"run")

        wait_until(ready, timeout, f"worker {node} to run")

    def _supervise(self) -> None:
        """Restart a worker or the API that exited by itself (not one we stopped or killed on purpose), as systemd
        would; exit status 2 (a configuration error) is not restarted, as with ``RestartPreventExitStatus=2``."""
        self._supervising.set()
        while self._supervising.is_set():
            time.sleep(0.5)
            with self._workers_lock:
                if not self._supervising.is_set():
                    return
                crashed = [(n, w) for n, w in self.workers.items() if self._crashed(w)]
                for node, worker in crashed:
                    self._restarted(node, worker)
                    self.start_worker(node, self.worker_extra_env.get(node))
                if self.api is not None and self._crashed(self.api):
                    self._restarted("api", self.api)
                    old = self.api
                    self.api = start_api({**self.env(), **self.api_env}, self.workdir / "api", int(old.info["port"]))
                    self.services[self.services.index(old)] = self.api

    @staticmethod
    def _crashed(service: Service) -> bool:
        return not service.expected_exit and not service.alive() and service.proc.returncode != 2

    def _restarted(self, name: str, service: Service) -> None:
        self.restarts[name] = self.restarts.get(name, 0) + 1
        line = (f"{time.strftime('%H:%M:%S')} {name} exited by itself (status {service.proc.returncode}); "
                f"restart {self.restarts[name]}\n")
        with open(self.workdir / "supervisor.log", "a") as log:
            log.write(line)
        print(f"supervisor: {line}", end="", file=sys.stderr, flush=True)
        service.expected_exit = True
        service.log_file.close()

    def stop(self) -> None:
        """Stop every process this cluster started (the workers together, then the rest newest first), each by its
        PID."""
        with self._workers_lock:
            self._supervising.clear()
        if self._zk is not None:
            try:
                self._zk.stop()
                self._zk.close()
            except Exception:  # noqa: BLE001 - teardown must reach every process below
                pass
            self._zk = None
        if self.power is not None:
            self.power.close()
            self.power = None
        for node, libvirtd in self.libvirtds.items():
            self._destroy_domains(node, libvirtd)
        # The workers first and all at once (each drains and closes its sessions, a second or so), while the
        # services they use still run; then the rest, newest first.
        workers = [s for s in self.services if s in self.workers.values()]
        for worker in workers:
            worker.terminate()
        for service in [*workers, *(s for s in reversed(self.services) if s not in workers)]:
            service.stop()
        self.services.clear()
        if self.rabbitmq is not None and self.shared_rabbitmq is None:
            stop_epmd(int(self.rabbitmq.info["epmd"]))
        for root in self._qemu_roots.values():
            shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def _destroy_domains(node: str, libvirtd: Service, timeout: float = 10.0) -> None:
        """Power off every QEMU guest of ``node`` before its libvirtd stops. Why: a libvirtd stopped with guests
        running leaves them to its subreaper, which kills them only if the daemon exits within the stop bound; a
        busy guest that escaped kept a core at 100 % for the rest of a test session, and other guests' SeaBIOS then
        failed to boot in time. Bounded: a frozen libvirtd (a fault test) costs ``timeout`` s, not a hang."""
        import libvirt

        def destroy() -> None:
            try:
                conn = libvirt.open(str(libvirtd.info["uri"]))
            except libvirt.libvirtError:
                return
            try:
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    try:
                        dom.destroy()
                    except libvirt.libvirtError:
                        pass
            finally:
                conn.close()

        if libvirtd.alive():
            worker = threading.Thread(target=destroy, name=f"destroy-{node}", daemon=True)
            worker.start()
            worker.join(timeout)

    # ---- helpers for scripts and tests ----------------------------------------------------------------------
    def queued(self, node: str) -> int:
        """Messages waiting in ``node``'s queue, as the broker counts them (Redis or RabbitMQ)."""
        with Connection(self.broker_url, connect_timeout=3) as conn:
            return message_count(conn, node)

    def purge(self, node: str) -> int:
        """Drop every message waiting in ``node``'s queue (a broker that lost them); returns how many."""
        with Connection(self.broker_url, connect_timeout=3) as conn:
            try:
                return conn.default_channel.queue_purge(node_queue(node).name) or 0
            except ChannelError:
                return 0

    def consume(self, node: str, on: bool) -> None:
        """Stop or resume ``node``'s worker consuming its queue (the worker, its janitor included, stays alive:
        unlike a SIGSTOP, this can last without the node looking absent). Holds jobs on that node where they are."""
        from celery import Celery

        control = Celery("control", broker=self.broker_url).control
        call = control.add_consumer if on else control.cancel_consumer
        replies = call(node_queue(node).name, destination=[f"pvc@{node}"], reply=True, timeout=5)
        if not replies or "ok" not in next(iter(replies[0].values())):
            raise RuntimeError(f"{node}'s worker did not confirm {'add' if on else 'cancel'}_consumer: {replies}")

    def session(self) -> requests.Session:
        s = requests.Session()
        s.headers["X-Api-Key"] = self.token
        return s

    def wait_job(self, job_id: str, timeout: float = 60) -> dict:
        """Poll the API until the job is terminal; returns the job."""
        s, revision = self.session(), -1
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.0, min(5.0, deadline - time.monotonic()))
            job = s.get(f"{self.api_url}/api/v1/jobs/{job_id}", params={"wait": wait, "after": revision},
                        timeout=wait + 10).json()
            if job.get("state") in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.get('state')} after {timeout:g} s: {job}")
            revision = job.get("revision", revision)

    def define_vm(self, name: str, memory_mib: int = 256, node: str | None = None, start: bool = False,
                  xml: str | None = None) -> dict:
        """Define (and optionally start) a VM through the API (default: a tiny test-driver VM); returns the last
        job."""
        s = self.session()
        body: dict = {"xml": xml or domain_xml(name, memory_mib)}
        if node:
            body["node"] = node
        r = s.post(f"{self.api_url}/api/v1/vms", json=body, timeout=10)
        r.raise_for_status()
        job = self.wait_job(r.json()["id"])
        if start and job["state"] == "succeeded":
            r = s.post(f"{self.api_url}/api/v1/vms/{name}/state", json={"state": "start"}, timeout=10)
            r.raise_for_status()
            job = self.wait_job(r.json()["id"])
        return job


def domain_xml(name: str, memory_mib: int = 256, vcpus: int = 1) -> str:
    """A minimal libvirt domain for the test driver."""
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>"
            f"<vcpu>{vcpus}</vcpu><os><type arch='x86_64'>hvm</type></os></domain>")
