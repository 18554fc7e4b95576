"""The ``hsds-backends`` command: ``read``, ``ls``, ``backends``, ``demo``.

Backends may add subcommands (``hsds-backends lambda …``, ``hsds-backends dn …``)
through the entry-point group ``hsds_backends.cli`` (a :class:`click.Command`).

Every error, ours or a subcommand's, ends the command with one line on stderr
(``Error: <message>``) and exit status :data:`FAILURE_EXIT` or :data:`USAGE_EXIT`; a
traceback is printed only when the environment variable :data:`DEBUG_ENV` is set
(docs/architecture.md §8: a message quotes the bad value and says what to do).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import sys
import traceback
from importlib.metadata import entry_points
from typing import Any, Final

import click
import numpy as np

from ._version import __version__
from .config import load_config
from .errors import ConfigError, HsdsBackendsError

__all__ = ["DEBUG_ENV", "FAILURE_EXIT", "USAGE_EXIT", "CliError", "CliUsageError", "cli", "main"]

#: Exit status of a command whose work failed (see :data:`EXIT_HELP`).
FAILURE_EXIT: Final = 1
#: Exit status of a command line (or a file it names) that cannot be used, as click uses it.
USAGE_EXIT: Final = 2
#: Set to 1 (or true/yes/on) to print the traceback behind an error too.
DEBUG_ENV: Final = "HSDS_BACKENDS_DEBUG"

#: The exit statuses and the debug switch, shown in ``--help``.
EXIT_HELP: Final = f"""\b
Exit status: 0 done; {FAILURE_EXIT} the work failed (unknown domain, dataset or
backend; a select, query, fields or points that do not fit the dataset;
a storage, backend or write error); {USAGE_EXIT} usage: the command line or a
file it names cannot be used (unknown or conflicting options, a missing or
malformed --config, an invalid config value, a --points file that is not
an integer .npy array, -o in a missing folder, a --root-dir that is not a
folder). Errors are one line on stderr; set {DEBUG_ENV}=1 to print the
traceback as well."""

# A message longer than this without a space is a pasted value (a 5,000-digit index):
# shown shortened, so the one line stays readable.
_LONG_TOKEN: Final = 200
_DIGITS: Final = re.compile(r"\d+")
# Coordinates are uint64 (docs/hsds-format.md §5): no index reaches 2**64, which has 20 digits.
_MAX_INDEX_DIGITS: Final = 20


class CliError(click.ClickException):
    """An error shown as ``Error: <message>`` on one line; exit status :data:`FAILURE_EXIT`."""

    exit_code = FAILURE_EXIT

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


class CliUsageError(CliError):
    """Like :class:`CliError` with exit status :data:`USAGE_EXIT`, without click's usage block."""

    exit_code = USAGE_EXIT


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _shorten(match: re.Match[str]) -> str:
    token = match.group()
    return f"{token[:40]}…{token[-10:]} ({len(token):,} characters)"


def _clip(value: str) -> str:
    """``repr(value)``, shortened when it is too long to read on one line."""
    return repr(value) if len(value) <= 60 else f"{value[:40]!r}… ({len(value):,} characters)"


def _one_line(text: str) -> str:
    """``text`` as one printable line: line breaks joined, control characters escaped, pasted blobs shortened."""
    text = re.sub(r"\s*[\r\n]+\s*", " ", text.strip())
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return re.sub(rf"\S{{{_LONG_TOKEN},}}", _shorten, text)


def _from_usage(exc: click.UsageError) -> CliUsageError:
    """Click's usage error as one line: its message plus where to find help."""
    msg = exc.format_message().rstrip()
    if exc.ctx is not None:
        msg += ("" if msg.endswith((".", "!", "?")) else ".") + f" Try '{exc.ctx.command_path} --help' for help."
    return CliUsageError(msg)


def _from_exception(exc: Exception) -> CliError:
    """The one-line error for an exception a command did not turn into a click error itself."""
    if isinstance(exc, ConfigError):  # a bad config file, env var or option value: usage
        return CliUsageError(str(exc))
    if isinstance(exc, HsdsBackendsError):
        return CliError(str(exc))
    if isinstance(exc, MemoryError):
        return CliError(f"out of memory ({exc or type(exc).__name__}); read less at once, or set read_bytes_limit to fail early")
    if isinstance(exc, OSError):
        return CliError(str(exc))
    return CliError(f"unexpected {type(exc).__name__}: {exc}; this is a bug: rerun with {DEBUG_ENV}=1 to see the traceback and report it")


class _Group(click.Group):
    """Adds backend subcommands from the ``hsds_backends.cli`` entry points, lazily.

    Also the one place errors become one line: click's usage errors lose their usage block,
    our errors and unexpected exceptions become :class:`CliError`, for the built-in
    commands and the backends' alike.
    """

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
        except Exception as exc:
            raise CliError(f"subcommand {name!r} from {ep.value} failed to load: {exc}") from exc

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # shows the help, as asked
        except click.UsageError as exc:
            raise _from_usage(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.exceptions.NoArgsIsHelpError):
            raise
        except click.UsageError as exc:
            _trace(exc)
            raise _from_usage(exc) from exc
        except CliError as exc:
            _trace(exc)
            raise
        except click.ClickException as exc:  # a subcommand's own: keep its status, make it one line
            _trace(exc)
            err = CliUsageError(exc.format_message()) if exc.exit_code == USAGE_EXIT else CliError(exc.format_message())
            raise err from exc
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # click quiets a closed stdout (`hsds-backends backends | head`)
            _trace(exc)
            raise _from_exception(exc) from exc
        except Exception as exc:  # the command boundary: one line, the traceback only when asked
            _trace(exc)
            raise _from_exception(exc) from exc


def _trace(exc: BaseException) -> None:
    """With :data:`DEBUG_ENV` set, print the traceback behind ``exc`` (its cause, if it has one)."""
    if _debug():
        cause = exc.__cause__ if isinstance(exc, click.ClickException) and exc.__cause__ is not None else exc
        traceback.print_exception(cause, file=sys.stderr)


@click.group(cls=_Group, epilog=EXIT_HELP)
@click.version_option(__version__, prog_name="hsds-backends")
def cli() -> None:
    """Read HSDS-stored datasets through pluggable chunk-read backends."""


def _config(config: str | None, **overrides: Any) -> Any:
    try:
        return load_config(config, overrides={k: v for k, v in overrides.items() if v is not None})
    except (OSError, ValueError) as exc:  # a file that is not text, or unreadable (ConfigError: the group)
        where = f"config file {config!r}" if config else "the configuration"
        raise CliUsageError(f"cannot read {where}: {exc}; pass a YAML file of key: value lines") from exc


def _check_root_dir(cfg: Any) -> None:
    """A posix ``root_dir`` must be a folder: else every domain would just be "not found"."""
    root = cfg.get("root_dir")
    if root and not os.path.isdir(root):
        src = cfg.source("root_dir")
        where = "--root-dir" if src == "override" else f"root_dir (from {src})"
        raise CliUsageError(f"{where} {root!r} is not an existing folder; give the folder that holds the buckets (HSDS root_dir)")


def _check_select(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse an index no dataset can have before the parser turns it into a huge int."""
    if value is not None:
        for m in _DIGITS.finditer(value):
            digits = m.group().lstrip("0")
            if len(digits) > _MAX_INDEX_DIGITS:
                raise CliError(
                    f"bad select {_clip(value)}: index {digits[:8]}…{digits[-4:]} has {len(digits):,} digits; "
                    f"an index has at most {_MAX_INDEX_DIGITS} (extents are below 2**64)"
                )
    return value


def _check_output(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """The output must be writable before the read starts (a read may take minutes)."""
    if value is None:
        return value
    if not value.strip():
        raise CliUsageError("-o is empty; give the .npy file to write, such as -o out.npy")
    target = value if value.endswith(".npy") else value + ".npy"  # what numpy.save writes
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise CliUsageError(f"-o {value!r}: folder {os.path.dirname(value) or folder!r} does not exist; create it first or write elsewhere")
    if os.path.isdir(target):
        raise CliUsageError(f"-o {value!r}: {target!r} is a folder; give a file path such as {os.path.join(target, 'out.npy')!r}")
    if not os.access(folder, os.W_OK):
        raise CliUsageError(f"-o {value!r}: folder {folder!r} is not writable; write elsewhere")
    return value


_NPY_MAGIC: Final = b"\x93NUMPY"


def _load_points(path: str) -> np.ndarray[Any, Any]:
    """Load an (N, rank) integer .npy array, never unpickling anything."""
    hint = "write the (N, rank) integer coordinates with numpy.save"
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            if not magic:
                raise CliUsageError(f"--points {path!r} is empty; {hint}")
            if magic != _NPY_MAGIC:
                raise CliUsageError(f"--points {path!r} is not a NumPy .npy file (it does not start with the .npy header); {hint}")
            f.seek(0)
            arr = np.load(f, allow_pickle=False)
    except OSError as exc:
        raise CliUsageError(f"--points {path!r} cannot be read: {exc.strerror or exc}") from exc
    except (ValueError, EOFError) as exc:
        if "allow_pickle" in str(exc):
            raise CliUsageError(f"--points {path!r} holds Python objects, which are never loaded; {hint}") from exc
        raise CliUsageError(f"--points {path!r} is not a readable .npy array ({exc}); {hint}") from exc
    if not isinstance(arr, np.ndarray) or (arr.dtype.kind not in "iu" and arr.size) or arr.ndim not in (1, 2):
        raise CliUsageError(f"--points {path!r} holds an array of dtype {arr.dtype} and shape {list(arr.shape)}; {hint}")
    return arr


@cli.command(epilog=EXIT_HELP)
@click.argument("domain")
@click.argument("h5path")
@click.option("--select", "select", callback=_check_select, help="HSDS select string, e.g. '[0:100:4, 5]' (default: everything).")
@click.option("--points", "points_file", type=click.Path(exists=True, dir_okay=False), help="(N, rank) integer .npy of coordinates.")
@click.option("--query", "query", help="Row query, e.g. '(temp > 20) & (id < 5)' or 'temp > 20 AND id < 5'.")
@click.option("--limit", type=int, default=None, help="At most this many query rows (lowest indices first).")
@click.option("--fields", help="Compound fields to return, comma-separated, in this order.")
@click.option("--backend", help="Backend to use (default: config 'backend', else auto).")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), help="config.yml to load.")
@click.option("--root-dir", help="Posix storage root (HSDS root_dir).")
@click.option("--bucket", help="Bucket (HSDS bucket_name).")
@click.option("--explain", is_flag=True, help="Print the chosen backend and why.")
@click.option("--stats", is_flag=True, help="Print per-request statistics as JSON on stderr.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), callback=_check_output, help="Output .npy file.")
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
    _check_root_dir(cfg)
    # h5py's rule: one name gives that field as a plain array, several a structured array
    flds: str | list[str] | None = ([f.strip() for f in fields.split(",")] if "," in fields else fields.strip()) if fields else None
    points = _load_points(points_file) if points_file else None

    async def go() -> Any:
        from .api import Reader

        async with Reader(cfg) as reader:
            dom = await reader.open(domain)
            dset = await dom.get(h5path)
            if query is not None:
                from .api import to_selection
                from .plan import plan_query

                plan = plan_query(
                    dset.meta, query, None if select is None else to_selection(select, dset.shape), limit, flds, limits=reader.limits
                )
            elif points is not None:
                from .plan import plan_points

                try:
                    plan = plan_points(dset.meta, points, flds, limits=reader.limits)
                except HsdsBackendsError as exc:  # say which file does not fit the dataset
                    raise CliError(f"--points {points_file!r}: {exc}") from exc
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

    result = asyncio.run(go())  # errors become one line in _Group.invoke
    data = result.data
    if isinstance(flds, str) and query is None and data.dtype.names is not None:
        data = np.ascontiguousarray(data[flds])  # one field named: a plain array, as the Python API gives
    try:
        np.save(output, data, allow_pickle=data.dtype.hasobject)  # pickles only our own vlen objects
    except OSError as exc:
        raise CliError(f"cannot write -o {output!r}: {exc.strerror or exc}") from exc
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
        storage = "" if caps.storage_kinds is None else f" storage={','.join(sorted(caps.storage_kinds))}"
        click.echo(f"{i.name:<11} {i.distribution} {i.version}  [{kinds}] concurrency={caps.max_concurrency}{storage}  {i.description}")


#: Demo grid edges: the workloads read [256:512, 0:256], and 8192² float32 is 256 MiB.
DEMO_SIZES: Final = click.IntRange(512, 8192)


@cli.command(epilog=EXIT_HELP)
@click.option("--dir", "root_dir", default="demo-data", show_default=True, type=click.Path(file_okay=False), help="Folder for the sample domain.")
@click.option("--size", default=2048, show_default=True, type=DEMO_SIZES, help="Grid edge (elements); the grid is float32 size×size.")
@click.option("--backend", "only", multiple=True, help="Only these backends (default: every installed one).")
def demo(root_dir: str, size: int, only: tuple[str, ...]) -> None:
    """Write a sample domain into a local folder and read it through every installed backend.

    Prints time, MB/s and whether each result is byte-identical to the numpy oracle.
    The folder's bucket ``hsdstest`` is replaced, so the folder must be empty or one
    the demo wrote before.
    """
    from .demo import demo_dir_problem, run_demo

    names = _backend_names()
    unknown = [b for b in only if b not in names and b != "auto"]
    if unknown:
        raise CliError(f"unknown backend {unknown[0]!r}; installed backends: {names} (or auto)")
    folder = os.path.abspath(root_dir)
    problem = demo_dir_problem(folder)  # a folder the demo cannot use, or one holding others' data
    if problem is not None:
        raise CliUsageError(f"--dir {root_dir!r}: {problem}")
    try:
        ok = run_demo(folder, size=size, only=list(only) or None, echo=click.echo)
    except OSError as exc:
        raise CliError(f"cannot write the demo domain under --dir {root_dir!r}: {exc.strerror or exc}") from exc
    if not ok:
        raise SystemExit(FAILURE_EXIT)


def _jsonable(value: Any) -> Any:
    """An attribute value as JSON: arrays as lists, bytes as text, ``None`` for an empty attribute."""
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _ls_entry(path: str, link: Any, obj: Any, attrs: bool) -> dict[str, Any]:
    """One ``ls`` line as a dict: path, kind, shape, dtype, chunks, filters (and link target, attributes)."""
    from .attrs import AttributeManager
    from .codecs.filters import filter_list
    from .groups import AsyncGroup, ExternalLink, SoftLink

    e: dict[str, Any] = {"path": path, "kind": "", "shape": None, "dtype": None, "chunks": None, "filters": []}
    am: AttributeManager | None = None
    if isinstance(link, SoftLink) and obj is None:
        e.update(kind="softlink", target=link.path)
    elif isinstance(link, ExternalLink):
        e.update(kind="externallink", target=link.path, domain=link.filename)
    elif isinstance(obj, AsyncGroup):
        e.update(kind="group", id=obj.id)
        am = obj.attrs
    else:
        meta = obj.meta
        names = [name for name, _level in filter_list(meta.filters)]
        e.update(kind="dataset", id=meta.id, shape=list(meta.shape), dtype=str(meta.dtype), chunks=list(meta.chunks), filters=names)
        am = obj.attrs
    if attrs:
        e["attrs"] = {} if am is None else {k: _jsonable(am[k]) for k in am}
    return e


def _ls_line(e: dict[str, Any]) -> str:
    cols = [e["path"], e["kind"]]
    if e["kind"] == "dataset":
        cols += [
            "{" + ", ".join(map(str, e["shape"])) + "}",
            e["dtype"],
            "chunks {" + ", ".join(map(str, e["chunks"])) + "}",
            ",".join(e["filters"]) or "no filters",
        ]
    elif e["kind"] == "softlink":
        cols.append(f"-> {e['target']}")
    elif e["kind"] == "externallink":
        cols.append(f"-> {e['domain']}:{e['target']}")
    return "  ".join(cols)


@cli.command(epilog=EXIT_HELP)
@click.argument("domain")
@click.argument("path", default="/")
@click.option("-r", "--recursive", is_flag=True, help="List every object below PATH, not only its members.")
@click.option("--attrs", "show_attrs", is_flag=True, help="Show each object's attributes.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects (path, kind, shape, dtype, chunks, filters).")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), help="config.yml to load.")
@click.option("--root-dir", help="Posix storage root (HSDS root_dir).")
@click.option("--bucket", help="Bucket (HSDS bucket_name).")
def ls(
    domain: str, path: str, recursive: bool, show_attrs: bool, as_json: bool, config: str | None, root_dir: str | None, bucket: str | None
) -> None:
    """List the groups, datasets and links of DOMAIN under PATH (default: the root group), like h5ls.

    One line per object: path, kind (group, dataset, softlink, externallink) and, for a
    dataset, shape, dtype, chunk shape and filters. Soft and external links are shown,
    not followed, inside a listing; a PATH that is a soft link is followed.
    """
    cfg = _config(config, root_dir=root_dir, bucket_name=bucket)
    _check_root_dir(cfg)

    async def go() -> list[dict[str, Any]]:
        from .api import Reader
        from .groups import AsyncGroup, ExternalLink, HardLink, join_path

        async with Reader(cfg) as reader:
            dom = await reader.open(domain)
            obj = await dom.get_object(path)
            if isinstance(obj, ExternalLink):
                return [_ls_entry(join_path("/", path), obj, None, show_attrs)]
            if not isinstance(obj, AsyncGroup):
                return [_ls_entry(join_path("/", path), HardLink(obj.meta.id), obj, show_attrs)]
            out = []
            if show_attrs:
                out.append(_ls_entry(obj.name, HardLink(obj.id), obj, True))
            entries: list[tuple[str, Any, Any]] = []
            if recursive:
                entries += await obj.walk()
            else:
                for name in obj.keys():
                    link = obj.getlink(name)
                    member = await obj.get_object(name) if isinstance(link, HardLink) else None
                    entries.append((name, link, member))
            for rel, link, member in entries:
                out.append(_ls_entry(join_path(obj.name, rel), link, member, show_attrs))
            return out

    entries = asyncio.run(go())
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        click.echo(_ls_line(e))
        for k, v in (e.get("attrs") or {}).items():
            click.echo(f"    @{k} = {json.dumps(v)}")


def _backend_names() -> list[str]:
    from .plugins import backend_names

    return backend_names()


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
