"""The ``hsds-backends`` command: ``read``, ``backends``, ``demo``.

Backends may add subcommands (``hsds-backends lambda …``, ``hsds-backends dn …``)
through the entry-point group ``hsds_backends.cli`` (a :class:`click.Command`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from importlib.metadata import entry_points
from typing import Any

import click
import numpy as np

from ._version import __version__
from .config import load_config
from .errors import HsdsBackendsError

__all__ = ["main", "cli"]


class _Group(click.Group):
    """Adds backend subcommands from the ``hsds_backends.cli`` entry points, lazily."""

    def _extra(self) -> dict[str, Any]:
        out = {}
        for ep in entry_points(group="hsds_backends.cli"):
            out[ep.name] = ep
        return out

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._extra()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        ep = self._extra().get(name)
        if ep is None:
            return None
        try:
            return ep.load()  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001
            raise click.ClickException(f"subcommand {name!r} from {ep.value} failed to load: {exc}") from exc


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="hsds-backends")
def cli() -> None:
    """Read HSDS-stored datasets through pluggable chunk-read backends."""


def _config(config: str | None, **overrides: Any) -> Any:
    return load_config(config, overrides={k: v for k, v in overrides.items() if v is not None})


@cli.command()
@click.argument("domain")
@click.argument("h5path")
@click.option("--select", "select", help="HSDS select string, e.g. '[0:100:4, 5]' (default: everything).")
@click.option("--points", "points_file", type=click.Path(exists=True, dir_okay=False), help="(N, rank) integer .npy of coordinates.")
@click.option("--query", "query", help="Row query, e.g. '(temp > 20) & (id < 5)' or 'temp > 20 AND id < 5'.")
@click.option("--limit", type=int, default=None, help="At most this many query rows (lowest indices first).")
@click.option("--fields", help="Compound fields to return, comma-separated, in this order.")
@click.option("--backend", help="Backend to use (default: config 'backend', else auto).")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="config.yml to load.")
@click.option("--root-dir", help="Posix storage root (HSDS root_dir).")
@click.option("--bucket", help="Bucket (HSDS bucket_name).")
@click.option("--explain", is_flag=True, help="Print the chosen backend and why.")
@click.option("--stats", is_flag=True, help="Print per-request statistics as JSON on stderr.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .npy file.")
def read(
    domain: str, h5path: str, select: str | None, points_file: str | None, query: str | None, limit: int | None,
    fields: str | None, backend: str | None, config: str | None, root_dir: str | None, bucket: str | None,
    explain: bool, stats: bool, output: str,
) -> None:
    """Read a selection, points or a query from DATASET H5PATH of DOMAIN into a .npy file.

    A query result is a structured array whose first field is ``index``
    (uint64 absolute row), followed by the selected fields.
    """
    if sum(x is not None for x in (points_file, query)) > 1:
        raise click.UsageError("give at most one of --points and --query")
    if points_file and select:
        raise click.UsageError("--select cannot be combined with --points")
    cfg = _config(config, root_dir=root_dir, bucket_name=bucket)
    flds = [f.strip() for f in fields.split(",")] if fields else None
    points = None
    if points_file:
        try:
            points = np.load(points_file, allow_pickle=False)
        except ValueError as exc:
            raise click.UsageError(f"--points {points_file!r} is not an integer .npy array: {exc}") from exc

    async def go() -> Any:
        from .api import Reader

        async with Reader(cfg) as reader:
            dom = await reader.open(domain)
            dset = await dom.get(h5path)
            if query is not None:
                from .api import to_selection
                from .plan import plan_query

                plan = plan_query(dset.meta, query, None if select is None else to_selection(select, dset.shape), limit, flds)
            elif points is not None:
                from .plan import plan_points

                plan = plan_points(dset.meta, points, flds)
            else:
                plan = dset.plan(select, fields=flds)
            if explain:
                b, reason = reader.choose(plan, backend=backend)
                click.echo(f"backend: {b.name} ({reason})", err=True)
            bar = _progress(plan.num_chunks)
            try:
                return await reader.run(plan, backend=backend, progress=bar.update if bar else None)
            finally:
                if bar:
                    bar.close()

    try:
        result = asyncio.run(go())
    except HsdsBackendsError as exc:
        raise click.ClickException(str(exc)) from exc
    data = result.data
    np.save(output, data, allow_pickle=data.dtype.hasobject)
    if stats:
        click.echo(json.dumps(result.stats.to_json()), err=True)


def _progress(total: int) -> Any:
    if total < 64 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="chunk", desc="read", leave=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backends(as_json: bool) -> None:
    """List installed backends, their distribution, version and capabilities."""
    from .plugins import list_backends

    infos = list_backends()
    if as_json:
        click.echo(json.dumps([i.to_json() for i in infos], indent=2))
        return
    for i in infos:
        caps = i.capabilities
        kinds = ",".join(k for k in ("hyperslab", "points", "query", "fields", "linked_chunks", "vlen") if getattr(caps, k))
        click.echo(f"{i.name:<11} {i.distribution} {i.version}  [{kinds}] concurrency={caps.max_concurrency}  {i.description}")


@cli.command()
@click.option("--dir", "root_dir", default="demo-data", show_default=True, type=click.Path(file_okay=False), help="Folder for the sample domain.")
@click.option("--size", default=2048, show_default=True, help="Grid edge (elements); the grid is float32 size×size.")
@click.option("--backend", "only", multiple=True, help="Only these backends (default: every installed one).")
def demo(root_dir: str, size: int, only: tuple[str, ...]) -> None:
    """Write a sample domain into a local folder and read it through every installed backend.

    Prints time, MB/s and whether each result is byte-identical to the numpy oracle.
    """
    from .demo import run_demo

    try:
        ok = run_demo(os.path.abspath(root_dir), size=size, only=list(only) or None, echo=click.echo)
    except HsdsBackendsError as exc:
        raise click.ClickException(str(exc)) from exc
    if not ok:
        raise SystemExit(1)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
