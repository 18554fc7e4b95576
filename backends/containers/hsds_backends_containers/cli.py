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


@click.group(name="dn")
def dn() -> None:
    """Run HSDS-compatible data-node (DN) services for the 'containers' backend."""


@dn.command()
@click.option("--port", type=click.IntRange(0, 65535), help="TCP port (0: any free port). Default 6101, HSDS's first DN port.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="Listen on this unix socket instead of TCP.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for TCP; anything but loopback needs a token.")
@click.option("--node-number", default=0, show_default=True, type=click.IntRange(0), help="This DN's number (reported by /info).")
@click.option("--node-count", default=1, show_default=True, type=click.IntRange(1), help="How many DNs serve the data (reported by /info).")
@click.option("--workers", type=click.IntRange(1), help="Threads that decode chunks (default: all cores).")
@click.option("--cache-size", help="Decoded-chunk cache size, e.g. 128m (config chunk_mem_cache_size; 0 disables it).")
@click.option("--root-dir", type=click.Path(file_okay=False), help="Posix storage root (HSDS root_dir); this or --s3-gateway is required.")
@click.option("--s3-gateway", help="S3 endpoint URL (HSDS aws_s3_gateway); credentials come from the environment.")
@click.option("--region", help="S3 region (HSDS aws_region).")
@click.option("--azure", is_flag=True, help="Azure Blob storage (HSDS azure_connection_string, from the environment: AZURE_CONNECTION_STRING).")
@click.option("--bucket", help="Bucket for requests that name none (HSDS bucket_name); the one bucket served unless --allowed-buckets.")
@click.option("--allowed-buckets", help="Comma-separated buckets tasks may read (config allowed_buckets; '*': any). Default: --bucket.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="config.yml to load (storage keys, chunk_mem_cache_size).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), help="File holding the bearer token; or set HSDS_BACKENDS_DN_TOKEN.")
def serve(
    port: int | None, socket_path: str | None, host: str, node_number: int, node_count: int, workers: int | None,
    cache_size: str | None, root_dir: str | None, s3_gateway: str | None, region: str | None, azure: bool,
    bucket: str | None, allowed_buckets: str | None, config_file: str | None, token_file: str | None,
) -> None:
    """Serve HSDS's DN read API (GET/POST /chunks/{id}), /batch and /info until SIGTERM (a clean stop).

    Binds 127.0.0.1:6101 unless told otherwise. Prints 'READY <url>' on stdout
    once it accepts requests. S3 credentials are read from the environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, a profile or a role), and so is Azure's
    connection string (AZURE_CONNECTION_STRING), never from the command line; so is the
    token (HSDS_BACKENDS_DN_TOKEN or --token-file).

    Fails closed: storage must be given (--root-dir, --s3-gateway, --azure or a config; never
    the current folder), tasks read only the allowed buckets (--bucket unless
    --allowed-buckets), an empty token is an error, and a TCP interface other than
    loopback is refused without a token.
    """
    if port is not None and socket_path is not None:
        raise click.UsageError("give either --port or --socket, not both")
    if node_number >= node_count:
        raise click.UsageError(f"--node-number {node_number} must be less than --node-count {node_count}")
    import asyncio

    from hsds_backends.config import load_config, option, parse_size
    from hsds_backends.errors import HsdsBackendsError
    from hsds_backends.model import default_workers
    from hsds_backends.security import Containment, is_loopback
    from hsds_backends.storage import storage_from_config

    from .backend import ContainersBackend
    from .service import FAULTS_ENV, TOKEN_ENV, DataNode, bind_socket
    from .service import serve as serve_node

    overrides: dict[str, Any] = {
        "root_dir": root_dir, "aws_s3_gateway": s3_gateway, "aws_region": region, "bucket_name": bucket,
        "allowed_buckets": allowed_buckets,
    }
    keys = ContainersBackend.config_keys
    try:
        cfg = _storage_config(
            load_config(config_file, overrides={k: v for k, v in overrides.items() if v is not None}),
            root_dir, s3_gateway, azure, "the folder holding the buckets",
        )
        if cache_size is not None:
            cache_bytes = parse_size(cache_size, key="--cache-size")
        else:
            cache_bytes = option(cfg, "chunk_mem_cache_size", keys["chunk_mem_cache_size"])
        chunk_bytes_limit = int(cfg["chunk_bytes_limit"])
        batch_tasks_limit = int(option(cfg, "dn_batch_tasks_limit", keys["dn_batch_tasks_limit"]))
        batch_bytes_limit = int(option(cfg, "dn_batch_bytes_limit", keys["dn_batch_bytes_limit"]))
        token = _token(token_file, TOKEN_ENV)
    except HsdsBackendsError as exc:
        raise click.ClickException(str(exc)) from exc
    if socket_path is None and not is_loopback(host) and token is None:
        raise click.ClickException(
            f"refusing to serve on {host} without a token: anyone who can reach it could read the data; "
            f"set {TOKEN_ENV} or --token-file (for example: openssl rand -hex 32 > dn.token), or bind 127.0.0.1"
        )
    containment = Containment.from_config(cfg)
    try:
        storage = storage_from_config(cfg)
    except HsdsBackendsError as exc:
        raise click.ClickException(str(exc)) from exc
    node = DataNode(
        storage,
        node_number=node_number,
        node_count=node_count,
        workers=workers or default_workers(),
        cache_bytes=cache_bytes,
        token=token,
        default_bucket=cfg.get("bucket_name") or None,
        containment=containment,
        chunk_bytes_limit=chunk_bytes_limit,
        batch_tasks_limit=batch_tasks_limit,
        batch_bytes_limit=batch_bytes_limit,
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


@dn.command()
@click.option("--listen", "listens", multiple=True, required=True,
              help="Where HSDS's SN reaches this front: a unix socket path (or http+unix://, unix:) or http://127.0.0.1:PORT. Repeat with --upstream for several DNs.")
@click.option("--upstream", "upstreams", multiple=True, required=True,
              help="The HSDS DN behind it (http://host:port, http+unix://%2Fpath.sock); one per --listen, in the same order.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="config.yml: storage keys, backend, backend_policy, front_* keys.")
@click.option("--backend", help="Backend for chunk reads (config backend): a backend name or auto.")
@click.option("--root-dir", type=click.Path(file_okay=False), help="Posix storage root HSDS writes to (HSDS root_dir).")
@click.option("--s3-gateway", help="S3 endpoint URL HSDS writes to (HSDS aws_s3_gateway); credentials from the environment.")
@click.option("--azure", is_flag=True, help="Azure Blob storage HSDS writes to (HSDS azure_connection_string, from the environment: AZURE_CONNECTION_STRING).")
@click.option("--bucket", help="HSDS's bucket (bucket_name); reads of other buckets go to the DN unless --allowed-buckets.")
@click.option("--allowed-buckets", help="Comma-separated buckets the backends may read (config allowed_buckets; '*': any).")
@click.option("--dn-count", type=click.IntRange(1), help="DNs of the deployment (the hsds2021 rule's DN count); default: the --listen count.")
@click.option("--dn-urls", help="Every DN of the deployment, comma-separated in node order, when this front does not listen for all of them (dataset JSON is asked of its owner).")
@click.option("--readonly", is_flag=True, default=None, help="Nothing writes through HSDS: skip dirty tracking (config front_readonly).")
def front(
    listens: tuple[str, ...], upstreams: tuple[str, ...], config_file: str | None, backend: str | None, root_dir: str | None,
    s3_gateway: str | None, azure: bool, bucket: str | None, allowed_buckets: str | None, dn_count: int | None, dn_urls: str | None,
    readonly: bool | None,
) -> None:
    """Serve HSDS's DN protocol in front of real HSDS DNs, running clean chunk reads on the backends.

    Chunk reads (hyperslabs, points, queries) go through the selector to the configured
    backend and are answered as the DN would answer them; writes, metadata, dirty chunks
    and anything the front cannot answer exactly go to the DN unchanged (docs/architecture.md
    §12). Prints 'READY <url> ...' once every listener accepts requests; stops cleanly on
    SIGTERM. Statistics: GET /hsds-backends/front/stats on any listener.

    Fails closed: a TCP listener must be loopback (HSDS's SN sends no credentials), storage
    must be given, and the backends read only the allowed buckets.
    """
    import asyncio

    from hsds_backends.api import Reader
    from hsds_backends.config import load_config
    from hsds_backends.errors import HsdsBackendsError

    from .front import Front, serve_front

    if len(listens) != len(upstreams):
        raise click.UsageError(f"give one --upstream per --listen ({len(listens)} --listen, {len(upstreams)} --upstream)")
    overrides: dict[str, Any] = {
        "root_dir": root_dir, "aws_s3_gateway": s3_gateway, "bucket_name": bucket, "allowed_buckets": allowed_buckets,
        "backend": backend, "front_readonly": readonly,
    }
    try:
        cfg = _storage_config(
            load_config(config_file, overrides={k: v for k, v in overrides.items() if v is not None}),
            root_dir, s3_gateway, azure, "the storage the HSDS DNs write to",
        )
        reader = Reader(cfg)
    except HsdsBackendsError as exc:
        raise click.ClickException(str(exc)) from exc
    socks = []
    try:
        for where in listens:
            socks.append(_listen_socket(where))
    except (OSError, ValueError) as exc:
        for s in socks:
            s.close()
        raise click.ClickException(str(exc)) from exc

    async def main() -> None:
        fr = Front(reader, dn_count=dn_count, dn_urls=[u.strip() for u in (dn_urls or "").split(",") if u.strip()])
        pairs = [(fr.listener(up), sock) for up, sock in zip(upstreams, socks, strict=True)]

        def ready(urls: list[str]) -> None:
            print("READY " + " ".join(urls), flush=True)

        await serve_front(fr, pairs, ready=ready)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # pragma: no cover - interactive stop
        pass


def _listen_socket(where: str) -> Any:
    """A listening socket for ``--listen``: a unix socket path/URL, or loopback TCP; anything else is refused."""
    import urllib.parse

    from hsds_backends.security import is_loopback

    from .service import bind_socket

    w = where.strip()
    if w.startswith("http+unix://"):
        return bind_socket(path=urllib.parse.unquote(w[len("http+unix://"):].split("/", 1)[0]))
    if w.startswith("unix:"):
        return bind_socket(path=w[len("unix:"):].removeprefix("//"))
    if w.startswith(("http://", "https://")) or (":" in w and not w.startswith("/")):
        u = urllib.parse.urlsplit(w if "://" in w else f"http://{w}")
        host = u.hostname or ""
        if not is_loopback(host):
            raise ValueError(
                f"--listen {where!r}: a front listens on 127.0.0.1, ::1 or a unix socket only; HSDS's SN sends no "
                "credentials, so a front reachable from other hosts would serve anyone"
            )
        if u.port is None:
            raise ValueError(f"--listen {where!r} names no port; use http://127.0.0.1:PORT")
        return bind_socket(host=host, port=u.port)
    return bind_socket(path=w)


def _storage_config(cfg: Any, root_dir: str | None, s3_gateway: str | None, azure: bool, what: str) -> Any:
    """Return ``cfg`` with the storage the flags name winning over the environment's; refuse when none is named.

    ``--azure`` (or ``--s3-gateway``) given without ``--root-dir`` wins over a ``ROOT_DIR``
    inherited from the environment. The current folder is never a default: it may hold
    ~/.aws, ~/.ssh or anything else (docs/architecture.md §11).
    """
    from hsds_backends.storage import storage_kind

    if sum(map(bool, (root_dir, s3_gateway, azure))) > 1:
        raise click.UsageError("give one storage: --root-dir, --s3-gateway or --azure")
    if azure:
        cfg = cfg.with_overrides(root_dir=None, aws_s3_gateway=None, storage="azure")
    elif s3_gateway and not root_dir:
        cfg = cfg.with_overrides(root_dir=None)
    kind = storage_kind(cfg)
    if kind is None:
        raise click.ClickException(
            f"no storage given; pass --root-dir DIR ({what}), --s3-gateway URL or --azure "
            "(with AZURE_CONNECTION_STRING in the environment), or root_dir / aws_s3_gateway / azure_connection_string in --config"
        )
    if kind == "azure":  # a connection string must be there before anything starts (no I/O here)
        from hsds_backends.errors import HsdsBackendsError
        from hsds_backends.storage.azure import AzureStorage

        try:
            AzureStorage.from_config(cfg)
        except HsdsBackendsError as exc:
            raise click.ClickException(str(exc)) from exc
    return cfg


def _token(token_file: str | None, env_var: str) -> str | None:
    """Return the bearer token from ``token_file``, else ``env_var``, else ``None``.

    Raises
    ------
    ConfigError
        An empty or unreadable file, or the variable set but empty: either would
        silently turn authentication off.
    """
    from hsds_backends.errors import ConfigError
    from hsds_backends.security import read_token_file

    if token_file:
        return read_token_file(token_file)
    value = os.environ.get(env_var)
    if value is None:
        return None
    if not value.strip():
        raise ConfigError(f"{env_var} is set but empty; put the token in it, or unset it to serve without a token on loopback")
    return value.strip()


if __name__ == "__main__":  # python -m hsds_backends_containers.cli serve ... (how embedded DNs start)
    sys.exit(dn(prog_name="hsds-backends dn"))
