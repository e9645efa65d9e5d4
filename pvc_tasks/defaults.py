"""Every default of the system in one place, each with the reason for its value.

Settings (``pvc_tasks.config``) read these; nothing else hard-codes a timing or a size.
"""

#: ZooKeeper ensemble as a kazoo hosts string; a chroot suffix ("/pvc") isolates clusters sharing an ensemble.
ZOOKEEPER = "127.0.0.1:2181"
#: Celery broker and result backend.
REDIS = "redis://127.0.0.1:6379/0"
#: How long (s) a job transition waits for ZooKeeper to answer again after a connection loss before it gives up:
#: three session timeouts, longer than a server restart or an ensemble's leader election.
ZK_RETRY_DEADLINE = 30.0
#: Longest pause (s) between two attempts to reach ZooKeeper again after the connection dropped: kazoo's default
#: backoff doubles up to an hour, so a client came back seconds after ZooKeeper did (its keepalive stale by then).
ZK_RECONNECT_MAX_DELAY = 1.0
#: ZooKeeper session timeout (s). A worker's presence vanishes this long after it dies, and a dead primary's
#: successor takes over only then (the floor of a primary's failover). Above ``LONGEST_STALL``, so a stalled worker
#: keeps its session; inside ZooKeeper's default bounds (4-40 s at tickTime 2000); kazoo pings every third of it.
ZK_SESSION_TIMEOUT = 6.0
#: Default hypervisor: libvirt's test driver (state lives in the worker process; see docs/hypervisors.md).
LIBVIRT_URI = "test:///default"
#: Seconds between keepalive writes (timestamp + resources). PVC uses 5 s, vSphere HA heartbeats every second; a
#: beat is one small ZooKeeper transaction, so 1 s costs little and makes detection short.
KEEPALIVE_INTERVAL = 1.0
#: Fencing. A node is SUSPECT after this many keepalive intervals without a keepalive (3 s at the defaults)...
SUSPECT_AFTER_INTERVALS = 3
#: ... then gets this many saving throws of one interval each before it is declared DEAD and fenced: 6 s after its
#: last keepalive. The keepalive thread only touches ZooKeeper, so a slow task or a slow libvirt never delays it;
#: only a stopped process or host does (docs/fencing.md, "Defaults", with PVC, Proxmox and vSphere HA). Tests use
#: 2 and 1 (fenced ~3-4 s after death).
SAVING_THROWS = 3
#: The fencing monitor judges every node this many times per keepalive interval: a node is declared dead within a
#: quarter of an interval of crossing the threshold (the ages are measured, not counted in passes).
MONITOR_PASSES = 4
#: The longest stall of a worker (process or host stopped: signals, swapping, a frozen host) that the defaults
#: ride out without a fence: dead after 6 s = one interval (the stall may begin just before a beat) + 4 s + 1 s
#: to reconnect (``ZK_RECONNECT_MAX_DELAY``). bench/failover.py's soak pauses workers up to this long; measured
#: keepalive gaps under a 500-VM flush are far below it (docs/performance.md).
LONGEST_STALL = 4.0
#: Hard timeout (s) of one ipmitool command; a BMC that does not answer costs one timeout, not three.
IPMI_TIMEOUT = 5.0
#: IPMI v2 cipher suite (``ipmitool -C``); 3 (HMAC-SHA1, AES-128) is what every BMC and ipmi_sim accept.
IPMI_CIPHER_SUITE = 3
#: After a confirmed fence: ``migrate`` (recover the node's running VMs on other nodes) or ``none``.
SUCCESSFUL_FENCE = "migrate"
#: After a failed fence: ``none`` (VMs marked failed with the reason; never run twice) or ``migrate`` (recover,
#: but only when the dead node self-fences and its self-fence interval has passed; see docs/fencing.md).
FAILED_FENCE = "none"
#: Storm guard: when two or more nodes look dead at once and they are at least this fraction of the nodes in play,
#: nothing is fenced and a cluster fault is raised (pvc_workers.monitor; why in docs/fencing.md). 0.5: a correlated
#: failure of half of the cluster waits for an operator; a single failure is always fenced.
FENCE_STORM_FRACTION = 0.5
#: An operator's request to move the primary role (`pvc node primary|secondary`) is honoured for this long (s, by
#: ZooKeeper's clock): a request for a node that died before it could take over must not surprise anyone later.
PRIMARY_REQUEST_TTL = 60.0
#: A primary handing over waits at most this long (s) for its running fence passes (an IPMI power cycle takes
#: up to three ``IPMI_TIMEOUT`` plus the settle time) before it releases the primary lock.
HANDOVER_WAIT = 30.0
#: Self-fence: a worker cut off from ZooKeeper longer than this (s) stops its VMs. 0 = off (PVC's default too).
SELF_FENCE_AFTER = 0.0
#: Celery worker threads per node. Threads, not processes: the test driver's state is per process, and a node
#: must hold one libvirt connection for its life.
WORKER_CONCURRENCY = 4
#: Seconds between janitor passes (jobs of absent nodes, lost messages, pruning).
JANITOR_INTERVAL = 5.0
#: A node whose presence is gone and whose keepalive is older than this many intervals is absent: its
#: non-terminal jobs fail with a reason instead of waiting forever.
ABSENT_AFTER_INTERVALS = 3
#: A queued job whose message nobody took within this many seconds fails ("message lost or node stuck"): the
#: outer bound, whatever the re-driver did.
QUEUE_TIMEOUT = 3600.0
#: The outbox (pvc_tasks.redrive). A step nobody took this many seconds after its message was published, while its
#: queue is empty and no worker holds the message, is published again from the job record. 10 s is two janitor
#: passes: long past a publish's round trip, short against any timeout a user waits on. 0 turns re-driving off
#: (bench/redrive.py measures what it costs; nothing else should).
REDRIVE_AFTER = 10.0
#: ... at most this many times in a row; then the job's kind ends or rolls it back with the reason (a node that
#: takes nothing from its queue is stuck, not slow).
REDRIVE_LIMIT = 5
#: A running step that shows no progress (a phase, a percent, a note, a tick of a bounded wait, data moved by a live
#: migration) for this long (s) is stuck: a thread blocked in a hypervisor call that does not return. Its job is
#: ended without it as a dead worker's would be (pvc_tasks.leases). Long past any single libvirt call we have seen
#: (a large guest's start takes seconds), short against the job bound. 0: off.
STEP_LEASE = 120.0
#: A live migration whose copied data has not grown for this long (s) is aborted by its watcher (the VM keeps
#: running on its source): a stalled link, not a slow one. Shorter than ``STEP_LEASE``, so the watcher, which can
#: abort cleanly, acts before the lease would end the job around a migration still in flight.
MIGRATION_STALL = 60.0
#: A worker pings itself through its own queue this often (s) ...
CONSUMER_CHECK_INTERVAL = 15.0
#: ... and when no ping came back for this long (s) while it had idle threads, its Celery consumer is stuck (alive
#: but taking nothing): it records a node fault and exits, and its supervisor (systemd) starts it again. 0: off.
CONSUMER_STALL_AFTER = 90.0
#: How long a job may stay unfinished before it counts as stuck (a cluster fault ``jobs_over_bound`` names it): this
#: much for a one-step job, plus the shutdown timeout for kinds that wait for a guest, plus the migration timeout
#: for migrations; 12 times as much for a flush, unflush or fence (pvc_tasks.kinds). Generous: it flags stuck
#: work, it never ends any.
JOB_BOUND = 300.0
#: A flush or unflush submits a VM's failed child again this many times before the VM stays (a worker restart or a
#: lost connection fails a migration that a second try completes).
FLUSH_RETRIES = 2
#: VMs of a fenced node placed per transaction (``pvc_tasks.recovery.submit_recoveries``): one read of the nodes and
#: one commit for all of them instead of one each, far below ZooKeeper's request limit (a job record is ~1 KiB).
RECOVERY_BATCH = 16
#: Seconds between an engine's safety passes (flush, unflush, fence; a child's end triggers a pass at once) ...
ENGINE_TICK = 1.0
#: ... and the lifetime of a pass's lease: a pass that died holding it blocks the next one at most this long.
ENGINE_LEASE = 10.0
#: Poll interval (s) of a step waiting on libvirt (a guest's shutdown, a migration's progress): short against every
#: timeout it serves, long enough that a waiting thread costs nothing measurable.
STEP_POLL_INTERVAL = 0.2
#: A transient ZooKeeper error inside a job transition is retried after this delay (s), doubled each time up to
#: ``ZK_RETRY_MAX_DELAY``, until ``ZK_RETRY_DEADLINE``: first retries come fast (a leader election takes ~0.2 s
#: on loopback), later ones do not hammer a server that is restarting.
ZK_RETRY_FIRST_DELAY = 0.1
ZK_RETRY_MAX_DELAY = 2.0
#: A starting worker whose node's presence is still held (its previous process died without closing its session)
#: looks again this often (s) until that session expires.
PRESENCE_RETRY_INTERVAL = 0.2
#: The session watch re-checks a lost session this often (s) (presence to re-create, self-fence to judge).
SESSION_WATCH_INTERVAL = 0.2
#: Fencing: after "power off" the BMC is asked for the power state this many times, ``FENCE_SETTLE`` s apart (the
#: first after a quarter of it): BMCs apply a power command asynchronously, ipmi_sim within ~0.1 s.
FENCE_VERIFY_TRIES = 3
FENCE_SETTLE = 1.0
#: A publish retries this many times, at most this far apart (s), before the dispatcher reports the broker down: the
#: API answers at once (the job record is the outbox) instead of hanging while Redis is gone.
BROKER_PUBLISH_RETRIES = 2
BROKER_PUBLISH_RETRY_MAX = 0.5
#: Socket bounds (s) of every Redis connection: a dead Redis costs seconds, not a TCP timeout.
BROKER_CONNECT_TIMEOUT = 3.0
BROKER_SOCKET_TIMEOUT = 10.0
#: How often (s) a live migration's watcher checks its progress, the cancel flag and its timeout.
MIGRATION_WATCH_INTERVAL = 0.1
#: At most how often (s) a step rewrites its job's progress figures when its percent has not risen (a live migration's
#: MiB sent and left): every write is a ZooKeeper write and a watch event for every reader of the job.
PROGRESS_EVERY = 0.5
#: Bound (s) of one ``ip link`` command that sets an SR-IOV VF.
NIC_COMMAND_TIMEOUT = 10.0
#: Terminal jobs are kept this long (s) for `pvc job list`, then pruned by the primary's janitor ...
JOB_RETENTION = 7 * 24 * 3600.0
#: ... and at most this many of them, the newest by their end: a busy cluster makes thousands of jobs a day, and
#: ZooKeeper answers a listing of the job directory in one response (under jute.maxbuffer, ~1 MiB: ~25,000 ids).
JOB_HISTORY = 10_000
#: How often (s) the primary's janitor reads the whole job history: to prune it, and to index an unfinished job
#: that a writer still on schema 7 created during an upgrade to 8 (every other pass reads the unfinished jobs only).
HISTORY_INTERVAL = 60.0
#: Graceful shutdown bound (s) before a shutdown job fails with a reason; PVC's default is 180 s.
SHUTDOWN_TIMEOUT = 180.0
#: Bound (s) of a live migration that has not converged: it is aborted and the VM keeps running on its source.
MIGRATION_TIMEOUT = 300.0
#: Live-migration bandwidth cap (MiB/s); 0 leaves it to QEMU. A cap keeps migrations from starving VM traffic.
MIGRATION_BANDWIDTH = 0
#: Live-migration max downtime (ms) when a VM's meta does not set one (PVC's default is 300 ms).
MAX_DOWNTIME_MS = 300
#: API listen address and port.
API_LISTEN = "127.0.0.1:7370"
#: Waitress threads serving the API.
API_THREADS = 8
#: Open connections the API accepts at once (idle ones cost a file descriptor, not a thread).
API_CONNECTION_LIMIT = 2000
#: Open connections one client address may hold; more are closed at once (``pvc_web.wsgi``).
API_CONNECTIONS_PER_CLIENT = 256
#: Seconds a keep-alive connection may sit idle between requests before the API closes it.
API_IDLE_TIMEOUT = 15.0
#: Seconds a request may take to arrive in full (headers and body) once its first byte came: slow senders are cut.
API_REQUEST_TIMEOUT = 20.0
#: Largest request body in bytes; a larger Content-Length is answered 413 before the body is read.
API_MAX_BODY = 4 * 1024 * 1024
#: A worker's metrics server (``metrics_listen``): threads serving scrapes, connections that may wait for one, and
#: the seconds a connection has to send its request before it is cut.
METRICS_THREADS = 2
METRICS_PENDING = 8
METRICS_TIMEOUT = 2.0
#: How often (s) the API looks at ZooKeeper and the broker for ``GET /health``, which answers that look from memory.
HEALTH_INTERVAL = 2.0
#: A look older than this (s) makes ``/health`` degraded (``stale``): the looking thread is stuck on I/O.
HEALTH_STALE = 10.0
#: Deepest nesting of a JSON request body (objects and arrays); deeper is answered 400.
API_JSON_DEPTH = 32
#: Largest VM XML in UTF-8 bytes: with the rest of the define transaction it stays far below ZooKeeper's
#: ``jute.maxbuffer`` (1 MiB by default), the largest request a server accepts.
XML_MAX_BYTES = 512 * 1024
# ---- the VM XML policy (pvc_tasks.xml_policy; docs/security.md, "VM XML policy") --------------------------------
#: Each VM owns ``<root>/<vm name>/`` under these: its writable disks, NVRAM, sockets and logs live there.
XML_VM_PATHS = ("/var/lib/libvirt/images",)
#: Shared images every VM may read, never write (install ISOs, base images, kernels). Never under a VM root.
XML_IMAGE_PATHS = ("/var/lib/libvirt/boot",)
#: Firmware (loaders, NVRAM templates): read-only.
XML_FIRMWARE_PATHS = ("/usr/share/OVMF", "/usr/share/AAVMF", "/usr/share/qemu", "/usr/share/seabios")
#: Where libvirt keeps NVRAM files named ``<vm name>_VARS.fd`` (its own default for a VM with a pflash loader).
XML_NVRAM_PATHS = ("/var/lib/libvirt/qemu/nvram",)
#: The QEMU binaries a VM's ``<emulator>`` may name (Debian, Ubuntu, RHEL).
XML_ALLOWED_EMULATORS = ("/usr/bin/qemu-system-x86_64", "/usr/bin/kvm", "/usr/bin/qemu-kvm", "/usr/libexec/qemu-kvm")
#: libvirt networks a VM's interfaces may join (``<interface type='network'>``).
XML_ALLOWED_NETWORKS = ("default",)
#: Addresses a VM's VNC or SPICE display may listen on (the hypervisor's own display port): loopback only.
XML_ALLOWED_LISTEN = ("127.0.0.1", "::1", "localhost")
#: libvirt's RELAX NG schema of domain XML (Debian's ``libvirt0``): every document must validate against it.
LIBVIRT_DOMAIN_SCHEMA = "/usr/share/libvirt/schemas/domain.rng"
#: Seconds ``qemu-img info --backing-chain`` may take on a node before a define is refused for it.
QEMU_IMG_TIMEOUT = 10.0
#: Largest ZooKeeper transaction pvc sends (bytes of data, plus paths): a bigger one would make the server drop
#: the connection, and with it every request in flight on the shared session (``pvc_tasks.jobs.commit``).
ZK_MAX_REQUEST = 1000 * 1024
#: Jobs a list request returns at most unless it asks for fewer.
JOB_LIST_LIMIT = 200

# ---- the events stream (pvc_web.events) ---------------------------------------------------------------------------
#: Events kept for clients that resume with Last-Event-ID.
EVENTS_KEEP = 10_000
#: How often (s) the feed looks at node figures without a watch having fired.
EVENTS_NODE_POLL = 2.0
#: The pause (s) after a watch fires before the feed reads, gathering a burst of changes into one read.
EVENTS_DEBOUNCE = 0.1
#: Ended jobs in a new stream's snapshot (besides every unfinished job).
EVENTS_RECENT_JOBS = 50
#: A stream ends after this many seconds; the client reconnects with its last event id and loses nothing.
EVENTS_STREAM_SECONDS = 300.0
#: A comment line after this many seconds without an event (finds clients that went away; keeps proxies open).
EVENTS_HEARTBEAT = 15.0
#: What a stream tells EventSource to wait (s) before reconnecting.
EVENTS_RETRY = 2.0
