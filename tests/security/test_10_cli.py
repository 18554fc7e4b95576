"""Finding 10: the ``hsds-backends`` command answers bad input with one line, never a traceback.

Every case runs the installed console script in a real process and checks what a user sees:
the exit status (2: the command line or a file it names cannot be used; 1: the work failed),
exactly one line on stderr starting with ``Error:``, naming the bad value and what to do.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hsds_backends.config import known_keys
from hsds_backends.storage import PosixStorage
from hsds_backends.writer import Writer

EXE = Path(sys.executable).parent / "hsds-backends"
DOMAIN = "/home/test/cli.h5"
HUGE = "9" * 5000  # more digits than int() parses by default (sys.get_int_max_str_digits)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli10")

    async def write() -> None:
        w = Writer(PosixStorage(root), "hsdstest")
        await w.create_dataset(DOMAIN, "/grid", np.arange(64 * 48, dtype="<f4").reshape(64, 48), chunks=(16, 16))
        table = np.zeros(100, dtype=[("id", "<i8"), ("temp", "<f4")])
        table["id"] = np.arange(100)
        await w.create_dataset(DOMAIN, "/table", table, chunks=(16,))

    asyncio.run(write())
    return root


def _env(**extra: str) -> dict[str, str]:
    """This environment without what would change the config under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSDS_BACKENDS_") and k.lower() not in known_keys() and k != "CONFIG_DIR"}
    env.update(extra)
    return env


def _run(args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], check=False, capture_output=True, text=True, cwd=cwd, env=env or _env(), timeout=120)


def _one_line(r: subprocess.CompletedProcess[str], status: int, pattern: str, what: Any = "") -> str:
    """Assert the exit status and a single ``Error:`` line on stderr matching ``pattern``."""
    assert "Traceback" not in r.stderr, (what, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, (what, r.stderr)
    assert lines[0].startswith("Error: "), (what, r.stderr)
    assert re.search(pattern, lines[0]), (what, pattern, lines[0])
    assert r.returncode == status, (what, r.returncode, r.stderr)
    return lines[0]


def _read(root: Path, *extra: str, h5path: str = "/grid") -> list[str]:
    return ["read", DOMAIN, h5path, "--root-dir", str(root), *extra]


def test_config_errors_are_one_line(root: Path, tmp_path: Path) -> None:
    """Finding 10: a missing or malformed --config and a bad config value exit 2 with one line."""
    files = {
        "bad.yml": b"a: [1\n",
        "list.yml": b"[1, 2]\n",
        "workers.yml": b"max_workers: 0\n",
        "hedge.yml": b"hedge_multiple: abc\n",
        "binary.yml": b"\xff\xfe\x00\x81 not text",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = str(tmp_path / "o.npy")
    cases: list[tuple[list[str], str]] = [
        (["--config", "missing.yml"], r"Invalid value for '--config': File 'missing\.yml' does not exist\. Try 'hsds-backends read --help'"),
        (["--config", "bad.yml"], r"config file 'bad\.yml' is not valid YAML: while parsing .* line 2, column 1$"),
        (["--config", "list.yml"], r"config file 'list\.yml' must hold a mapping of keys to values, not list"),
        (["--config", "workers.yml"], r"config key 'max_workers': 0 from file workers\.yml is not >= 1; set max_workers to a value >= 1"),
        (["--config", "hedge.yml"], r"config key 'hedge_multiple': 'abc' from file hedge\.yml is not a number; use a number"),
        (["--config", "binary.yml"], r"config file 'binary\.yml' is not UTF-8 text \(invalid start byte\); pass a YAML file of key: value lines"),
    ]
    if "timeout" in known_keys():  # a backend's key; the core's casters give the message
        (tmp_path / "timeout.yml").write_text("timeout: abc\n")
        cases.append((["--config", "timeout.yml"], r"config key 'timeout': 'abc' from file timeout\.yml is not a number"))
    for extra, pattern in cases:
        _one_line(_run(_read(root, *extra, "-o", out), cwd=tmp_path), 2, pattern, extra)
    r = _run(_read(root, "-o", out), cwd=tmp_path, env=_env(HSDS_BACKENDS_MAX_WORKERS="many"))
    _one_line(r, 2, r"config key 'max_workers': 'many' from env HSDS_BACKENDS_MAX_WORKERS is not an integer")
    assert not os.path.exists(out)


def test_output_path_is_checked_before_reading(root: Path, tmp_path: Path) -> None:
    """Finding 10: -o into a missing folder, onto a folder or empty is refused up front (exit 2)."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = [
        ("missing/o.npy", r"-o 'missing/o\.npy': folder 'missing' does not exist; create it first or write elsewhere"),
        ("file.txt/o.npy", r"-o 'file\.txt/o\.npy': folder 'file\.txt' does not exist"),
        ("folder", r"Invalid value for '-o' / '--output': File 'folder' is a directory\. Try 'hsds-backends read --help'"),
        ("", r"-o is empty; give the \.npy file to write, such as -o out\.npy"),
    ]
    for out, pattern in cases:
        _one_line(_run(_read(root, "-o", out), cwd=tmp_path), 2, pattern, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]  # nothing written (not even '.npy')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc, where no file can be created")
def test_a_failed_write_is_one_line(root: Path, tmp_path: Path) -> None:
    """Finding 10: a write that fails after the read is one line, exit 1."""
    _one_line(_run(_read(root, "-o", "/proc/o.npy"), cwd=tmp_path), 1, r"cannot write -o '/proc/o\.npy': ")


def test_absurd_select_is_one_line(root: Path, tmp_path: Path) -> None:
    """Finding 10: a 5,000-digit index in --select is a select error (exit 1), not a ValueError traceback."""
    out = str(tmp_path / "o.npy")
    for sel in (f"[{HUGE}, :]", f"[0:{HUGE}, 0]", f"[0:10:{HUGE}, :]", f"[-{HUGE}, 3]", f"[0:10, [1,{HUGE}]]"):
        line = _one_line(_run(_read(root, "--select", sel, "-o", out), cwd=tmp_path), 1, r"bad select '\[", sel[:12])
        assert re.search(r"\(5,0\d\d characters\): index 99999999…9999 has 5,000 digits; an index has at most 20", line), line
        assert len(line) < 300, line
    _one_line(_run(_read(root, "--query", "id > 1", "--select", f"[{HUGE}:]", "-o", out, h5path="/table"), cwd=tmp_path), 1, "has 5,000 digits")
    # a number no option type can hold: click's message, one line, the value shortened
    _one_line(_run(_read(root, "--query", "id > 1", "--limit", HUGE, "-o", out, h5path="/table"), cwd=tmp_path), 2, r"Invalid value for '--limit': '9{39}…9{9}' \(5,002 characters\) is not a valid integer")
    for sel, pattern in [("[0:10", r"bad select '\[0:10': unbalanced '\['"), ("[0:65, :]", r"0:65 is out of range for dimension 0 \(extent 64\)")]:
        _one_line(_run(_read(root, "--select", sel, "-o", out), cwd=tmp_path), 1, pattern, sel)


def test_points_file_errors(root: Path, tmp_path: Path) -> None:
    """Finding 10: an empty, text, pickled or misshapen --points file is one line; nothing is unpickled."""
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "text.npy").write_text("0, 1\n2, 3\n")
    np.save(tmp_path / "objects.npy", np.array([[1, 2], [3, "x"]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "floats.npy", np.zeros((3, 2)))
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2), dtype=np.int64))
    np.save(tmp_path / "rank1.npy", np.zeros(3, dtype=np.int64))
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "floats.npy").read_bytes()[:-10])
    out = str(tmp_path / "o.npy")
    hint = r"; write the \(N, rank\) integer coordinates with numpy\.save$"
    cases = [
        ("empty.npy", 2, r"--points 'empty\.npy' is empty" + hint),
        ("text.npy", 2, r"--points 'text\.npy' is not a NumPy \.npy file \(it does not start with the \.npy header\)" + hint),
        ("objects.npy", 2, r"--points 'objects\.npy' holds Python objects, which are never loaded" + hint),
        ("floats.npy", 2, r"--points 'floats\.npy' holds an array of dtype float64 and shape \[3, 2\]" + hint),
        ("cube.npy", 2, r"--points 'cube\.npy' holds an array of dtype int64 and shape \[2, 2, 2\]" + hint),
        ("truncated.npy", 2, r"--points 'truncated\.npy' is not a readable \.npy array \(.*\)" + hint),
        ("missing.npy", 2, r"Invalid value for '--points': File 'missing\.npy' does not exist"),
        ("rank1.npy", 1, r"--points 'rank1\.npy': points must have shape \(N, 2\) for a dataset of shape \[64, 48\], got \[3\]"),
    ]
    for name, status, pattern in cases:
        line = _one_line(_run(_read(root, "--points", name, "-o", out), cwd=tmp_path), status, pattern, name)
        assert "pickle" not in line.lower(), line
    assert not os.path.exists(out)


def test_storage_and_name_errors(root: Path, tmp_path: Path) -> None:
    """Finding 10: unknown domain, dataset, bucket or backend and a bad --root-dir are one line each."""
    out = str(tmp_path / "o.npy")
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (["read", DOMAIN, "/grid", "--root-dir", str(tmp_path / "nope"), "-o", out], 2, r"--root-dir '.*nope' is not an existing folder; give the folder that holds the buckets"),
        (["read", DOMAIN, "/grid", "--root-dir", "file.txt", "-o", out], 2, r"--root-dir 'file\.txt' is not an existing folder"),
        (["read", "/home/test/nope.h5", "/grid", "--root-dir", str(root), "-o", out], 1, r"domain '/home/test/nope\.h5' not found in bucket 'hsdstest'.*; check the domain path"),
        (_read(root, "-o", out, h5path="/nope"), 1, r"no link 'nope' in group '/' of domain '/home/test/cli\.h5'; links there: \['grid', 'table'\]"),
        (_read(root, "--bucket", "other", "-o", out), 1, r"domain '/home/test/cli\.h5' not found in bucket 'other'"),
        (_read(root, "--bucket", "../x", "-o", out), 1, r"bucket '\.\./x' is not a valid bucket name"),
        (_read(root, "--backend", "lamda", "-o", out), 1, r"unknown backend 'lamda'; installed backends: \["),
    ]
    for args, status, pattern in cases:
        _one_line(_run(args, cwd=tmp_path), status, pattern, args)
    (tmp_path / "rootcfg.yml").write_text(f"root_dir: {tmp_path / 'gone'}\n")
    r = _run(["read", DOMAIN, "/grid", "--config", "rootcfg.yml", "-o", out], cwd=tmp_path)
    _one_line(r, 2, r"root_dir \(from file rootcfg\.yml\) '.*gone' is not an existing folder")


def test_usage_errors_are_one_line(root: Path, tmp_path: Path) -> None:
    """Finding 10: click's usage errors keep status 2 but lose the multi-line usage block."""
    out = str(tmp_path / "o.npy")
    cases = [
        (["nosuch"], r"No such command 'nosuch'\. Try 'hsds-backends --help' for help\.$"),
        (["--bogus"], r"No such option '--bogus'\. Try 'hsds-backends --help' for help\.$"),
        (["read"], r"Missing argument 'DOMAIN'\. Try 'hsds-backends read --help' for help\.$"),
        (_read(root, "--query", "id > 1", "--select", "[0:3]"), r"Missing option '-o' / '--output'\."),
    ]
    np.save(tmp_path / "p.npy", np.zeros((1, 2), dtype=np.int64))
    cases.append((_read(root, "--points", str(tmp_path / "p.npy"), "--query", "id > 1", "-o", out), r"give at most one of --points and --query\. Try"))
    for args, pattern in cases:
        _one_line(_run(args, cwd=tmp_path), 2, pattern, args)
    r = _run(["read", "--help"], cwd=tmp_path)
    assert r.returncode == 0 and "Exit status: 0 done; 1 the work failed" in r.stdout and "HSDS_BACKENDS_DEBUG=1" in r.stdout


def test_demo_errors_and_foreign_data(tmp_path: Path) -> None:
    """Finding 10: demo refuses a bad --size, --dir or backend in one line and never deletes data it did not write."""
    (tmp_path / "file.txt").write_text("x")
    real = tmp_path / "hsds" / "hsdstest" / "home" / "alice"
    real.mkdir(parents=True)
    (real / ".domain.json").write_text("{}")
    cases = [
        (["demo", "--size", "0"], 2, r"Invalid value for '--size': 0 is not in the range 512<=x<=8192"),
        (["demo", "--size", "100000"], 2, r"Invalid value for '--size': 100000 is not in the range 512<=x<=8192"),
        (["demo", "--dir", "file.txt"], 2, r"Invalid value for '--dir': Directory 'file\.txt' is a file"),
        (["demo", "--dir", "file.txt/sub"], 2, r"--dir 'file\.txt/sub': cannot create the demo folder '.*sub': Not a directory; choose another folder"),
        (["demo", "--dir", "d", "--backend", "nope"], 1, r"unknown backend 'nope'; installed backends: \[.*'inline'.*\] \(or auto\)"),
        (["demo", "--dir", "hsds", "--size", "512", "--backend", "inline"], 2, r"--dir 'hsds': '.*hsds/hsdstest' holds data the demo did not write; choose an empty folder"),
    ]
    for args, status, pattern in cases:
        _one_line(_run(args, cwd=tmp_path), status, pattern, args)
    assert (real / ".domain.json").read_text() == "{}"
    assert not (tmp_path / "d").exists()
    for _ in range(2):  # a folder the demo wrote is still replaced, as before
        r = _run(["demo", "--dir", "again", "--size", "512", "--backend", "inline"], cwd=tmp_path)
        assert r.returncode == 0 and "all results byte-identical" in r.stdout, r.stdout + r.stderr


def test_traceback_only_with_debug(root: Path, tmp_path: Path) -> None:
    """Finding 10: HSDS_BACKENDS_DEBUG=1 adds the traceback; without it an unexpected exception is one line too."""
    (tmp_path / "bad.yml").write_text("a: [1\n")
    args = _read(root, "--config", "bad.yml", "-o", str(tmp_path / "o.npy"))
    _one_line(_run(args, cwd=tmp_path), 2, "is not valid YAML")
    r = _run(args, cwd=tmp_path, env=_env(HSDS_BACKENDS_DEBUG="1"))
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr and "yaml.parser.ParserError" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("Error: config file 'bad.yml' is not valid YAML: ")
    # a subcommand that fails in a way nobody planned for (as a backend's might)
    script = (
        "import click, sys\n"
        "from hsds_backends.cli import cli, main\n"
        "@cli.command()\n"
        "def broken() -> None:\n"
        "    raise RuntimeError('kaput\\nsecond line')\n"
        "sys.argv = ['hsds-backends', 'broken']\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=60)
    _one_line(r, 1, r"^Error: unexpected RuntimeError: kaput second line; this is a bug: rerun with HSDS_BACKENDS_DEBUG=1 to see the traceback and report it$")
    r = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=tmp_path, env=_env(HSDS_BACKENDS_DEBUG="yes"), timeout=60)
    assert r.returncode == 1 and "Traceback" in r.stderr and "RuntimeError: kaput" in r.stderr
