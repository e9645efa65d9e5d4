"""The API's read model: VM and job records kept in memory by ZooKeeper watches, so that list requests cost what
the answer costs, not one ZooKeeper read per key per VM (issue 17: 14 reads per VM made ``GET /vms`` take 3 s at
1,000 VMs).

What it holds, per collection (``collections``): the instances under a directory (``/domains``, ``/jobs``), each
with its keys below (a VM's keys except its XML, which only the detail view reads; a job's own data, parsed). A
child watch on ``/domains`` adds and drops VMs; new jobs are found through the index of open jobs (``/jobs_open``,
where every job gets an entry in its creating transaction: listing ``/jobs`` at each creation would cost the whole
history), and a pruned job drops out when its own data watch finds it gone. A data watch on every key notes the
key as changed; the next list request reads every noted key again (which sets its watch again: watches are
one-shot, and the re-read returns the data as it is then, so no change is lost). Between two lists, a key that
changed many times costs one event and one read (and when ``DIRTY_LIMIT`` keys are noted, they are read at once,
so that no request inherits a whole burst). Listings are read at once (an index entry may be gone by the next
request).

Nodes are not in it: they are few (a node list is one parallel read of a few dozen keys), and their figures are
rewritten by every keepalive and every job step, which made two thirds of the model's watch events and cost job
submissions 14 % of their rate (bench/scale.py, same run).

Consistency rule (``barrier``): a list request answers from the model only after the model has caught up with
everything ZooKeeper committed before the request began:

1. ``sync`` on the model's session: the server it is connected to has applied every earlier transaction, and
   ZooKeeper delivers the watch events those transactions caused before the sync's answer (events, watches and
   replies are ordered on a session);
2. a marker is queued behind those events on kazoo's callback queue: when it runs, each event has noted its key,
   and the marker issues the re-reads of every noted key, tagged with a new sequence number (its *cause*);
3. the request waits until no read caused at or before its marker is outstanding (an earlier request's re-reads
   included), counting reads that those reads caused in turn (a new VM's keys, read after the directory listing
   that showed it).

So a client that saw a job end (through any API process) and then lists VMs sees what the job's transaction
wrote. A request whose barrier does not pass within ``BARRIER_TIMEOUT`` s, or arrives while the model is being
built (API start, a reconnection to ZooKeeper, a schema upgrade), is answered from ZooKeeper directly, as before.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.handlers.threading import AsyncResult
from kazoo.protocol.states import Callback as KazooCallback
from kazoo.protocol.states import EventType, KazooState, WatchedEvent

from pvc_tasks.jobs import Job
from zk_schema import Schema

__all__ = ["BARRIER_TIMEOUT", "Collection", "ReadModel", "collections"]

log = logging.getLogger(__name__)

#: How long (s) a list request waits for the model to catch up before it reads ZooKeeper directly. Long, because
#: the catch-up reads the keys that changed, a subset of what a direct read reads: with 2 s, the first list after
#: 4,500 defines gave up and read 5,000 VMs directly, in 36 s (bench/scale.py).
BARRIER_TIMEOUT = 30.0
#: Noted keys read at once, without waiting for a request, when this many have piled up: the first list after 4,500
#: defines inherited every key they changed (18 s at 5,000 VMs, bench/scale.py).
DIRTY_LIMIT = 500


@dataclass(frozen=True)
class Collection:
    """Instances of a one-level section under a directory key, and the keys of each kept in memory."""

    section: str
    directory: str
    #: Key names kept ("" is the instance's own data). Every one exists as long as its instance does (they are
    #: created and deleted in one transaction), so a key that cannot be read needs no watch for its creation.
    fields: tuple[str, ...]
    #: Where new instances are discovered after the build, when not by listing ``directory`` again: jobs by the
    #: index of open jobs (every job gets an entry in its creating transaction). Listing ``/jobs`` at every job's
    #: creation cost the whole history (10,000 ids) per job; an ended job's deletion is seen on its own data watch.
    discover: str = ""


def collections(schema: Schema) -> dict[str, Collection]:
    """The collections of ``schema``: VMs without their XML, jobs."""
    domain = tuple(k.name for k in schema.section_keys("domain") if not k.secret and k.name != "xml")
    jobs = Collection("job", "base.job", ("",), "base.job_open" if "job_open" in schema.roots else "")
    return {"domain": Collection("domain", "base.domain", domain), "job": jobs}



class ReadModel:
    """Watched copies of the collections on one kazoo session; ``records`` answers behind a barrier, or None."""

    def __init__(self, zk: KazooClient) -> None:
        self.zk = zk
        self._lock = threading.Lock()
        self._schema: Schema | None = None
        self._colls: dict[str, Collection] = {}
        #: Bumped at each rebuild: answers to reads of an older build are dropped.
        self._generation = 0
        #: collection -> instance name -> field -> data (None: absent)
        self._data: dict[str, dict[str, dict[str, str | None]]] = {}
        self._jobs: dict[str, Job] = {}
        #: What ``records`` hands out, kept until a record changes: a view per instance, and the sorted list of them
        #: (None: to be made again). At 5,000 VMs, building them at every request was most of a /vms request.
        self._views: dict[str, dict[str, dict]] = {}
        self._listings: dict[str, list[dict] | None] = {}
        #: znode path -> (collection, instance, field); directory path -> (collection, the listing is complete).
        self._paths: dict[str, tuple[str, str, str]] = {}
        self._dirs: dict[str, tuple[str, bool]] = {}
        #: Paths whose watch fired since the last barrier: read again by the next one.
        self._dirty: set[str] = set()
        self._seq = 0
        self._outstanding: Counter[int] = Counter()
        self._waiters: list[tuple[int, threading.Event]] = []
        self._ready = False
        #: Called (on kazoo's callback thread, quickly) when a watched key or listing changes: the events feed.
        self._on_change: list[Callable[[], None]] = []
        zk.add_listener(self._on_state)

    def on_change(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` whenever a watch of the model fires (it must not block: it runs on kazoo's callback
        thread, with the model's lock held)."""
        self._on_change.append(fn)

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    def reset(self, schema: Schema | None) -> None:
        """Rebuild for ``schema`` (a new layout, or a new session); None: stop serving until a cluster exists."""
        with self._lock:
            self._invalidate()
            self._schema = schema
            self._data, self._jobs, self._paths, self._dirs = {}, {}, {}, {}
            self._views, self._listings = {}, {}
            self._dirty.clear()
            self._outstanding.clear()
            if schema is None:
                return
            self._colls = collections(schema)
            # A cause of its own: a read of the previous build that completes late must not count against it.
            self._seq += 1
            generation, cause = self._generation, self._seq
            for coll in self._colls.values():
                self._data[coll.section] = {}
                self._list(generation, cause, coll.section, schema.path(coll.directory), not coll.discover)
                if coll.discover:
                    self._list(generation, cause, coll.section, schema.path(coll.discover), False)
        threading.Thread(target=self._become_ready, args=(generation, cause), name="readmodel-build",
                         daemon=True).start()

    def _become_ready(self, generation: int, cause: int) -> None:
        event = threading.Event()
        with self._lock:
            self._waiters.append((cause, event))
            self._release_waiters()
        event.wait()
        with self._lock:
            if generation == self._generation:
                self._ready = True
                log.info("read model built: %s", {c: len(d) for c, d in self._data.items()})

    def _invalidate(self) -> None:
        """Stop answering (the lock is held): reads of the current build are ignored, waiting requests released."""
        self._ready = False
        self._generation += 1
        for _, event in self._waiters:
            event.set()  # they find the model not ready and read ZooKeeper directly
        self._waiters = []

    def _on_state(self, state: KazooState) -> None:
        # Why SUSPENDED too: kazoo drops every watcher when the connection drops, even when the session survives
        # (it fires them with a NONE event and sends no SetWatches on reconnect). Trusting them after a ZooKeeper
        # restart left the model serving a VM's old meta forever (tests/integration/test_read_model.py).
        if state in (KazooState.LOST, KazooState.SUSPENDED):
            with self._lock:
                self._invalidate()
        elif state == KazooState.CONNECTED and not self._ready and self._schema is not None:
            # A listener must not block the connection thread: the rebuild only issues asynchronous reads, from
            # the callback thread.
            self.zk.handler.dispatch_callback(KazooCallback("watch", self._rebuild_after_loss, ()))

    def _rebuild_after_loss(self) -> None:
        with self._lock:
            if self._ready or self._schema is None:
                return
            schema = self._schema
        self.reset(schema)

    # ---- reads and their completions (kazoo's completion thread) -------------------------------------------------
    def _begin(self, cause: int) -> None:
        self._outstanding[cause] += 1

    def _end(self, generation: int, cause: int) -> None:
        if generation != self._generation:
            return  # a read of an earlier build: its counts were cleared with it
        self._outstanding[cause] -= 1
        if self._outstanding[cause] <= 0:
            del self._outstanding[cause]
            self._release_waiters()

    def _release_waiters(self) -> None:
        oldest = min(self._outstanding, default=None)
        still = []
        for marker, event in self._waiters:
            if oldest is None or oldest > marker:
                event.set()
            else:
                still.append((marker, event))
        self._waiters = still

    def _list(self, generation: int, cause: int, section: str, path: str, complete: bool) -> None:
        """List ``path``: a complete listing (watched) adds and drops instances, a discovery listing (an index;
        watched) only adds; the build lists a discovered collection's directory once, unwatched."""
        watched = complete or path != self._schema.path(self._colls[section].directory)
        if watched:
            self._dirs[path] = (section, complete)
        self._begin(cause)
        self.zk.get_children_async(path, watch=self._on_event if watched else None).rawlink(
            lambda result: self._listed(generation, cause, section, result, complete))

    def _broken(self, what: str, exc: Exception) -> None:
        """A read failed (the connection dropped): a watch may not have been set again, so nothing the model holds
        can be trusted. Not ready until rebuilt: at once when connected, else when the connection comes back."""
        log.warning("read model: %s failed (%s); rebuilding it", what, exc)
        self._invalidate()
        if self.zk.connected:
            self.zk.handler.dispatch_callback(KazooCallback("watch", self._rebuild_after_loss, ()))

    def _listed(self, generation: int, cause: int, section: str, result: AsyncResult, complete: bool) -> None:
        with self._lock:
            try:
                if generation != self._generation:
                    return
                try:
                    children = set(result.get())
                except NoNodeError:
                    children = set()
                except Exception as exc:  # noqa: BLE001 - ConnectionLoss, SessionExpired, ...
                    self._broken(f"the listing of {section}", exc)
                    return
                known = self._data[section]
                for gone in set(known) - children if complete else ():
                    self._forget(section, gone)
                # Not children - set(known): the jobs index is listed at every job's creation and end, and copying
                # 20,000 known jobs each time held the model's lock long enough to double /vms at 5,000 VMs.
                for name in [n for n in children if n not in known]:
                    known[name] = {}
                    self._changed(section, name)
                    for field in self._colls[section].fields:
                        self._read(generation, cause, section, name, field)
            finally:
                self._end(generation, cause)

    def _changed(self, section: str, name: str) -> None:
        self._views.get(section, {}).pop(name, None)
        self._listings[section] = None

    def _forget(self, section: str, name: str) -> None:
        for field in self._colls[section].fields:
            self._paths.pop(self._path(section, name, field), None)
        self._data[section].pop(name, None)
        self._changed(section, name)
        if section == "job":
            self._jobs.pop(name, None)

    def _path(self, section: str, name: str, field: str) -> str:
        return self._schema.path(f"{section}.{field}", name) if field else self._schema.path(section, name)

    def _read(self, generation: int, cause: int, section: str, name: str, field: str) -> None:
        path = self._path(section, name, field)
        self._paths[path] = (section, name, field)
        self._begin(cause)
        self.zk.get_async(path, watch=self._on_event).rawlink(
            lambda result: self._got(generation, cause, path, result))

    def _got(self, generation: int, cause: int, path: str, result: AsyncResult) -> None:
        with self._lock:
            try:
                where = self._paths.get(path)
                if generation != self._generation or where is None:
                    return  # an older build's read, or an instance dropped meanwhile
                section, name, field = where
                record = self._data[section].get(name)
                if record is None:
                    return
                try:
                    data = result.get()[0]
                except NoNodeError:
                    if self._colls[section].discover:
                        self._forget(section, name)  # a pruned job: no listing would show it gone
                    else:
                        record[field] = None  # its instance is being deleted: the directory's watch drops it
                        self._changed(section, name)
                    return
                except Exception as exc:  # noqa: BLE001 - ConnectionLoss, SessionExpired, ...
                    self._broken(f"the read of {path}", exc)
                    return
                if section == "job":
                    try:
                        self._jobs[name] = Job.from_bytes(data)
                    except ValueError:
                        log.warning("read model: job %s is unreadable; left out of lists", name)
                        self._jobs.pop(name, None)
                else:
                    record[field] = data.decode()
                    self._changed(section, name)
            finally:
                self._end(generation, cause)

    # ---- watch events (kazoo's callback thread) ------------------------------------------------------------------
    def _on_event(self, event: WatchedEvent) -> None:
        """Note a changed key; it is read again by the next request's barrier, not now. Why: a re-read per event
        made the API process every change of every job and VM as it happened (about 8 reads per lifecycle job, 15 %
        of a job's latency through this API); noted, a key that changes many times between two lists costs one
        event and one read, and a cluster nobody lists costs no reads. The watch is not set again until the
        re-read, so later changes of that key raise no event meanwhile: the key is read anyway."""
        with self._lock:
            if self._schema is None or event.type == EventType.NONE:
                return
            for fn in self._on_change:
                fn()
            if event.path in self._dirs:
                # Listings are not deferred: an entry of /jobs_open lives only until the janitor sees its job
                # ended, so a listing at the next request could miss a job that came and went in between.
                self._seq += 1
                section, complete = self._dirs[event.path]
                self._list(self._generation, self._seq, section, event.path, complete)
            elif event.path in self._paths:
                self._dirty.add(event.path)
                if len(self._dirty) >= DIRTY_LIMIT:  # a burst: read now, so that no request inherits all of it
                    self._seq += 1
                    self._read_dirty(self._seq)

    def _read_dirty(self, cause: int) -> None:
        """Read again (and watch again) everything noted since the last barrier, as caused by ``cause``."""
        for path in self._dirty:
            if path in self._paths:  # else its instance was dropped since
                section, name, field = self._paths[path]
                self._read(self._generation, cause, section, name, field)
        self._dirty.clear()

    # ---- requests ---------------------------------------------------------------------------------------------------
    def barrier(self, timeout: float = BARRIER_TIMEOUT) -> bool:
        """True once the model reflects every transaction committed before this call (see the module's rule)."""
        with self._lock:
            if not self._ready:
                return False
            generation = self._generation
        passed, synced = threading.Event(), threading.Event()

        def marker() -> None:
            with self._lock:
                self._seq += 1
                self._read_dirty(self._seq)
                self._waiters.append((self._seq, passed))
                self._release_waiters()

        def after_sync(result: AsyncResult) -> None:
            if result.exception is None:
                synced.set()
                self.zk.handler.dispatch_callback(KazooCallback("watch", marker, ()))
            else:
                passed.set()  # not connected: the direct read reports the real error

        try:
            self.zk.sync_async("/").rawlink(after_sync)
        except Exception:  # noqa: BLE001 - the session is closed: read directly, which reports the real error
            return False
        if not passed.wait(timeout):
            log.warning("read model barrier not passed within %g s: reading ZooKeeper directly", timeout)
            return False
        with self._lock:
            return synced.is_set() and self._ready and generation == self._generation

    def records(self, section: str) -> list[dict] | None:
        """The VMs as ``pvc_tasks.state`` reads them (key -> str or None, sorted by name, with ``name``), or None
        when the model cannot answer (read directly). The list and its records are shared until one changes
        (``pvc_web.render`` reuses an unchanged record's JSON by identity): callers must not modify them."""
        if not self.barrier():
            return None
        with self._lock:
            listing = self._listings.get(section)
            if listing is None:
                fields, views, data = self._colls[section].fields, self._views.setdefault(section, {}), \
                    self._data[section]
                listing = []
                for name in sorted(data):
                    if (view := views.get(name)) is None:
                        view = views[name] = {"name": name, **{f: data[name].get(f) for f in fields}}
                    listing.append(view)
                self._listings[section] = listing
            return listing

    def jobs(self) -> list[Job] | None:
        """Every job record, or None when the model cannot answer."""
        if not self.barrier():
            return None
        with self._lock:
            return list(self._jobs.values())
