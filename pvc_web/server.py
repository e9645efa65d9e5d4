"""``pvc-api``: serve the API with waitress (threads; one ZooKeeper session per process)."""

from __future__ import annotations

import argparse
import logging
import sys

from waitress import serve

from pvc_tasks.config import load_settings
from pvc_web.app import create_app

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pvc-api", description="pvc REST API")
    parser.add_argument("--config", help="TOML settings file (or PVC_CONFIG)")
    parser.add_argument("--listen", help="host:port (or PVC_API_LISTEN)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, api_listen=args.listen)
    except (OSError, ValueError) as exc:
        print(f"pvc-api: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s api %(name)s: %(message)s")
    logging.getLogger("kazoo").setLevel(logging.WARNING)
    if not settings.api_tokens:
        print("pvc-api: no API token configured (PVC_API_TOKENS or api_tokens); every request would be refused",
              file=sys.stderr)
        return 2
    host, _, port = settings.api_listen.rpartition(":")
    try:
        app = create_app(settings)
    except Exception as exc:  # noqa: BLE001 - kazoo's start raises a bare timeout; say what to check
        print(f"pvc-api: cannot reach ZooKeeper at {settings.zookeeper}: {exc}", file=sys.stderr)
        return 2
    serve(app, host=host or "127.0.0.1", port=int(port), threads=settings.api_threads, ident="pvc-api")
    return 0
