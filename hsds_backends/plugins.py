"""The plugin manager: built-ins, entry-point discovery, validation, lookup.

:func:`get_plugin_manager` builds the manager once (never at import time):
add the specs, register the built-in plugins, load the entry-point group
``hsds_backends``, then ``check_pending()`` so a misspelled hookimpl is an
error. A broken plugin found by discovery is skipped with a warning naming
the entry point and its distribution; asked for by name, it raises with the
cause chained (docs/architecture.md §6).

Environment:

- ``HSDS_BACKENDS_DISABLE_AUTOLOAD=1`` skips entry points (built-ins only).
- ``HSDS_BACKENDS_TRACE=1`` logs every hook call.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Final

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import BackendNotInstalledError, PluginError, UnknownBackendError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from .config import ConfigKey
    from .model import Backend, Capabilities
    from .storage import Storage

__all__ = [
    "KNOWN_BACKENDS",
    "BackendInfo",
    "get_plugin_manager",
    "refresh_plugins",
    "list_backends",
    "backend_names",
    "backend_config_keys",
    "backend_hooks",
    "make_backend",
    "ENTRY_POINT_GROUP",
    "build_plugin_manager",
    "is_traced",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "hsds_backends"

#: Backend name → the distribution that provides it (feeds "not installed" messages).
KNOWN_BACKENDS: Final[dict[str, str]] = {
    "inline": "hsds-backends",
    "lambda": "hsds-backends-lambda",
    "containers": "hsds-backends-containers",
    "dask": "hsds-backends-dask",
}

#: Modules registered before any entry point, like pytest's default_plugins.
BUILTIN_PLUGINS: Final[dict[str, str]] = {"inline": "hsds_backends._inline", "default-policy": "hsds_backends.selector"}


@dataclass(frozen=True)
class BackendInfo:
    """One installed backend as ``hsds-backends backends`` lists it."""

    name: str
    distribution: str
    version: str
    description: str
    capabilities: Capabilities
    plugin: str = ""

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = {k: v for k, v in asdict(self).items() if k != "capabilities"}
        caps = asdict(self.capabilities)
        if caps.get("storage_kinds") is not None:  # a frozenset: JSON has lists
            caps["storage_kinds"] = sorted(caps["storage_kinds"])
        d["capabilities"] = caps
        return d


@dataclass
class _State:
    pm: pluggy.PluginManager
    broken: dict[str, BaseException] = field(default_factory=dict)
    dists: dict[str, tuple[str, str]] = field(default_factory=dict)
    traced: bool = False


_lock = threading.Lock()
_state: _State | None = None
# every manager built here, so list_backends(pm)/make_backend(pm=pm) see its broken plugins too
_STATES: weakref.WeakKeyDictionary[pluggy.PluginManager, _State] = weakref.WeakKeyDictionary()


def _ep_dist(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("?", "?")
    return (dist.metadata["Name"] or "?", dist.version or "?")


def build_plugin_manager(*, blocked: Iterable[str] = (), eps: Iterable[EntryPoint] | None = None) -> pluggy.PluginManager:
    """Build a new plugin manager (the process-wide one is :func:`get_plugin_manager`).

    Parameters
    ----------
    blocked
        Plugin names to block before loading (like pytest's ``-p no:NAME``).
    eps
        Entry points to load instead of discovering the ``hsds_backends`` group.
    """
    return _build(blocked, eps).pm


def _build(blocked: Iterable[str] = (), eps: Iterable[EntryPoint] | None = None) -> _State:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    state = _State(pm)
    for name in blocked:
        pm.set_blocked(name)
    for plugname, modname in BUILTIN_PLUGINS.items():
        if pm.is_blocked(plugname):
            continue
        pm.register(importlib.import_module(modname), name=plugname)
        state.dists[plugname] = ("hsds-backends", _core_version())
    if eps is None and os.environ.get("HSDS_BACKENDS_DISABLE_AUTOLOAD", "").lower() not in ("", "0", "false", "no"):
        eps = ()
    for ep in entry_points(group=ENTRY_POINT_GROUP) if eps is None else eps:
        if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
            continue
        dist = _ep_dist(ep)
        plugin: object = None
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            _check_hooks(pm, plugin, ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
            if plugin is not None and pm.is_registered(plugin):
                pm.unregister(plugin)
            state.broken[ep.name] = exc
            warnings.warn(
                f"skipping hsds_backends plugin {ep.name!r} ({ep.value}) from distribution {dist[0]!r}: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        state.dists[ep.name] = dist
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {getattr(exc, 'plugin', '?')!r} implements a hook that does not exist: {exc}; "
            "hook names start with 'hsds_backends_' (see hsds_backends.hookspecs)"
        ) from exc
    if os.environ.get("HSDS_BACKENDS_TRACE", "").lower() not in ("", "0", "false", "no"):
        state.traced = True
        pm.add_hookcall_monitoring(
            lambda name, impls, kw: log.warning("hook %s(%s) -> %s", name, sorted(kw), [i.plugin_name for i in impls]),
            lambda outcome, name, impls, kw: None,
        )
    _STATES[pm] = state
    return state


def is_traced(pm: pluggy.PluginManager) -> bool:
    """Return whether ``pm`` was built with ``HSDS_BACKENDS_TRACE`` set (its hook calls are logged)."""
    state = _STATES.get(pm)
    return state is not None and state.traced


def _check_hooks(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Raise PluginError if ``plugin`` implements a hook that has no spec (a misspelling)."""
    import difflib

    specs = [n for n in dir(hookspecs) if n.startswith("hsds_backends_")]
    for caller in pm.get_hookcallers(plugin) or ():
        if not caller.has_spec():
            close = difflib.get_close_matches(caller.name, specs, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; hooks are: {specs}"
            raise PluginError(f"plugin {name!r} implements unknown hook {caller.name!r}{hint}")


def _core_version() -> str:
    return __version__


def get_plugin_manager(*, refresh: bool = False) -> pluggy.PluginManager:
    """Return the process-wide plugin manager, building it on first call."""
    return _get_state(refresh).pm


def _get_state(refresh: bool = False) -> _State:
    global _state
    with _lock:
        if _state is None or refresh:
            _state = _build()
        return _state


def refresh_plugins() -> None:
    """Rediscover installed plugins (after ``pip install`` in a running process)."""
    _get_state(refresh=True)


def _classes(state: _State) -> dict[str, tuple[type[Backend], str]]:
    out: dict[str, tuple[type[Backend], str]] = {}
    for impl in state.pm.hook.hsds_backends_backend_classes.get_hookimpls():
        classes: Sequence[type[Backend]] = impl.function() or ()  # type: ignore[assignment]
        for cls in classes:
            if cls.name in out:
                warnings.warn(
                    f"backend {cls.name!r} is provided by both {out[cls.name][1]!r} and {impl.plugin_name!r}; using the first",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            out[cls.name] = (cls, impl.plugin_name)
    return out


def backend_hooks(
    backend_name: str, target: str | type[Backend], *, with_storage: bool = False
) -> tuple[Callable[[], list[type[Backend]]], Callable[..., Backend | None]]:
    """Return the two hooks of a plugin that provides one backend class.

    A backend's ``plugin.py`` is then::

        from hsds_backends.plugins import backend_hooks

        hsds_backends_backend_classes, hsds_backends_make_backend = backend_hooks(
            "mybackend", "hsds_backends_mybackend.backend:MyBackend"
        )

    Parameters
    ----------
    backend_name
        The backend's name (= its entry-point name).
    target
        The backend class, or ``"module:Class"`` to import it on first use (keeps the
        plugin module cheap to import).
    with_storage
        Pass the reader's storage to the constructor (``storage=``): for in-process backends.
    """

    def backend_class() -> type[Backend]:
        if not isinstance(target, str):
            return target
        module, _, attr = target.partition(":")
        cls: type[Backend] = getattr(importlib.import_module(module), attr)
        return cls

    @hookspecs.hookimpl
    def hsds_backends_backend_classes() -> list[type[Backend]]:
        return [backend_class()]

    @hookspecs.hookimpl
    def hsds_backends_make_backend(name: str, config: Mapping[str, Any], storage: Storage | None) -> Backend | None:
        if name != backend_name:
            return None
        cls: Any = backend_class()
        return cls(config, storage=storage) if with_storage else cls(config)  # type: ignore[no-any-return]

    return hsds_backends_backend_classes, hsds_backends_make_backend


def backend_config_keys(pm: pluggy.PluginManager | None = None) -> dict[str, ConfigKey]:
    """Return the config keys every installed backend declares (``Backend.config_keys``).

    Raises
    ------
    PluginError
        Two backends declare the same key (each key has one owner).
    """
    owners: dict[str, str] = {}
    keys: dict[str, ConfigKey] = {}
    for name, (cls, _plugin) in sorted(_classes(_get_state() if pm is None else _state_for(pm)).items()):
        for key, spec in cls.config_keys.items():
            if key in owners and keys[key] is not spec:
                raise PluginError(f"config key {key!r} is declared by both backend {owners[key]!r} and {name!r}; a key has one owner")
            owners[key] = name
            keys[key] = spec
    return keys


def backend_names(pm: pluggy.PluginManager | None = None) -> list[str]:
    """Return the names of installed backends, sorted."""
    return sorted(_classes(_get_state() if pm is None else _state_for(pm)))


def _state_for(pm: pluggy.PluginManager) -> _State:
    return _STATES.get(pm) or _State(pm)


def list_backends(pm: pluggy.PluginManager | None = None) -> list[BackendInfo]:
    """Return name, distribution, version and capabilities of each installed backend."""
    state = _get_state() if pm is None else _state_for(pm)
    infos = []
    for name, (cls, plugin) in sorted(_classes(state).items()):
        dist, ver = state.dists.get(plugin, ("?", "?"))
        infos.append(BackendInfo(name, dist, ver, cls.description, cls.static_capabilities, plugin))
    return infos


def make_backend(
    name: str, config: Mapping[str, Any], pm: pluggy.PluginManager | None = None, *, storage: Storage | None = None
) -> Backend:
    """Build backend ``name``.

    ``storage``, when given, is the caller's open storage, offered to the plugin
    (an in-process backend may read through it instead of opening its own).

    Raises
    ------
    BackendNotInstalledError
        ``name`` is a known backend whose distribution is not installed (the
        message gives the ``pip install`` command), or whose plugin failed to
        load (the cause is chained).
    UnknownBackendError
        No installed plugin provides ``name`` and it is not a known backend;
        the message lists the installed ones.
    """
    state = _get_state() if pm is None else _state_for(pm)
    if not isinstance(name, str) or not name:
        raise UnknownBackendError(f"backend name {name!r} must be a non-empty string; installed backends: {backend_names(state.pm)}")
    if name in state.broken:
        raise BackendNotInstalledError(
            f"backend {name!r} is installed but its plugin failed to load: {state.broken[name]}; "
            f"reinstall it: pip install --force-reinstall {KNOWN_BACKENDS.get(name, name)}"
        ) from state.broken[name]
    backend: Backend | None = state.pm.hook.hsds_backends_make_backend(name=name, config=config, storage=storage)
    if backend is not None:
        if backend.name != name:
            raise PluginError(f"plugin asked for backend {name!r} returned backend {backend.name!r}")
        return backend
    installed = backend_names(state.pm)
    if name in installed:
        raise BackendNotInstalledError(f"backend {name!r} is installed but no plugin built it from this config")
    if name in KNOWN_BACKENDS:
        raise BackendNotInstalledError(f"backend {name!r} is not installed; run: pip install {KNOWN_BACKENDS[name]}")
    raise UnknownBackendError(f"unknown backend {name!r}; installed backends: {installed}")
