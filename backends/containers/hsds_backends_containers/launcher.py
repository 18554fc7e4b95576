"""``hsds-backends hsds serve``: a real HSDS whose DNs sit behind HSDS fronts (docs/architecture.md §12).

A thin supervisor of stock processes; nothing inside HSDS is patched. In one private run
folder (mode 0700, on unix sockets) it starts:

1. N HSDS DNs (``hsds-node --node_type=dn --standalone``), each bound to ``dn_NN.sock``;
2. N front processes (``hsds-backends dn front``), front *i* listening on ``fr_NN.sock`` and
   forwarding to DN *i* (one process per DN, as HSDS runs its DNs; ``shared_front``: one
   process with N listeners);
3. the HSDS SN (``hsds-node --node_type=sn``) told that the DNs are at the fronts' URLs.
   The SN sorts its DN URLs and sends chunk ``c`` to ``urls[md5(c) mod N]``
   (docs/hsds-format.md §4.5); the zero-padded names keep the sorted order the node order,
   so front *i* receives exactly DN *i*'s chunks;
4. a loopback TCP listener (127.0.0.1:PORT) forwarding to the SN's socket: HSDS's own TCP
   mode listens on every interface, so the SN itself stays on a socket.

With ``fronts=False`` the SN talks to the DNs directly: the same HSDS without fronts (the
benchmark's baseline). Every child gets the kernel's parent-death signal
(:class:`hsds_backends._proc.ChildProcess`), so nothing outlives the launcher.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hsds_backends._proc import ChildProcess, ChildStartError
from hsds_backends.config import CREDENTIAL_ENV, ENV_PREFIX, credentials_env, is_secret

__all__ = ["HsdsDeployment", "LauncherError", "find_hsds_node"]

#: HSDS config keys the launcher writes to the deployment's ``override.yml`` from ours.
_HSDS_STORAGE_KEYS: Final = (
    "root_dir", "bucket_name", "aws_s3_gateway", "aws_region", "s3_sync_interval", "s3_age_time", "s3_sync_task_timeout",
)
#: Environment variables that would point the HSDS nodes somewhere else than we set up.
_SCRUB_ENV: Final = frozenset({
    "CONFIG_DIR", "CONFIG_OVERRIDE_PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP",
    "HS_ENDPOINT", "HS_USERNAME", "HS_PASSWORD", "HS_API_KEY", "HS_BUCKET",
})
#: Credentials pass to every child in its environment (never on a command line).
_CREDENTIALS: Final = frozenset(CREDENTIAL_ENV.values())
#: AF_UNIX paths hold at most 107 bytes; HSDS's launcher refuses socket folders over 63.
_MAX_RUN_DIR: Final = 63
#: Largest request body the SN's loopback listener takes (HSDS's max_request_size default).
_SN_BODY_LIMIT: Final = 100 * 1024 * 1024
#: Most front restarts within a minute before the deployment gives up.
FRONT_RESTARTS: Final = 5
#: Chunk requests the SN keeps in flight per DN for one client request (HSDS default 16).
DEFAULT_MAX_TASKS_PER_NODE: Final = 256


class LauncherError(RuntimeError):
    """The deployment could not be started (the message says which part and why)."""


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def find_hsds_node(explicit: str | None = None, configured: str | None = None, *, build: bool = True) -> Path:
    """Return the ``hsds-node`` program to run: ``explicit``, else ``configured`` (config ``hsds_node``),
    else ``hsds-node`` on PATH, else the project's own HSDS virtualenv (built on first use).

    Raises
    ------
    LauncherError
        None of them exists; the message lists what was tried.
    """
    tried: list[str] = []
    for src, value in (("--hsds-node", explicit), ("config hsds_node", configured)):
        if value:
            p = Path(value).expanduser()
            if p.is_file() and os.access(p, os.X_OK):
                return p.absolute()
            raise LauncherError(f"{src} {value!r} is not an executable file; point it at an HSDS installation's bin/hsds-node")
    on_path = shutil.which("hsds-node")
    if on_path:
        return Path(on_path)
    tried.append("hsds-node on PATH")
    script = _repo_root() / "scripts" / "hsds_venv.sh"
    venv = Path(os.environ.get("HSDS_VENV") or _repo_root() / ".venv-hsds")
    if (venv / "bin" / "hsds-node").exists():
        return venv / "bin" / "hsds-node"
    if build and script.exists():
        proc = subprocess.run(["bash", str(script), str(venv)], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode == 0 and (venv / "bin" / "hsds-node").exists():
            return venv / "bin" / "hsds-node"
        tried.append(f"building {venv} with {script} (exit {proc.returncode}: {proc.stderr.strip()[-300:]})")
    else:
        tried.append(f"the project's HSDS virtualenv {venv}")
    raise LauncherError(
        "no HSDS installation found (tried " + "; ".join(tried) + "); install HSDS (pip install hsds==1.0.2) "
        "and pass --hsds-node PATH/bin/hsds-node"
    )


def _socket_url(path: Path) -> str:
    return "http+unix://" + urllib.parse.quote(str(path), safe="")


@dataclass
class HsdsDeployment:
    """One HSDS deployment (SN, N DNs, fronts) under this process.

    Parameters
    ----------
    config
        Our config: storage (``root_dir``, ``aws_s3_gateway`` or ``azure_connection_string``), ``bucket_name``, ``backend``,
        ``backend_policy`` and the front's keys; written for the front process as it is.
    dn_count
        HSDS DNs (and fronts).
    port
        The SN's loopback TCP port (0: any free port; ``None``: none, the socket only).
    password_file
        HSDS's ``user:password`` file; default: one made in the run folder with user
        ``admin`` and a random password.
    hsds_node
        The ``hsds-node`` program (:func:`find_hsds_node`).
    fronts
        ``False``: HSDS without fronts.
    max_tasks_per_node
        The SN's ``MAX_TASKS_PER_NODE_PER_REQUEST``.
    env
        Extra environment for every child (S3 credentials travel this way).
    """

    config: dict[str, Any]
    dn_count: int = 2
    port: int | None = 0
    password_file: str | None = None
    hsds_node: Path | None = None
    fronts: bool = True
    max_tasks_per_node: int = DEFAULT_MAX_TASKS_PER_NODE
    env: dict[str, str] = field(default_factory=dict)
    run_dir: Path | None = None
    start_timeout: float = 60.0
    children: dict[str, ChildProcess] = field(default_factory=dict)
    endpoint: str | None = None
    """``http://127.0.0.1:PORT`` (None without a port)."""
    sn_url: str = ""
    """The SN's socket URL (h5pyd accepts it as an endpoint)."""
    front_urls: list[str] = field(default_factory=list)
    dn_urls: list[str] = field(default_factory=list)
    username: str = "admin"
    restart_fronts: bool = True
    """Start the fronts again when they exit (:meth:`supervise`)."""
    shared_front: bool = False
    """One front process for every DN, instead of one per DN."""
    front_restarts: int = 0
    _restarts: list[float] = field(default_factory=list)
    _own_run_dir: bool = False
    _tcp: Any = None
    _tcp_sock: socket.socket | None = None

    # ------------------------------------------------------------------ paths
    def _make_run_dir(self) -> Path:
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="hsdsb-", dir="/tmp"))
            self._own_run_dir = True
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        if len(str(self.run_dir)) > _MAX_RUN_DIR:
            raise LauncherError(f"run folder {self.run_dir} is {len(str(self.run_dir))} characters; unix socket paths need it ≤ {_MAX_RUN_DIR}")
        return self.run_dir

    def status(self) -> dict[str, Any]:
        """What the status file holds."""
        return {
            "endpoint": self.endpoint,
            "sn_url": self.sn_url,
            "username": self.username,
            "password_file": self.password_file,
            "bucket": self.config.get("bucket_name"),
            "backend": self.config.get("backend"),
            "fronts": self.front_urls,
            "dn_urls": self.dn_urls,
            "run_dir": str(self.run_dir),
            "pids": {name: c.pid for name, c in self.children.items()} | {"launcher": os.getpid()},
            "front_restarts": self.front_restarts,
        }

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        """Start every process and wait until the SN answers ``/about`` with READY.

        Raises
        ------
        LauncherError
            What could not start, and why; whatever did start is stopped again and the run
            folder removed.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        run = self._make_run_dir()
        node = self.hsds_node or find_hsds_node(configured=self.config.get("hsds_node"))
        self.hsds_node = node
        cfg_dir = run / "hsds-config"
        cfg_dir.mkdir(exist_ok=True)
        override = {k: self.config[k] for k in _HSDS_STORAGE_KEYS if self.config.get(k)}
        (cfg_dir / "override.yml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in override.items()))
        if self.config.get("root_dir"):
            bucket_dir = Path(self.config["root_dir"]) / str(self.config.get("bucket_name") or "hsdstest")
            if not bucket_dir.is_dir():
                raise LauncherError(f"bucket folder {bucket_dir} does not exist; create it (HSDS's posix storage needs the bucket as a folder)")
        if self.password_file is None:
            pw = run / "passwd.txt"
            fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{self.username}:{secrets.token_urlsafe(18)}\n")
            self.password_file = str(pw)
        else:
            users = [ln.split(":", 1)[0].strip() for ln in Path(self.password_file).read_text().splitlines() if ":" in ln and not ln.lstrip().startswith("#")]
            if not users:
                raise LauncherError(f"password file {self.password_file} holds no 'user:password' line")
            self.username = users[0]
        if self.port is not None:  # taken before anything starts: a busy port fails at once
            from .service import bind_socket

            try:
                self._tcp_sock = bind_socket(host="127.0.0.1", port=self.port or 0)
            except OSError as exc:
                raise LauncherError(f"cannot listen on 127.0.0.1:{self.port}: {exc.strerror or exc}; choose another --port (0: any free port)") from exc
        n = self.dn_count
        dn_socks = [run / f"dn_{i + 1:02d}.sock" for i in range(n)]
        fr_socks = [run / f"fr_{i + 1:02d}.sock" for i in range(n)]
        sn_sock = run / "sn_1.sock"
        self.dn_urls = [_socket_url(p) for p in dn_socks]
        self.sn_url = _socket_url(sn_sock)
        env = self._env()
        common = ["--standalone", f"--hsds_endpoint={self.sn_url}", "--use_socket", f"--config_dir={cfg_dir}"]
        if self.config.get("root_dir"):
            common.append(f"--root_dir={self.config['root_dir']}")
        for i in range(n):
            self._spawn(f"dn{i + 1}", [
                str(node), "--node_type=dn", f"--log_prefix=dn{i + 1} ", f"--dn_urls={','.join(self.dn_urls)}",
                f"--node_number={i}", *common,
            ], env)
        await self._wait_sockets(dn_socks, "HSDS DN")
        sn_dns = self.dn_urls
        if self.fronts:
            sn_dns = await self._start_fronts(fr_socks, env)
        sn_env = dict(env, MAX_TASKS_PER_NODE_PER_REQUEST=str(self.max_tasks_per_node))
        self._spawn("sn", [
            str(node), "--node_type=sn", "--log_prefix=sn ", f"--dn_urls={','.join(sn_dns)}", f"--sn_url={self.sn_url}",
            f"--password_file={self.password_file}", f"--admin_user={self.username}", *common,
        ], sn_env)
        await self._wait_sockets([sn_sock], "HSDS SN")
        if self.port is not None:
            await self._start_tcp(sn_sock)
        await self._wait_ready(sn_sock)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV}
        for k in list(env):  # HSDS reads an environment override for every key of its config.yml
            if k.lower() in _HSDS_KEYS_SEEN and k not in _CREDENTIALS:
                env.pop(k, None)
        env.update(PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
        # credentials from the config travel in the environment, never in a file or on a command line
        env.update(credentials_env(self.config))
        env.update(self.env)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], ready_prefix: str | None = None) -> ChildProcess:
        assert self.run_dir is not None
        child = ChildProcess(argv, env=env, name=name, ready_prefix=ready_prefix, log_path=str(self.run_dir / f"{name}.log"), cwd=str(self.run_dir))
        self.children[name] = child
        child.spawn()
        return child

    async def _start_fronts(self, fr_socks: list[Path], env: dict[str, str]) -> list[str]:
        """Start the fronts: one process per DN (as HSDS runs one process per DN), or one for all (``shared_front``)."""
        assert self.run_dir is not None
        cfg_file = self.run_dir / "front-config.yml"
        fd = os.open(cfg_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        secret_free = {k: v for k, v in self.config.items() if v is not None and not is_secret(k)}
        with os.fdopen(fd, "w") as f:
            json.dump(secret_free, f)  # JSON is YAML
        # secrets (S3 keys, dn_token, ...) reach the fronts in their environment, never in a file
        env = dict(env, **{ENV_PREFIX + k.upper(): str(v) for k, v in self.config.items() if v is not None and is_secret(k)})
        # at first start the DNs are fresh (nothing unflushed); a restarted front must not trust storage at once
        env["HSDS_BACKENDS_FRONT_START_DIRTY"] = "false"
        base = [sys.executable, "-m", "hsds_backends.cli", "dn", "front", "--config", str(cfg_file), "--dn-count", str(self.dn_count)]
        pairs = list(zip(fr_socks, self.dn_urls, strict=True))
        groups = [pairs] if self.shared_front else [[p] for p in pairs]
        children = []
        for i, group in enumerate(groups):
            argv = list(base)
            if not self.shared_front:
                argv += ["--dn-urls", ",".join(self.dn_urls)]  # it asks the DN that owns a dataset for its JSON
            for sock, dn in group:
                argv += ["--listen", str(sock), "--upstream", dn]
            name = "fronts" if self.shared_front else f"front{i + 1}"
            child = ChildProcess(argv, env=env, name=name, log_path=str(self.run_dir / f"{name}.log"), cwd=str(self.run_dir))
            self.children[name] = child
            children.append(child)
        try:
            lines = await asyncio.gather(*(c.astart(timeout=self.start_timeout) for c in children))
        except ChildStartError as exc:
            raise LauncherError(f"the fronts did not start: {exc}") from exc
        self.front_urls = [u for line in lines for u in line.split()]
        return self.front_urls

    async def _wait_sockets(self, paths: list[Path], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not all(p.exists() for p in paths):
            for name, c in self.children.items():
                if not c.alive:
                    raise LauncherError(f"{name} exited (code {c.returncode}) during start-up:\n{c.log_tail(30)}")
            if time.monotonic() > deadline:
                missing = [str(p) for p in paths if not p.exists()]
                raise LauncherError(f"{what} did not open {missing} within {self.start_timeout:g} s")
            await asyncio.sleep(0.05)

    async def _start_tcp(self, sn_sock: Path) -> None:
        from aiohttp import web

        from ._proxy import Upstream, UpstreamError

        sock = self._tcp_sock
        assert sock is not None
        upstream = Upstream(_socket_url(sn_sock))

        async def handler(request: web.Request) -> web.StreamResponse:
            from hsds_backends.security import host_allowed

            from ._proxy import read_body

            if not host_allowed(request.headers.get("Host")):
                return web.json_response(
                    {"status": 403, "message": f"Host {request.headers.get('Host')!r} is not a loopback name; this HSDS answers only requests addressed to 127.0.0.1, ::1 or localhost"},
                    status=403,
                )
            body = await read_body(request, _SN_BODY_LIMIT)
            try:
                return await upstream.forward(request, body)
            except UpstreamError as exc:
                return web.json_response({"status": 503, "message": str(exc)}, status=503)

        app = web.Application(client_max_size=_SN_BODY_LIMIT + 1)
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=512).start()
        self._tcp = (runner, upstream)
        self.endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def _wait_ready(self, sn_sock: Path) -> None:
        from ._proxy import Upstream

        up = Upstream(_socket_url(sn_sock), timeout=5.0)
        deadline = time.monotonic() + self.start_timeout
        last = "no answer"
        try:
            while True:
                for name, c in self.children.items():
                    if not c.alive:
                        raise LauncherError(f"{name} exited (code {c.returncode}) during start-up:\n{c.log_tail(30)}")
                try:
                    status, body = await up.get("/about")
                    if status == 200 and json.loads(body).get("state") == "READY":
                        return
                    last = f"/about: {status} {body[:200]!r}"
                except (OSError, ValueError) as exc:
                    last = f"/about: {exc}"
                if time.monotonic() > deadline:
                    raise LauncherError(f"HSDS did not get ready within {self.start_timeout:g} s ({last})")
                await asyncio.sleep(0.1)
        finally:
            await up.aclose()

    # ------------------------------------------------------------------ running
    def dead(self) -> list[str]:
        """Names of children that exited."""
        return [name for name, c in self.children.items() if not c.alive]

    async def supervise(self, stop: asyncio.Event, *, interval: float = 0.25) -> None:
        """Watch the children until ``stop`` is set.

        A front that exits is started again on the same sockets (it holds no state; the SN
        retries its requests meanwhile), at most :data:`FRONT_RESTARTS` times a minute with
        ``restart_fronts``. An HSDS node that exits ends the deployment: HSDS's state lives
        there.

        Raises
        ------
        LauncherError
            A node exited, or the fronts keep dying.
        """
        while not stop.is_set():
            for name in self.dead():
                child = self.children[name]
                if name.startswith("front") and self.restart_fronts:
                    now = time.monotonic()
                    self._restarts = [t for t in self._restarts if now - t < 60] + [now]
                    if len(self._restarts) > FRONT_RESTARTS:
                        raise LauncherError(f"fronts exited {len(self._restarts)} times within a minute; stopping HSDS:\n{child.log_tail(30)}")
                    self.front_restarts += 1
                    # its DN kept running: writes it has not flushed were seen by the dead front only
                    child.env = dict(child.env or {}, HSDS_BACKENDS_FRONT_START_DIRTY="true")
                    starting = asyncio.ensure_future(child.astart(timeout=self.start_timeout))
                    stopping = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    stopping.cancel()
                    if not starting.done():  # asked to stop while it starts: do not wait for it
                        child.kill()
                        await asyncio.gather(starting, return_exceptions=True)
                        return
                    try:
                        starting.result()
                    except ChildStartError as exc:
                        raise LauncherError(f"{name} exited (code {child.returncode}) and did not start again: {exc}") from exc
                    continue
                raise LauncherError(f"{name} exited (code {child.returncode}); stopping HSDS (logs in {self.run_dir}):\n{child.log_tail(20)}")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ stop
    async def stop(self) -> None:
        """Stop the SN first (no new work), then the fronts, then the DNs (they flush on SIGTERM)."""
        if self._tcp is not None:
            runner, upstream = self._tcp
            self._tcp = None
            await runner.cleanup()
            await upstream.aclose()
        elif self._tcp_sock is not None:
            self._tcp_sock.close()
        self._tcp_sock = None
        order = ["sn", *sorted(n for n in self.children if n.startswith("front")), *sorted(n for n in self.children if n.startswith("dn"))]
        for name in order:
            c = self.children.get(name)
            if c is not None:
                await c.astop(10.0 if name.startswith("dn") else 5.0, sig=(signal.SIGINT, signal.SIGTERM) if name.startswith("dn") else signal.SIGTERM)
        self.children.clear()
        if self.run_dir is not None:
            for p in self.run_dir.glob("*.sock"):
                try:
                    p.unlink()
                except OSError:
                    pass
            if self._own_run_dir and not os.environ.get("HSDS_BACKENDS_KEEP_RUN_DIR"):
                shutil.rmtree(self.run_dir, ignore_errors=True)

    async def __aenter__(self) -> HsdsDeployment:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _hsds_config_keys() -> frozenset[str]:
    keys: set[str] = set()
    try:
        import importlib.util

        spec = importlib.util.find_spec("admin")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cfg = Path(loc) / "config" / "config.yml"
            if cfg.exists():
                keys.update(m.group(1) for m in re.finditer(r"^([a-z_][a-z0-9_]*)\s*:", cfg.read_text(), re.M))
    return frozenset(keys)


#: Lower-cased HSDS config keys an environment variable could override (none known here: HSDS
#: lives in its own virtualenv; the common ones are listed so a stray ROOT_DIR cannot redirect it).
_HSDS_KEYS_SEEN: Final = _hsds_config_keys() | frozenset({
    "root_dir", "bucket_name", "aws_s3_gateway", "aws_region", "dn_port", "sn_port", "head_port", "log_level",
    "max_tasks_per_node_per_request", "s3_sync_interval", "s3_age_time", "password_salt", "password_file",
})
