"""The API process's one ZooKeeper session, the schema of the cluster it serves, and its read model.

The schema follows the cluster: it is loaded from the version the cluster records and reloaded by a watch when
an upgrade moves it, so request handlers always build paths of the live layout. A cluster that was never
initialised answers 503 ``cluster_not_initialised`` to everything except health and init.

List requests read VMs and jobs through ``vm_records`` and ``jobs``: from the read model
(``pvc_web.readmodel``, rebuilt for each layout), or from ZooKeeper directly while it cannot answer.
"""

from __future__ import annotations

import logging
import threading

from flask import g, has_request_context
from kazoo.exceptions import KazooException

from pvc_tasks import state
from pvc_tasks.config import Settings
from pvc_tasks.errors import Unavailable
from pvc_tasks.jobs import Job, JobStore
from pvc_tasks.zkclient import connect
from pvc_web.readmodel import ReadModel, collections
from zk_schema import Schema, SchemaError, cluster_version

__all__ = ["ClusterHandle"]

log = logging.getLogger(__name__)


def _served(answer: list | None) -> list | None:
    """Note for the response where a list came from (header ``X-PVC-Read-From``); the model's answer or None."""
    if has_request_context():
        source = "model" if answer is not None else "zookeeper"
        g.pvc_read_from = source if g.get("pvc_read_from", source) == source else "both"
    return answer


class ClusterHandle:
    """A started KazooClient plus the current Schema; shared by every request thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.zk = connect(settings)
        self.model = ReadModel(self.zk)
        self._schema: Schema | None = None
        self._lock = threading.Lock()
        self._watching = False

    def start(self, timeout: float = 15.0) -> None:
        self.zk.start(timeout=timeout)
        self.refresh()

    def stop(self) -> None:
        self.zk.stop()
        self.zk.close()

    def refresh(self) -> Schema | None:
        """Reload the schema from the cluster's recorded version and (once) watch that version for changes."""
        with self._lock:
            try:
                version = cluster_version(self.zk)
            except KazooException as exc:
                log.warning("cannot read the cluster's schema version: %s", exc)
                return self._schema
            if version is None:
                if self._schema is not None:
                    self.model.reset(None)
                self._schema = None
                return None
            if self._schema is None or self._schema.version != version:
                self._schema = Schema.load(version)
                self.model.reset(self._schema)
                log.info("serving schema version %s", version)
            schema, watch = self._schema, not self._watching
            self._watching = True
        if watch:
            # Outside the lock: kazoo calls the watch function once, synchronously, when it is set.
            self.zk.DataWatch(schema.path("base.schema.version"), lambda *_: self._reload())
        return schema

    def _reload(self) -> None:
        try:
            self.refresh()
        except SchemaError:
            log.exception("the cluster moved to a schema this API does not know; upgrade pvc-api")

    def vm_records(self) -> list[dict]:
        """Every VM's record without its XML, sorted by name."""
        records = self.model.records("domain")
        if _served(records) is not None:
            return records
        names = state.names(self.zk, self.schema, "base.domain")
        fields = collections(self.schema)["domain"].fields
        found = state.read_keys(self.zk, self.schema, "domain", [(n,) for n in names], fields)
        return [dict(r, name=n) for n, r in zip(names, found) if r is not None]

    def node_records(self) -> list[dict]:
        """Every node's record (no secrets) with ``alive``, sorted by name: read directly (see pvc_web.readmodel)."""
        return state.node_records(self.zk, self.schema)

    def jobs(self) -> list[Job]:
        """Every job record."""
        jobs = self.model.jobs()
        return JobStore(self.zk, self.schema).all() if _served(jobs) is None else jobs

    @property
    def schema(self) -> Schema:
        schema = self._schema or self.refresh()
        if schema is None:
            raise Unavailable("no pvc cluster in ZooKeeper yet: run `pvc cluster init`",
                              code="cluster_not_initialised")
        return schema
