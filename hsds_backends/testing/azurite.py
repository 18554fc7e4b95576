"""A local Azure Blob stand-in for tests: Azurite (the Azure Storage emulator) in a subprocess on loopback.

Azurite comes from the npm registry, installed on first use into ``<repo>/.azurite`` by
``scripts/azurite.sh`` (like the HSDS virtualenv). Each server gets an account of its own,
with a key made up at start (``AZURITE_ACCOUNTS``), so no key lives in the repository, and
listens on 127.0.0.1 on a port the kernel picks. Its storage folder is private and removed on
stop.

Example::

    with AzuriteServer() as az:
        az.create_container("hsdstest")
        cfg = az.config()   # {"azure_connection_string": ...}
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Final, Self

from .._proc import ChildProcess

__all__ = ["AzuriteServer", "AzuriteUnavailable", "ensure_azurite"]

_REPO: Final = Path(__file__).resolve().parents[2]
_SCRIPT: Final = _REPO / "scripts" / "azurite.sh"
_READY: Final = "Azurite Blob service successfully listens on "


class AzuriteUnavailable(RuntimeError):
    """Azurite cannot be installed here (no npm, or its registry is unreachable)."""


def ensure_azurite(folder: str | os.PathLike[str] | None = None) -> Path:
    """Install Azurite if needed (``scripts/azurite.sh``); return the ``azurite-blob`` program.

    Raises
    ------
    AzuriteUnavailable
        No npm, or the npm registry cannot be reached (exit status 3 of the script).
    RuntimeError
        Any other failure, with the script's output.
    """
    folder = folder or os.environ.get("AZURITE_DIR") or _REPO / ".azurite"
    proc = subprocess.run(["bash", str(_SCRIPT), str(folder)], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode == 3:
        raise AzuriteUnavailable(proc.stderr.strip()[-500:])
    if proc.returncode != 0:
        raise RuntimeError(f"{_SCRIPT} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


class AzuriteServer:
    """Azurite's blob service on 127.0.0.1 with an account of its own; use as a context manager."""

    def __init__(self, account: str = "hsdsbackends") -> None:
        self.account = account
        self.key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.endpoint_url = ""
        self._child: ChildProcess | None = None
        self._dir: str | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint={self.endpoint_url}/{self.account};"
        )

    def config(self) -> dict[str, Any]:
        """Config keys that point :class:`~hsds_backends.storage.azure.AzureStorage` here."""
        return {"azure_connection_string": self.connection_string}

    def start(self) -> Self:
        program = ensure_azurite()
        self._dir = tempfile.mkdtemp(prefix="azurite-")
        env = dict(os.environ, AZURITE_ACCOUNTS=f"{self.account}:{self.key}")
        argv = [str(program), "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", self._dir, "--silent", "--skipApiVersionCheck"]
        self._child = ChildProcess(argv, env=env, name="azurite", ready_prefix=_READY, log_path=os.path.join(self._dir, "azurite.log"))
        self.endpoint_url = self._child.start(timeout=60).rstrip("/")
        return self

    def create_container(self, name: str) -> None:
        """Create container (bucket) ``name`` (test set-up only; reads never do this)."""
        import asyncio

        from azure.storage.blob.aio import BlobServiceClient

        async def go() -> None:
            async with BlobServiceClient.from_connection_string(self.connection_string) as svc:
                await svc.create_container(name)

        asyncio.run(go())

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop(3.0, sig=(signal.SIGINT, signal.SIGTERM))  # Azurite closes on SIGINT
            self._child = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
