"""``GET /api/v1/metrics``: the cluster's figures in Prometheus' text format, behind the API token (Prometheus
sends it as the Basic password: ``basic_auth`` in its scrape config; docs/deployment.md).

Read at each scrape from what the API already holds (the read model: ``pvc_web.readmodel``) and a read of the nodes:

- ``pvc_jobs{kind,state}``: the job records ZooKeeper keeps (the history, pruned by count and age);
- ``pvc_job_duration_seconds{kind,state}``: from a job's creation to its end, each ended job counted once by this
  API process (the first scrape that sees it ended; an API restart starts the counts again, as counters do);
- ``pvc_job_redrives_total{kind}``: the times the re-driver had to publish an ended job's step again (its
  ``resends``: a lost or unconsumed message; pvc_tasks.redrive);
- ``pvc_fences_total{outcome}``: ended fence jobs by the power action's outcome (``off``: confirmed powered off;
  ``failed``; ``none``: no power action was taken);
- ``pvc_node_up{node}``, ``pvc_node_state{node,daemon_state,domain_state}`` (1 for the node's current pair),
  ``pvc_node_vms{node,state}``, ``pvc_node_memory_mib{node,what}``;
- ``pvc_vms{state}``;
- ``pvc_queue_messages{queue}``: messages waiting in each node's queue and the cluster queue (a broker query each);
- this process's own ``pvc_zookeeper_request_seconds{op}`` (``pvc_tasks.metrics``).

Workers serve their step durations and ZooKeeper latency themselves (``metrics_listen``).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter

from flask import Blueprint, Response, current_app
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pvc_tasks import metrics
from pvc_tasks.jobs import Job
from pvc_tasks.routing import CLUSTER_QUEUE, node_queue
from pvc_web.blueprint import API_PREFIX
from pvc_web.views import as_float

__all__ = ["ClusterCollector", "blp", "registry_for"]

log = logging.getLogger(__name__)

blp = Blueprint("metrics", __name__)

#: Job durations (s): a start takes tens of milliseconds, a flush of hundreds of VMs minutes.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, int]]:
        total, out = 0, []
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


def _fence_outcome(job: Job) -> str:
    fence = (job.result or {}).get("fence")
    if not fence:
        return "none"
    return "off" if fence.get("ok") else "failed"


class ClusterCollector(Collector):
    """The cluster's figures, read at each scrape (``collect``)."""

    def __init__(self, handle, broker_url: str) -> None:
        self.handle, self.broker_url = handle, broker_url
        self._lock = threading.Lock()
        self._counted: set[str] = set()  # ended jobs already in the histograms and counters
        self._durations: dict[tuple[str, str], _Histogram] = {}
        self._redrives: Counter[str] = Counter()
        self._fences: Counter[str] = Counter()

    def collect(self):
        h = self.handle
        jobs, nodes, vms = h.jobs(), h.node_records(), h.vm_records()
        yield from self._jobs(jobs)
        yield from self._nodes(nodes)
        by_state = GaugeMetricFamily("pvc_vms", "VMs by state", labels=["state"])
        for state, count in sorted(Counter(v.get("state") or "" for v in vms).items()):
            by_state.add_metric([state], count)
        yield by_state
        yield self._queues([n["name"] for n in nodes])

    def _jobs(self, jobs: list[Job]):
        kept = GaugeMetricFamily("pvc_jobs", "Job records kept, by kind and state", labels=["kind", "state"])
        for (kind, state), count in sorted(Counter((j.kind, str(j.state)) for j in jobs).items()):
            kept.add_metric([kind, state], count)
        yield kept
        with self._lock:
            ended = {j.id: j for j in jobs if j.terminal}
            for job_id in ended.keys() - self._counted:
                job = ended[job_id]
                self._durations.setdefault((job.kind, str(job.state)), _Histogram()).observe(
                    max(0.0, (job.finished or job.created) - job.created))
                self._redrives[job.kind] += job.resends
                if job.kind == "fence":
                    self._fences[_fence_outcome(job)] += 1
            self._counted = set(ended)  # a pruned job is forgotten; it was counted once
            durations = HistogramMetricFamily("pvc_job_duration_seconds", "Ended jobs, from creation to end",
                                              labels=["kind", "state"])
            for (kind, state), histogram in sorted(self._durations.items()):
                durations.add_metric([kind, state], histogram.buckets(), histogram.sum)
            redrives = CounterMetricFamily("pvc_job_redrives", "Steps of ended jobs published again by the "
                                                               "re-driver", labels=["kind"])
            for kind, count in sorted(self._redrives.items()):
                redrives.add_metric([kind], count)
            fences = CounterMetricFamily("pvc_fences", "Ended fence jobs by the power action's outcome",
                                         labels=["outcome"])
            for outcome in ("off", "failed", "none"):
                fences.add_metric([outcome], self._fences[outcome])
        yield from (durations, redrives, fences)

    def _nodes(self, nodes: list[dict]):
        up = GaugeMetricFamily("pvc_node_up", "1 while the node's worker holds its ZooKeeper presence", labels=["node"])
        state = GaugeMetricFamily("pvc_node_state", "1 for the node's current worker and VM-hosting state",
                                  labels=["node", "daemon_state", "domain_state"])
        vms = GaugeMetricFamily("pvc_node_vms", "VMs placed on the node", labels=["node", "state"])
        memory = GaugeMetricFamily("pvc_node_memory_mib", "The node's memory", labels=["node", "what"])
        for node in nodes:
            name = node["name"]
            up.add_metric([name], 1 if node["alive"] else 0)
            state.add_metric([name, node.get("daemon_state") or "", node.get("domain_state") or ""], 1)
            for what in ("running", "total"):
                vms.add_metric([name, what], as_float(node.get(f"vms.{what}")))
            for what in ("total", "used", "free", "allocated", "provisioned"):
                memory.add_metric([name, what], as_float(node.get(f"memory.{what}")))
        yield from (up, state, vms, memory)

    def _queues(self, nodes: list[str]) -> GaugeMetricFamily:
        depth = GaugeMetricFamily("pvc_queue_messages", "Messages waiting in a queue of the broker", labels=["queue"])
        names = [node_queue(n).name for n in nodes] + [CLUSTER_QUEUE.name]
        try:
            with Connection(self.broker_url, connect_timeout=2, transport_options={"socket_timeout": 2}) as conn:
                channel = conn.default_channel
                for name in names:
                    try:
                        depth.add_metric([name], channel.queue_declare(queue=name, passive=True).message_count)
                    except Exception:  # noqa: BLE001 - a queue not declared yet (its worker never started)
                        depth.add_metric([name], 0)
                        channel = conn.channel()  # AMQP closes a channel that asked for a missing queue
        except Exception as exc:  # noqa: BLE001 - the broker is away: the other figures are still worth having
            log.warning("metrics: cannot read queue depths from the broker: %s", exc)
        return depth


@blp.route(f"{API_PREFIX}/metrics")
def scrape() -> Response:
    registry = current_app.extensions["pvc_metrics"]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def registry_for(handle, broker_url: str) -> CollectorRegistry:
    """The API's registry: the cluster's figures and this process's own."""
    registry = CollectorRegistry()
    registry.register(ClusterCollector(handle, broker_url))
    registry.register(_Own())
    return registry


class _Own(Collector):
    """This process's metrics (``pvc_tasks.metrics.REGISTRY``), served with the cluster's."""

    def collect(self):
        yield from metrics.REGISTRY.collect()
