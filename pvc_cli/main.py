"""``pvc``: the command-line client of the pvc API. ``pvc --help`` and ``pvc <group> --help`` list everything.

Mutations (VM define/start/shutdown/stop/restart/undefine, job cancel) are synchronous by default: they wait
for the job with a progress bar and exit with the status documented in ``pvc_cli.wait``.
"""

from __future__ import annotations

import sys

import click

from pvc_cli.client import ApiError, Client, Unreachable, resolve
from pvc_cli.commands import cluster, job, node, sriov, vm
from pvc_cli.wait import EXIT_API, EXIT_INTERRUPTED, EXIT_UNREACHABLE

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Turns client errors into one line on stderr and a documented exit status, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            click.echo(f"Error: {exc.message} [{exc.code}]" if exc.status else f"Error: {exc.message}", err=True)
            for field, problems in (exc.details or {}).items() if exc.code == "invalid_request" else ():
                click.echo(f"  {field}: {problems}", err=True)
            sys.exit(EXIT_API)
        except Unreachable as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_UNREACHABLE)
        except KeyboardInterrupt:  # before a job id is known (waits name theirs, pvc_cli.wait)
            click.echo("\ninterrupted; a request already sent may have been accepted: `pvc job list` shows it",
                       err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pvc-orchestrator", prog_name="pvc", message="%(prog)s %(version)s")
@click.option("--api-url", metavar="URL", help="API base URL [env PVC_API_URL; default http://127.0.0.1:7370]")
@click.option("--token", metavar="TOKEN", help="API token [env PVC_API_TOKEN]")
@click.option("--config", metavar="FILE", help="CLI config file (api_url, token) [env PVC_CLI_CONFIG]")
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, token: str | None, config: str | None) -> None:
    """Operate a pvc cluster: nodes, VMs and the jobs that change them."""
    ctx.obj = lambda: Client(resolve(api_url, token, config))


for group in (cluster.group, node.group, vm.group, job.group, sriov.group):
    cli.add_command(group)


def main() -> None:
    cli()
