"""Shell completion of VM names, node names and job ids, asked of the API the command line points at.

Click completes commands and options by itself (``_PVC_COMPLETE=bash_source pvc``, docs/cli.md); these functions
add the cluster's own names. Completion runs without the group's callback, so the connection is resolved here from
the root's ``--api-url``/``--token``/``--config`` (or their environment variables). Completion must never get in
the way: any error (no API, a bad URL or config, a slow answer) completes nothing, within ``TIMEOUT`` s.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from click.shell_completion import CompletionItem

from pvc_cli.client import Client, resolve

__all__ = ["TIMEOUT", "job_ids", "node_names", "vm_names"]

#: Seconds a completion may wait for the API.
TIMEOUT = 3.0


def _from_api(path: str, key: str, **params: object) -> Callable[[click.Context, click.Parameter, str], list]:
    def complete(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        root = ctx.find_root().params
        try:
            client = Client(resolve(root.get("api_url"), root.get("token"), root.get("config")), timeout=TIMEOUT)
            items = client.get(path, **params)
        except Exception:  # noqa: BLE001 - completion must never print an error into the shell
            return []
        return [CompletionItem(item[key]) for item in items if str(item[key]).startswith(incomplete)]

    return complete


vm_names = _from_api("/vms", "name")
node_names = _from_api("/nodes", "name")
#: The 200 newest jobs: an id is long to type, and recent jobs are the ones an operator follows.
job_ids = _from_api("/jobs", "id", limit=200)
