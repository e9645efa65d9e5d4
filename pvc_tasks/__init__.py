"""Celery app, routing, jobs and task families of pvc-orchestrator (depends on ``zk_schema`` only)."""
