"""Pick one backend per request, with a one-line reason.

Also the built-in plugin holding the default policy (``trylast``), so a site
plugin's ``hsds_backends_select_backend`` runs first and may override it.

Policies (config ``backend_policy``):

- ``auto`` (default): the fastest estimate among the backends that can serve
  the request, within an optional dollar budget. Estimates come from each
  backend's measured latency for requests of the same shape (kind and size
  bucket, :mod:`hsds_backends._latency`) once there is some, else from its
  declared cost model. Bounded exploration (config ``auto_explore``) runs a
  free candidate that has no measurement for the request's shape yet, so a
  backend that is faster than declared gets found.
- ``hsds2021``: HSDS's 2021 rule (docs/hsds-format.md §6.2): the serverless backend
  (the candidate that bills per request, ``Capabilities.costs_money``) iff the request is
  ``nonstrict``, a function is configured and chunks (or points) ≥
  ``aws_lambda_threshold`` × DN count; else the data-node backend
  (``Capabilities.data_nodes`` > 0). Backends are told apart by their capabilities,
  never by name.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import TYPE_CHECKING, Any, Final

from ._latency import LatencyTable, bucket_label
from .config import CORE_KEYS
from .errors import ConfigError, NoBackendError
from .hookspecs import hookimpl
from .model import Backend, Choice, CostEstimate, ReadRequest
from .plugins import is_traced

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import pluggy

__all__ = [
    "select_backend",
    "default_policy",
    "hsds2021_policy",
    "estimate",
    "only_core_implements",
    "explore_factor",
    "candidates_for",
    "rank",
    "POLICIES",
    "EXPLORE_ATTEMPTS",
]

log = logging.getLogger(__name__)

#: Requests of one shape a backend may be explored with before it is given up on for that
#: shape: a first exploration that cold-started it is not measured, so it gets one more.
EXPLORE_ATTEMPTS: Final = 2


def only_core_implements(pm: pluggy.PluginManager, hook: str) -> bool:
    """Return whether the core's built-in policy module is the only implementation of ``hook``.

    Then the reader calls that implementation directly, skipping pluggy's
    dispatch on every request (selection runs on every read and must stay cheap). A plugin
    registered later is seen on the next request. Never true for a manager
    built with ``HSDS_BACKENDS_TRACE`` set, so traced runs log every hook call.
    """
    impls = getattr(pm.hook, hook).get_hookimpls()
    return len(impls) == 1 and impls[0].plugin is _THIS_MODULE and not is_traced(pm)


def estimate(pm: pluggy.PluginManager, backend: Backend, request: ReadRequest) -> CostEstimate:
    """Return the cost estimate for ``backend`` through the ``hsds_backends_estimate_cost`` hook."""
    est: CostEstimate | None = pm.hook.hsds_backends_estimate_cost(backend=backend, request=request)
    return est if est is not None else _measured_or_declared(backend, request)


def _measured_or_declared(backend: Backend, request: ReadRequest) -> CostEstimate:
    ledger = request.ledger
    return ledger.estimate(backend, request) if ledger is not None else backend.estimate_cost(request)


_NO_READINGS: Final = LatencyTable()


def _latency(request: ReadRequest, backend: Backend) -> LatencyTable:
    """The backend's measured latency in the request's ledger (an empty table without one)."""
    ledger = request.ledger
    return ledger.latency(backend) if ledger is not None else _NO_READINGS


def candidates_for(
    request: ReadRequest, names: Sequence[str], get_backend: Callable[[str], Backend]
) -> tuple[list[Backend], list[str]]:
    """Return (backends that can serve ``request``, ``"'name' declined (why)"`` for the others)."""
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
    return candidates, declined


def rank(request: ReadRequest, backends: Sequence[Backend]) -> list[Backend]:
    """Return ``backends`` fastest estimate first (stable for ties)."""
    return sorted(backends, key=lambda b: request.estimate(b).seconds)


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

    1. ``explicit``: the caller's argument (a name or a :class:`Backend`; ``"auto"`` is the
       same as none);
    2. config ``backend`` when it is not ``auto`` (HSDS config key, env ``BACKEND``);
    3. the ``hsds_backends_select_backend`` hook (a site plugin may implement it);
    4. the default policy (config ``backend_policy``: ``auto`` or ``hsds2021``),
       a built-in ``trylast`` hookimpl.

    For 1 and 2 the named backend must be able to serve the request, else
    :class:`NoBackendError` says why (a named backend runs on its embedded
    default even when not configured for automatic use). For 3 and 4 the
    candidates are the installed backends that are configured and can serve
    the request.

    The ``auto`` policy (:func:`default_policy`) picks the lowest estimate —
    measured latency for the request's shape once there is some — and
    explores an unmeasured free candidate when config ``auto_explore`` allows.
    """
    if isinstance(explicit, Backend):
        return _named(explicit, request, "asked for by the caller")
    if explicit and explicit.strip().lower() != "auto":  # "auto" by name = no backend named
        return _named(get_backend(explicit), request, "asked for by the caller")
    name = str(config.get("backend") or "auto").lower()
    if name != "auto":
        return _named(get_backend(name), request, f"config backend={name}")
    candidates, declined = candidates_for(request, names, get_backend)
    if not candidates:
        raise NoBackendError(
            f"no backend can serve {request.plan.meta.id} ({request.num_chunks} chunks): " + "; ".join(declined)
        )
    choice: Choice | None
    if only_core_implements(pm, "hsds_backends_select_backend"):
        choice = hsds_backends_select_backend(request, candidates, config)
    else:
        choice = pm.hook.hsds_backends_select_backend(request=request, candidates=candidates, config=config)
    if choice is None:  # pragma: no cover - the default policy always answers
        choice = default_policy(request, candidates, config)
    log.info("backend %s", choice)  # Choice.__str__: the reason is only built if this is logged
    return choice


def _named(backend: Backend, request: ReadRequest, why: str) -> Choice:
    declined = backend.decline_reason(request)
    if declined is not None and declined != "not configured":
        raise NoBackendError(
            f"backend {backend.name!r} ({why}) cannot serve {request.plan.meta.id} ({request.num_chunks} chunks): {declined}"
        )
    return Choice(backend, why, named=True)


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def explore_factor(config: Mapping[str, Any]) -> float:
    """Return config ``auto_explore`` as a number >= 0 (0 = no exploration).

    Raises
    ------
    ConfigError
        The value is not a number or is negative.
    """
    value = config.get("auto_explore")
    if value is None:
        return float(CORE_KEYS["auto_explore"].default)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    try:
        factor = float(str(value).strip())
    except ValueError:
        factor = -1.0
    if not factor >= 0:  # also rejects nan
        raise ConfigError(
            f"config key 'auto_explore': {value!r} is not a number >= 0; "
            "use e.g. 3 (explore candidates up to 3x the best estimate) or 0 (never explore)"
        )
    return factor


def _explorable(
    request: ReadRequest, est: CostEstimate, b: Backend, best: CostEstimate, factor: float
) -> bool:
    """Whether ``b`` may be run to measure it: unmeasured for this shape, free, finite, and started or cheap enough to start."""
    key = request.shape
    table = _latency(request, b)
    return (
        math.isfinite(est.seconds)
        and not table.measured(key)
        and table.attempts(key) < EXPLORE_ATTEMPTS
        and (est.seconds <= factor * best.seconds or b.started)
        and not b.capabilities.costs_money
    )


def default_policy(request: ReadRequest, candidates: Sequence[Backend], config: Mapping[str, Any]) -> Choice:
    """Choose the candidate with the lowest estimated time within the dollar budget, or explore one.

    Estimates come from :meth:`ReadRequest.estimate`: a backend's measured
    latency for requests of this shape (kind and size bucket of the chunk
    count) once it has served some, else the nearest measured size of the same
    kind, else its declared cost model.

    Exploration: only the chosen backend gets measured, so a candidate whose
    declared estimate is pessimistic would never be tried. When config
    ``auto_explore`` (default 3.0) is > 0 and the best candidate's estimate
    is measured for this request's shape (so a fresh reader's first choice is
    always the lowest estimate), another candidate is run instead if it
    has no measurement for the shape yet (and has not been tried
    :data:`EXPLORE_ATTEMPTS` times for it), its estimate is finite and within
    the budget, it does not cost money, and it is already started or its
    estimate including cold start is within ``auto_explore`` × the best
    estimate. Of several, the lowest estimate goes first. The reason then
    starts with ``auto: exploring NAME``.
    """
    scored = [(request.estimate(b), b) for b in candidates]
    budget = request.budget_dollars
    within = scored if budget is None else [(e, b) for e, b in scored if e.dollars <= budget]
    if not within:
        cheapest = min(scored, key=lambda eb: eb[0].dollars)
        raise NoBackendError(
            f"no backend fits the budget of ${budget:.6f} for {request.num_chunks} chunks; "
            f"the cheapest is {cheapest[1].name!r} at ${cheapest[0].dollars:.6f}: raise the budget"
        )
    best_est, best = min(within, key=lambda eb: eb[0].seconds)
    est, chosen, exploring = best_est, best, False
    if len(within) > 1:
        factor = explore_factor(config)
        key = request.shape
        # explore only against a measured best: an unmeasured best gets measured by running it
        if factor > 0 and _latency(request, best).measured(key):
            trial = [(e, b) for e, b in within if b is not best and _explorable(request, e, b, best_est, factor)]
            if trial:
                est, chosen = min(trial, key=lambda eb: eb[0].seconds)
                exploring = True

    def reason() -> str:
        others = ", ".join(
            f"{b.name} {_fmt_s(e.seconds)}" if math.isfinite(e.seconds) else f"{b.name} not used ({e.detail})"
            for e, b in sorted(scored, key=lambda eb: eb[0].seconds)
            if b is not chosen
        )
        money = f", ${est.dollars:.6f}" if est.dollars else ""
        n = f"{request.num_chunks} {_unit(request)}"
        if exploring:
            kind, bucket = request.shape
            text = (
                f"auto: exploring {chosen.name}: no measurement yet for {kind} reads of {bucket_label(bucket)}; "
                f"{_fmt_s(est.seconds)}{money} for {n} ({est.detail}) vs {best.name} {_fmt_s(best_est.seconds)}"
            )
        else:
            text = f"auto: {chosen.name} fastest at {_fmt_s(est.seconds)}{money} for {n} ({est.detail})"
        text += f"; others: {others}" if others else "; only candidate"
        if budget is not None:
            over = [b.name for e, b in scored if e.dollars > budget]
            if over:
                text += f"; over budget ${budget}: {', '.join(over)}"
        return text

    return Choice(chosen, reason, est)


def _unit(request: ReadRequest) -> str:
    return "chunk" if request.num_chunks == 1 else "chunks"


#: HSDS's default ``aws_lambda_threshold`` (docs/hsds-format.md §6.1), for when no backend declares the key.
_HSDS_LAMBDA_THRESHOLD: Final = 4


def _dn_count(dn: Backend | None, config: Mapping[str, Any]) -> int:
    if dn is not None:
        return dn.capabilities.data_nodes
    if config.get("dn_count"):
        return int(config["dn_count"])
    urls = config.get("dn_urls") or []
    return len(urls) or 1


def hsds2021_policy(request: ReadRequest, candidates: Sequence[Backend], config: Mapping[str, Any]) -> Choice:
    """HSDS's 2021 rule (docs/hsds-format.md §6.2): serverless iff nonstrict, configured and enough chunks, else the DNs.

    The serverless backend is the candidate that runs on a function service
    (``Capabilities.serverless``, or billed per request: ``costs_money``); the DN backend is the one with
    ``Capabilities.data_nodes`` > 0, whose node count is the rule's DN count.
    """
    serverless = next((b for b in candidates if b.capabilities.serverless or b.capabilities.costs_money), None)
    dn = next((b for b in candidates if b.capabilities.data_nodes > 0), None)
    fn = config.get("aws_lambda_chunkread_function")
    threshold = int(config.get("aws_lambda_threshold") or _HSDS_LAMBDA_THRESHOLD)
    dns = _dn_count(dn, config)
    count = request.plan.num_points if request.kind == "points" else request.num_chunks
    what = "points" if request.kind == "points" else "chunks"
    cond = f"nonstrict={request.nonstrict}, function={fn!r}, {count} {what} vs {threshold}×{dns} DNs"
    if request.nonstrict and fn and serverless is not None and count >= threshold * dns:
        return Choice(serverless, f"hsds2021: {serverless.name} ({cond})")
    if dn is not None:
        return Choice(dn, f"hsds2021: {dn.name} ({cond})")
    # the rule said "not serverless": choose among the others
    fallback = default_policy(request, [b for b in candidates if b is not serverless] or candidates, config)
    return Choice(fallback.backend, lambda: f"hsds2021: containers not available ({cond}); {fallback.reason}", fallback.estimate)


#: Named policies for config ``backend_policy``.
POLICIES: dict[str, Callable[[ReadRequest, Sequence[Backend], Mapping[str, Any]], Choice]] = {
    "auto": default_policy,
    "hsds2021": hsds2021_policy,
}


@hookimpl(trylast=True)
def hsds_backends_select_backend(request: ReadRequest, candidates: Sequence[Backend], config: Mapping[str, Any]) -> Choice:
    name = str(config.get("backend_policy") or "auto").lower()
    policy = POLICIES.get(name)
    if policy is None:
        raise ConfigError(f"unknown backend_policy {name!r}; choose one of {sorted(POLICIES)}")
    return policy(request, candidates, config)


@hookimpl(trylast=True)
def hsds_backends_estimate_cost(backend: Backend, request: ReadRequest) -> CostEstimate:
    return _measured_or_declared(backend, request)


_THIS_MODULE: Final = sys.modules[__name__]
