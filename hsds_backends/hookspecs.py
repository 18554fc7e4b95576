"""Hook specifications: the plugin contract for chunk-read execution.

A backend plugin is a module of hook implementations registered under the
entry-point group ``hsds_backends``::

    [project.entry-points.hsds_backends]
    mybackend = "hsds_backends_mybackend.plugin"

and written with the :data:`hookimpl` marker::

    from hsds_backends import hookimpl

    @hookimpl
    def hsds_backends_backend_classes():
        return [MyBackend]

    @hookimpl
    def hsds_backends_make_backend(name, config):
        if name == "mybackend":
            return MyBackend(config)

Hooks are synchronous (pluggy calls them synchronously; an ``async def``
hookimpl would return a coroutine, which is not ``None``). They
build and choose :class:`~hsds_backends.model.Backend` objects; the objects do
the I/O. Hook arguments only ever grow: an implementation may accept any
subset of a hook's parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .model import Backend, Choice, CostEstimate, ReadRequest
    from .storage import Storage

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME"]

PROJECT_NAME = "hsds_backends"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def hsds_backends_backend_classes() -> Sequence[type[Backend]]:  # type: ignore[empty-body]
    """Declare the backend classes a plugin provides.

    Called by :func:`hsds_backends.plugins.list_backends` and by the plugin
    manager when it indexes installed backends; no backend is instantiated.
    Each class's ``name`` must equal the plugin's entry-point name, and its
    ``static_capabilities`` say what it can serve (hyperslab, points, query,
    fields, linked chunks, payload limits, concurrency).

    Returns
    -------
    Sequence[type[Backend]]
        The backend classes; an empty sequence for a plugin that only
        implements policy hooks.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def hsds_backends_make_backend(name: str, config: Mapping[str, Any], storage: Storage | None) -> Backend | None:
    """Build the backend called ``name`` from ``config``.

    Called by :func:`hsds_backends.plugins.make_backend` the first time a
    reader needs backend ``name``. Construction must be cheap and do no I/O:
    start processes, clusters and clients lazily on first use.

    Stops at the first non-None result.

    Parameters
    ----------
    name
        The backend asked for (``"inline"``, ``"lambda"``, ...).
    config
        The resolved configuration (:func:`hsds_backends.config.load_config`).
    storage
        The reader's open storage, or ``None``. An in-process backend may read
        through it (the built-in ``inline`` does); a backend whose tasks run
        elsewhere ignores it (accept only ``name`` and ``config``).

    Returns
    -------
    Backend | None
        The backend, or ``None`` if this plugin does not provide ``name``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
       ``storage`` added.
    """


@hookspec(firstresult=True)
def hsds_backends_estimate_cost(backend: Backend, request: ReadRequest) -> CostEstimate | None:
    """Estimate the cost of running ``request`` on ``backend``.

    Called by the default selection policy for every backend that can serve
    the request. The core's built-in implementation (``trylast``) returns
    the reader's ledger estimate
    (:meth:`hsds_backends._ledger.Ledger.estimate`): the backend's declared
    ``estimate_cost(request)`` with its time replaced by the backend's
    measured latency for requests of the same shape once there is some. A
    site plugin may return its own figure for some backends; it is used as
    is. While no plugin implements this hook, the reader asks its ledger
    directly (no per-request hook dispatch).

    Stops at the first non-None result.

    Parameters
    ----------
    backend
        A backend whose ``can_serve(request)`` is true.
    request
        The read: its plan (kind, chunk count, bytes) and options.

    Returns
    -------
    CostEstimate | None
        Seconds, dollars and a one-line detail; ``None`` to defer to the next
        implementation.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def hsds_backends_select_backend(
    request: ReadRequest, candidates: Sequence[Backend], config: Mapping[str, Any]
) -> Choice | None:
    """Choose the backend that runs ``request``.

    Called by :func:`hsds_backends.selector.select_backend` when neither the
    caller nor the config names a backend (config ``backend: auto``). The
    core's default policy is a built-in implementation marked ``trylast``, so
    a site plugin's implementation runs first and may override it (while no
    plugin implements this hook, the core calls its policy directly).

    Stops at the first non-None result.

    Parameters
    ----------
    request
        The read to run.
    candidates
        Installed, configured backends that can serve the request, in a
        stable order.
    config
        The resolved configuration.

    Returns
    -------
    Choice | None
        The chosen backend with a one-line reason, or ``None`` to defer.

    .. versionadded:: 0.1
    """
