"""``hsds-backends ls``: one line (or JSON object) per group, dataset and link, like h5ls."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from hsds_backends.cli import cli
from hsds_backends.dtypes import vlen_dtype
from hsds_backends.storage.posix import PosixStorage
from hsds_backends.writer import Writer

DOMAIN = "/home/test/ls.h5"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ls")

    async def write() -> None:
        w = Writer(PosixStorage(root), "hsdstest")
        await w.create_dataset(DOMAIN, "/grid", np.arange(64, dtype="<f4").reshape(8, 8), chunks=(4, 4), filters=["shuffle", ("gzip", 4)])
        await w.create_group(DOMAIN, "/grp/nested")
        await w.create_dataset(DOMAIN, "/grp/nested/ints", np.arange(10, dtype=">i2"), chunks=(5,))
        await w.create_soft_link(DOMAIN, "/grp/soft", "/grid")
        await w.create_external_link(DOMAIN, "/grp/ext", "/home/test/other.h5", "/data")
        await w.set_attribute(DOMAIN, "/", "title", "ls test", vlen_dtype(str))
        await w.set_attribute(DOMAIN, "/grid", "units", np.array([b"K", b"C"], dtype="S1"))

    asyncio.run(write())
    return root


def _ls(root: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["ls", DOMAIN, *args, "--root-dir", str(root)], catch_exceptions=False)


def test_ls_lists_the_root_members(root: Path) -> None:
    r = _ls(root)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "/grid  dataset  {8, 8}  float32  chunks {4, 4}  shuffle,gzip",
        "/grp  group",
    ]


def test_ls_recursive_json(root: Path) -> None:
    r = _ls(root, "-r", "--json")
    assert r.exit_code == 0, r.output
    entries = json.loads(r.output)
    by_path = {e["path"]: e for e in entries}
    assert list(by_path) == ["/grid", "/grp", "/grp/ext", "/grp/nested", "/grp/nested/ints", "/grp/soft"]
    assert by_path["/grid"] | {"id": None} == {
        "path": "/grid", "kind": "dataset", "shape": [8, 8], "dtype": "float32", "chunks": [4, 4],
        "filters": ["shuffle", "gzip"], "id": None,
    }
    assert by_path["/grp/nested/ints"]["dtype"] == ">i2" and by_path["/grp/nested/ints"]["chunks"] == [5]
    assert by_path["/grp/nested"]["kind"] == "group" and by_path["/grp/nested"]["shape"] is None
    assert by_path["/grp/soft"]["kind"] == "softlink" and by_path["/grp/soft"]["target"] == "/grid"
    assert by_path["/grp/ext"]["kind"] == "externallink" and by_path["/grp/ext"]["domain"] == "/home/test/other.h5"
    for e in entries:
        assert {"path", "kind", "shape", "dtype", "chunks"} <= set(e)


def test_ls_a_path_with_or_without_slash(root: Path) -> None:
    a = _ls(root, "grp")
    b = _ls(root, "/grp/")
    assert a.exit_code == 0 and a.output == b.output
    assert a.output.splitlines() == [
        "/grp/ext  externallink  -> /home/test/other.h5:/data",
        "/grp/nested  group",
        "/grp/soft  softlink  -> /grid",
    ]
    d = _ls(root, "/grp/nested/ints")
    assert d.output.splitlines() == ["/grp/nested/ints  dataset  {10}  >i2  chunks {5}  no filters"]


def test_ls_attrs(root: Path) -> None:
    r = _ls(root, "--attrs")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "/  group" and lines[1] == '    @title = "ls test"'
    assert '    @units = ["K", "C"]' in lines
    entries = json.loads(_ls(root, "--attrs", "--json").output)
    assert entries[0]["attrs"] == {"title": "ls test"} and entries[1]["attrs"] == {"units": ["K", "C"]}


def test_ls_unknown_path_and_domain_are_one_line(root: Path) -> None:
    r = CliRunner().invoke(cli, ["ls", DOMAIN, "/grp/nope", "--root-dir", str(root)])
    assert r.exit_code == 1
    assert r.output.strip().count("\n") == 0
    assert "no link 'nope' in group '/grp'" in r.output
    r = CliRunner().invoke(cli, ["ls", "/home/test/missing.h5", "--root-dir", str(root)])
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0
    assert "domain '/home/test/missing.h5' not found" in r.output


def test_ls_recursive_below_a_group(root: Path) -> None:
    r = _ls(root, "/grp", "-r")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "/grp/ext  externallink  -> /home/test/other.h5:/data",
        "/grp/nested  group",
        "/grp/nested/ints  dataset  {10}  >i2  chunks {5}  no filters",
        "/grp/soft  softlink  -> /grid",
    ]
    assert json.loads(_ls(root, "grp/soft", "--json").output)[0]["path"] == "/grp/soft"  # a soft link PATH is followed
