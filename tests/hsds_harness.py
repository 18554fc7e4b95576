"""Harness that runs REAL HSDS (PyPI ``hsds`` + ``h5pyd``) for interop tests.

HSDS pins its own aiohttp/numcodecs, so it lives in a separate virtualenv
(``<repo>/.venv-hsds``, built by ``scripts/hsds_venv.sh``); this module runs
in the project's main venv and only talks to that venv through subprocesses.

Network rule: HSDS is started with ``--socket_dir`` only, so the service node
and the data nodes listen on unix sockets; nothing binds TCP (HSDS's TCP mode
listens on all interfaces regardless of ``--host``).

Public API (see the docstrings for details)::

    ensure_hsds_venv(venv_dir=None) -> Path
    HsdsServer(root_dir, *, bucket="hsdstest", username="test_user1",
               password="test", dn_count=2, socket_dir=None, venv=None,
               config=None, log_level="INFO", start_timeout=60.0)
        .start() / .stop() / with HsdsServer(...) as server: ...
        .endpoint  .sn_socket  .dn_urls  .dn_sockets  .root_dir  .bucket
        .bucket_dir  .log_path  .python  .about()  .request(...)  .log_tail()
        .client_env()  .run_h5pyd(script, *, timeout=..., **json_args) -> dict
    write_interop_domain(server, domain=INTEROP_DOMAIN, out_dir=None) -> dict
    h5pyd_read(server, domain, h5path, select_expr) -> numpy.ndarray
    h5pyd_read_many(server, domain, [(h5path, select_expr), ...]) -> list
    obj_key(obj_id) / obj_json_path(server, obj_id) / domain_json_path(server, domain)
    chunk_keys_on_disk(server, dset_id) -> list[str]
    wait_for_paths(paths, timeout=20.0)

The pytest marker ``hsds`` is registered by ``pytest_configure`` below when
this module is loaded as a plugin (``pytest_plugins = ["hsds_harness"]`` or
``-p hsds_harness``); otherwise register it in the pytest config.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import inspect
import itertools
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import textwrap
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from hsds_backends._proc import ChildProcess

try:  # the harness is usable outside pytest too (benchmarks, scripts)
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_SCRIPT = REPO_ROOT / "scripts" / "hsds_venv.sh"
DEFAULT_VENV = REPO_ROOT / ".venv-hsds"
INTEROP_DOMAIN = "/home/test_user1/interop.h5"

# HSDS (app.py) refuses socket dirs longer than this (docs/hsds-format.md §7);
# AF_UNIX paths are limited to 107 bytes anyway.
MAX_SOCKET_DIR_LEN = 63

# env vars that would redirect HSDS / h5pyd away from what the harness sets up
_SCRUB_ENV = {
    "CONFIG_DIR", "CONFIG_OVERRIDE_PATH", "LOG_LEVEL",
    "HS_ENDPOINT", "HS_USERNAME", "HS_PASSWORD", "HS_API_KEY", "HS_BUCKET",
    "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP",
}


class HsdsError(RuntimeError):
    """HSDS could not be started / a client script failed."""


class HsdsUnavailable(RuntimeError):
    """The HSDS venv cannot be built because the package registry is unreachable
    (only raised outside pytest; under pytest this becomes a skip)."""


def pytest_configure(config):  # pragma: no cover - exercised by pytest
    config.addinivalue_line(
        "markers", "hsds: interop test that runs a real HSDS server (slow, needs .venv-hsds)"
    )


# --------------------------------------------------------------------------
# venv
# --------------------------------------------------------------------------

_venv_lock = threading.Lock()
_venv_cache: dict[str, Path] = {}


def ensure_hsds_venv(venv_dir: str | os.PathLike | None = None) -> Path:
    """Build (idempotently) the HSDS virtualenv and return its path.

    Runs ``scripts/hsds_venv.sh`` (a quick no-op once built).  If pip cannot
    reach the package registry (script exit 3) the current test is skipped
    (or HsdsUnavailable is raised outside pytest); any other failure raises
    HsdsError with the script's output.  ``$HSDS_VENV`` overrides the default
    location when ``venv_dir`` is not given.
    """
    if venv_dir is None:
        venv_dir = os.environ.get("HSDS_VENV") or DEFAULT_VENV
    venv = Path(venv_dir).absolute()
    key = str(venv)
    with _venv_lock:
        if key in _venv_cache:
            return _venv_cache[key]
        proc = subprocess.run(
            ["bash", str(VENV_SCRIPT), str(venv)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if proc.returncode == 3:
            msg = f"HSDS venv unavailable (package registry unreachable): {proc.stderr.strip()[-800:]}"
            if pytest is not None:
                pytest.skip(msg)
            raise HsdsUnavailable(msg)
        if proc.returncode != 0:
            raise HsdsError(
                f"{VENV_SCRIPT} failed (rc={proc.returncode}):\n"
                f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
            )
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        path = Path(lines[-1]) if lines else venv
        if not (path / "bin" / "hsds").exists():
            raise HsdsError(f"{VENV_SCRIPT} reported {path} but {path}/bin/hsds is missing")
        _venv_cache[key] = path
        return path


# --------------------------------------------------------------------------
# unix-socket HTTP (stdlib only, so the main venv needs no extra packages)
# --------------------------------------------------------------------------

def socket_path_from_url(url: str) -> str:
    """``http+unix://%2Ftmp%2Fx%2Fsn_1.sock[/path]`` -> ``/tmp/x/sn_1.sock``."""
    if not url.startswith("http+unix://"):
        raise ValueError(f"not a http+unix url: {url}")
    rest = url[len("http+unix://"):]
    host = rest.split("/", 1)[0]
    return urllib.parse.unquote(host)


def socket_url_from_path(path: str | os.PathLike) -> str:
    return "http+unix://" + str(path).replace("/", "%2F")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._unix_path)
        except BaseException:
            s.close()
            raise
        self.sock = s


def unix_http_request(
    sock_path: str | os.PathLike,
    method: str,
    path: str,
    *,
    params: dict | None = None,
    body: bytes | str | dict | list | None = None,
    headers: dict | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict, bytes]:
    """One HTTP request over a unix socket -> (status, headers, body bytes)."""
    if params:
        path = path + ("&" if "?" in path else "?") + urllib.parse.urlencode(params)
    hdrs = {"Host": "localhost"}
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        hdrs["Authorization"] = f"Basic {token}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    elif isinstance(body, str):
        body = body.encode()
    if headers:
        hdrs.update(headers)
    conn = _UnixHTTPConnection(str(sock_path), timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict(resp.getheaders()), data
    finally:
        conn.close()


# --------------------------------------------------------------------------
# storage keys (docs/hsds-format.md §1.2)
# --------------------------------------------------------------------------

def _id_hex(obj_id: str) -> str:
    h = obj_id.split("-", 1)[1].split("_", 1)[0].replace("-", "")
    if len(h) != 32 or not re.fullmatch(r"[0-9a-fA-F]{32}", h):
        raise ValueError(f"not a schema-v2 object id: {obj_id}")
    return h


def obj_key(obj_id: str) -> str:
    """Bucket-relative storage key of a v2 group/dataset/datatype JSON."""
    h = _id_hex(obj_id)
    prefix = f"db/{h[0:8]}-{h[8:16]}"
    kind = obj_id[0]
    if kind == "g" and h[16:] == "".join("%x" % ((int(c, 16) + 8) % 16) for c in h[:16]):
        return f"{prefix}/.group.json"  # root group
    sub = f"{h[16:20]}-{h[20:26]}-{h[26:32]}"
    name = {"g": ".group.json", "d": ".dataset.json", "t": ".datatype.json"}[kind]
    return f"{prefix}/{kind}/{sub}/{name}"


def obj_json_path(server: "HsdsServer", obj_id: str) -> Path:
    return server.bucket_dir / obj_key(obj_id)


def domain_json_path(server: "HsdsServer", domain: str) -> Path:
    return server.bucket_dir / domain.strip("/") / ".domain.json"


def chunk_keys_on_disk(server: "HsdsServer", dset_id: str) -> list[str]:
    """Names of the chunk objects stored for a dataset (e.g. ``0_3``), sorted."""
    d = obj_json_path(server, dset_id).parent
    if not d.is_dir():
        return []
    out = []
    for p in d.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            out.append(str(p.relative_to(d)))
    return sorted(out)


def wait_for_paths(paths: Iterable[str | os.PathLike], timeout: float = 20.0) -> None:
    """Wait until all paths exist (DNs write to storage lazily, ~1 s sync)."""
    paths = [Path(p) for p in paths]
    deadline = time.monotonic() + timeout
    while True:
        missing = [p for p in paths if not p.exists()]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise HsdsError(f"timed out after {timeout}s waiting for {len(missing)} file(s), e.g. {missing[:5]}")
        time.sleep(0.1)


# --------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------

_live_servers: "set[HsdsServer]" = set()


def _stop_all_at_exit():
    for s in list(_live_servers):
        try:
            s.stop()
        except Exception:
            pass


atexit.register(_stop_all_at_exit)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except FileNotFoundError:
                pass
    except FileNotFoundError:
        pass
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def _jd(o):
    """JSON for what scripts exchange: numpy scalars and arrays, bytes (latin-1), sets, tuples, paths."""
    import os as _os

    import numpy as _np

    for types, to_json in ((_np.generic, _np.generic.item), (_np.ndarray, _np.ndarray.tolist), ((set, tuple), list), (_os.PathLike, _os.fspath)):
        if isinstance(o, types):
            return to_json(o)
    if isinstance(o, bytes):
        return o.decode("latin-1")
    raise TypeError(f"not JSON serialisable: {type(o)}")


_json_default = _jd


_H5PYD_PRELUDE = r'''
import json as _json, os as _os, sys as _sys
import numpy as np
import h5pyd
with open(_sys.argv[1]) as _f:
    args = _json.load(_f)
kw = dict(endpoint=_os.environ["HS_ENDPOINT"], username=_os.environ["HS_USERNAME"],
          password=_os.environ["HS_PASSWORD"], bucket=_os.environ["HS_BUCKET"])
%(jd)sdef emit(obj):
    """Return obj (JSON) to the harness."""
    with open(_sys.argv[2], "w") as _f:
        _json.dump(obj, _f, default=_jd)
# ---- user script ----
'''


class HsdsServer:
    """A real HSDS (SN + ``dn_count`` DNs) on unix sockets with posix storage.

    root_dir    existing absolute directory; the bucket is ``root_dir/bucket``
    bucket      bucket name (also set as the server's default bucket)
    socket_dir  where ``sn_1.sock``/``dn_N.sock``, ``hs.log`` (node logs),
                ``hsds.out`` (launcher output), ``config/override.yml`` and
                scratch files go; default: a fresh short dir under /tmp that
                is removed by stop() (pass keep_run_dir=True to keep it)
    config      extra HSDS config keys (written to override.yml), e.g.
                ``{"max_chunks_per_folder": 4}``
    """

    def __init__(
        self,
        root_dir: str | os.PathLike,
        *,
        bucket: str = "hsdstest",
        username: str = "test_user1",
        password: str = "test",
        dn_count: int = 2,
        socket_dir: str | os.PathLike | None = None,
        venv: str | os.PathLike | None = None,
        config: dict | None = None,
        log_level: str = "INFO",
        start_timeout: float = 60.0,
        keep_run_dir: bool = False,
    ):
        root = Path(root_dir)
        if not root.is_absolute():
            raise ValueError(f"root_dir must be absolute: {root_dir}")
        if not root.is_dir():
            raise ValueError(f"root_dir must be an existing directory: {root_dir}")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", bucket):
            raise ValueError(f"invalid bucket name: {bucket!r}")
        if dn_count < 1:
            raise ValueError("dn_count must be >= 1")
        self.root_dir, self.bucket, self.dn_count = root, bucket, dn_count
        self.username, self.password = username, password
        self.config = dict(config or {})
        self.log_level, self.start_timeout = log_level, start_timeout
        self._venv_arg, self._socket_dir_arg, self._keep_run_dir = venv, socket_dir, keep_run_dir
        self._own_socket_dir = False
        self._proc: subprocess.Popen | None = None
        self._child: ChildProcess | None = None
        self._child_pids: list[int] = []
        self._script_counter = itertools.count()
        self.venv: Path | None = None
        self.socket_dir: Path | None = None
        self.start_seconds: float | None = None

    # ---- paths / urls ---------------------------------------------------
    @property
    def bucket_dir(self) -> Path:
        return self.root_dir / self.bucket

    @property
    def python(self) -> Path:
        assert self.venv is not None, "server not started"
        return self.venv / "bin" / "python"

    @property
    def sn_socket(self) -> Path:
        return self.socket_dir / "sn_1.sock"

    @property
    def dn_sockets(self) -> list[Path]:
        return [self.socket_dir / f"dn_{i + 1}.sock" for i in range(self.dn_count)]

    @property
    def endpoint(self) -> str:
        """The SN URL h5pyd accepts (``http+unix://%2F…%2Fsn_1.sock``)."""
        return socket_url_from_path(self.sn_socket)

    @property
    def dn_urls(self) -> list[str]:
        """DN URLs in node-number order (as HSDS passes them via --dn_urls);
        the socket paths are in ``dn_sockets``."""
        return [socket_url_from_path(p) for p in self.dn_sockets]

    @property
    def log_path(self) -> Path:
        """Node logs (SN + DNs), written by the ``hsds`` launcher about once a second."""
        return self.socket_dir / "hs.log"

    @property
    def launcher_log_path(self) -> Path:
        return self.socket_dir / "hsds.out"

    @property
    def pids(self) -> dict:
        return {"hsds": self._proc.pid if self._proc else None, "nodes": list(self._child_pids)}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        parts = []
        for p in (self.launcher_log_path, self.log_path):
            try:
                lines = p.read_text(errors="replace").splitlines()[-n:]
            except (OSError, TypeError):
                continue
            parts.append(f"--- {p} (last {len(lines)} lines) ---\n" + "\n".join(lines))
        return "\n".join(parts) or "(no logs)"

    # ---- lifecycle -------------------------------------------------------
    def __enter__(self) -> "HsdsServer":
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _setup_socket_dir(self) -> Path:
        if self.socket_dir is not None and self.socket_dir.is_dir():
            d = self.socket_dir  # restart: reuse
        elif self._socket_dir_arg is None:
            d = Path(tempfile.mkdtemp(prefix="hsds-", dir="/tmp"))
            self._own_socket_dir = True
        else:
            d = Path(self._socket_dir_arg).absolute()
            d.mkdir(parents=True, exist_ok=True)
        if len(str(d)) > MAX_SOCKET_DIR_LEN:
            raise ValueError(
                f"socket_dir {d} is {len(str(d))} chars; HSDS/AF_UNIX need <= {MAX_SOCKET_DIR_LEN}"
            )
        # stale sockets from an earlier run would make HSDS's own readiness
        # check (file exists) pass before the nodes have bound
        for p in d.iterdir():
            if re.fullmatch(r"(sn|dn)_\d+\.sock", p.name):
                try:
                    if stat.S_ISSOCK(p.lstat().st_mode):
                        p.unlink()
                except FileNotFoundError:
                    pass
        return d

    def _config_keys(self) -> set[str]:
        keys: set[str] = set()
        for cfg in self.venv.glob("lib/python3*/site-packages/admin/config/config.yml"):
            for line in cfg.read_text().splitlines():
                m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*:", line)
                if m:
                    keys.add(m.group(1))
        return keys

    def _base_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
        for k in self._config_keys():  # HSDS reads env overrides for every config key
            env.pop(k.upper(), None)
        home = self.socket_dir / "home"
        home.mkdir(exist_ok=True)
        env.update(
            HOME=str(home),  # no ~/.hscfg for hsds (UserConfig) nor h5pyd
            PYTHONUSERBASE=str(home / "userbase"),  # hsds looks for node scripts there first
            PYTHONNOUSERSITE="1",
            PYTHONUNBUFFERED="1",
            PATH=f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        )
        return env

    def start(self) -> "HsdsServer":
        if self._proc is not None:
            raise HsdsError("server already started")
        self.venv = Path(self._venv_arg).absolute() if self._venv_arg else ensure_hsds_venv()
        hsds_exe = self.venv / "bin" / "hsds"
        if not hsds_exe.exists():
            raise HsdsError(f"{hsds_exe} not found (run scripts/hsds_venv.sh {self.venv})")
        self.socket_dir = self._setup_socket_dir()
        self.bucket_dir.mkdir(exist_ok=True)

        cfg_dir = self.socket_dir / "config"
        cfg_dir.mkdir(exist_ok=True)
        override = {"bucket_name": self.bucket, "root_dir": str(self.root_dir), **self.config}
        # JSON is valid YAML
        (cfg_dir / "override.yml").write_text(
            "\n".join(f"{k}: {json.dumps(v, default=_json_default)}" for k, v in override.items()) + "\n"
        )

        cmd = [
            str(hsds_exe),
            "--root_dir", str(self.root_dir),
            "--bucket_name", self.bucket,
            "--hs_username", self.username,
            "--hs_password", self.password,
            "--count", str(self.dn_count),
            "--socket_dir", str(self.socket_dir),
            "--logfile", str(self.log_path),
            "--config_dir", str(cfg_dir),
            "--loglevel", self.log_level,
        ]
        t0 = time.monotonic()
        # its own session: a ^C in the test runner does not hit it; the core's parent-death
        # signal: it gets SIGTERM if the test runner dies
        self._child = ChildProcess(
            cmd, env=self._base_env(), cwd=str(self.socket_dir), name="hsds launcher",
            ready_prefix=None, log_path=str(self.launcher_log_path),
        )
        self._child.start()
        self._proc = self._child.proc
        _live_servers.add(self)
        try:
            self._wait_ready(t0)
        except HsdsError as e:
            self.stop(keep_run_dir=True)
            raise HsdsError(f"{e}\n(run dir kept for inspection: {self.socket_dir})") from None
        except BaseException:
            self.stop(keep_run_dir=True)
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def restart(self) -> "HsdsServer":
        """Stop and start again on the same root_dir and sockets (cold DN
        caches: later reads come from what is on disk)."""
        self.stop(keep_run_dir=True)
        return self.start()

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.start_timeout
        last_err = "no answer yet"
        while True:
            if self._proc.poll() is not None:
                raise HsdsError(
                    f"hsds exited with code {self._proc.returncode} during startup\n{self.log_tail()}"
                )
            kids = _children(self._proc.pid)
            if kids:
                self._child_pids = sorted(set(self._child_pids) | set(kids))
            if self.sn_socket.exists():
                try:
                    about = self.about(timeout=5)
                    state = about.get("state")
                    if state == "READY" and all(p.exists() for p in self.dn_sockets):
                        self._child_pids = sorted(set(self._child_pids) | set(_children(self._proc.pid)))
                        return
                    last_err = f"/about state={state}"
                except (OSError, http.client.HTTPException, ValueError) as e:
                    last_err = f"/about: {type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise HsdsError(
                    f"HSDS not ready after {self.start_timeout:.0f}s ({last_err})\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self, keep_run_dir: bool | None = None) -> None:
        """SIGTERM each node process, then the ``hsds`` launcher; SIGKILL
        leftovers; remove socket files (and our temp socket dir)."""
        proc = self._proc
        if proc is not None:
            pids = set(self._child_pids) | set(_children(proc.pid))
            sock_dir = str(self.socket_dir)
            # only signal processes that are still ours (pid reuse guard)
            nodes = [p for p in sorted(pids) if "hsds-node" in _cmdline(p) and sock_dir.replace("/", "%2F") in _cmdline(p)]
            for pid in nodes:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while any(_pid_alive(p) for p in nodes) and time.monotonic() < deadline:
                time.sleep(0.05)
            # The launcher turns SIGINT into a clean shutdown (final drain of
            # the node output into hs.log); it ignores SIGINT if it inherited
            # SIG_IGN, so fall back to SIGTERM, then SIGKILL.
            if self._child is not None:
                self._child.stop(5.0, sig=(signal.SIGINT, signal.SIGTERM))
                self._child = None
            for pid in nodes:
                if _pid_alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self._proc = None
            self._child_pids = []
        _live_servers.discard(self)
        if self.socket_dir is not None and self.socket_dir.is_dir():
            for p in [self.sn_socket, *self.dn_sockets]:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
            keep = self._keep_run_dir if keep_run_dir is None else keep_run_dir
            if self._own_socket_dir and not keep:
                shutil.rmtree(self.socket_dir, ignore_errors=True)

    # ---- REST ------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        node: str | int = "sn",
        params: dict | None = None,
        body: Any = None,
        headers: dict | None = None,
        auth: bool = True,
        timeout: float = 30.0,
    ) -> tuple[int, dict, bytes]:
        """Raw HTTP to the SN (``node="sn"``, basic auth) or to DN number
        ``node`` (0-based, no auth: DNs do not check it)."""
        if node == "sn":
            sock = self.sn_socket
        else:
            sock = self.dn_sockets[int(node)]
            auth = False
        return unix_http_request(
            sock, method, path, params=params, body=body, headers=headers,
            auth=(self.username, self.password) if auth else None, timeout=timeout,
        )

    def about(self, timeout: float = 10.0) -> dict:
        status, _, data = self.request("GET", "/about", timeout=timeout)
        if status != 200:
            raise ValueError(f"/about -> {status}: {data[:200]!r}")
        return json.loads(data)

    # ---- h5pyd in the HSDS venv -----------------------------------------
    def client_env(self) -> dict:
        """Environment for a client process in the HSDS venv."""
        env = self._base_env()
        env.update(
            HS_ENDPOINT=self.endpoint, HS_USERNAME=self.username,
            HS_PASSWORD=self.password, HS_BUCKET=self.bucket,
        )
        return env

    def run_h5pyd(self, script: str, *, timeout: float = 120.0, **json_args) -> dict:
        """Run a Python snippet with the HSDS venv's interpreter.

        In the snippet: ``args`` (the JSON-decoded keyword arguments), ``kw``
        (endpoint/username/password/bucket for h5pyd.File/Folder), ``np``,
        ``h5pyd`` and ``emit(obj)``.  The result is what ``emit`` was given,
        else the last non-empty stdout line parsed as JSON, else ``{}``.
        A non-zero exit raises HsdsError with the traceback and the log tail.
        """
        if not self.running:
            raise HsdsError("server is not running")
        return _run_script(self.python, self.socket_dir, self.client_env(), self._script_counter, script, timeout, self.log_tail, json_args)


def _run_script(python, work_root, env, counter, script: str, timeout: float, log_tail, json_args: dict) -> dict:
    work = Path(work_root) / "scripts" / f"{next(counter):04d}"
    work.mkdir(parents=True, exist_ok=True)
    args_path, result_path, script_path = work / "args.json", work / "result.json", work / "script.py"
    args_path.write_text(json.dumps(json_args, default=_json_default))
    script_path.write_text(_H5PYD_PRELUDE.replace("%(jd)s", inspect.getsource(_jd)) + textwrap.dedent(script))
    try:
        proc = subprocess.run(
            [str(python), str(script_path), str(args_path), str(result_path)],
            cwd=str(work), env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise HsdsError(f"h5pyd script timed out after {timeout}s ({script_path})\n{log_tail(30)}") from e
    if proc.returncode != 0:
        raise HsdsError(
            f"h5pyd script failed (rc={proc.returncode}, {script_path}):\n"
            f"{proc.stderr[-6000:]}\nstdout: {proc.stdout[-1000:]}\n{log_tail(30)}"
        )
    if result_path.exists():
        return json.loads(result_path.read_text())
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        return {}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise HsdsError(f"h5pyd script output is not JSON: {lines[-1][:500]!r}") from e


class H5pydClient:
    """h5pyd (in the HSDS venv) against any HSDS endpoint: what ``HsdsServer.run_h5pyd`` offers, for
    deployments the harness did not start (``hsds-backends hsds serve``). Usable with
    :func:`h5pyd_read_many` (it has ``run_h5pyd`` and ``socket_dir``)."""

    def __init__(self, endpoint: str, username: str, password: str, bucket: str, work_dir: str | os.PathLike,
                 venv: str | os.PathLike | None = None, log_tail=None):
        self.endpoint, self.username, self.password, self.bucket = endpoint, username, password, bucket
        self.socket_dir = Path(work_dir)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.venv = Path(venv) if venv else ensure_hsds_venv()
        self._counter = itertools.count()
        self._log_tail = log_tail or (lambda n=30: "")

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def client_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
        home = self.socket_dir / "home"
        home.mkdir(exist_ok=True)
        env.update(
            HOME=str(home), PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1",
            HS_ENDPOINT=self.endpoint, HS_USERNAME=self.username, HS_PASSWORD=self.password, HS_BUCKET=self.bucket,
        )
        return env

    def log_tail(self, n: int = 30) -> str:
        return self._log_tail(n)

    def run_h5pyd(self, script: str, *, timeout: float = 120.0, **json_args) -> dict:
        return _run_script(self.python, self.socket_dir, self.client_env(), self._counter, script, timeout, self._log_tail, json_args)


# --------------------------------------------------------------------------
# reading through h5pyd
# --------------------------------------------------------------------------

_READ_SCRIPT = r'''
f = h5pyd.File(args["domain"], "r", **kw)
out = []
for i, (h5path, expr) in enumerate(args["reads"]):
    d = f[h5path]
    res = eval(expr, {"np": np, "h5pyd": h5pyd, "f": f, "d": d})
    if not isinstance(res, (np.ndarray, np.generic, bytes, str, int, float, list, tuple)) \
            and hasattr(res, "__next__"):
        # Table.read_where etc. yield rows (numpy scalars of the row dtype)
        rows = list(res)
        if rows and isinstance(rows[0], np.generic):
            arr = np.array(rows, dtype=rows[0].dtype)
        elif not rows:
            arr = np.zeros((0,), dtype=d.dtype)
        else:
            arr = np.array(rows)
    else:
        arr = np.asarray(res)
    npy = _os.path.join(args["out_dir"], "read_%03d.npy" % i)
    np.save(npy, arr, allow_pickle=True)
    out.append({"npy": npy, "dtype": str(arr.dtype), "shape": list(arr.shape)})
f.close()
emit(out)
'''


def h5pyd_read_many(
    server: HsdsServer, domain: str, reads: Sequence[tuple[str, str]]
) -> list[np.ndarray]:
    """Evaluate several ``(h5path, expr)`` reads in one h5pyd process.

    ``expr`` sees ``d`` (the h5pyd dataset), ``f``, ``np``, ``h5pyd``:
    e.g. ``"d[10:95:3, 7:55:5]"``, ``"d.fields(['id','temp'])[:]"``,
    ``"d.read_where('temp > 20')"``, ``"d[()]"``.  Results come back through
    .npy files (object arrays pickled)."""
    out_dir = Path(tempfile.mkdtemp(prefix="reads-", dir=server.socket_dir))
    try:
        res = server.run_h5pyd(
            _READ_SCRIPT, domain=domain, reads=[list(r) for r in reads], out_dir=str(out_dir)
        )
        return [np.load(r["npy"], allow_pickle=True) for r in res]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def h5pyd_read(server: HsdsServer, domain: str, h5path: str, select_expr: str) -> np.ndarray:
    """Evaluate one selection expression on ``domain[h5path]`` via h5pyd."""
    return h5pyd_read_many(server, domain, [(h5path, select_expr)])[0]


# --------------------------------------------------------------------------
# the interop domain
# --------------------------------------------------------------------------

_WRITE_SCRIPT = r'''
out_dir = args["out_dir"]
domain = args["domain"]

def ensure_folder(path):
    try:
        h5pyd.Folder(path, mode="r", **kw).close()
    except (IOError, OSError):
        h5pyd.Folder(path, mode="w", **kw).close()

parts = [p for p in domain.split("/") if p][:-1]
for i in range(len(parts)):
    ensure_folder("/" + "/".join(parts[: i + 1]) + "/")

# ---- expected values (deterministic) ----
exp = {}
exp["be_ints"] = (np.arange(97 * 61, dtype=np.int64).reshape(97, 61) * 7 - 20000).astype(">i4")
ff = np.full((100, 100), -1.5, dtype="<f4")
ff_regions = [((0, 32), (0, 64)), ((64, 96), (32, 50)), ((96, 100), (96, 100))]
ff_vals = {}
for k, ((r0, r1), (c0, c1)) in enumerate(ff_regions):
    v = (np.arange((r1 - r0) * (c1 - c0), dtype="<f4").reshape(r1 - r0, c1 - c0) * 0.25 + 100 * k)
    ff[r0:r1, c0:c1] = v
    ff_vals[k] = v
exp["floats_fill"] = ff
tdt = np.dtype([("id", "<i8"), ("temp", "<f4"), ("station", "S8")])
t = np.zeros(1000, dtype=tdt)
t["id"] = np.arange(1000, dtype="<i8") * 3 + 1000000000000
t["temp"] = (np.sin(np.arange(1000) / 37.0) * 25 + 10).astype("<f4")
t["station"] = [("ST%05d" % (i % 37)).encode() for i in range(1000)]
exp["table"] = t
words = ["", "a", "bc", "hello", "\u00e9t\u00e9", "\u65e5\u672c\u8a9e", "x" * 100, "tab\tnew\nline"]
exp["vlen_str"] = np.array([words[i % len(words)] + ("" if i % 3 else str(i)) for i in range(50)], dtype=object)
exp["cube_u8"] = (np.arange(20 * 30 * 40, dtype=np.int64).reshape(20, 30, 40) % 251).astype("u1")
exp["gzip_shuffle"] = np.arange(100 * 200, dtype="<i4").reshape(100, 200) - 5000
exp["lz4"] = (np.arange(64 * 64, dtype="<f8").reshape(64, 64) / 7.0 - 100.0)
exp["nocomp"] = (np.arange(50) - 25).astype("<i2")
exp["scalar"] = np.array(3.141592653589793, dtype="<f8")

vlen_dt = h5pyd.special_dtype(vlen=str)
specs = {
    "be_ints": dict(shape=(97, 61), dtype=">i4", chunks=(20, 16)),
    "floats_fill": dict(shape=(100, 100), dtype="<f4", chunks=(32, 32), fillvalue=-1.5),
    "table": dict(shape=(1000,), dtype=tdt, chunks=(128,)),
    "vlen_str": dict(shape=(50,), dtype=vlen_dt, chunks=(16,)),
    "cube_u8": dict(shape=(20, 30, 40), dtype="u1", chunks=(7, 11, 13)),
    "gzip_shuffle": dict(shape=(100, 200), dtype="<i4", chunks=(40, 50),
                         compression="gzip", compression_opts=6, shuffle=True),
    "lz4": dict(shape=(64, 64), dtype="<f8", chunks=(16, 16), compression=args["lz4_codec"]),
    "nocomp": dict(shape=(50,), dtype="<i2", chunks=(7,)),
    "scalar": dict(shape=(), dtype="<f8"),
}
written = {name: "all" for name in specs}
written["floats_fill"] = [[list(r), list(c)] for r, c in ff_regions]

f = h5pyd.File(domain, "w", **kw)
root_id = f.id.id
ids = {}
for name, spec in specs.items():
    d = f.create_dataset(name, **spec)
    ids[name] = d.id.id
    if name == "floats_fill":
        for k, ((r0, r1), (c0, c1)) in enumerate(ff_regions):
            d[r0:r1, c0:c1] = ff_vals[k]
    elif name == "scalar":
        d[()] = exp[name]
    else:
        d[...] = exp[name]
f.close()

# ---- read back through HSDS and compare ----
f = h5pyd.File(domain, "r", **kw)
report = {}
for name in specs:
    d = f[name]
    got = d[()] if d.shape == () else d[...]
    got = np.asarray(got)
    e = exp[name]
    if e.dtype == object:
        norm = np.array([g.decode("utf-8") if isinstance(g, bytes) else g for g in got.ravel()],
                        dtype=object).reshape(got.shape)
        ok = got.shape == e.shape and all(a == b for a, b in zip(norm.ravel(), e.ravel()))
        got_kind = type(got.ravel()[0]).__name__ if got.size else None
    else:
        ok = got.shape == e.shape and got.dtype == e.dtype and got.tobytes() == e.tobytes()
        got_kind = None
    if not ok and e.dtype != object:
        ok_values = got.shape == e.shape and bool(np.array_equal(got, e))
    else:
        ok_values = ok
    npy = _os.path.join(out_dir, name + ".npy")
    np.save(npy, e, allow_pickle=(e.dtype == object))
    report[name] = {
        "h5path": "/" + name, "id": ids[name], "npy": npy,
        "dtype": str(e.dtype) if e.dtype.names is None else e.dtype.descr,
        "shape": list(e.shape),
        "requested_chunks": list(specs[name]["chunks"]) if "chunks" in specs[name] else None,
        "compression": specs[name].get("compression"),
        "compression_opts": specs[name].get("compression_opts"),
        "shuffle": bool(specs[name].get("shuffle", False)),
        "fillvalue": specs[name].get("fillvalue"),
        "written": written[name],
        "h5pyd_dtype": str(d.dtype), "h5pyd_chunks": list(d.chunks) if isinstance(d.chunks, tuple) else d.chunks,
        "h5pyd_compression": d.compression,
        "readback_equal": bool(ok), "readback_values_equal": bool(ok_values),
        "readback_dtype": str(got.dtype), "readback_elem_type": got_kind,
    }
f.close()
emit({"root_id": root_id, "datasets": report})
'''


def _chunk_index_ranges(shape, chunk_dims, written):
    if not shape:  # scalar: one chunk of one element
        return [[0]]
    if written == "all":
        regions = [[[0, n] for n in shape]]
    else:
        regions = written
    keys = set()
    for region in regions:
        ranges = [range(lo // c, (hi - 1) // c + 1) for (lo, hi), c in zip(region, chunk_dims)]
        keys.update(itertools.product(*ranges))
    return sorted(keys)


def write_interop_domain(
    server: HsdsServer,
    domain: str = INTEROP_DOMAIN,
    out_dir: str | os.PathLike | None = None,
    *,
    lz4_codec: str = "lz4",
    flush_timeout: float = 30.0,
) -> dict:
    """Create the interop domain through h5pyd and return its manifest.

    Expected values are saved as ``<out_dir>/<name>.npy`` (vlen: object
    array, load with allow_pickle=True); the manifest is also written to
    ``<out_dir>/manifest.json``.  For each dataset the manifest holds the
    h5path, id, dtype/shape, what was requested, and what HSDS stored:
    ``dataset_json`` (the .dataset.json), ``chunk_dims`` (top-level
    layout.dims, else creationProperties.layout.dims) with
    ``chunk_dims_source``, ``filters``, ``expected_chunk_keys`` and
    ``chunk_keys`` (files found on disk)."""
    if out_dir is None:
        out_dir = server.socket_dir / "interop-expected"
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    res = server.run_h5pyd(_WRITE_SCRIPT, domain=domain, out_dir=str(out_dir), lz4_codec=lz4_codec)
    bad = {k: v for k, v in res["datasets"].items() if not v["readback_equal"]}
    if bad:
        raise HsdsError(f"h5pyd read-back differs from what was written: {json.dumps(bad, indent=1)}")

    root_id = res["root_id"]
    dom_json = domain_json_path(server, domain)
    root_json = obj_json_path(server, root_id)
    wait_for_paths([dom_json, root_json], timeout=flush_timeout)
    ds_jsons = {name: obj_json_path(server, info["id"]) for name, info in res["datasets"].items()}
    wait_for_paths(ds_jsons.values(), timeout=flush_timeout)

    manifest = {
        "domain": domain,
        "bucket": server.bucket,
        "root_dir": str(server.root_dir),
        "root_id": root_id,
        "domain_json_path": str(dom_json),
        "domain_json": json.loads(dom_json.read_text()),
        "root_group_json_path": str(root_json),
        "out_dir": str(out_dir),
        "datasets": {},
    }
    for name, info in res["datasets"].items():
        dj = json.loads(ds_jsons[name].read_text())
        layout = dj.get("layout") or {}
        cp = dj.get("creationProperties") or {}
        if layout.get("dims"):
            chunk_dims, src = layout["dims"], "layout"
        elif (cp.get("layout") or {}).get("dims"):
            chunk_dims, src = cp["layout"]["dims"], "creationProperties.layout"
        else:
            # scalar: creationProperties.layout is {"class": "H5D_CONTIGUOUS"}
            # and the one element lives in chunk "0" (docs/hsds-format.md §2.1)
            chunk_dims, src = ([1] if not info["shape"] else list(info["shape"])), "implicit"
        if layout.get("partition_count"):
            raise HsdsError("partitioned layouts are not handled by write_interop_domain")
        expected = ["_".join(map(str, ix)) for ix in _chunk_index_ranges(info["shape"], chunk_dims, info["written"])]
        dset_dir = ds_jsons[name].parent
        wait_for_paths([dset_dir / k for k in expected], timeout=flush_timeout)
        manifest["datasets"][name] = {
            **info,
            "dataset_json_path": str(ds_jsons[name]),
            "dataset_json": dj,
            "type": dj.get("type"),
            "chunk_dims": list(chunk_dims),
            "chunk_dims_source": src,
            "filters": cp.get("filters", []),
            "expected_chunk_keys": expected,
            "chunk_keys": chunk_keys_on_disk(server, info["id"]),
        }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=_json_default))
    return manifest


def load_expected(manifest: dict, name: str) -> np.ndarray:
    """Load the expected values of one interop dataset."""
    return np.load(manifest["datasets"][name]["npy"], allow_pickle=True)


# --------------------------------------------------------------------------
# pytest fixtures (import them into a test module or conftest to use them)
# --------------------------------------------------------------------------

if pytest is not None:

    @pytest.fixture(scope="session")
    def hsds_server(tmp_path_factory):
        """A session-wide HSDS on unix sockets, posix root in a tmp dir."""
        ensure_hsds_venv()
        root = tmp_path_factory.mktemp("hsds-root")
        with HsdsServer(root) as server:
            yield server

    @pytest.fixture(scope="session")
    def interop_manifest(hsds_server, tmp_path_factory):
        """The interop domain written by h5pyd into ``hsds_server``."""
        return write_interop_domain(hsds_server, out_dir=tmp_path_factory.mktemp("interop-expected"))
