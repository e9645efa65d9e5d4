"""The events stream behind ``GET /api/v1/events``: job, VM and node changes as Server-Sent Events.

What is an event: the new state of one job, VM or node (its API representation: a job without its message list
but with its last ``message``; a VM or node as its list shows it), or that a VM or node is gone (``deleted``). A
client that applies events in order holds what the list endpoints would answer.

How changes are found (``EventFeed``, one per API process, running only while a client listens):

1. The read model's ZooKeeper watches (``pvc_web.readmodel``) wake the feed when a VM or job key changes; node
   states are watched by the feed itself (``daemon_state``, ``domain_state``), and a node's figures are looked at
   every ``EVENTS_NODE_POLL`` s (they change with every keepalive: watching them would wake the feed every second
   per node for figures nobody reads that often).
2. After a short pause that gathers a burst (``EVENTS_DEBOUNCE``), the feed reads the lists as a list request
   would (the read model behind its barrier: every change committed before is in), compares each item with what
   it last saw (jobs by a fingerprint of what a person watches; VMs and nodes by their representation, a node's
   keepalive age and load aside) and appends an event per difference to a ring of ``EVENTS_KEEP`` events.

Ids and resume: an event's id is ``<epoch>-<seq>``; the epoch is chosen when the API process starts. A client
that reconnects with ``Last-Event-ID`` (browsers' EventSource does so by itself) gets every event after it, if the
id is this process's and still in the ring; otherwise it first gets ``reset`` (with the reason), then a snapshot.
A new stream (no id) starts with a snapshot: an event per node, VM, unfinished job and recent ended job
(``EVENTS_RECENT_JOBS``), then ``ready``. So a client behind a balancer of several API processes, or of an API
that restarted, re-reads everything once instead of missing changes.

Bounds: a stream holds one server thread, so at most a quarter of the API's threads stream at once (503
``too_many_streams`` beyond, with ``Retry-After``); a stream ends after ``EVENTS_STREAM_SECONDS`` (the client
reconnects with its last id and loses nothing); a comment line every ``EVENTS_HEARTBEAT`` s finds a client that
went away.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kazoo.exceptions import KazooException

from pvc_tasks import defaults
from pvc_tasks.errors import PvcError
from pvc_tasks.jobs import Job
from pvc_web.views import job_view, node_view, vm_view

__all__ = ["Event", "EventFeed", "job_event"]

log = logging.getLogger(__name__)

#: A node's representation without what changes with every keepalive.
_NODE_NOISE = ("keepalive_age", "load")


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str  # node | vm | job | reset | ready
    data: str  # JSON

    def encode(self, epoch: str) -> bytes:
        return f"id: {epoch}-{self.seq}\nevent: {self.kind}\ndata: {self.data}\n\n".encode()


def job_event(job: Job) -> dict:
    """A job as its events carry it: its record without the message list, with the last message's text."""
    view = job_view(job)
    messages = view.pop("messages")
    view["message"] = messages[-1]["text"] if messages else ""
    for private in ("request", "stage", "stage_taken", "sent"):
        view.pop(private, None)
    return view


def _job_print(job: Job) -> tuple:
    """What a person watching a job sees change (not the outbox's bookkeeping)."""
    return (job.state, job.phase, job.percent, job.step, len(job.messages), job.reason, job.cancel_requested,
            json.dumps(job.progress, sort_keys=True))


def _dump(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class EventFeed:
    """Changes of one cluster as numbered events; ``stream`` serves one client."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.epoch = secrets.token_hex(4)
        self._cond = threading.Condition()
        self._events: deque[Event] = deque(maxlen=defaults.EVENTS_KEEP)
        self._seq = 0
        #: What the feed last saw: ("job", id) -> fingerprint, ("vm"|"node", name) -> JSON (node noise aside).
        self._seen: dict[tuple[str, str], object] = {}
        #: What each VM's and job's last look was made from: the read model hands out the same object until it
        #: changes, so an unchanged one costs an identity check (5,000 VMs dumped at every look cost 75 ms).
        self._sources: dict[tuple[str, str], object] = {}
        self._nodes_due, self._nodes_at = False, 0.0
        self._baseline = False
        self._baseline_lock = threading.Lock()
        self._listeners = 0
        self._thread: threading.Thread | None = None
        self._poke = threading.Event()
        handle.model.on_change(self._poke.set)

    # ---- the feed's thread ----------------------------------------------------------------------------------------
    def _listen(self, delta: int) -> None:
        with self._cond:
            self._listeners += delta
            if self._listeners > 0 and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="events-feed", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._listeners <= 0:
                    self._thread = None
                    return
            self._poke.wait(defaults.EVENTS_NODE_POLL)
            time.sleep(defaults.EVENTS_DEBOUNCE)
            self._poke.clear()
            try:
                self.refresh()
            except (PvcError, KazooException) as exc:  # no cluster yet, ZooKeeper away: the next look tries again
                log.info("events: cannot read the cluster (%s); trying again", exc)
            except Exception:  # a bug must not end the feed: its streams would only send heartbeats from then on
                log.exception("events: a look at the cluster failed; trying again")

    def baseline(self) -> None:
        """Learn what there is, once, before the first client's snapshot (so that a change made between that
        snapshot and the feed's first look is an event, not the baseline). Raises what reading the cluster
        raises (the route answers 503)."""
        with self._baseline_lock:
            if not self._baseline:
                self.refresh()

    def refresh(self) -> None:
        """Compare the lists with what was last seen and append an event per difference (the first look only
        learns what there is: nobody was told anything before it). A VM record or job the read model hands out
        unchanged (the same object) is not looked at again; nodes are read when a watch of their state fired or
        ``EVENTS_NODE_POLL`` s passed (their figures change with every keepalive and job step)."""
        h = self.handle
        nodes_due = not self._baseline or self._nodes_due or \
            time.monotonic() - self._nodes_at >= defaults.EVENTS_NODE_POLL
        self._nodes_due = False
        nodes = h.node_records() if nodes_due else None
        vms, jobs = h.vm_records(), h.jobs()
        fresh: list[tuple[str, dict]] = []
        seen: dict[tuple[str, str], object] = {}
        sources: dict[tuple[str, str], object] = {}
        if nodes is None:
            seen.update((k, v) for k, v in self._seen.items() if k[0] == "node")
        else:
            self._nodes_at = time.monotonic()
            schema = h.schema
            for record in nodes:
                h.zk.exists_async(schema.path("node.daemon_state", record["name"]), watch=self._on_node_watch)
                h.zk.exists_async(schema.path("node.domain_state", record["name"]), watch=self._on_node_watch)
                view = node_view(record)
                key = ("node", view["name"])
                seen[key] = _dump({k: v for k, v in view.items() if k not in _NODE_NOISE})
                if self._seen.get(key) != seen[key]:
                    fresh.append(("node", view))
        for record in vms:
            key = ("vm", record["name"])
            sources[key] = record
            if self._sources.get(key) is record:
                seen[key] = self._seen[key]
                continue
            view = vm_view(record)
            seen[key] = _dump(view)
            if self._seen.get(key) != seen[key]:
                fresh.append(("vm", view))
        for job in jobs:
            key = ("job", job.id)
            sources[key] = job
            if self._sources.get(key) is job:
                seen[key] = self._seen[key]
                continue
            seen[key] = _job_print(job)
            if self._seen.get(key) != seen[key]:
                fresh.append(("job", job_event(job)))
        gone = [(kind, name) for kind, name in self._seen if kind != "job" and (kind, name) not in seen]
        with self._cond:
            self._seen, self._sources = seen, sources
            if not self._baseline:
                self._baseline = True
                return
            for kind, view in fresh:
                self._append(kind, view)
            for kind, name in gone:
                self._append(kind, {"name": name, "deleted": True})
            if fresh or gone:
                self._cond.notify_all()

    def _on_node_watch(self, _event) -> None:
        self._nodes_due = True
        self._poke.set()

    def _append(self, kind: str, view: dict) -> None:
        self._seq += 1
        self._events.append(Event(self._seq, kind, _dump(view)))

    # ---- one client ---------------------------------------------------------------------------------------------
    def snapshot(self) -> Iterator[tuple[str, dict]]:
        """Every node and VM, the unfinished jobs and the most recent ended ones: what a new client starts from."""
        h = self.handle
        for record in h.node_records():
            yield "node", node_view(record)
        for record in h.vm_records():
            yield "vm", vm_view(record)
        jobs = sorted(h.jobs(), key=lambda j: j.created, reverse=True)
        ended = [j for j in jobs if j.terminal][: defaults.EVENTS_RECENT_JOBS]
        for job in [j for j in jobs if not j.terminal] + ended:
            yield "job", job_event(job)

    def _resume_point(self, last_id: str | None) -> tuple[int | None, str]:
        """The seq after which a client resumes, or None with the reason it cannot (then: reset and snapshot)."""
        if not last_id:
            return None, ""
        epoch, _, seq = last_id.partition("-")
        if epoch != self.epoch or not seq.isdigit():
            return None, "the last event id is not this API process's (it restarted, or another one answered)"
        with self._cond:
            oldest = self._events[0].seq if self._events else self._seq + 1
            if int(seq) > self._seq or int(seq) < oldest - 1:
                return None, f"events after {last_id} are no longer kept (at most {defaults.EVENTS_KEEP})"
        return int(seq), ""

    def stream(self, last_id: str | None, gone: Callable[[], bool],
               seconds: float = defaults.EVENTS_STREAM_SECONDS) -> Iterator[bytes]:
        """One client's stream: resume after ``last_id`` or start from a snapshot, then changes as they come
        (after ``baseline``); ends when ``gone()`` says the client closed its connection (looked at every second:
        a stream holds a server thread)."""
        self._listen(+1)
        try:
            yield f"retry: {int(defaults.EVENTS_RETRY * 1000)}\n\n".encode()
            cursor, why = self._resume_point(last_id)
            if cursor is None:
                cursor = yield from self._start_over(why)
            now = time.monotonic()
            deadline, quiet_since = now + seconds, now
            while (left := deadline - time.monotonic()) > 0 and not gone():
                with self._cond:
                    if self._seq <= cursor:
                        self._cond.wait(min(left, 1.0))
                    oldest = self._events[0].seq if self._events else self._seq + 1
                    lost = cursor < oldest - 1
                    batch = [] if lost else [e for e in self._events if e.seq > cursor]
                if lost:  # this client read slower than the ring turned
                    cursor = yield from self._start_over("events were dropped before this client read them")
                elif batch:
                    yield b"".join(e.encode(self.epoch) for e in batch)
                    cursor, quiet_since = batch[-1].seq, time.monotonic()
                elif time.monotonic() - quiet_since >= defaults.EVENTS_HEARTBEAT:
                    yield b": keep-alive\n\n"
                    quiet_since = time.monotonic()
        finally:
            self._listen(-1)

    def _start_over(self, why: str):
        """``reset`` (when resuming failed), a snapshot, ``ready``; returns the seq the client is at."""
        with self._cond:
            at = self._seq  # changes after this are sent after the snapshot (a state sent twice is harmless)
        if why:
            yield Event(at, "reset", _dump({"reason": why})).encode(self.epoch)
        chunk = [Event(at, kind, _dump(view)).encode(self.epoch) for kind, view in self.snapshot()]
        yield b"".join(chunk) + Event(at, "ready", _dump({"epoch": self.epoch})).encode(self.epoch)
        return at
