"""Marshmallow schemas of every request and response body; the OpenAPI document is generated from them."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate

from pvc_tasks.defaults import JOB_LIST_LIMIT, XML_MAX_BYTES
from pvc_tasks.jobs import JobState
from pvc_tasks.kinds import KINDS
from pvc_tasks.names import JOB_ID, NAME, NAME_RULE
from pvc_tasks.selector import METHODS
from pvc_tasks.submit import ACTIONS, MIGRATION_METHODS


def Name(**kwargs) -> fields.String:
    """A VM, node, PF or VF name (``pvc_tasks.names``): anything else is a 400 naming the field."""
    return fields.String(validate=validate.Regexp(NAME, error=f"must be {NAME_RULE}"), **kwargs)


def JobId(**kwargs) -> fields.String:
    return fields.String(validate=validate.Regexp(JOB_ID, error="must be a job id (a UUID)"), **kwargs)


def _xml_size(value: str) -> None:
    """Bytes, not characters: ZooKeeper's limit is in bytes, and one character may take four."""
    size = len(value.encode())
    if not 0 < size <= XML_MAX_BYTES:
        raise ValidationError(f"must be 1-{XML_MAX_BYTES} bytes of UTF-8 (this is {size})")


class ErrorSchema(Schema):
    """The body of every 4xx/5xx answer."""

    error = fields.String(required=True, metadata={"description": "stable machine-readable code"})
    message = fields.String(required=True, metadata={"description": "what went wrong, for a person"})
    details = fields.Dict(metadata={"description": "offending fields (name -> problems) or context"})


class HealthSchema(Schema):
    status = fields.String(metadata={"description": "ok | degraded"})
    zookeeper = fields.Boolean()
    broker = fields.Boolean()
    cluster_initialised = fields.Boolean()
    schema_version = fields.Integer(allow_none=True)
    jobs = fields.Dict(allow_none=True, metadata={
        "description": "unfinished jobs: queued/running {count, oldest_s}, resends, over_bound (a count)"})
    checked_s_ago = fields.Float(allow_none=True, metadata={
        "description": "age of the look these figures come from (null: none yet); the API looks every 2 s"})
    stale = fields.Boolean(metadata={"description": "the last look is too old (its thread is stuck): degraded"})


class LimitsSchema(Schema):
    migrate_out_per_node = fields.Integer(validate=validate.Range(min=1, max=1000))
    migrate_in_per_node = fields.Integer(validate=validate.Range(min=1, max=1000))
    migrate_cluster = fields.Integer(validate=validate.Range(min=1, max=10000))


class FaultSchema(Schema):
    id = fields.String(metadata={"description": "ipmi | keepalive_missed | fence_storm | ..."})
    message = fields.String()
    since = fields.Float(allow_none=True)


class ClusterSchema(Schema):
    schema_version = fields.Integer()
    latest_schema_version = fields.Integer()
    maintenance = fields.Boolean()
    fencing = fields.String(metadata={"description": "enabled | disabled (maintenance mode)"})
    shutdown_force = fields.Boolean(metadata={"description": "a VM whose graceful shutdown times out is forced off"})
    primary = fields.String(metadata={"description": "the primary coordinator ('' during a failover)"})
    primary_node = fields.String(metadata={"description": "same as primary (PVC's key name)"})
    node_states = fields.Dict(keys=fields.String(), values=fields.Dict(),
                              metadata={"description": "per node: daemon_state, router_state, domain_state, alive"})
    faults = fields.List(fields.Nested(FaultSchema), metadata={"description": "cluster-wide faults"})
    migration_selector = fields.String()
    limits = fields.Nested(LimitsSchema)
    migrations = fields.Integer(metadata={"description": "migrations holding a slot now"})
    nodes = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={"description": "count by state"})
    vms = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={"description": "count by state"})
    jobs = fields.Dict(keys=fields.String(), values=fields.Integer(), metadata={"description": "count by state"})
    backlog = fields.Dict(metadata={
        "description": "unfinished jobs: queued/running {count, oldest_s}, resends (steps re-sent by the "
                       "re-driver), over_bound (jobs past their kind's bound, oldest first)"})


class ClusterInitSchema(Schema):
    version = fields.Integer(validate=validate.Range(min=0), metadata={"description": "default: the newest"})
    whole_ensemble = fields.Boolean(load_default=False, metadata={
        "description": "the API's ZooKeeper setting has no chroot and the ensemble is pvc's alone: init may put "
                       "pvc's ACL on every top-level node (refused otherwise, 409 no_chroot)"})


class ClusterUpgradeSchema(Schema):
    whole_ensemble = fields.Boolean(load_default=False, metadata={"description": "as for init"})


class MaintenanceSchema(Schema):
    maintenance = fields.Boolean(required=True, metadata={"description": "true: fencing is disabled"})


class SchemaChangeSchema(Schema):
    schema_version = fields.Integer()
    created = fields.List(fields.String(), metadata={"description": "keys created with defaults"})
    upgraded_through = fields.List(fields.Integer())
    secured = fields.Integer(metadata={"description": "nodes that were given pvc's ACL (readable by pvc alone)"})


class _Memory(Schema):
    total = fields.Integer()
    used = fields.Integer()
    free = fields.Integer()
    allocated = fields.Integer()
    provisioned = fields.Integer()


class _Vcpu(Schema):
    total = fields.Integer()
    allocated = fields.Integer()


class _VmCounts(Schema):
    total = fields.Integer()
    running = fields.Integer()


class _Ipmi(Schema):
    hostname = fields.String()
    username = fields.String()
    health = fields.String(metadata={"description": "ok, or why fencing this node would fail"})


class _Fence(Schema):
    job = fields.String()
    state = fields.String(metadata={"description": "fencing | fenced | fence-failed"})
    since = fields.Float()
    reason = fields.String()
    why = fields.String()


class NodeSchema(Schema):
    name = fields.String()
    alive = fields.Boolean(metadata={"description": "the node's worker holds its ZooKeeper presence"})
    daemon_state = fields.String()
    domain_state = fields.String(metadata={
        "description": "ready | flush (a flush job runs) | flushed (no VM runs on it) | unflush (an unflush job "
                       "runs); a flush or unflush that did not succeed leaves it ready, with the fault ``flush``"})
    router_state = fields.String()
    keepalive_age = fields.Float(allow_none=True, metadata={"description": "seconds since the last keepalive"})
    schema_version = fields.String()
    hypervisor = fields.String()
    memory = fields.Nested(_Memory, metadata={"description": "MiB"})
    vcpu = fields.Nested(_Vcpu)
    load = fields.Float()
    vms = fields.Nested(_VmCounts)
    ipmi = fields.Nested(_Ipmi, metadata={"description": "the IPMI password is never shown"})
    faults = fields.List(fields.Nested(FaultSchema))
    fence = fields.Nested(_Fence, metadata={"description": "the node's last fence ({} if never fenced)"})
    self_fence_after = fields.Float(metadata={"description": "s without ZooKeeper before it stops its VMs; 0 off"})
    active_job = fields.String(metadata={"description": "the node's live flush or unflush job, or empty"})
    next = fields.List(fields.String(), metadata={"description": "what the operator can do next, given the node's "
                                                                 "worker, domain state and faults"})


class MetaSchema(Schema):
    node_limit = fields.List(Name(), metadata={"description": "nodes the VM may run on (empty: any)"})
    node_selector = fields.String(validate=validate.OneOf(("", *METHODS)),
                                  metadata={"description": "empty: the cluster default"})
    autostart = fields.Boolean()
    migration_method = fields.String(validate=validate.OneOf(MIGRATION_METHODS))
    max_downtime = fields.Integer(allow_none=True, validate=validate.Range(min=1),
                                  metadata={"description": "ms, live migration only"})
    shutdown_force = fields.Boolean(allow_none=True, metadata={
        "description": "force the VM off when a graceful shutdown times out (null: the cluster's shutdown_force)"})


class VmSchema(Schema):
    name = fields.String()
    uuid = fields.String()
    state = fields.String()
    node = fields.String()
    last_node = fields.String()
    failed_reason = fields.String()
    memory = fields.Integer(metadata={"description": "MiB"})
    vcpus = fields.Integer()
    active_job = fields.String(metadata={"description": "id of the job acting on the VM, empty when none"})
    meta = fields.Nested(MetaSchema)


class VmDetailSchema(VmSchema):
    xml = fields.String()


class VmDefineSchema(Schema):
    xml = fields.String(required=True, validate=_xml_size,
                        metadata={"description": f"libvirt domain XML, at most {XML_MAX_BYTES} bytes of UTF-8"})
    node = Name(metadata={"description": "target node; default: chosen by the selector"})
    meta = fields.Nested(MetaSchema)


class VmStateSchema(Schema):
    state = fields.String(required=True, validate=validate.OneOf(tuple(a for a in ACTIONS if a != "undefine")))
    timeout = fields.Float(validate=validate.Range(min=1, max=86400),
                           metadata={"description": "graceful shutdown bound in seconds (shutdown, restart)"})


class MigrateSchema(Schema):
    target = Name(metadata={"description": "target node; default: the VM's selector, else the cluster's"})
    method = fields.String(validate=validate.OneOf(("default", "live", "shutdown")),
                           metadata={"description": "default: the VM's migration_method"})
    force_live = fields.Boolean(load_default=False, metadata={"description": "same as method=live"})
    timeout = fields.Float(validate=validate.Range(min=1, max=86400),
                           metadata={"description": "graceful shutdown bound (s) for shutdown migrations"})
    force = fields.Boolean(load_default=False, metadata={
        "description": "migrate: a VM already away from its home (last_node) is refused unless forced; forcing keeps "
                       "that home"})


class ShutdownForceSchema(Schema):
    shutdown_force = fields.Boolean(required=True, metadata={
        "description": "force a VM off when its graceful shutdown times out (default true, as PVC); a VM's meta "
                       "shutdown_force overrides it"})


class FlushSchema(Schema):
    allow_shutdown = fields.Boolean(load_default=False, metadata={
        "description": "shut down (and mark autostart) the running VMs that have nowhere to go, instead of refusing "
                       "the flush with 409 insufficient_capacity"})


class HandoverSchema(Schema):
    node = fields.String(metadata={"description": "the node named in the request"})
    want = fields.String(metadata={"description": "primary | secondary"})
    primary = fields.String(metadata={"description": "the primary when the request was made"})
    done = fields.Boolean(metadata={"description": "true: it already was so, nothing was requested"})


class EvacuateSchema(Schema):
    confirm_powered_off = fields.Boolean(load_default=False, metadata={
        "description": "you state that the node is powered off (it was not fenced, or its fence failed): its VMs "
                       "are then started elsewhere, so it must really be off; recorded with your token's name"})


class JobSchema(Schema):
    id = fields.String()
    kind = fields.String()
    vm = fields.String()
    node = fields.String()
    params = fields.Dict()
    state = fields.String(metadata={"description": "queued | running | succeeded | failed | cancelled"})
    phase = fields.String()
    step = fields.Integer()
    steps = fields.Integer()
    percent = fields.Integer()
    progress = fields.Dict(metadata={"description": "figures of the work in flight: a live migration's sent_mib, "
                                                    "remaining_mib, total_mib and mib_per_s; a flush's done, total "
                                                    "and in_flight (VM names)"})
    messages = fields.List(fields.Dict())
    created = fields.Float()
    started = fields.Float(allow_none=True)
    finished = fields.Float(allow_none=True)
    reason = fields.String()
    result = fields.Dict()
    parent = fields.String()
    requested_by = fields.String(metadata={"description": "the name of the API token that asked for the job; empty "
                                                          "when pvc created it (see parent)"})
    request_id = fields.String(metadata={"description": "the id of the API request that created the job (its "
                                                        "X-Request-Id; its line in the API's access log)"})
    cancel_requested = fields.Boolean()
    revision = fields.Integer(metadata={"description": "increases on every change of the job (show only)"})


class JobWaitSchema(Schema):
    wait = fields.Float(load_default=0, validate=validate.Range(min=0, max=30),
                        metadata={"description": "long-poll: answer as soon as the job's revision is above "
                                                 "`after` or it is terminal, or after this many seconds"})
    after = fields.Integer(load_default=-1, metadata={"description": "the revision the client already has"})


class JobQuerySchema(Schema):
    state = fields.String(validate=validate.OneOf([s.value for s in JobState]))
    kind = fields.String(validate=validate.OneOf(sorted(KINDS)))
    parent = JobId(metadata={"description": "children of this job (e.g. a flush's migrations)"})
    node = Name()
    vm = Name()
    since = fields.Float(validate=validate.Range(min=0), metadata={"description": "created at or after (epoch s)"})
    before = fields.Float(validate=validate.Range(min=0), metadata={
        "description": "created before (epoch s): pass the last job's `created` to get the next page"})
    limit = fields.Integer(load_default=JOB_LIST_LIMIT, validate=validate.Range(min=1, max=10_000))


class PfSchema(Schema):
    node = fields.String()
    name = fields.String(metadata={"description": "the PF's interface name"})
    mtu = fields.Integer()
    vfcount = fields.Integer()
    vfs_used = fields.Integer(metadata={"description": "VFs of this PF used by a VM"})


class VfConfigSchema(Schema):
    """A VF's settings; in a PUT only the settings to change. Ranges are checked by the server with the VF's
    current settings (vlan_qos needs a vlan_id; tx_rate_min <= tx_rate_max; mtu <= the PF's)."""

    vlan_id = fields.Integer(metadata={"description": "0-4095 (0: untagged)"})
    vlan_qos = fields.Integer(metadata={"description": "0-7, 802.1p priority of the VLAN tag"})
    tx_rate_min = fields.Integer(metadata={"description": "Mb/s, 0: no guarantee"})
    tx_rate_max = fields.Integer(metadata={"description": "Mb/s, 0: no limit"})
    spoof_check = fields.Boolean()
    link_state = fields.String(metadata={"description": "auto | enable | disable"})
    trust = fields.Boolean()
    query_rss = fields.Boolean()
    mtu = fields.Integer(allow_none=True, metadata={"description": "68 - the PF's MTU; null: leave as it is"})
    mac = fields.String(metadata={"description": "unicast MAC; empty: leave as it is"})


class _VfApplied(Schema):
    config = fields.Nested(VfConfigSchema)
    errors = fields.Dict(keys=fields.String(), values=fields.String(),
                         metadata={"description": "setting -> why the NIC refused it"})
    at = fields.Float(allow_none=True)
    by = fields.String(metadata={"description": "the job id, or 'worker start'"})


class VfSchema(Schema):
    node = fields.String()
    name = fields.String(metadata={"description": "the VF's interface name"})
    pf = fields.String()
    index = fields.Integer(metadata={"description": "the VF's number on its PF (ip link ... vf N)"})
    pci = fields.String(metadata={"description": "PCI address, e.g. 0000:3c:00.1"})
    mac = fields.String(metadata={"description": "the MAC the NIC reports now"})
    phy_mac = fields.String(metadata={"description": "the MAC the VF had when first inventoried"})
    mtu = fields.Integer(metadata={"description": "the MTU the NIC reports now"})
    config = fields.Nested(VfConfigSchema, metadata={"description": "desired settings (ZooKeeper)"})
    applied = fields.Nested(_VfApplied, metadata={"description": "what the node last applied"})
    in_sync = fields.Boolean(metadata={"description": "the node applied exactly the desired settings"})
    used = fields.Boolean()
    used_by = fields.String(metadata={"description": "the VM using the VF"})


class VfQuerySchema(Schema):
    node = Name()
    pf = Name()


#: Built after the classes exist (built before them, it named only marshmallow's ``Schema``).
__all__ = sorted(name for name, value in list(globals().items())
                 if isinstance(value, type) and issubclass(value, Schema) and value is not Schema)
