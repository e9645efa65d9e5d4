"""The API process's one ZooKeeper session and the schema of the cluster it serves.

The schema follows the cluster: it is loaded from the version the cluster records and reloaded by a watch when
an upgrade moves it, so request handlers always build paths of the live layout. A cluster that was never
initialised answers 503 ``cluster_not_initialised`` to everything except health and init.
"""

from __future__ import annotations

import logging
import threading

from kazoo.exceptions import KazooException

from pvc_tasks.config import Settings
from pvc_tasks.errors import Unavailable
from pvc_tasks.zkclient import connect
from zk_schema import Schema, SchemaError, cluster_version

__all__ = ["ClusterHandle"]

log = logging.getLogger(__name__)


class ClusterHandle:
    """A started KazooClient plus the current Schema; shared by every request thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.zk = connect(settings)
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
                self._schema = None
                return None
            if self._schema is None or self._schema.version != version:
                self._schema = Schema.load(version)
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

    @property
    def schema(self) -> Schema:
        schema = self._schema or self.refresh()
        if schema is None:
            raise Unavailable("no pvc cluster in ZooKeeper yet: run `pvc cluster init`",
                              code="cluster_not_initialised")
        return schema
