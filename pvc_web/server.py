"""``pvc-api``: serve the API with waitress, hardened (``pvc_web.wsgi``; threads; one ZooKeeper session per process)."""

from __future__ import annotations

import argparse
import sys

from pvc_tasks import logs
from pvc_tasks.config import load_settings
from pvc_web.app import create_app
from pvc_web.auth import ROLES, new_token
from pvc_web.wsgi import serve

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pvc-api", description="pvc REST API")
    parser.add_argument("--config", help="TOML settings file (or PVC_CONFIG)")
    parser.add_argument("--listen", help="host:port (or PVC_API_LISTEN)")
    parser.add_argument("--new-token", metavar="NAME", help="print a fresh token for NAME and its api_tokens entry "
                                                            "(the server keeps only the entry, a hash), then exit")
    parser.add_argument("--role", choices=ROLES, default="admin", help="the new token's role (default admin)")
    args = parser.parse_args(argv)
    if args.new_token:
        token, entry = new_token(args.new_token, args.role)
        print(f"token (give it to {args.new_token}; it is stored nowhere): {token}\napi_tokens entry: {entry}")
        return 0
    try:
        settings = load_settings(args.config, api_listen=args.listen)
    except (OSError, ValueError) as exc:
        print(f"pvc-api: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format, "api")
    if not settings.api_tokens:
        print("pvc-api: no API token configured (api_tokens or PVC_API_TOKENS; `pvc-api --new-token NAME` makes one); "
              "every request would be refused", file=sys.stderr)
        return 2
    host, _, port = settings.api_listen.rpartition(":")
    try:
        app = create_app(settings)
    except ValueError as exc:  # MissingIdentity, a malformed api_tokens entry: a setting, not ZooKeeper
        print(f"pvc-api: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - kazoo's start raises a bare timeout; say what to check
        print(f"pvc-api: cannot reach ZooKeeper at {settings.zookeeper}: {exc}", file=sys.stderr)
        return 2
    serve(app, settings, host or "127.0.0.1", int(port))
    return 0
