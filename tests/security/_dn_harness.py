"""Real ``hsds-backends dn serve`` processes and raw HTTP to them, for the DN's security tests.

Requests go through :mod:`http.client` with every header under the test's control (a
foreign ``Host``, ``text/plain``, no token), as a hostile local user or a web page doing
DNS rebinding would send them.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A made-up dataset id (nothing is stored under it unless a test writes it).
DSET_ID = "d-11111111-22222222-3333-444444-555555"
CHUNK0 = "c-11111111-22222222-3333-444444-555555_0"

#: Environment variables that would configure a DN behind a test's back.
_CONFIG_ENV = ("ROOT_DIR", "AWS_S3_GATEWAY", "BUCKET_NAME", "ALLOWED_BUCKETS", "CHUNK_BYTES_LIMIT")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any hsds-backends or storage settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSDS_BACKENDS_") and k not in _CONFIG_ENV}
    env.update(extra)
    return env


def contiguous_ref(n: int, *, base: str = "H5T_STD_U8LE", dims: list[int] | None = None) -> dict[str, Any]:
    """Dataset JSON of an ``H5D_CONTIGUOUS_REF`` dataset of ``n`` elements (its file named by each task's s3path)."""
    shape = dims or [n]
    return {
        "id": DSET_ID,
        "type": {"class": "H5T_INTEGER", "base": base},
        "shape": {"class": "H5S_SIMPLE", "dims": shape},
        "layout": {"class": "H5D_CONTIGUOUS_REF", "dims": shape},
    }


def batch(dset: dict[str, Any] | str, *tasks: dict[str, Any]) -> bytes:
    """A ``/batch`` body: one dataset, ``tasks`` referring to it."""
    text = dset if isinstance(dset, str) else json.dumps(dset)
    return json.dumps({"dsets": [text], "tasks": [{**t, "dset": 0} for t in tasks], "tag": "t"}).encode()


@dataclass
class DN:
    """A running DN on 127.0.0.1 (stop it with :meth:`stop`)."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int

    @property
    def loopback_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        host: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with exactly these headers: ``Host`` (default loopback), the body's length, ``headers``."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host if host is not None else self.loopback_host)
            if token is not None:
                conn.putheader("Authorization", f"Bearer {token}")
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if body or method == "POST":
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def proc_status_kb(self, field: str) -> int:
        """A ``/proc/<pid>/status`` figure in kB (``VmHWM``: peak resident memory, ``VmRSS``: now)."""
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def dn_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hsds_backends.cli", "dn", "serve", *args]


def start_dn(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> DN:
    """Start ``hsds-backends dn serve --port 0 *args`` on 127.0.0.1; wait for ``READY``."""
    proc = subprocess.Popen(
        dn_command("--port", "0", "--workers", "2", *args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=env if env is not None else clean_env(), cwd=cwd,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY http://"):
        proc.kill()
        raise AssertionError(f"DN did not start: {line!r} {proc.stderr.read().decode()[-2000:]}")
    hostport = line.split()[1][len("http://") :]
    host, _, port = hostport.rpartition(":")
    return DN(proc, host, int(port))


def run_dn(*args: str, env: dict[str, str] | None = None, cwd: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``hsds-backends dn serve *args`` expecting it to refuse to start (a DN that starts is killed)."""
    proc = subprocess.Popen(
        dn_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env=env if env is not None else clean_env(), cwd=cwd,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the DN started instead of refusing: {out!r} {err!r}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def json_message(body: bytes) -> str:
    """The ``message`` of a DN's JSON error answer."""
    doc = json.loads(body)
    assert isinstance(doc, dict), doc
    return str(doc["message"])


def frames(body: bytes) -> list[tuple[int, int, bytes]]:
    """The ``(index, status, payload)`` frames of a ``/batch`` answer (docs: hsds_backends_containers._batch)."""
    from hsds_backends_containers._batch import FRAME

    out = []
    pos = 0
    while pos < len(body):
        j, status, n, _, _ = FRAME.unpack_from(body, pos)
        pos += FRAME.size
        out.append((j, status, body[pos : pos + n]))
        pos += n
    return out


def write_one_dataset(root: Path, domain: str, h5path: str, arr: Any, chunks: tuple[int, ...]) -> dict[str, Any]:
    """Write ``arr`` as dataset ``h5path`` of ``domain`` under ``root``; return ``{"root", "meta"}``."""
    import asyncio

    from hsds_backends.storage import PosixStorage
    from hsds_backends.writer import Writer

    async def write() -> Any:
        return await Writer(PosixStorage(root), "hsdstest").create_dataset(domain, h5path, arr, chunks=chunks)

    return {"root": str(root), "meta": asyncio.run(write())}


def serving(*args: str) -> Iterator[DN]:
    """For module fixtures: ``yield from serving("--root-dir", root)`` starts a DN and stops it after."""
    node = start_dn(*args)
    try:
        yield node
    finally:
        node.stop()
