"""Settings shared by every process, from a TOML file and ``PVC_*`` environment variables.

Precedence: explicit keyword > environment > file > ``pvc_tasks.defaults``. The file is ``--config PATH`` or
``$PVC_CONFIG``; its keys are the field names below, optionally grouped in tables (``[worker]``, ``[api]``) which
are flattened. Every field's environment variable is ``PVC_`` + the upper-case field name.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pvc_tasks import defaults
from pvc_tasks.xml_policy import XmlPolicy

__all__ = ["BROKER_SCHEMES", "Settings", "load_settings"]

#: Brokers we test: Redis (``rediss`` with TLS) and RabbitMQ (``amqps`` with TLS).
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")


@dataclass
class Settings:
    """Configuration of a worker, the API or a client of ZooKeeper and Redis."""

    zookeeper: str = defaults.ZOOKEEPER
    #: Redis URL (``redis://[user:password@]host:port/db``): the broker unless ``broker`` names another.
    redis: str = field(default=defaults.REDIS, repr=False)
    #: Celery broker: ``redis://...`` or RabbitMQ ``amqp://user:password@host:port/vhost``; empty: ``redis``.
    broker: str = field(default="", repr=False)
    zk_session_timeout: float = defaults.ZK_SESSION_TIMEOUT
    #: pvc's ZooKeeper identity, ``user:password`` (digest): every client authenticates with it and every node it
    #: creates is readable and writable by it alone (``zk_schema.acl``).
    zookeeper_auth: str = field(default="", repr=False)
    #: TLS to ZooKeeper (its ``secureClientPort``): the CA that signed the servers' certificates; empty: plain TCP.
    #: With a client certificate and key too when the servers ask for one (``ssl.clientAuth=need``).
    zookeeper_tls_ca: str = ""
    zookeeper_tls_cert: str = ""
    zookeeper_tls_key: str = ""
    #: The server's certificate must name the host in ``zookeeper`` (DNS name or IP address); off only for
    #: certificates made without names, and then any certificate of the CA passes for any server.
    zookeeper_tls_check_hostname: bool = True
    #: Seals the IPMI passwords kept in ZooKeeper (``pvc_tasks.secrets``); the same on every node, never in ZooKeeper.
    secret_key: str = field(default="", repr=False)
    # Worker
    node: str = ""
    libvirt_uri: str = defaults.LIBVIRT_URI
    keepalive_interval: float = defaults.KEEPALIVE_INTERVAL
    worker_concurrency: int = defaults.WORKER_CONCURRENCY
    janitor_interval: float = defaults.JANITOR_INTERVAL
    absent_after_intervals: int = defaults.ABSENT_AFTER_INTERVALS
    queue_timeout: float = defaults.QUEUE_TIMEOUT
    redrive_after: float = defaults.REDRIVE_AFTER
    redrive_limit: int = defaults.REDRIVE_LIMIT
    flush_retries: int = defaults.FLUSH_RETRIES
    job_bound: float = defaults.JOB_BOUND
    step_lease: float = defaults.STEP_LEASE
    migration_stall: float = defaults.MIGRATION_STALL
    consumer_check_interval: float = defaults.CONSUMER_CHECK_INTERVAL
    consumer_stall_after: float = defaults.CONSUMER_STALL_AFTER
    #: Fault tests only: every task message is published this many times (a duplicate must be harmless).
    publish_copies: int = 1
    job_retention: float = defaults.JOB_RETENTION
    job_history: int = defaults.JOB_HISTORY
    history_interval: float = defaults.HISTORY_INTERVAL
    shutdown_timeout: float = defaults.SHUTDOWN_TIMEOUT
    migration_timeout: float = defaults.MIGRATION_TIMEOUT
    migration_bandwidth: int = defaults.MIGRATION_BANDWIDTH
    #: Where QEMU sends live-migration data (e.g. ``tcp://10.0.0.1``); empty: libvirt uses the peer's hostname.
    migration_uri: str = ""
    #: A coordinator contends for primary (which consumes the cluster queue and fences); others never do.
    coordinator: bool = True
    suspect_after_intervals: int = defaults.SUSPECT_AFTER_INTERVALS
    saving_throws: int = defaults.SAVING_THROWS
    ipmi_timeout: float = defaults.IPMI_TIMEOUT
    ipmi_cipher_suite: int = defaults.IPMI_CIPHER_SUITE
    successful_fence: str = defaults.SUCCESSFUL_FENCE
    failed_fence: str = defaults.FAILED_FENCE
    fence_storm_fraction: float = defaults.FENCE_STORM_FRACTION
    self_fence_after: float = defaults.SELF_FENCE_AFTER
    #: ``module:function`` called before a VM is recovered on another node (e.g. to break Ceph RBD locks).
    storage_lock_hook: str = ""
    #: SR-IOV PFs (interface names) this node manages; their VFs are inventoried and configured by pvc.
    sriov_pfs: list[str] = field(default_factory=list)
    #: ``auto`` (simulated on libvirt test-driver nodes, ``ip link`` otherwise), ``ip-link`` or ``simulated``.
    sriov_backend: str = "auto"
    ipmi_hostname: str = ""
    ipmi_username: str = ""
    ipmi_password: str = field(default="", repr=False)
    log_level: str = "INFO"
    #: ``text`` or ``json`` (pvc_tasks.logs).
    log_format: str = "text"
    #: Where a worker serves its own metrics (``host:port``, no authentication: loopback or a management network;
    #: pvc_tasks.metrics); empty: not served. The cluster's figures are the API's ``/api/v1/metrics``.
    metrics_listen: str = ""
    # API
    api_listen: str = defaults.API_LISTEN
    api_threads: int = defaults.API_THREADS
    api_connection_limit: int = defaults.API_CONNECTION_LIMIT
    api_connections_per_client: int = defaults.API_CONNECTIONS_PER_CLIENT
    api_idle_timeout: float = defaults.API_IDLE_TIMEOUT
    api_request_timeout: float = defaults.API_REQUEST_TIMEOUT
    api_max_body: int = defaults.API_MAX_BODY
    #: The VM XML policy (``pvc_tasks.xml_policy``; docs/security.md): what a VM's XML may ask of the hosts. The
    #: API and every worker read it from their own config, never from ZooKeeper or the API.
    xml_vm_paths: list[str] = field(default_factory=lambda: list(defaults.XML_VM_PATHS))
    xml_image_paths: list[str] = field(default_factory=lambda: list(defaults.XML_IMAGE_PATHS))
    xml_firmware_paths: list[str] = field(default_factory=lambda: list(defaults.XML_FIRMWARE_PATHS))
    xml_nvram_paths: list[str] = field(default_factory=lambda: list(defaults.XML_NVRAM_PATHS))
    xml_allowed_emulators: list[str] = field(default_factory=lambda: list(defaults.XML_ALLOWED_EMULATORS))
    xml_allowed_protocols: list[str] = field(default_factory=lambda: ["rbd"])
    xml_allowed_storage_hosts: list[str] = field(default_factory=list)
    xml_allowed_pools: list[str] = field(default_factory=list)
    xml_allowed_networks: list[str] = field(default_factory=lambda: list(defaults.XML_ALLOWED_NETWORKS))
    xml_allowed_bridges: list[str] = field(default_factory=list)
    xml_allowed_direct_devices: list[str] = field(default_factory=list)
    xml_allowed_listen: list[str] = field(default_factory=lambda: list(defaults.XML_ALLOWED_LISTEN))
    xml_allow_qemu_namespace: bool = False
    xml_allow_hostdev: bool = False

    @property
    def xml_policy(self) -> XmlPolicy:
        return XmlPolicy(
            vm_paths=tuple(self.xml_vm_paths), image_paths=tuple(self.xml_image_paths),
            firmware_paths=tuple(self.xml_firmware_paths), nvram_paths=tuple(self.xml_nvram_paths),
            allowed_emulators=tuple(self.xml_allowed_emulators), allowed_protocols=tuple(self.xml_allowed_protocols),
            allowed_storage_hosts=tuple(self.xml_allowed_storage_hosts), allowed_pools=tuple(self.xml_allowed_pools),
            allowed_networks=tuple(self.xml_allowed_networks), allowed_bridges=tuple(self.xml_allowed_bridges),
            allowed_direct_devices=tuple(self.xml_allowed_direct_devices),
            allowed_listen=tuple(self.xml_allowed_listen), allow_qemu_namespace=self.xml_allow_qemu_namespace,
            allow_hostdev=self.xml_allow_hostdev)

    api_tokens: list[str] = field(default_factory=list, repr=False)

    @property
    def broker_url(self) -> str:
        return self.broker or self.redis

    @property
    def absent_after(self) -> float:
        """Seconds without keepalive after which a node without presence counts as absent."""
        return self.keepalive_interval * self.absent_after_intervals


def _coerce(kind: Any, value: Any) -> Any:
    if kind in (list[str], "list[str]"):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return [str(v) for v in value]
    if kind in (bool, "bool"):
        if isinstance(value, str):
            if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"not a boolean: {value!r}")
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if kind in (float, "float"):
        return float(value)
    if kind in (int, "int"):
        return int(value)
    return str(value)


def load_settings(path: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                  **explicit: Any) -> Settings:
    """Build Settings from defaults, then the file, then the environment, then ``explicit`` (None ignored)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get("PVC_CONFIG")
    if path:
        with open(Path(path), "rb") as fh:
            document = tomllib.load(fh)
        for key, value in document.items():
            if isinstance(value, dict):
                values.update(value)
            else:
                values[key] = value
    known = {f.name: f for f in fields(Settings)}
    if "xml_allowed_paths" in values or "PVC_XML_ALLOWED_PATHS" in env:
        raise ValueError("xml_allowed_paths is gone: a VM's writable files live in its own directory under "
                         "xml_vm_paths, shared read-only images under xml_image_paths, firmware under "
                         "xml_firmware_paths (docs/security.md, \"VM XML policy\")")
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown setting(s) in {path}: {', '.join(sorted(unknown))}")
    for name in known:
        if f"PVC_{name.upper()}" in env:
            values[name] = env[f"PVC_{name.upper()}"]
    values.update({k: v for k, v in explicit.items() if v is not None})
    try:
        settings = Settings(**{k: _coerce(known[k].type, v) for k, v in values.items()})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid setting: {exc}") from exc
    for name in ("successful_fence", "failed_fence"):
        if getattr(settings, name) not in ("migrate", "none"):
            raise ValueError(f"invalid setting: {name} must be 'migrate' or 'none', not {getattr(settings, name)!r}")
    scheme = settings.broker_url.partition("://")[0]
    if scheme not in BROKER_SCHEMES:
        raise ValueError(f"invalid setting: the broker URL must start with {', '.join(BROKER_SCHEMES)}, "
                         f"not {scheme or 'nothing'}://")
    if settings.log_format not in ("text", "json"):
        raise ValueError(f"invalid setting: log_format must be text or json, not {settings.log_format!r}")
    if settings.metrics_listen and not re.fullmatch(r"[\w.:\[\]-]*:\d{1,5}", settings.metrics_listen):
        raise ValueError(f"invalid setting: metrics_listen must be host:port, not {settings.metrics_listen!r}")
    _check_xml_paths(settings)
    if settings.sriov_backend not in ("auto", "ip-link", "simulated"):
        raise ValueError(f"invalid setting: sriov_backend must be auto, ip-link or simulated, "
                         f"not {settings.sriov_backend!r}")
    return settings


def _check_xml_paths(settings: Settings) -> None:
    """Every policy directory absolute and normal; no shared image or firmware directory inside a VM root (a VM
    with that directory's name would own it) nor a VM root inside one (every VM could read the others' files)."""
    roots = {"xml_vm_paths": settings.xml_vm_paths, "xml_image_paths": settings.xml_image_paths,
             "xml_firmware_paths": settings.xml_firmware_paths, "xml_nvram_paths": settings.xml_nvram_paths}
    for name, paths in roots.items():
        for path in paths:
            if not path.startswith("/") or os.path.normpath(path) != path.rstrip("/") or path.rstrip("/") == "":
                raise ValueError(f"invalid setting: {name} entry {path!r} must be an absolute, normal directory "
                                 f"other than /")
    for vm_root in settings.xml_vm_paths:
        for name in ("xml_image_paths", "xml_firmware_paths"):
            for shared in roots[name]:
                a, b = vm_root.rstrip("/") + "/", shared.rstrip("/") + "/"
                if a.startswith(b) or b.startswith(a):
                    raise ValueError(f"invalid setting: {name} entry {shared!r} and xml_vm_paths entry {vm_root!r} "
                                     f"overlap (VM directories and shared read-only ones must be apart)")
