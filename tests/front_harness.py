"""A real HSDS behind HSDS fronts (``HsdsDeployment``), driven from tests.

The deployment runs on an event loop in a background thread, so a test can read through
h5pyd (a subprocess in the HSDS venv), talk to the fronts and DNs directly over their unix
sockets, kill children, and stop everything at the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hsds_backends_containers.front import collect_stats
from hsds_backends_containers.launcher import HsdsDeployment

try:
    import hsds_harness as H
except ImportError:  # tests/ turned into a package
    from tests import hsds_harness as H

#: Backend settings that keep one deployment small on a 2-core machine.
BACKEND_CONFIG: dict[str, dict[str, Any]] = {
    "inline": {},
    "lambda": {"aws_lambda_local_workers": 2},
    "dask": {"dask_n_workers": 1},
    "containers": {"dn_count": 1},
}


class Deployment:
    """``HsdsDeployment`` on a loop thread, with helpers for tests."""

    def __init__(self, root_dir: str | os.PathLike[str] | None, *, backend: str = "inline", bucket: str = "hsdstest", dn_count: int = 2,
                 config: dict[str, Any] | None = None, fronts: bool = True, restart_fronts: bool = True,
                 password_file: str | None = None, stop_on_error: bool = True) -> None:
        cfg = {"bucket_name": bucket, "backend": backend, **BACKEND_CONFIG.get(backend, {}), **(config or {})}
        if root_dir is not None:
            cfg["root_dir"] = str(root_dir)
        venv = H.ensure_hsds_venv()
        self.dep = HsdsDeployment(cfg, dn_count=dn_count, port=0, hsds_node=venv / "bin" / "hsds-node", fronts=fronts,
                                 password_file=password_file)
        self.dep.restart_fronts = restart_fronts
        self.backend = backend
        self.bucket = bucket
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hsds-deployment", daemon=True)
        self._stop: asyncio.Event | None = None
        self._supervisor: Any = None
        self.supervise_error: BaseException | None = None
        self.stop_on_error = stop_on_error
        """Stop everything when the supervisor gives up, as ``hsds serve`` does."""
        self.work = Path(tempfile.mkdtemp(prefix="hsdsc-", dir="/tmp"))

    def call(self, coro: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> Deployment:
        self._thread.start()

        async def go() -> None:
            self._stop = asyncio.Event()
            await self.dep.start()
            self._supervisor = asyncio.ensure_future(self._supervise())

        self.call(go())
        return self

    async def _supervise(self) -> None:
        assert self._stop is not None
        try:
            await self.dep.supervise(self._stop, interval=0.1)
        except BaseException as exc:  # noqa: BLE001 - a test asks for it
            self.supervise_error = exc
            if self.stop_on_error:
                await self.dep.stop()

    def stop(self) -> None:
        async def go() -> None:
            if self._stop is not None:
                self._stop.set()
            if self._supervisor is not None:
                await self._supervisor
            await self.dep.stop()

        try:
            self.call(go())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            import shutil

            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- clients
    @property
    def password(self) -> str:
        assert self.dep.password_file is not None
        return Path(self.dep.password_file).read_text().split(":", 1)[1].strip()

    def client(self, username: str | None = None) -> H.H5pydClient:
        assert self.dep.endpoint is not None
        return H.H5pydClient(self.dep.endpoint, username or self.dep.username, self.password, self.bucket, self.work / "client")

    def stats(self) -> dict[str, Any]:
        """What ``hsds stats`` prints: ``{"fronts": [per listener], "processes": [per front process]}``."""
        doc: dict[str, Any] = asyncio.run(collect_stats(self.dep.front_urls))
        return doc

    @property
    def front_names(self) -> list[str]:
        return sorted(n for n in self.dep.children if n.startswith("front"))

    def totals(self) -> dict[str, Any]:
        """The fronts' counters summed."""
        out: dict[str, Any] = {"by_backend": {}, "forwarded": 0, "fallbacks": 0, "dirty_hits": 0, "passed_through": 0, "failovers": 0, "data_errors": 0}
        for f in self.stats()["fronts"]:
            for k, v in f["chunk_reads_by_backend"].items():
                out["by_backend"][k] = out["by_backend"].get(k, 0) + v
            for k in ("fallbacks", "dirty_hits", "passed_through", "failovers", "data_errors"):
                out[k] += f[k]
            out["forwarded"] += sum(f["forwarded_reads"].values())
        return out

    def front_socket(self, i: int) -> str:
        return H.socket_path_from_url(self.dep.front_urls[i])

    def dn_socket(self, i: int) -> str:
        return H.socket_path_from_url(self.dep.dn_urls[i])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        child = self.dep.children[name]
        assert child.pid is not None
        os.kill(child.pid, sig)
        return child.pid

    def child_pids(self, name: str) -> list[int]:
        """Processes started by child ``name`` (the backends' own processes under a front)."""
        pid = self.dep.children[name].pid
        out: list[int] = []
        todo = [pid]
        while todo:
            p = todo.pop()
            for task in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}/task") else []:
                try:
                    with open(f"/proc/{p}/task/{task}/children") as f:
                        kids = [int(x) for x in f.read().split()]
                except OSError:
                    kids = []
                out.extend(kids)
                todo.extend(kids)
        return out


def admin_client(dep: Deployment) -> H.H5pydClient:
    return dep.client()


def ensure_home(client: H.H5pydClient) -> str:
    """Create ``/home/`` and ``/home/<user>/`` (the admin may); return the home folder."""
    client.run_h5pyd(
        """
for folder in ("/home/", "/home/%s/" % kw["username"]):
    try:
        h5pyd.Folder(folder, mode="r", **kw).close()
    except (IOError, OSError):
        h5pyd.Folder(folder, mode="w", **kw).close()
"""
    )
    return f"/home/{client.username}/"


def wait_until(check: Any, timeout: float = 30.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(interval)


#: An h5pyd script: write ``args["name"]`` of ``args["shape"]`` (values ``arange % args["mod"]`` as
#: ``args["dtype"]``, chunks ``args["chunks"]``, shuffle + gzip) into a new ``args["domain"]``; save it to ``args["out"]``.
WRITE_GRID = r"""
f = h5pyd.File(args["domain"], "w", **kw)
shape = tuple(args["shape"])
a = (np.arange(int(np.prod(shape)), dtype="<i8").reshape(shape) % args["mod"]).astype(args["dtype"])
f.create_dataset(args["name"], data=a, chunks=tuple(args["chunks"]), compression="gzip", shuffle=True)
f.close()
np.save(args["out"], a)
"""
