"""HSDS-style configuration: ``config.yml`` plus environment overrides.

HSDS resolves a key from the command line, then an env var named ``KEY.upper()``, then the
yml file, and casts overrides by the type of the yml value (hsds-format.md §6.5). We keep
those rules and the key names (so an HSDS ``config.yml`` works as is) but drop the pitfalls:

- a boolean override is parsed, not ``bool(str)``: ``false``/``FALSE``/``0`` are ``False``
  (HSDS turns ``HTTP_COMPRESSION=false`` into ``True``, §6.5 step 3);
- a value that fails its cast raises :class:`~hsds_backends.errors.ConfigError` naming the
  key, the value and where it came from (HSDS silently keeps the string);
- keys we know are read from the environment even when the yml does not list them
  (HSDS reads env only for keys present in the file, §6.5 step 4);
- types come from our key table (:data:`DEFAULTS`), not from whether the yml value is null.

Precedence, per key (first that is set wins)::

    overrides argument  >  env HSDS_BACKENDS_<KEY>  >  env <KEY>  >  config.yml  >  DEFAULTS

``<KEY>`` is the key upper-cased (``aws_lambda_threshold`` → ``AWS_LAMBDA_THRESHOLD``), as in
HSDS. The ``HSDS_BACKENDS_`` form wins so a site can configure this package without
changing a variable HSDS itself also reads (``TIMEOUT``, ``BACKEND`` ...). Empty env values
are ignored, as current HSDS does; ``None`` in ``overrides`` is ignored too, so an argparse
namespace can be passed as is; a yml ``null`` means "not set" (the default applies).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from .errors import ConfigError

__all__ = [
    "DEFAULTS",
    "ENV_PREFIX",
    "SECRET_KEYS",
    "SIZE_KEYS",
    "Config",
    "find_config_file",
    "load_config",
    "parse_bool",
    "parse_size",
]

#: Our known keys and their defaults. Names follow HSDS's ``admin/config/config.yml`` (§6.1, §6.5).
DEFAULTS: Final[dict[str, Any]] = {
    "backend": "auto",
    "backend_policy": "auto",
    "root_dir": None,
    "bucket_name": "hsdstest",
    "aws_s3_gateway": None,
    "aws_region": "us-east-1",
    "aws_access_key_id": None,
    "aws_secret_access_key": None,
    "aws_session_token": None,
    "aws_lambda_chunkread_function": None,
    "aws_lambda_threshold": 4,
    "aws_lambda_max_invoke": 1000,
    "aws_lambda_gateway": None,
    "dn_urls": [],
    "dn_count": None,
    "max_tasks_per_node_per_request": 16,
    "dask_scheduler": None,
    "max_workers": None,  # None: all cores
    "chunk_mem_cache_size": "128m",
    "timeout": 30,
    "dn_max_retries": 3,
    "dn_retry_backoff_exp": 0.1,
    "failover": "auto",  # auto (only for backends the selector chose) | always | never
    "hedge_multiple": 0.0,  # 0 = no hedging
    "hedge_min_seconds": 0.05,
    # auto policy: run an unmeasured free candidate to measure it, if started or its estimate
    # (with cold start) is within this many times the best estimate; 0 = never explore
    "auto_explore": 3.0,
}

#: Keys holding byte sizes: ``"128m"`` → 134217728 (§6.5 step 3: k/m/g are ×1024, 1024², 1024³).
SIZE_KEYS: Final[frozenset[str]] = frozenset({"chunk_mem_cache_size"})

#: Keys whose values ``repr``/``to_dict(redact=True)`` hide. Any key whose name contains
#: ``secret``, ``password`` or ``token`` is hidden too.
SECRET_KEYS: Final[frozenset[str]] = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})

#: Prefix of the env vars that win over the plain ``KEY.upper()`` ones.
ENV_PREFIX: Final = "HSDS_BACKENDS_"

_REDACTED: Final = "<redacted>"
_SECRET_WORDS: Final = ("secret", "password", "token")
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_BOOL_SPELLINGS: Final = "true/false, 1/0, yes/no, on/off (any case)"
_SIZE_RE: Final = re.compile(r"^(\d+)([kmg])?$", re.IGNORECASE)
_SIZE_FACTORS: Final = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _is_secret(key: str) -> bool:
    return key in SECRET_KEYS or any(w in key.lower() for w in _SECRET_WORDS)


# -- casters ----------------------------------------------------------------------------------
# Each caster takes (key, value, source) and returns the typed value or raises ConfigError.
# Casters accept values that already have the right type, so casting twice is harmless.

_Caster = Callable[[str, Any, str], Any]


def _bad(key: str, value: Any, source: str, what: str, hint: str) -> ConfigError:
    shown = _REDACTED if _is_secret(key) else repr(value)
    return ConfigError(f"config key {key!r}: {shown} from {source} is not {what}; {hint}")


def parse_bool(value: Any, *, key: str = "value", source: str = "argument") -> bool:
    """Parse a boolean: ``true/false``, ``1/0``, ``yes/no``, ``on/off`` in any case.

    ``bool`` values pass through; the ints 0 and 1 are accepted. Anything else raises
    :class:`~hsds_backends.errors.ConfigError` naming ``key``, ``value`` and ``source``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _bad(key, value, source, "a boolean", f"use one of {_BOOL_SPELLINGS}")


def parse_size(value: Any, *, key: str = "value", source: str = "argument") -> int:
    """Parse a byte size: an int, or digits with an optional ``k``/``m``/``g`` suffix (×1024ⁿ)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value.strip())
        if m:
            factor = _SIZE_FACTORS[m.group(2).lower() if m.group(2) else None]
            return int(m.group(1)) * factor
    raise _bad(key, value, source, "a size", "use bytes or digits with a k/m/g suffix, such as 4096, 512k or 128m")


def _cast_bool(key: str, value: Any, source: str) -> bool:
    return parse_bool(value, key=key, source=source)


def _cast_size(key: str, value: Any, source: str) -> int:
    return parse_size(value, key=key, source=source)


def _cast_int(key: str, value: Any, source: str) -> int:
    if isinstance(value, bool):
        raise _bad(key, value, source, "an integer", "use a whole number such as 4")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _bad(key, value, source, "an integer", "use a whole number such as 4")


def _cast_float(key: str, value: Any, source: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _bad(key, value, source, "a number", "use a number such as 0.5")


def _cast_number(key: str, value: Any, source: str) -> int | float:
    """Int if the value is integral text or an int, else float (for timeouts: 30 or 2.5)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    return _cast_float(key, value, source)


def _cast_str(key: str, value: Any, source: str) -> str:
    if isinstance(value, (list, tuple, dict, set)):
        raise _bad(key, value, source, "a string", "use a single value")
    return value if isinstance(value, str) else str(value)


def _cast_lower(key: str, value: Any, source: str) -> str:
    # Loose on purpose: the plugin manager validates backend names against what is installed.
    return _cast_str(key, value, source).strip().lower()


def _cast_list(key: str, value: Any, source: str) -> list[str]:
    """A yml list, or a comma-separated string (env): ``"http://a:6101, http://b:6101"``."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, (list, tuple, dict, set)) or item is None:
                raise _bad(key, value, source, "a list of strings", "use a yml list or comma-separated strings")
            text = str(item).strip()
            if text:
                out.append(text)
        return out
    raise _bad(key, value, source, "a list", "use a yml list or comma-separated strings")


def _with_minimum(caster: _Caster, minimum: float, strict: bool = False) -> _Caster:
    def cast(key: str, value: Any, source: str) -> Any:
        out = caster(key, value, source)
        if out < minimum or (strict and out == minimum):
            bound = f"> {minimum}" if strict else f">= {minimum}"
            raise _bad(key, value, source, f"{bound}", f"set {key} to a value {bound}")
        return out

    return cast


def _optional(caster: _Caster) -> _Caster:
    def cast(key: str, value: Any, source: str) -> Any:
        return None if value is None else caster(key, value, source)

    return cast


_CASTERS: Final[dict[str, _Caster]] = {
    "backend": _cast_lower,
    "backend_policy": _cast_lower,
    "root_dir": _optional(_cast_str),
    "bucket_name": _cast_str,
    "aws_s3_gateway": _optional(_cast_str),
    "aws_region": _cast_str,
    "aws_access_key_id": _optional(_cast_str),
    "aws_secret_access_key": _optional(_cast_str),
    "aws_session_token": _optional(_cast_str),
    "aws_lambda_chunkread_function": _optional(_cast_str),
    "aws_lambda_threshold": _with_minimum(_cast_int, 0),
    "aws_lambda_max_invoke": _with_minimum(_cast_int, 1),
    "aws_lambda_gateway": _optional(_cast_str),
    "dn_urls": _cast_list,
    "dn_count": _optional(_with_minimum(_cast_int, 1)),
    "max_tasks_per_node_per_request": _with_minimum(_cast_int, 1),
    "dask_scheduler": _optional(_cast_str),
    "max_workers": _optional(_with_minimum(_cast_int, 1)),
    "chunk_mem_cache_size": _cast_size,
    "timeout": _with_minimum(_cast_number, 0, strict=True),
    "dn_max_retries": _with_minimum(_cast_int, 0),
    "dn_retry_backoff_exp": _with_minimum(_cast_float, 0),
    "failover": _cast_lower,
    "hedge_multiple": _with_minimum(_cast_float, 0),
    "hedge_min_seconds": _with_minimum(_cast_float, 0),
    "auto_explore": _with_minimum(_cast_float, 0),
}
assert _CASTERS.keys() == DEFAULTS.keys()


def _caster_for(key: str, like: Any = None) -> _Caster:
    """Caster of a known key, else one inferred from an existing value (HSDS: cast by the yml type)."""
    if key in _CASTERS:
        return _CASTERS[key]
    if key in SIZE_KEYS:
        return _cast_size
    if isinstance(like, bool):
        return _cast_bool
    if isinstance(like, int):
        return _cast_int
    if isinstance(like, float):
        return _cast_float
    if isinstance(like, (list, tuple)):
        return _cast_list
    if isinstance(like, str):
        return _cast_str
    return lambda _key, value, _source: value  # null/unknown/mapping: kept as given


# -- Config -----------------------------------------------------------------------------------


class Config(Mapping[str, Any]):
    """An immutable mapping of resolved config values.

    ``Config(data)`` is :data:`DEFAULTS` updated with ``data`` (known keys are cast; ``None``
    sets ``None``). Use
    :func:`load_config` to read a file and the environment. ``repr`` hides secrets
    (:data:`SECRET_KEYS`); :meth:`to_dict` returns the real values unless ``redact=True``.
    List values are returned as copies, so the mapping cannot be changed through them.
    """

    __slots__ = ("_data", "_sources")

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for key, default in DEFAULTS.items():
            values[key] = _caster_for(key)(key, default, "defaults")
            sources[key] = "default"
        for key, value in (data or {}).items():
            values[key] = None if value is None else _caster_for(key, value)(key, value, "argument")
            sources[key] = "argument"
        self._data: dict[str, Any] = values
        self._sources: dict[str, str] = sources

    @classmethod
    def _resolved(cls, values: dict[str, Any], sources: dict[str, str]) -> Config:
        self = cls.__new__(cls)
        self._data = values
        self._sources = sources
        return self

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return copy.deepcopy(value) if isinstance(value, (list, dict)) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "_sources"):
            raise AttributeError("Config is immutable; use config.with_overrides(key=value)")
        object.__setattr__(self, name, value)

    def __reduce__(self) -> Any:
        return (Config._resolved, (dict(self._data), dict(self._sources)))

    def source(self, key: str) -> str:
        """Return where ``key``'s value came from: ``default``, ``file <path>``, ``env <NAME>``, ``override``."""
        return self._sources[key]

    def with_overrides(self, **overrides: Any) -> Config:
        """Return a copy with ``overrides`` applied (cast like any override; ``None`` sets ``None``)."""
        values = dict(self._data)
        sources = dict(self._sources)
        for key, value in overrides.items():
            values[key] = None if value is None else _caster_for(key, values.get(key))(key, value, "override")
            sources[key] = "override"
        return Config._resolved(values, sources)

    def to_dict(self, *, redact: bool = False) -> dict[str, Any]:
        """Return a plain ``dict`` copy; with ``redact=True`` secret values become ``"<redacted>"``."""
        out = copy.deepcopy(self._data)
        if redact:
            for key, value in out.items():
                if value is not None and _is_secret(key):
                    out[key] = _REDACTED
        return out

    def __repr__(self) -> str:
        return f"Config({self.to_dict(redact=True)!r})"

    __str__ = __repr__


# -- loading ----------------------------------------------------------------------------------


def find_config_file(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """Return the config file to read, or ``None``.

    ``path`` (a file, or a folder holding ``config.yml``/``config.yaml``) if given, and it
    must exist; else ``$CONFIG_DIR/config.yml`` or ``config.yaml`` (hsds-format.md §6.5 step 1;
    a ``CONFIG_DIR`` that is not a folder is an error); else ``None``. We do not search
    ``./``, ``/config`` or ``/etc/hsds`` as HSDS does: an unexpected file should not change a
    library's behaviour.
    """
    env = os.environ if env is None else env
    if path is not None:
        p = os.fspath(path)
        if os.path.isdir(p):
            found = _first_file(p)
            if found is None:
                raise ConfigError(f"config folder {p!r} holds no config.yml or config.yaml")
            return found
        if not os.path.isfile(p):
            raise ConfigError(f"config file {p!r} does not exist; pass an existing path or None")
        return p
    config_dir = env.get("CONFIG_DIR")
    if config_dir:
        if not os.path.isdir(config_dir):
            raise ConfigError(f"CONFIG_DIR={config_dir!r} is not a folder; fix or unset CONFIG_DIR")
        return _first_file(config_dir)
    return None


def _first_file(folder: str) -> str | None:
    for name in ("config.yml", "config.yaml"):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _read_yml(path: str) -> dict[str, Any]:
    import yaml  # only needed when there is a file

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of keys to values, not {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"config file {path!r}: key {key!r} is not a string")
    return data


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve the configuration (see the module docstring for the rules).

    Parameters
    ----------
    path
        A ``config.yml`` (or a folder holding one). It must exist. ``None``: use
        ``$CONFIG_DIR/config.yml`` (or ``.yaml``) if ``CONFIG_DIR`` is set, else no file.
    env
        Environment to read (default ``os.environ``); also where ``CONFIG_DIR`` is looked up.
    overrides
        Values that win over everything; ``None`` values are skipped.

    Returns
    -------
    Config
        Every key of :data:`DEFAULTS` plus every key of the file, cast by type.

    Raises
    ------
    ConfigError
        Missing explicit file, bad YAML, a file that is not a mapping, a ``CONFIG_DIR`` that
        is not a folder, or a value that fails its cast (the message names key, value, source).
    """
    env = os.environ if env is None else env
    overrides = overrides or {}
    file = find_config_file(path, env)
    yml = _read_yml(file) if file else {}

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    keys = list(DEFAULTS)
    keys += [k for k in yml if k not in DEFAULTS]
    keys += [k for k in overrides if k not in DEFAULTS and k not in yml]
    for key in keys:
        yml_value = yml.get(key)
        cast = _caster_for(key, yml_value)
        name = key.upper()
        if overrides.get(key) is not None:
            value, source = overrides[key], "override"
        elif env.get(ENV_PREFIX + name):
            value, source = env[ENV_PREFIX + name], f"env {ENV_PREFIX + name}"
        elif env.get(name):
            value, source = env[name], f"env {name}"
        elif yml_value is not None:
            value, source = yml_value, f"file {file}"
        elif key in DEFAULTS:
            value, source = DEFAULTS[key], "default"
        elif key in yml:
            values[key], sources[key] = None, f"file {file}"  # an unknown key set to null
            continue
        else:
            continue
        values[key] = cast(key, value, source)
        sources[key] = source
    return Config._resolved(values, sources)
