"""``hsds-backends lambda build|deploy|serve-local`` (entry point group ``hsds_backends.cli``)."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import click

from hsds_backends.config import is_unset
from hsds_backends.errors import HsdsBackendsError

__all__ = ["lambda_"]


def _config(path: str | None, **overrides: Any) -> Any:
    from hsds_backends.config import load_config

    return load_config(path, overrides={k: v for k, v in overrides.items() if v is not None})


def _env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"{p!r} is not NAME=VALUE", param_hint="--env")
        k, v = p.split("=", 1)
        out[k] = v
    return out


@click.group(name="lambda")
def lambda_() -> None:
    """Build, deploy and run locally the chunk_read Lambda function."""


@lambda_.command()
@click.option("-o", "--output", default="dist/chunk_read.zip", show_default=True, type=click.Path(dir_okay=False), help="Zip to write.")
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), default="x86_64", show_default=True)
@click.option("--python", "python", default=None, help="Lambda Python runtime version, e.g. 3.11 (default: this interpreter's).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Wheel cache (default ./.cache/lambda-wheels).")
def build(output: str, arch: str, python: str | None, cache_dir: str | None) -> None:
    """Build the deployment zip: handler, core and manylinux wheels, checked against Lambda's size limits."""
    from .build import build_zip

    try:
        res = build_zip(output, arch=arch, python=python, cache_dir=cache_dir, echo=lambda m: click.echo(m, err=True))
    except HsdsBackendsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(res.summary())


@lambda_.command()
@click.option("--zip", "zip_path", type=click.Path(exists=True, dir_okay=False), help="Deployment zip (default: build one first).")
@click.option("--function", "function", default=None, help="Function name (default: config aws_lambda_chunkread_function, else chunk_read).")
@click.option("--role", default=None, help="Execution role ARN (needed to create; default: config aws_lambda_role).")
@click.option("--memory", "memory_mb", type=int, default=1769, show_default=True, help="Memory in MB (1769 = one vCPU).")
@click.option("--timeout", "timeout_s", type=int, default=60, show_default=True, help="Function timeout in seconds.")
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), default="x86_64", show_default=True)
@click.option("--runtime", "runtime", default=None, help="Runtime, e.g. python3.11 (default: this interpreter's version).")
@click.option("--env", "env", multiple=True, help="NAME=VALUE for the function's environment (repeatable).")
@click.option("--bucket-allowlist", default=None, help="Comma-separated buckets the function may read (BUCKET_ALLOWLIST).")
@click.option("--endpoint-url", default=None, help="Lambda API endpoint (default: config aws_lambda_gateway, else AWS).")
@click.option("--region", default=None, help="Region (default: config aws_region).")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="config.yml to load.")
def deploy(
    zip_path: str | None, function: str | None, role: str | None, memory_mb: int, timeout_s: int, arch: str, runtime: str | None,
    env: tuple[str, ...], bucket_allowlist: str | None, endpoint_url: str | None, region: str | None, config: str | None,
) -> None:
    """Create or update the function (no upload when CodeSha256 is unchanged) and wait until it is active."""
    import sys

    from .build import build_zip
    from .deploy import deploy as do_deploy

    cfg = _config(config)
    python = runtime.removeprefix("python") if runtime else f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        if zip_path is None:
            zip_path = str(build_zip(Path("dist") / f"chunk_read-{arch}.zip", arch=arch, python=python, echo=lambda m: click.echo(m, err=True)).path)
        variables = {"LOG_LEVEL": "INFO"}
        if cfg.get("aws_s3_gateway"):
            variables["AWS_S3_GATEWAY"] = str(cfg["aws_s3_gateway"])
        if cfg.get("bucket_name"):
            variables["BUCKET_NAME"] = str(cfg["bucket_name"])
        if bucket_allowlist:
            variables["BUCKET_ALLOWLIST"] = bucket_allowlist
        variables.update(_env_pairs(env))
        key, secret = cfg.get("aws_access_key_id"), cfg.get("aws_secret_access_key")
        creds = (key, secret, cfg.get("aws_session_token")) if not is_unset(key) and not is_unset(secret) else None
        res = do_deploy(
            zip_path,
            function=function or cfg.get("aws_lambda_chunkread_function") or "chunk_read",
            role=role or cfg.get("aws_lambda_role"),
            memory_mb=memory_mb,
            timeout_s=timeout_s,
            environment=variables,
            arch=arch,
            runtime=f"python{python}",
            region=region or cfg.get("aws_region") or "us-east-1",
            endpoint_url=endpoint_url or cfg.get("aws_lambda_gateway"),
            credentials=creds,
        )
    except HsdsBackendsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(res.summary())


@lambda_.command("serve-local")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--port", default=9001, show_default=True, help="Invoke API port (0: a free one).")
@click.option("--function", "function", default=None, help="Function name (default: config aws_lambda_chunkread_function, else chunk_read).")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="config.yml to load (storage keys for the workers).")
@click.option("--root-dir", default=None, help="Posix storage root for the workers (ROOT_DIR); this, or S3 in the config, is required.")
@click.option("--workers", default=4, show_default=True, help="Reserved concurrency: most environments at once.")
@click.option("--warm", default=None, type=int, help="Environments to start now (default: --workers).")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, help="Function timeout in seconds.")
@click.option("--memory", "memory_mb", default=1769, show_default=True, help="Memory reported and billed, in MB.")
@click.option("--code", "code", type=click.Path(exists=True), default=None, help="A deployment zip or its unpacked folder (default: the installed packages).")
@click.option("--handler", default=None, help="module.function (default: the installed handler, or lambda_function.lambda_handler with --code).")
@click.option("--env", "env", multiple=True, help="NAME=VALUE for the workers' environment (repeatable).")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the runtime's token (needed by /local/* and, with --protect-invoke, by invokes); default: a new token written to a 0600 file whose path is printed.",
)
@click.option("--protect-invoke", is_flag=True, help="Invokes need the token too, as the access key id they are signed with.")
def serve_local(
    host: str, port: int, function: str | None, config: str | None, root_dir: str | None, workers: int, warm: int | None,
    timeout_s: float, memory_mb: int, code: str | None, handler: str | None, env: tuple[str, ...], token_file: str | None,
    protect_invoke: bool,
) -> None:
    """Run the local Lambda runtime: the Invoke API on HOST:PORT, awslambdaric workers behind it."""
    from hsds_backends.security import read_token_file

    from .backend import worker_env
    from .local import DEFAULT_HANDLER, FunctionSpec, LocalLambdaRuntime

    cfg = _config(config, root_dir=root_dir)
    name = function or cfg.get("aws_lambda_chunkread_function") or "chunk_read"
    try:
        variables = worker_env(cfg, workers)  # a root or S3, never the current folder by default
        token = read_token_file(token_file) if token_file else None
    except HsdsBackendsError as exc:
        raise click.ClickException(str(exc)) from exc
    variables.update(_env_pairs(env))
    with tempfile.TemporaryDirectory(prefix="chunk_read-code-") as tmp, tempfile.TemporaryDirectory(prefix="hsds-lambda-token-") as private:
        code_dir = None
        if code:
            if os.path.isdir(code):
                code_dir = os.path.abspath(code)
            else:
                with zipfile.ZipFile(code) as zf:
                    zf.extractall(tmp)
                code_dir = tmp
        spec = FunctionSpec(
            name,
            handler=handler or ("lambda_function.lambda_handler" if code_dir else DEFAULT_HANDLER),
            memory_mb=memory_mb,
            timeout_s=timeout_s,
            env=variables,
            code_dir=code_dir,
            concurrency=workers,
            warm=workers if warm is None else warm,
        )

        async def serve() -> None:
            try:
                rt = LocalLambdaRuntime(
                    host, port, region=str(cfg.get("aws_region") or "us-east-1"), functions=[spec], token=token, protect_invoke=protect_invoke
                )
            except HsdsBackendsError as exc:
                raise click.ClickException(str(exc)) from exc
            where = token_file or _write_token(rt.token, private)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            try:
                await rt.start()
            except (HsdsBackendsError, OSError) as exc:  # no /proc (not Linux), or the port is taken
                await rt.stop()
                raise click.ClickException(str(exc)) from exc
            try:
                click.echo(
                    f"local Lambda runtime on {rt.url}: function {name!r} ({spec.handler}), {workers} environment(s) at most;"
                    f" set aws_lambda_gateway={rt.url}; the token for /local/*{' and invokes' if protect_invoke else ''} is in {where}",
                    err=True,
                )
                await stop.wait()
                meter = rt.meter(name)
                click.echo(f"stopped; {meter.invocations} invocations, {meter.gb_s:.3f} GB-s (${meter.dollars():.6f} on AWS)", err=True)
            finally:
                await rt.stop()

        asyncio.run(serve())


def _write_token(token: str, folder: str) -> str:
    """Write ``token`` to a file only this user can read, in ``folder`` (a 0700 temporary folder); return its path."""
    path = os.path.join(folder, "token")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path
