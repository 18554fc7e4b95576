"""Pick one backend per request, with a one-line reason.

Also the built-in plugin holding the default policy (``trylast``), so a site
plugin's ``hsds_backends_select_backend`` runs first and may override it.

Policies (config ``backend_policy``):

- ``auto`` (default): the fastest estimate among the backends that can serve
  the request, within an optional dollar budget.
- ``hsds2021``: HSDS's 2021 rule (hsds-format.md §6.2): Lambda iff the request
  is ``nonstrict``, a function is configured and chunks (or points) ≥
  ``aws_lambda_threshold`` × DN count; else containers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, NoBackendError
from .hookspecs import hookimpl
from .model import Backend, Choice, CostEstimate, ReadRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import pluggy

__all__ = ["select_backend", "default_policy", "hsds2021_policy", "estimate", "candidates_for", "rank", "POLICIES"]

log = logging.getLogger(__name__)


def estimate(pm: pluggy.PluginManager, backend: Backend, request: ReadRequest) -> CostEstimate:
    """Return the cost estimate for ``backend`` through the ``hsds_backends_estimate_cost`` hook."""
    est: CostEstimate | None = pm.hook.hsds_backends_estimate_cost(backend=backend, request=request)
    return est if est is not None else backend.estimate_cost(request)


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

    1. ``explicit``: the caller's argument (a name or a :class:`Backend`);
    2. config ``backend`` when it is not ``auto`` (HSDS config key, env ``BACKEND``);
    3. the ``hsds_backends_select_backend`` hook (a site plugin may implement it);
    4. the default policy (config ``backend_policy``: ``auto`` or ``hsds2021``),
       a built-in ``trylast`` hookimpl.

    For 1 and 2 the named backend must be able to serve the request, else
    :class:`NoBackendError` says why (a named backend runs on its embedded
    default even when not configured for automatic use). For 3 and 4 the
    candidates are the installed backends that are configured and can serve
    the request.
    """
    if isinstance(explicit, Backend):
        return _named(explicit, request, "asked for by the caller")
    if explicit:
        return _named(get_backend(explicit), request, "asked for by the caller")
    name = str(config.get("backend") or "auto").lower()
    if name != "auto":
        return _named(get_backend(name), request, f"config backend={name}")
    candidates, declined = candidates_for(request, names, get_backend)
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
    if declined is not None and declined != "not configured":
        raise NoBackendError(
            f"backend {backend.name!r} ({why}) cannot serve {request.plan.meta.id} ({request.num_chunks} chunks): {declined}"
        )
    return Choice(backend, why)


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def default_policy(request: ReadRequest, candidates: Sequence[Backend], config: Mapping[str, Any]) -> Choice:
    """Choose the candidate with the lowest estimated time within the dollar budget."""
    scored = [(request.estimate(b), b) for b in candidates]
    within = [(e, b) for e, b in scored if request.budget_dollars is None or e.dollars <= request.budget_dollars]
    if not within:
        cheapest = min(scored, key=lambda eb: eb[0].dollars)
        raise NoBackendError(
            f"no backend fits the budget of ${request.budget_dollars:.6f} for {request.num_chunks} chunks; "
            f"the cheapest is {cheapest[1].name!r} at ${cheapest[0].dollars:.6f}: raise the budget"
        )
    est, best = min(within, key=lambda eb: eb[0].seconds)
    others = ", ".join(f"{b.name} {_fmt_s(e.seconds)}" for e, b in sorted(scored, key=lambda eb: eb[0].seconds) if b is not best)
    money = f", ${est.dollars:.6f}" if est.dollars else ""
    reason = f"auto: {best.name} fastest at {_fmt_s(est.seconds)}{money} for {request.num_chunks} {_unit(request)}"
    reason += f" ({est.detail})" + (f"; others: {others}" if others else "; only candidate")
    if request.budget_dollars is not None:
        over = [b.name for e, b in scored if e.dollars > request.budget_dollars]
        if over:
            reason += f"; over budget ${request.budget_dollars}: {', '.join(over)}"
    return Choice(best, reason)


def _unit(request: ReadRequest) -> str:
    return "chunk" if request.num_chunks == 1 else "chunks"


def _dn_count(candidates: Sequence[Backend], config: Mapping[str, Any]) -> int:
    for b in candidates:
        n = getattr(b, "node_count", None)
        if b.name == "containers" and isinstance(n, int) and n > 0:
            return n
    if config.get("dn_count"):
        return int(config["dn_count"])
    urls = config.get("dn_urls") or []
    return len(urls) or 1


def hsds2021_policy(request: ReadRequest, candidates: Sequence[Backend], config: Mapping[str, Any]) -> Choice:
    """HSDS's 2021 rule (hsds-format.md §6.2): Lambda iff nonstrict, configured and enough chunks, else containers."""
    by_name = {b.name: b for b in candidates}
    fn = config.get("aws_lambda_chunkread_function")
    threshold = int(config.get("aws_lambda_threshold") or 4)
    dns = _dn_count(candidates, config)
    count = request.plan.num_points if request.kind == "points" else request.num_chunks
    what = "points" if request.kind == "points" else "chunks"
    cond = f"nonstrict={request.nonstrict}, function={fn!r}, {count} {what} vs {threshold}×{dns} DNs"
    if request.nonstrict and fn and "lambda" in by_name and count >= threshold * dns:
        return Choice(by_name["lambda"], f"hsds2021: lambda ({cond})")
    if "containers" in by_name:
        return Choice(by_name["containers"], f"hsds2021: containers ({cond})")
    # the rule said "not Lambda": choose among the others
    fallback = default_policy(request, [b for b in candidates if b.name != "lambda"] or candidates, config)
    return Choice(fallback.backend, f"hsds2021: containers not available ({cond}); {fallback.reason}")


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
    return backend.estimate_cost(request)
