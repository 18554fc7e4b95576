"""Shared test configuration.

Fixtures that start services live in plugins: ``hsds_harness`` (real HSDS on unix
sockets, from its own virtualenv) and ``hsds_backends.testing.fixtures`` (moto server on
127.0.0.1, sample domains).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsds_backends.storage import PosixStorage
from hsds_backends.testing.data import ConformanceData, write_conformance_domain
from hsds_backends.writer import Writer

sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = ["hsds_harness", "hsds_backends.testing.fixtures"]


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for a test module: services it starts live on it across tests."""
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def conformance_root(tmp_path_factory: pytest.TempPathFactory, runner: asyncio.Runner) -> tuple[Path, ConformanceData]:
    """The conformance domain (:mod:`hsds_backends.testing.data`) in posix storage of this module."""
    root = tmp_path_factory.mktemp("conformance")
    return root, runner.run(write_conformance_domain(PosixStorage(root), "hsdstest"))


def write_grid(runner: asyncio.Runner, root: Path, domain: str, grid: Any, chunks: tuple[int, ...]) -> Path:
    """Write ``grid`` as ``/grid`` of ``domain`` (shuffle + gzip 4, as HSDS stores it) under ``root``; return ``root``."""

    async def write() -> None:
        w = Writer(PosixStorage(root), "hsdstest")
        await w.create_domain(domain)
        await w.create_dataset(domain, "/grid", grid, chunks=chunks, filters=["shuffle", ("gzip", 4)])

    runner.run(write())
    return root


@pytest.fixture
def storage(tmp_path: Path) -> PosixStorage:
    """Posix storage in a fresh temp folder."""
    return PosixStorage(tmp_path)


@pytest.fixture
def writer(storage: PosixStorage) -> Writer:
    """A writer into bucket ``hsdstest`` of :func:`storage`."""
    return Writer(storage, "hsdstest")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print how many examples each backend checked in the equivalence tests."""
    mod = sys.modules.get("test_equivalence") or sys.modules.get("tests.test_equivalence")
    counts = getattr(mod, "COUNTS", None)
    if counts:
        terminalreporter.section("equivalence: examples checked per backend")
        for (name, kind), n in sorted(counts.items()):
            terminalreporter.write_line(f"{name:<11} {kind:<6} {n}")
