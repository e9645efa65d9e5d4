"""Every default of the system in one place, each with the reason for its value.

Settings (``pvc_tasks.config``) read these; nothing else hard-codes a timing or a size.
"""

#: ZooKeeper ensemble as a kazoo hosts string; a chroot suffix ("/pvc") isolates clusters sharing an ensemble.
ZOOKEEPER = "127.0.0.1:2181"
#: Celery broker and result backend.
REDIS = "redis://127.0.0.1:6379/0"
#: ZooKeeper session timeout (s). A worker's presence vanishes this long after it dies; 10 s keeps false
#: absences rare on a loaded node while still noticing a dead process quickly.
ZK_SESSION_TIMEOUT = 10.0
#: Default hypervisor: libvirt's test driver (state lives in the worker process; see docs/hypervisors.md).
LIBVIRT_URI = "test:///default"
#: Seconds between keepalive writes (timestamp + resources). PVC uses 5 s.
KEEPALIVE_INTERVAL = 5.0
#: Celery worker threads per node. Threads, not processes: the test driver's state is per process, and a node
#: must hold one libvirt connection for its life.
WORKER_CONCURRENCY = 4
#: Seconds between janitor passes (jobs of absent nodes, lost messages, pruning).
JANITOR_INTERVAL = 5.0
#: A node whose presence is gone and whose keepalive is older than this many intervals is absent: its
#: non-terminal jobs fail with a reason instead of waiting forever.
ABSENT_AFTER_INTERVALS = 3
#: A queued job whose message nobody took within this many seconds fails ("message lost or node stuck").
QUEUE_TIMEOUT = 3600.0
#: Terminal jobs are kept this long (s) for `pvc job list`, then pruned by the janitor.
JOB_RETENTION = 7 * 24 * 3600.0
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
#: Jobs a list request returns at most unless it asks for fewer.
JOB_LIST_LIMIT = 200
