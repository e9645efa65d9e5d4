"""Versioned ZooKeeper key layout of a pvc cluster: key names to paths, validation, defaults and upgrades."""

from zk_schema.schema import Key, Schema, SchemaError, available_versions
from zk_schema.upgrade import (
    UpgradePlan,
    cluster_version,
    init_cluster,
    migrate,
    plan,
    upgrade_to_latest,
    workers_unable,
)

__all__ = [
    "Key",
    "Schema",
    "SchemaError",
    "UpgradePlan",
    "available_versions",
    "cluster_version",
    "init_cluster",
    "migrate",
    "plan",
    "upgrade_to_latest",
    "workers_unable",
]
