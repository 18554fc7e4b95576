"""Pick one backend per request, with a one-line reason.

Also the built-in plugin holding the default policy (``trylast``), so a site
plugin's ``hsds_backends_select_backend`` runs first and may override it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import NoBackendError
from .hookspecs import hookimpl
from .model import Backend, Choice, CostEstimate, ReadRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import pluggy

__all__ = ["select_backend", "default_policy", "estimate"]

log = logging.getLogger(__name__)


def estimate(pm: pluggy.PluginManager, backend: Backend, request: ReadRequest) -> CostEstimate:
    """Return the cost estimate for ``backend`` through the ``hsds_backends_estimate_cost`` hook."""
    est = pm.hook.hsds_backends_estimate_cost(backend=backend, request=request)
    return est if est is not None else backend.estimate_cost(request)


def select_backend(
    request: ReadRequest,
    *,
    explicit: str | Backend | None,
    config: Mapping[str, Any],
    pm: pluggy.PluginManager,
    get_backend: Callable[[str], Backend],
    names: Sequence[str],
) -> Choice:
    """Choose the backend that runs ``request``.

    Precedence, first match wins:

    1. ``explicit``: the caller's argument (a name or a :class:`Backend`);
    2. config ``backend`` when it is not ``auto`` (HSDS config key, env ``BACKEND``);
    3. the ``hsds_backends_select_backend`` hook (a site plugin may implement it);
    4. the default policy (:func:`default_policy`), a built-in ``trylast`` hookimpl.

    For 1 and 2 the named backend must be able to serve the request, else
    :class:`NoBackendError` says why. For 3 and 4 the candidates are every
    installed backend that is configured and can serve the request.
    """
    if isinstance(explicit, Backend):
        return _named(explicit, request, "asked for by the caller")
    if explicit:
        return _named(get_backend(explicit), request, "asked for by the caller")
    name = str(config.get("backend") or "auto").lower()
    if name != "auto":
        return _named(get_backend(name), request, f"config backend={name}")
    candidates: list[Backend] = []
    declined: list[str] = []
    for n in names:
        try:
            b = get_backend(n)
        except Exception as exc:  # noqa: BLE001 - an unbuildable backend is just not a candidate
            declined.append(f"{n!r} declined ({exc})")
            continue
        why = b.decline_reason(request)
        if why is None:
            candidates.append(b)
        else:
            declined.append(f"{n!r} declined ({why})")
    if not candidates:
        raise NoBackendError(
            f"no backend can serve {request.plan.meta.id} ({request.num_chunks} chunks): " + "; ".join(declined)
        )
    choice: Choice | None = pm.hook.hsds_backends_select_backend(request=request, candidates=candidates, config=config)
    if choice is None:  # pragma: no cover - the default policy always answers
        choice = default_policy(request, candidates, config)
    log.info("backend %s: %s", choice.backend.name, choice.reason)
    return choice


def _named(backend: Backend, request: ReadRequest, why: str) -> Choice:
    declined = backend.decline_reason(request)
    if declined is not None:
        raise NoBackendError(
            f"backend {backend.name!r} ({why}) cannot serve {request.plan.meta.id} ({request.num_chunks} chunks): {declined}"
        )
    return Choice(backend, why)


def default_policy(request: ReadRequest, candidates: Sequence[Backend], config: Mapping[str, Any]) -> Choice:
    """Choose the candidate with the lowest estimated time within the dollar budget."""
    best: tuple[float, Backend, CostEstimate] | None = None
    for b in candidates:
        est = request.estimate(b)
        if request.budget_dollars is not None and est.dollars > request.budget_dollars:
            continue
        if best is None or est.seconds < best[0]:
            best = (est.seconds, b, est)
    if best is None:
        raise NoBackendError(f"no backend fits the budget of ${request.budget_dollars} for {request.num_chunks} chunks")
    _, b, est = best
    reason = f"auto: fastest estimate {est.seconds * 1e3:.1f} ms of {len(candidates)} candidate(s) ({est.detail})"
    return Choice(b, reason)


@hookimpl(trylast=True)
def hsds_backends_select_backend(request: ReadRequest, candidates: Sequence[Backend], config: Mapping[str, Any]) -> Choice:
    return default_policy(request, candidates, config)


@hookimpl(trylast=True)
def hsds_backends_estimate_cost(backend: Backend, request: ReadRequest) -> CostEstimate:
    return backend.estimate_cost(request)
