"""``hsds-backends hsds``: run a real HSDS whose DNs sit behind HSDS fronts, and read its fronts' figures.

Registered as the ``hsds`` subcommand through the entry-point group ``hsds_backends.cli``
(docs/architecture.md §12).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

__all__ = ["hsds"]


@click.group(name="hsds")
def hsds() -> None:
    """Run HSDS with its chunk reads served by the backends (the HSDS front)."""


@hsds.command()
@click.option("--root-dir", type=click.Path(file_okay=False, exists=True), help="Posix storage: the folder holding the bucket folders.")
@click.option("--s3-gateway", help="S3 endpoint URL (credentials from the environment: AWS_ACCESS_KEY_ID, ...).")
@click.option("--azure", is_flag=True, help="Azure Blob storage (HSDS azure_connection_string, from the environment: AZURE_CONNECTION_STRING); the bucket is the container.")
@click.option("--bucket", help="HSDS's bucket (bucket_name). Default: the config's, else hsdstest.")
@click.option("--dn-count", default=2, show_default=True, type=click.IntRange(1, 64), help="HSDS DNs (each behind a front).")
@click.option("--backend", help="Backend for chunk reads: lambda, dask, inline, containers or auto (config backend).")
@click.option("--port", default=5101, show_default=True, type=click.IntRange(0, 65535), help="The SN's port on 127.0.0.1 (0: any free port).")
@click.option("--password-file", type=click.Path(dir_okay=False, exists=True), help="HSDS 'user:password' file (the first user is the admin). Default: a new one with user admin and a random password, in the run folder.")
@click.option("--hsds-node", type=click.Path(dir_okay=False), help="The hsds-node program of an HSDS installation (default: config hsds_node, PATH, the project's HSDS virtualenv).")
@click.option("--status-file", type=click.Path(dir_okay=False), help="Write endpoint, sockets and pids here (JSON, mode 0600) once HSDS answers.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="config.yml for the fronts (backend, backend_policy, front_* keys, storage).")
@click.option("--no-fronts", is_flag=True, help="Run the same HSDS without fronts (for comparisons).")
@click.option("--max-tasks-per-node", type=click.IntRange(1), help="The SN's in-flight chunk requests per DN and client request (MAX_TASKS_PER_NODE_PER_REQUEST; default 256).")
def serve(
    root_dir: str | None, s3_gateway: str | None, azure: bool, bucket: str | None, dn_count: int, backend: str | None, port: int,
    password_file: str | None, hsds_node: str | None, status_file: str | None, config_file: str | None, no_fronts: bool,
    max_tasks_per_node: int | None,
) -> None:
    """Start a real HSDS (SN on 127.0.0.1:PORT, N DNs and N fronts on private unix sockets) until Ctrl-C or SIGTERM.

    Chunk reads of h5pyd and every other HSDS client are served by the configured backend
    through the fronts; everything else is HSDS's own. Prints the endpoint once HSDS
    answers. Nothing outlives the command: every process stops with it.
    """
    import asyncio

    from hsds_backends.config import load_config
    from hsds_backends.errors import HsdsBackendsError

    from .cli import _storage_config
    from .launcher import DEFAULT_MAX_TASKS_PER_NODE, HsdsDeployment, LauncherError, find_hsds_node
    from .service import stop_on_signals

    overrides: dict[str, Any] = {"root_dir": os.path.abspath(root_dir) if root_dir else None, "aws_s3_gateway": s3_gateway, "bucket_name": bucket, "backend": backend}
    try:
        cfg = _storage_config(
            load_config(config_file, overrides={k: v for k, v in overrides.items() if v is not None}),
            root_dir, s3_gateway, azure, "the folder holding the bucket folders",
        )
        node = find_hsds_node(hsds_node, cfg.get("hsds_node"))
    except (HsdsBackendsError, LauncherError) as exc:
        raise click.ClickException(str(exc)) from exc
    plain = {k: cfg[k] for k in cfg if cfg[k] is not None}
    dep = HsdsDeployment(
        plain, dn_count=dn_count, port=port, password_file=password_file, hsds_node=node, fronts=not no_fronts,
        max_tasks_per_node=max_tasks_per_node or DEFAULT_MAX_TASKS_PER_NODE,
    )

    async def main() -> None:
        stop = stop_on_signals()
        try:
            await dep.start()
        except LauncherError as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            if status_file:
                _write_private(status_file, json.dumps(dep.status(), indent=1))
            click.echo(f"HSDS ready at {dep.endpoint or dep.sn_url} (user {dep.username}, password in {dep.password_file})")
            click.echo(f"backend: {cfg.get('backend') or 'auto'}; fronts: {'none' if no_fronts else len(dep.front_urls)}; run folder {dep.run_dir}", err=True)
            try:
                await dep.supervise(stop)
            except LauncherError as exc:
                raise click.ClickException(str(exc)) from exc
        finally:
            await dep.stop()
            if status_file:
                try:
                    os.unlink(status_file)
                except OSError:
                    pass

    asyncio.run(main())


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


@hsds.command()
@click.option("--status-file", required=True, type=click.Path(dir_okay=False, exists=True), help="The status file 'hsds serve' wrote.")
def stats(status_file: str) -> None:
    """Print every front's figures as JSON: chunk reads by backend, pass-throughs, fallbacks, dirty hits, last decisions."""
    import asyncio

    from ._proxy import UpstreamError
    from .front import collect_stats

    try:
        status = json.loads(open(status_file, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read status file {status_file}: {exc}") from exc
    fronts = status.get("fronts") or []
    if not fronts:
        raise click.ClickException(f"{status_file} lists no fronts (HSDS was started with --no-fronts?)")

    try:
        doc = asyncio.run(collect_stats(fronts))
    except UpstreamError as exc:
        raise click.ClickException(f"the fronts do not answer ({exc}); is 'hsds serve' still running?") from exc
    click.echo(json.dumps(doc, indent=1))


if __name__ == "__main__":
    sys.exit(hsds(prog_name="hsds-backends hsds"))
