"""``hsds-backends dn``: run a data-node (DN) service.

Registered as the ``dn`` subcommand through the entry-point group
``hsds_backends.cli``. The service module (aiohttp, numpy, the kernel) is
imported only when a DN starts.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

__all__ = ["dn"]

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@click.group(name="dn")
def dn() -> None:
    """Run HSDS-compatible data-node (DN) services for the 'containers' backend."""


@dn.command()
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port (0: any free port). Default 6101, HSDS's first DN port.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="Listen on this unix socket instead of TCP.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for TCP; anything but loopback should use a token.")
@click.option("--node-number", default=0, show_default=True, type=click.IntRange(0), help="This DN's number (reported by /info).")
@click.option("--node-count", default=1, show_default=True, type=click.IntRange(1), help="How many DNs serve the data (reported by /info).")
@click.option("--workers", type=click.IntRange(1), help="Threads that decode chunks (default: all cores).")
@click.option("--cache-size", help="Decoded-chunk cache size, e.g. 128m (config chunk_mem_cache_size; 0 disables it).")
@click.option("--root-dir", type=click.Path(file_okay=False), help="Posix storage root (HSDS root_dir).")
@click.option("--s3-gateway", help="S3 endpoint URL (HSDS aws_s3_gateway); credentials come from the environment.")
@click.option("--region", help="S3 region (HSDS aws_region).")
@click.option("--bucket", help="Bucket for requests that name none (HSDS bucket_name).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="config.yml to load (storage keys, chunk_mem_cache_size).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), help="File holding the bearer token; or set HSDS_BACKENDS_DN_TOKEN.")
def serve(
    port: int | None, socket_path: str | None, host: str, node_number: int, node_count: int, workers: int | None,
    cache_size: str | None, root_dir: str | None, s3_gateway: str | None, region: str | None, bucket: str | None,
    config_file: str | None, token_file: str | None,
) -> None:
    """Serve HSDS's DN read API (GET/POST /chunks/{id}), /batch and /info until SIGTERM (a clean stop).

    Binds 127.0.0.1:6101 unless told otherwise. Prints 'READY <url>' on stdout
    once it accepts requests. S3 credentials are read from the environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, a profile or a role), never from
    the command line; so is the token (HSDS_BACKENDS_DN_TOKEN or --token-file).
    """
    if port is not None and socket_path is not None:
        raise click.UsageError("give either --port or --socket, not both")
    if node_number >= node_count:
        raise click.UsageError(f"--node-number {node_number} must be less than --node-count {node_count}")
    import asyncio

    from hsds_backends.config import load_config, option, parse_size
    from hsds_backends.errors import HsdsBackendsError
    from hsds_backends.model import default_workers
    from hsds_backends.storage import storage_from_config

    from .backend import ContainersBackend
    from .service import FAULTS_ENV, TOKEN_ENV, DataNode, bind_socket
    from .service import serve as serve_node

    overrides: dict[str, Any] = {"root_dir": root_dir, "aws_s3_gateway": s3_gateway, "aws_region": region, "bucket_name": bucket}
    try:
        cfg = load_config(config_file, overrides={k: v for k, v in overrides.items() if v is not None})
        if s3_gateway and not root_dir:
            cfg = cfg.with_overrides(root_dir=None)  # an explicit S3 endpoint wins over a ROOT_DIR from the environment
        if cache_size is not None:
            cache_bytes = parse_size(cache_size, key="--cache-size")
        else:
            cache_bytes = option(cfg, "chunk_mem_cache_size", ContainersBackend.config_keys["chunk_mem_cache_size"])
    except HsdsBackendsError as exc:
        raise click.ClickException(str(exc)) from exc
    token = os.environ.get(TOKEN_ENV) or None
    if token_file:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip() or None
    if socket_path is None and host not in _LOOPBACK and token is None:
        click.echo(f"warning: serving on {host} without a token; anyone who can reach it can read the data", err=True)
    storage = storage_from_config(cfg)
    node = DataNode(
        storage,
        node_number=node_number,
        node_count=node_count,
        workers=workers or default_workers(),
        cache_bytes=cache_bytes,
        token=token,
        default_bucket=cfg.get("bucket_name") or None,
        faults=os.environ.get(FAULTS_ENV, "") in ("1", "true", "yes"),
    )
    try:
        sock = bind_socket(host=host, port=6101 if port is None and socket_path is None else port, path=socket_path)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {socket_path or f'{host}:{port}'}: {exc}") from exc

    def ready(url: str) -> None:
        print(f"READY {url}", flush=True)

    try:
        asyncio.run(serve_node(node, sock, ready=ready))
    except KeyboardInterrupt:  # pragma: no cover - interactive stop
        pass


if __name__ == "__main__":  # python -m hsds_backends_containers.cli serve ... (how embedded DNs start)
    sys.exit(dn(prog_name="hsds-backends dn"))
