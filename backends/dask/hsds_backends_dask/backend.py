"""The ``dask`` backend: chunk tasks run by the core kernel on dask.distributed workers.

A read's chunk tasks are cut into batches (a few per worker thread, so one batch
costs one scheduler round trip instead of one per chunk) and submitted as tasks of
:func:`hsds_backends_dask._worker.run_batch`, which runs the core kernel on the
worker and returns the results as raw bytes. The batches go to the workers in their
JSON wire form; storage is opened on the workers from
:meth:`~hsds_backends.storage.Storage.to_config` (no secrets), sent with the buckets the
workers let a task read (:class:`~hsds_backends.security.Containment`); S3 credentials
reach the workers out of band (see :class:`DaskBackend`).

The embedded cluster listens only on 127.0.0.1 and only over TLS with a key pair made
for it (:meth:`distributed.security.Security.temporary`, both ends authenticated), so
another local user cannot connect to it and run code in its workers
(docs/architecture.md §11).

The client is an ``asynchronous=True`` :class:`distributed.Client` on the event loop
of the first read, so results are awaited on the loop the :class:`~hsds_backends.Reader`
drives and no thread blocks. dask and distributed are imported on first use only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any, ClassVar, Final

from hsds_backends._aio import ResultQueue, cancel_and_wait, retrieve, wait_bounded
from hsds_backends.config import (
    CORE_KEYS,
    CREDENTIAL_ENV,
    ConfigKey,
    as_bool,
    as_float,
    as_int,
    as_str,
    at_least,
    credentials_env,
    is_unset,
    option,
    optional,
)
from hsds_backends.errors import BackendError, BackendTimeoutError, ConfigError, HsdsBackendsError
from hsds_backends.model import Backend, Capabilities, CostEstimate, ReadRequest, Sink, add_stats, default_workers
from hsds_backends.security import Containment, is_loopback
from hsds_backends.storage import storage_from_config
from hsds_backends.tasks import ChunkResult, error_from_wire, expected_result_bytes

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping, Sequence

    from hsds_backends.tasks import ChunkTask

__all__ = ["DaskBackend"]

log = logging.getLogger(__name__)

#: Credential keys sent to remote workers in the plugin (it adds them to the storage config there).
_CREDENTIAL_KEYS: Final = tuple(CREDENTIAL_ENV)
#: Batches per worker thread when ``dask_batch_size`` is not set: enough to balance load
#: and to overlap the client's receiving and assembling with the workers' decoding.
_WAVES: Final = 4
#: Largest automatic batch (chunks).
_MAX_AUTO_BATCH: Final = 16
#: Largest automatic batch, and batches per worker thread, when every result is small (points, a
#: few rows): 1000 random points over 253 chunks on 2 workers read in 336 ms (median) in batches of
#: 16, 302 ms in 32, 291 ms in 64.
_MAX_SMALL_BATCH: Final = 64
_SMALL_WAVES: Final = 2
#: A result up to this size is small.
_SMALL_RESULT: Final = 64 << 10
#: Result bytes gathered (received and placed) at once: as many batches as fit, at least 2.
_GATHER_BUDGET: Final = 32 << 20


def _as_dashboard(key: str, value: Any, source: str) -> str | None:
    """Caster of ``dask_dashboard``: the address to bind (host defaults to 127.0.0.1), or ``None``.

    Takes a port (``8787``), ``":8787"``, ``"host:port"`` or a boolean (``true``: 8787); an
    address it returned casts to itself.
    """
    if value is None or value is False:
        return None
    text = "8787" if value is True else as_str(key, value, source).strip()
    low = text.lower()
    if low in ("", "false", "no", "off", "0", "none"):
        return None
    if low in ("true", "yes", "on", "1"):
        text = "8787"
    if text.isdigit():
        text = f":{text}"
    if text.startswith(":"):  # distributed would bind a bare port on every interface
        text = "127.0.0.1" + text
    return text


#: Config keys of this client's TLS files for a remote scheduler.
_TLS_KEYS: Final = ("dask_tls_ca_file", "dask_tls_cert", "dask_tls_key")
#: Address schemes of distributed whose connections are encrypted.
_ENCRYPTED_SCHEMES: Final = frozenset({"tls", "wss"})


def _scheme_and_host(address: str) -> tuple[str, str]:
    """Split a dask address (``tls://host:port``, ``host:port``, ``tcp://[::1]:8786``) into scheme and host."""
    scheme, sep, rest = address.partition("://")
    if not sep:  # distributed's default protocol
        scheme, rest = "tcp", address
    rest = rest.split("/", 1)[0]
    if rest.startswith("["):  # [::1]:8786
        return scheme.lower(), rest[1 : rest.find("]")] if "]" in rest else rest
    return scheme.lower(), rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


#: Seconds to wait for the scheduler to acknowledge cancelling leftover batches.
_CANCEL_TIMEOUT_S: Final = 5.0
#: How long a read of the cluster's worker-thread count is reused.
_THREADS_TTL_S: Final = 1.0


def _distributed() -> Any:
    """Import distributed on first use, typed as ``Any``.

    Its annotations describe the synchronous API (``wait_for_workers`` returns ``None``,
    ``Client`` is untyped); this backend uses the asynchronous one, where the same calls
    return awaitables.
    """
    import distributed

    return distributed


async def _result_of(fut: Any) -> Any:
    return await fut


def _release_after(fut: Any, task: asyncio.Future[Any]) -> None:
    """Release a batch's future once its gather task ended (the worker may drop the result)."""
    retrieve(task)
    fut.release()


def _caused_by(error: BaseException, cause: BaseException) -> BaseException:
    """Return ``error`` with ``cause`` as its ``__cause__`` (``raise error from cause``, for a queued error)."""
    if error is not cause:
        error.__cause__ = cause
    return error


class DaskBackend(Backend):
    """Run chunk tasks on a dask.distributed cluster.

    Construction is cheap and does no I/O; the cluster is started (or connected to) on
    the first read, on that read's event loop, and closed by :meth:`aclose`.

    Parameters
    ----------
    config
        Resolved config. Keys read (all optional):

        ``dask_scheduler``
            Address of an existing scheduler (``tcp://host:8786``, ``tls://...``). Unset:
            start an embedded :class:`distributed.LocalCluster`.
        ``dask_connect_timeout``
            Seconds to wait for the scheduler, and for it to have a worker (default 30).
        ``dask_n_workers``
            Worker processes of the embedded cluster (default: all cores), one thread each.
        ``dask_dashboard``
            Dashboard address of the embedded cluster (``8787``, ``":8787"``,
            ``"0.0.0.0:8787"``, ``true`` for 8787); a bare port binds 127.0.0.1. Default: no
            dashboard (it also needs ``bokeh`` installed).
        ``dask_batch_size``
            Chunk tasks per dask task (default: ``ceil(chunks / (4 × worker threads))``,
            at most 16).
        ``dask_retries``
            ``retries=`` of every dask task (default 2): a batch whose function failed
            (not a chunk error, which is an answer) runs again, on any worker.
        ``dask_send_credentials``
            With ``dask_scheduler`` and explicit ``aws_access_key_id``/``aws_secret_access_key``
            (or ``azure_connection_string``): send them to the workers once, in a worker plugin
            (default true). False: the workers use their own AWS credential chain (or their own
            ``AZURE_CONNECTION_STRING``, which must be for the same account). Refused (``ConfigError``)
            for an unencrypted scheduler off loopback.
        ``dask_tls_ca_file``, ``dask_tls_cert``, ``dask_tls_key``
            With a ``tls://`` ``dask_scheduler``: PEM files of the cluster's certificate
            authority and of this client's certificate and key (the key may be in the
            certificate file). Unset: dask's own ``distributed.comm.tls.*`` config applies.

        and the storage keys (``root_dir``, ``aws_s3_gateway``, ``aws_region``,
        ``azure_connection_string``, credentials),
        and ``allowed_buckets``/``bucket_name``: the workers run a task only if it reads
        from an allowed bucket (:class:`~hsds_backends.security.Containment`).

    Notes
    -----
    The embedded cluster (scheduler, nannies, workers) listens on 127.0.0.1 over TLS
    only, with a certificate and key made in memory when it starts
    (:meth:`distributed.security.Security.temporary`) and required of every peer, so
    only this backend's client and the cluster's own processes can connect: another
    local user cannot submit tasks or ``client.run`` code as the reading user. A remote
    scheduler is secured by its operator: use ``tls://`` with certificates
    (``dask_tls_*`` or dask's config); see the README.

    Every task is checked on the worker before anything is fetched: its bucket (or a
    linked file's) must be allowed and an ``H5D_CHUNKED`` chunk must name its own
    chunk key (:meth:`~hsds_backends.security.Containment.check_task`); a refused task
    raises :class:`~hsds_backends.errors.StoragePathError` here, as a chunk error.

    Credentials never travel in a task. The embedded cluster's worker processes get
    them as the standard ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
    ``AWS_SESSION_TOKEN`` (Azure: ``AZURE_CONNECTION_STRING``) environment variables from their nanny (a local process
    spawn, no socket). With ``dask_scheduler`` they go once to each worker (also those
    that join later) inside a :class:`~hsds_backends_dask._worker.WorkerState` plugin,
    through the scheduler: use a ``tls://`` scheduler, or leave the keys unset and give
    the workers their own credentials (environment, ``~/.aws``, instance role).

    A lost worker's batches are run again by the scheduler on the other workers (up
    to ``distributed.scheduler.allowed-failures`` times); a batch that raises is
    retried ``dask_retries`` times. A chunk error (bad bytes, bad selection) is not
    retried: it is caught on the worker and raised here with the class ``inline``
    raises, naming the chunk id.

    See Also
    --------
    hsds_backends._inline.InlineBackend : the reference backend (in-process).
    """

    name: ClassVar[str] = "dask"
    config_keys: ClassVar[Mapping[str, ConfigKey]] = {
        "dask_scheduler": ConfigKey(None, optional(as_str), "scheduler address to use (default: an embedded LocalCluster)"),
        "dask_connect_timeout": ConfigKey(
            30.0, at_least(as_float, 0, strict=True), "seconds to wait for the scheduler, and for it to have a worker"
        ),
        "dask_n_workers": ConfigKey(
            None, optional(at_least(as_int, 1)), "embedded cluster: worker processes, one thread each (default: all cores)"
        ),
        "dask_dashboard": ConfigKey(
            None, _as_dashboard, "embedded cluster: dashboard address (8787, :8787, host:port, true); default none"
        ),
        "dask_batch_size": ConfigKey(
            None, optional(at_least(as_int, 1)), "chunk tasks per dask task (default: ceil(chunks / 4 x threads), at most 16)"
        ),
        "dask_retries": ConfigKey(2, at_least(as_int, 0), "retries= of every dask task (a batch that raised runs again)"),
        "dask_send_credentials": ConfigKey(
            True, as_bool, "with dask_scheduler: send explicit S3 credentials to the workers in a plugin"
        ),
        "dask_tls_ca_file": ConfigKey(None, optional(as_str), "tls:// dask_scheduler: the cluster's CA certificate (PEM file)"),
        "dask_tls_cert": ConfigKey(None, optional(as_str), "tls:// dask_scheduler: this client's certificate (PEM file)"),
        "dask_tls_key": ConfigKey(
            None, optional(as_str), "tls:// dask_scheduler: this client's private key (PEM file; default: in dask_tls_cert)"
        ),
    }
    description: ClassVar[str] = (
        "chunk tasks on a dask.distributed cluster (LocalCluster by default, dask_scheduler to scale out)"
    )
    url: ClassVar[str] = "https://github.com/hsds-backends/hsds-backends/tree/main/backends/dask"
    # no direct placement: results arrive on the event loop as dask frames, and the caller places them
    static_capabilities: ClassVar[Capabilities] = Capabilities(
        max_concurrency=default_workers(), remote=True, direct_placement=True
    )
    #: one scheduler round trip and a gather per request
    overhead_s: ClassVar[float] = 0.005
    per_chunk_s: ClassVar[float] = 0.004
    #: first use: start a LocalCluster (process workers) or connect to a scheduler
    start_s: ClassVar[float] = 2.0
    #: the same start-up, for estimates from measured latency (:meth:`hsds_backends._ledger.Ledger.estimate`)
    cold_start_s: ClassVar[float] = start_s
    #: worker → client transfer and assembly, bytes per second
    transfer_bps: ClassVar[float] = 1.0e9

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        get = self.option
        address = get("dask_scheduler")
        self.scheduler_address: str | None = address.strip() if address else None
        self.connect_timeout: float = get("dask_connect_timeout")
        n: int | None = get("dask_n_workers")
        self.n_workers: int = n if n is not None else default_workers()
        self.batch_size: int | None = get("dask_batch_size")
        self.retries: int = get("dask_retries")
        self.send_credentials: bool = get("dask_send_credentials")
        self.dashboard_address: str | None = get("dask_dashboard")
        #: the dask_tls_* keys that are set: this client's TLS files for a remote scheduler
        self.tls_files: dict[str, str] = {k: v for k in _TLS_KEYS if (v := get(k))}
        #: what a task may read on the workers (allowed_buckets, else bucket_name: docs/architecture.md §11)
        self.containment: Containment = Containment.from_config(
            {k: option(cfg, k, CORE_KEYS[k]) for k in ("allowed_buckets", "bucket_name")}
        )
        # What the workers open and check: the storage description and the containment (no
        # secrets); the credentials are kept apart. The text is also the workers' cache key.
        buckets = self.containment.buckets
        self._storage_text = json.dumps(
            {
                "storage": storage_from_config(cfg).to_config(),
                "allowed_buckets": None if buckets is None else sorted(buckets),
                "chunk_bytes_limit": option(cfg, "chunk_bytes_limit", CORE_KEYS["chunk_bytes_limit"]),
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        self._credentials = {k: str(cfg[k]) for k in _CREDENTIAL_KEYS if not is_unset(cfg.get(k))}
        self._check_transport()
        self._plugin_name = f"hsds-backends-{uuid.uuid4().hex[:12]}"
        self._client: Any = None
        self._cluster: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._threads_seen = 0
        self._threads_checked = -math.inf
        self._caps: Capabilities | None = None

    def _check_transport(self) -> None:
        """Refuse settings that would send secrets in clear text, or TLS files that would be ignored."""
        address = self.scheduler_address
        if address is None:
            if self.tls_files:
                raise ConfigError(
                    f"{', '.join(sorted(self.tls_files))} set without dask_scheduler; the embedded cluster makes its own "
                    "TLS credentials: unset them, or set dask_scheduler to the tls:// scheduler they belong to"
                )
            return
        scheme, host = _scheme_and_host(address)
        if self.send_credentials and self._credentials and scheme not in _ENCRYPTED_SCHEMES and not is_loopback(host):
            raise ConfigError(
                f"dask_scheduler {address!r} is not encrypted: dask_send_credentials would send the storage credentials "
                "over the network in clear text; use a tls:// scheduler (with dask_tls_ca_file/dask_tls_cert), "
                "or set dask_send_credentials: false and give the workers their own credentials"
            )

    def __repr__(self) -> str:
        return f"<DaskBackend 'dask' scheduler={self.scheduler_address or 'LocalCluster'!r}>"

    # ------------------------------------------------------------ description
    @property
    def capabilities(self) -> Capabilities:
        """Capabilities; ``max_concurrency`` is the worker threads the client sees.

        Before the first read it is ``dask_n_workers`` (default: this machine's cores).
        """
        conc = self._threads() or self.n_workers
        caps = self._caps
        if caps is None or caps.max_concurrency != conc:  # built once per worker-thread count
            caps = self._caps = Capabilities(max_concurrency=conc, remote=True, direct_placement=True)
        return caps

    @property
    def started(self) -> bool:
        """Whether the client is connected (else the next read starts the cluster or connects: ``start_s``)."""
        return self._client is not None

    def _threads(self) -> int:
        client = self._client
        if client is None:
            return 0
        now = time.monotonic()
        if now < self._threads_checked + _THREADS_TTL_S:  # the selector asks several times per request
            return self._threads_seen
        self._threads_checked = now
        with contextlib.suppress(Exception):
            info = client.scheduler_info()  # cached by the client, refreshed every few seconds: no I/O
            threads = int(info.get("total_threads") or 0)
            if threads:
                self._threads_seen = threads
        return self._threads_seen

    @property
    def client(self) -> Any:
        """The :class:`distributed.Client` once started, else ``None`` (see :meth:`get_client`)."""
        return self._client

    def estimate_cost(self, request: ReadRequest) -> CostEstimate:
        """Start-up (first use) + overhead + waves × per-chunk time + transfer of the result."""
        n = request.num_chunks
        conc = max(1, self.capabilities.max_concurrency)
        start = 0.0 if self._client is not None else self.start_s
        transfer = request.plan.nbytes / self.transfer_bps
        secs = start + self.overhead_s + math.ceil(n / conc) * self.per_chunk_s + transfer
        return CostEstimate(
            secs,
            0.0,
            lambda: (  # built only if read: the selector estimates every candidate on every request
                f"{start:.1f} s start + {self.overhead_s * 1e3:.0f} ms + ceil({n}/{conc}) × {self.per_chunk_s * 1e3:.1f} ms"
                f" + {transfer * 1e3:.0f} ms transfer (declared)"
            ),
        )

    # --------------------------------------------------------------- cluster
    async def get_client(self) -> Any:
        """Return the :class:`distributed.Client`, starting the cluster or connecting on first call.

        Raises
        ------
        BackendTimeoutError
            ``dask_scheduler`` did not answer, or had no worker, within ``dask_connect_timeout``.
        BackendError
            The embedded cluster did not start, or the backend is used from another event loop.
        """
        loop = asyncio.get_running_loop()
        if self._client is not None:
            if self._loop is loop:
                return self._client
            if self._loop is not None and self._loop.is_running() and not self._loop.is_closed():
                raise BackendError(
                    "the dask backend's client runs on another event loop, which is running (in another thread); "
                    "use one backend per loop (one hsds_backends.Reader per loop)"
                )
            # The first loop has stopped or closed (a second asyncio.run, say): retire its client and
            # reconnect from this loop; an embedded cluster runs on its own thread and is still there.
            client, old = self._client, self._loop
            self._client = self._loop = None
            await _retire(client, old)
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            if self._client is None:
                cluster = self._cluster
                if self.scheduler_address:
                    client = await self._connect(self.scheduler_address)
                elif cluster is not None:
                    client = await self._local_client(cluster)
                else:
                    client, cluster = await self._start_local()
                try:
                    await self._prepare(client)
                except BaseException:
                    await _quiet_close(client, cluster)
                    self._cluster = None
                    raise
                self._client, self._cluster, self._loop = client, cluster, loop
                self._closed = False
        return self._client

    def _remote_security(self, address: str) -> Any:
        """The :class:`distributed.security.Security` for ``dask_scheduler``: from ``dask_tls_*``, else dask's config."""
        scheme, host = _scheme_and_host(address)
        if scheme not in _ENCRYPTED_SCHEMES and not is_loopback(host):
            log.warning(
                "dask scheduler %r is not encrypted: whoever can reach it can run code on its workers; "
                "use a tls:// scheduler with certificates (see the hsds-backends-dask README)",
                address,
            )
        files = self.tls_files
        if not files:
            return None  # distributed builds one from its config (distributed.comm.tls.*)
        missing = [k for k in ("dask_tls_ca_file", "dask_tls_cert") if k not in files]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} not set; a TLS client needs the cluster's CA certificate (dask_tls_ca_file) "
                "and its own certificate (dask_tls_cert, with dask_tls_key unless the key is in it)"
            )
        from distributed.security import Security

        security = Security(
            tls_ca_file=files["dask_tls_ca_file"],
            tls_client_cert=files["dask_tls_cert"],
            tls_client_key=files.get("dask_tls_key"),
            require_encryption=True,
        )
        try:  # load the files now, for an error that names them instead of a failed connect
            security.get_connection_args("client")
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            names = ", ".join(f"{k}={v!r}" for k, v in sorted(files.items()))
            raise ConfigError(
                f"cannot load the dask TLS files ({names}): {exc}; give readable PEM files of the cluster's CA, "
                "this client's certificate and its key"
            ) from exc
        return security

    async def _connect(self, address: str) -> Any:
        t = self.connect_timeout
        security = self._remote_security(address)
        client = _distributed().Client(
            address, asynchronous=True, timeout=t, direct_to_workers=True, set_as_default=False, security=security
        )
        try:
            await asyncio.wait_for(client, t + 5)
        except (OSError, TimeoutError) as exc:
            await _quiet_close(client, None)
            if "TLS" in str(exc) or "SSL" in str(exc):  # an answer: the handshake failed
                raise BackendError(
                    f"dask scheduler {address!r} and this client do not accept each other's TLS certificate: {exc}; "
                    "set dask_tls_ca_file to the cluster's CA and dask_tls_cert/dask_tls_key to a certificate it signed"
                ) from exc
            raise BackendTimeoutError(
                f"dask scheduler {address!r} did not answer within {t:g} s (dask_connect_timeout): {exc}; "
                "check that the scheduler runs and that this host can reach it, raise dask_connect_timeout, "
                "or unset dask_scheduler to run a local cluster"
            ) from exc
        except Exception as exc:
            await _quiet_close(client, None)
            hint = (
                "; a tls:// scheduler needs this client's certificate: set dask_tls_ca_file and dask_tls_cert "
                "(and dask_tls_key), or dask's distributed.comm.tls config"
                if "ssl_context" in str(exc) or "TLS" in str(exc)
                else ""
            )
            raise BackendError(f"cannot connect to dask scheduler {address!r}: {type(exc).__name__}: {exc}{hint}") from exc
        try:
            await client.wait_for_workers(1, timeout=t)
        except (OSError, TimeoutError) as exc:
            await _quiet_close(client, None)
            raise BackendTimeoutError(
                f"dask scheduler {address!r} has no worker after {t:g} s (dask_connect_timeout); "
                "start workers with: dask worker " + address
            ) from exc
        return client

    async def _start_local(self) -> tuple[Any, Any]:
        local_cluster = _distributed().LocalCluster

        env = credentials_env(self.config)

        def start() -> Any:
            # Loopback is not private: any local user can connect to a port there, and a dask
            # peer may run code in the workers (client.run) as the reading user. So every
            # listener of the cluster speaks TLS only, with a key pair made here, in memory,
            # and a certificate required of each peer (docs/architecture.md §11).
            security = _temporary_security()
            # A synchronous LocalCluster: its scheduler and nannies run on distributed's own loop
            # thread, so they keep heartbeating (and restarting lost workers) while the reader's
            # loop is idle or stopped between reads; only the client lives on the reader's loop.
            return local_cluster(
                n_workers=self.n_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                scheduler_port=0,
                # the scheduler always serves HTTP (health, metrics): without a dashboard keep it
                # off 8787, on a free loopback port
                dashboard_address=self.dashboard_address or "127.0.0.1:0",
                scheduler_kwargs=None if self.dashboard_address else {"dashboard": False},
                worker_dashboard_address=None,
                protocol="tls://",
                security=security,
                env=env,
            )

        try:
            cluster = await asyncio.to_thread(start)
        except HsdsBackendsError:
            raise
        except Exception as exc:
            raise BackendError(
                f"the local dask cluster ({self.n_workers} process workers) did not start: {type(exc).__name__}: {exc}; "
                "in a script, run the read under `if __name__ == '__main__':` (workers are spawned processes), "
                "or set dask_scheduler to an existing cluster"
            ) from exc
        try:
            client = await self._local_client(cluster)
        except BaseException:
            await _quiet_close(None, cluster)
            raise
        return client, cluster

    async def _local_client(self, cluster: Any) -> Any:
        return await _distributed().Client(
            cluster.scheduler_address,
            asynchronous=True,
            timeout=self.connect_timeout,
            direct_to_workers=True,
            set_as_default=False,
            security=cluster.security,  # the cluster's own credentials: the only ones it accepts
        )

    async def _prepare(self, client: Any) -> None:
        from ._worker import WorkerState

        remote = self.scheduler_address is not None
        creds = self._credentials if (remote and self.send_credentials) else None
        await client.register_plugin(WorkerState(self._plugin_name, creds), name=self._plugin_name)
        info = await client.scheduler.identity(n_workers=0)
        self._threads_seen = int(info.get("total_threads") or 0)
        self._threads_checked = time.monotonic()

    # ------------------------------------------------------------- execution
    def _batches(self, n: int, small: bool = False) -> list[range]:
        """Cut ``n`` tasks into batches: ``_WAVES`` per worker thread, at most ``_MAX_AUTO_BATCH``
        tasks each; when every result is ``small`` the per-batch round trip, not the data, is the
        cost: ``_SMALL_WAVES`` per thread, at most ``_MAX_SMALL_BATCH`` tasks. ``dask_batch_size``
        overrides both."""
        threads = max(1, self._threads() or self.n_workers)
        cap, waves = (_MAX_SMALL_BATCH, _SMALL_WAVES) if small else (_MAX_AUTO_BATCH, _WAVES)
        size = self.batch_size or max(1, min(cap, math.ceil(n / (threads * waves))))
        return [range(i, min(n, i + size)) for i in range(0, n, size)]

    async def read_chunks(
        self, tasks: Sequence[ChunkTask], *, sink: Sink | None = None
    ) -> AsyncGenerator[tuple[int, ChunkResult], None]:
        """Yield ``(i, result)`` as batches complete; raise the first chunk error, naming the chunk.

        Every batch's result is fetched as soon as it is ready, concurrently, so the
        client receives one batch while it places another and the workers decode more.
        With ``sink`` (direct placement), a batch's results are copied into the output on
        the placement pool's threads (:meth:`~hsds_backends.Backend.placement_pool`) before
        they are yielded, while the event loop goes on receiving (and, over TLS,
        decrypting) the next batches. ``read_chunk`` is derived from this method (one
        task, one batch).
        """
        if not tasks:
            return
        from ._worker import run_batch

        client = await self.get_client()
        sizes = [_result_bytes(t) for t in tasks]
        batches = self._batches(len(tasks), small=max(sizes) <= _SMALL_RESULT)
        payloads = [json.dumps([tasks[i].to_wire() for i in b], separators=(",", ":")) for b in batches]
        token = uuid.uuid4().hex[:12]
        k = len(batches)
        futures = client.map(
            run_batch,
            [self._plugin_name] * k,
            [self._storage_text] * k,
            payloads,
            key=[f"hsds-chunks-{token}-{j}" for j in range(k)],
            pure=False,
            retries=self.retries,
        )
        add_stats(self.name, tasks=k)
        done: ResultQueue[_Answer] = ResultQueue()
        place = functools.partial(_place_answer, sink) if sink is not None and len(tasks) > 1 else None
        pool = self.placement_pool() if place is not None else None

        # Results wait on the workers until gathered: gathering about _GATHER_BUDGET bytes of
        # them at a time keeps the client's memory near the output's size (every batch at once
        # held the whole read a second time while placement caught up: 1.9x the output).
        largest = max(sum(sizes[i] for i in b) for b in batches)
        window = asyncio.Semaphore(max(2, _GATHER_BUDGET // max(1, largest)))

        async def fetch(j: int, fut: Any) -> None:
            async with window:
                await fetch_one(j, fut)

        async def fetch_one(j: int, fut: Any) -> None:
            # The result is gathered in a task of its own that is never cancelled: distributed
            # shares one gather among concurrent requests, and cancelling a request that owns it
            # poisons every later gather of the client (they all raise CancelledError; seen as
            # reads that hung after a chunk error had cut an earlier read short).
            gather = asyncio.ensure_future(_result_of(fut))
            gather.add_done_callback(functools.partial(_release_after, fut))  # the worker may drop it now
            try:
                value = await asyncio.shield(gather)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # our own clean-up
                # cancelled on the cluster, not by this read: say so instead of waiting forever
                error = BackendError(f"dask cancelled task {fut.key} on the cluster: {exc or 'no reason given'}")
                done.fail(_caused_by(error, exc))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, naming the batch's chunks
                done.fail(_caused_by(self._batch_failure(exc, [tasks[i] for i in batches[j]]), exc))
            else:
                try:
                    answer = _unpack(tasks, batches[j], value)
                    if place is not None:
                        await asyncio.get_running_loop().run_in_executor(pool, place, answer)
                except Exception as exc:  # noqa: BLE001 - handed to the consumer
                    done.fail(exc)
                    return
                done.put(answer)

        fetchers = [asyncio.ensure_future(fetch(j, f)) for j, f in enumerate(futures)]
        try:
            for _ in range(k):
                results, error = await done.get()  # raises the first failed batch's error
                for item in results:
                    yield item
                if error is not None:
                    raise error
        finally:
            # Ask the scheduler to drop the batches nobody will read; their gathers are left
            # alone (see fetch), only the fetchers waiting on them are cancelled.
            left = [f for f in futures if not f.done()]
            cancel = asyncio.ensure_future(client.cancel(left)) if left else None
            deadline = asyncio.get_running_loop().time() + _CANCEL_TIMEOUT_S
            await cancel_and_wait(fetchers, timeout=_CANCEL_TIMEOUT_S, what="dask result fetchers")
            # Bounded, and without waiting for the cancel to acknowledge its own cancellation
            # (asyncio.wait_for would): a cancel whose answer never comes (seen after a batch had
            # failed with a chunk error) must not hang the read; dropped futures are released anyway.
            if cancel is not None:
                remaining = max(0.0, deadline - asyncio.get_running_loop().time())
                if not await wait_bounded(cancel, remaining):
                    cancel.cancel()  # stop waiting for the answer; wait_bounded retrieves its outcome

    def _batch_failure(self, exc: BaseException, batch: list[ChunkTask]) -> HsdsBackendsError:
        """Turn a failed dask task (after retries) into our error, naming its chunks."""
        if isinstance(exc, HsdsBackendsError):
            return exc
        ids = ", ".join(t.chunk_id for t in batch[:3]) + (f" and {len(batch) - 3} more" if len(batch) > 3 else "")
        hint = (
            "; install hsds-backends-dask (same version as this client) on the scheduler and every worker"
            if isinstance(exc, (ImportError, RuntimeError)) and ("deserializ" in str(exc) or "No module" in str(exc))
            else ""
        )
        return BackendError(f"dask task for chunks {ids} failed on the cluster: {type(exc).__name__}: {exc}{hint}")

    async def aclose(self) -> None:
        """Close the client, and the embedded cluster if this backend started it. Idempotent."""
        client, cluster, loop = self._client, self._cluster, self._loop
        self._client = self._cluster = self._loop = None
        self._threads_seen = 0
        self._threads_checked = -math.inf
        if client is not None:
            current = asyncio.get_running_loop()
            if loop is None or loop is current:
                await self._close_client(client)
            elif loop.is_running() and not loop.is_closed():
                # made on a loop that still runs in another thread: close it there
                fut = asyncio.run_coroutine_threadsafe(self._close_client(client), loop)
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(fut)
            else:
                await _retire(client, loop)
        await _quiet_close(None, cluster)
        await super().aclose()

    async def _close_client(self, client: Any) -> None:
        if self.scheduler_address is not None:  # leave a shared cluster as we found it
            with contextlib.suppress(Exception):
                await client.unregister_worker_plugin(self._plugin_name)
        await _quiet_close(client, None)


def _temporary_security() -> Any:
    """TLS credentials for the embedded cluster, in memory (every role shares them; encryption required).

    Raises
    ------
    BackendError
        ``cryptography`` is missing: the cluster is not started without TLS.
    """
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError as exc:
        raise BackendError(
            f"the local dask cluster needs TLS credentials and cannot make them: {exc}; "
            "install cryptography (pip install hsds-backends-dask brings it), or set dask_scheduler to a secured cluster"
        ) from exc


async def _retire(client: Any, loop: asyncio.AbstractEventLoop | None) -> None:
    """Close a client whose event loop is not running (stopped, or closed) from another loop."""
    if loop is None or loop.is_closed():
        # its loop and sockets are gone; mark it closed so that its __del__ does not try to use them
        client.status = "closed"
        return

    async def close() -> None:
        await _quiet_close(client, None)

    # the loop is idle: run it once more, in a helper thread (this thread runs the current loop)
    with contextlib.suppress(Exception):
        await asyncio.to_thread(loop.run_until_complete, close())


async def _quiet_close(client: Any, cluster: Any) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            await client.close()
    if cluster is not None:  # a synchronous LocalCluster: close it off this loop
        with contextlib.suppress(Exception):
            await asyncio.to_thread(cluster.close)


#: One batch's answer: its results in order, up to the error that ended it (if any).
_Answer = tuple[list[tuple[int, ChunkResult]], BaseException | None]


def _unpack(tasks: Sequence[ChunkTask], batch: range, value: tuple[str, list[Any]]) -> _Answer:
    """Turn a batch's ``(header, parts)`` (:mod:`._worker`) into its results, naming the chunk of an error."""
    header, parts = value
    entries = json.loads(header)
    results: list[tuple[int, ChunkResult]] = []
    p = 0
    for i, entry in zip(batch, entries, strict=False):
        cid = tasks[i].chunk_id
        if isinstance(entry, dict):
            return results, error_from_wire(entry.get("error") or entry, cid)
        if entry == -1:
            results.append((i, ChunkResult(cid, "missing")))
        else:
            view = memoryview(parts[p]).cast("B")
            p += 1
            results.append((i, ChunkResult(cid, "ok", view, int(entry[1]), int(entry[2]))))
    if len(entries) != len(batch):
        error = BackendError(f"dask batch of {len(batch)} chunks ({tasks[batch[0]].chunk_id} ...) returned {len(entries)} results")
        return results, error
    return results, None


def _place_answer(sink: Sink, answer: _Answer) -> None:
    """Copy a batch's results into the output (on a placement thread); the caller's placement of them is then a no-op."""
    for i, res in answer[0]:
        if res.status == "ok":
            sink(i, res)


def _result_bytes(task: ChunkTask) -> int:
    """:func:`~hsds_backends.tasks.expected_result_bytes`, or 0 for a malformed task (the worker reports it, naming the chunk)."""
    try:
        return expected_result_bytes(task)
    except (HsdsBackendsError, ValueError):
        return 0
