"""HSDS-style configuration: ``config.yml`` plus environment overrides.

HSDS resolves a key from the command line, then an env var named ``KEY.upper()``, then the
yml file, and casts overrides by the type of the yml value (docs/hsds-format.md §6.5). We keep
those rules and the key names (so an HSDS ``config.yml`` works as is) but drop the pitfalls:

- a boolean override is parsed, not ``bool(str)``: ``false``/``FALSE``/``0`` are ``False``
  (HSDS turns ``HTTP_COMPRESSION=false`` into ``True``, §6.5 step 3);
- a value that fails its cast raises :class:`~hsds_backends.errors.ConfigError` naming the
  key, the value and where it came from (HSDS silently keeps the string);
- keys we know are read from the environment even when the yml does not list them
  (HSDS reads env only for keys present in the file, §6.5 step 4);
- types come from the key tables (:data:`CORE_KEYS` and each backend's ``config_keys``), not
  from whether the yml value is null.

Precedence, per key (first that is set wins)::

    overrides argument  >  env HSDS_BACKENDS_<KEY>  >  env <KEY>  >  config.yml  >  the key's default

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
from dataclasses import dataclass
from typing import Any, Final

from .errors import ConfigError
from .plugins import backend_config_keys

__all__ = [
    "CORE_KEYS",
    "DEFAULTS",
    "ENV_PREFIX",
    "SECRET_KEYS",
    "SIZE_KEYS",
    "Config",
    "ConfigKey",
    "Caster",
    "as_bool",
    "as_float",
    "as_int",
    "as_list",
    "as_lower",
    "as_number",
    "as_size",
    "as_str",
    "at_least",
    "CREDENTIAL_ENV",
    "credentials_env",
    "find_config_file",
    "is_unset",
    "known_keys",
    "load_config",
    "option",
    "optional",
    "parse_bool",
    "parse_size",
]

#: Keys holding byte sizes: ``"128m"`` → 134217728 (docs/hsds-format.md §6.5 step 3: k/m/g are ×1024, 1024², 1024³).
SIZE_KEYS: Final[frozenset[str]] = frozenset({"chunk_mem_cache_size", "chunk_bytes_limit", "read_bytes_limit"})

#: Keys whose values ``repr``/``to_dict(redact=True)`` hide. Any key whose name contains
#: ``secret``, ``password`` or ``token`` is hidden too.
SECRET_KEYS: Final[frozenset[str]] = frozenset(
    {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "azure_connection_string"}
)

#: Prefix of the env vars that win over the plain ``KEY.upper()`` ones.
ENV_PREFIX: Final = "HSDS_BACKENDS_"

#: The default of config ``chunk_bytes_limit`` (256 MiB; HDF5 itself allows chunks up to 4 GiB).
DEFAULT_CHUNK_BYTES_LIMIT: Final = 256 * 1024 * 1024

#: HSDS's ``config.yml`` ships this for keys it leaves unset (docs/hsds-format.md §6.1).
HSDS_UNSET: Final = "xxx"

_REDACTED: Final = "<redacted>"
_SECRET_WORDS: Final = ("secret", "password", "token")
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_BOOL_SPELLINGS: Final = "true/false, 1/0, yes/no, on/off (any case)"
_SIZE_RE: Final = re.compile(r"^(\d+)([kmg])?$", re.IGNORECASE)
_SIZE_FACTORS: Final = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _is_secret(key: str) -> bool:
    return key in SECRET_KEYS or any(w in key.lower() for w in _SECRET_WORDS)


def is_secret(key: str) -> bool:
    """Whether config ``key`` holds a secret (credentials, tokens, passwords): never shown, never written to a file."""
    return _is_secret(key)


# -- casters ----------------------------------------------------------------------------------
# Each caster takes (key, value, source) and returns the typed value or raises ConfigError.
# Casters accept values that already have the right type, so casting twice is harmless.

Caster = Callable[[str, Any, str], Any]


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


def as_bool(key: str, value: Any, source: str) -> bool:
    return parse_bool(value, key=key, source=source)


def as_size(key: str, value: Any, source: str) -> int:
    return parse_size(value, key=key, source=source)


def _from_text(key: str, value: Any, source: str, parse: Callable[[str], Any], what: str, hint: str) -> Any:
    """``parse`` a text value; anything else (or a parse failure) is an error naming the key."""
    if isinstance(value, str):
        try:
            return parse(value.strip())
        except ValueError:
            pass
    raise _bad(key, value, source, what, hint)


def as_int(key: str, value: Any, source: str) -> int:
    """An integer: an int, an integral float, or digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return int(_from_text(key, value, source, int, "an integer", "use a whole number such as 4"))  # a bool is an error


def as_float(key: str, value: Any, source: str) -> float:
    """A number as a float."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float(_from_text(key, value, source, float, "a number", "use a number such as 0.5"))


def as_number(key: str, value: Any, source: str) -> int | float:
    """Int if the value is integral text or an int, else float (for timeouts: 30 or 2.5)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    return as_float(key, value, source)


def as_str(key: str, value: Any, source: str) -> str:
    if isinstance(value, (list, tuple, dict, set)):
        raise _bad(key, value, source, "a string", "use a single value")
    return value if isinstance(value, str) else str(value)


def as_lower(key: str, value: Any, source: str) -> str:
    # Loose on purpose: the plugin manager validates backend names against what is installed.
    return as_str(key, value, source).strip().lower()


def as_list(key: str, value: Any, source: str) -> list[str]:
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


def at_least(caster: Caster, minimum: float, strict: bool = False) -> Caster:
    def cast(key: str, value: Any, source: str) -> Any:
        out = caster(key, value, source)
        if out < minimum or (strict and out == minimum):
            bound = f"> {minimum}" if strict else f">= {minimum}"
            raise _bad(key, value, source, f"{bound}", f"set {key} to a value {bound}")
        return out

    return cast


def optional(caster: Caster) -> Caster:
    def cast(key: str, value: Any, source: str) -> Any:
        return None if value is None else caster(key, value, source)

    return cast


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """A config key's default, caster and one-line meaning.

    The core declares its keys in :data:`CORE_KEYS`; a backend declares its own in
    ``Backend.config_keys`` (collected through the ``hsds_backends_backend_classes`` hook,
    :func:`known_keys`), so each key has exactly one owner.
    """

    default: Any
    """Value when the key is set nowhere (``None``: unset)."""
    cast: Caster
    """``cast(key, value, source)`` → the typed value, or :class:`ConfigError` naming all three."""
    doc: str = ""
    """What the key means (one line, for READMEs and error hints)."""


#: The core's keys. Names follow HSDS's ``admin/config/config.yml`` where HSDS has the key
#: (docs/hsds-format.md §6.1, §6.5).
CORE_KEYS: Final[dict[str, ConfigKey]] = {
    "backend": ConfigKey("auto", as_lower, "backend to run reads: a backend name or auto"),
    "backend_policy": ConfigKey("auto", as_lower, "policy of backend=auto: auto or hsds2021"),
    "root_dir": ConfigKey(None, optional(as_str), "posix storage: folder holding the buckets"),
    "bucket_name": ConfigKey("hsdstest", as_str, "default bucket"),
    "aws_s3_gateway": ConfigKey(None, optional(as_str), "S3 endpoint URL"),
    "aws_region": ConfigKey("us-east-1", as_str, "S3 region"),
    "aws_access_key_id": ConfigKey(None, optional(as_str), "S3 credentials (else the AWS default chain)"),
    "aws_secret_access_key": ConfigKey(None, optional(as_str), "S3 credentials"),
    "aws_session_token": ConfigKey(None, optional(as_str), "S3 credentials"),
    "azure_connection_string": ConfigKey(
        None, optional(as_str), "Azure Blob storage: the account's connection string (a secret; the bucket is the container)",
    ),
    "max_workers": ConfigKey(None, optional(at_least(as_int, 1)), "inline: decode threads (default: all cores)"),
    "failover": ConfigKey("auto", as_lower, "auto (only for backends the selector chose) | always | never"),
    "hedge_multiple": ConfigKey(0.0, at_least(as_float, 0), "duplicate stragglers after k x the median task time (0: off)"),
    "hedge_min_seconds": ConfigKey(0.05, at_least(as_float, 0), "hedging: never before this many seconds"),
    # auto policy: run an unmeasured free candidate to measure it, if started or its estimate
    # (with cold start) is within this many times the best estimate; 0 = never explore
    "auto_explore": ConfigKey(3.0, at_least(as_float, 0), "auto: explore candidates up to this x the best estimate"),
    # what services that run tasks from the network may read (hsds_backends.security)
    "allowed_buckets": ConfigKey([], as_list, "buckets served to tasks from the network (empty: bucket_name; '*': any)"),
    # bounds, checked before anything is allocated (names unlike HSDS's max_chunk_size / max_request_size,
    # which mean a chunking target and a request body size)
    "chunk_bytes_limit": ConfigKey(DEFAULT_CHUNK_BYTES_LIMIT, as_size, "largest chunk (chunk shape x item size) a dataset may declare"),
    "read_bytes_limit": ConfigKey(None, optional(as_size), "largest output of one read (default: half the available memory)"),
    "read_chunks_limit": ConfigKey(250_000, at_least(as_int, 1), "most chunks one read may touch"),
}

#: The core keys' defaults (a backend's keys are in its ``config_keys``; all: :func:`known_keys`).
DEFAULTS: Final[dict[str, Any]] = {k: v.default for k, v in CORE_KEYS.items()}


def known_keys() -> dict[str, ConfigKey]:
    """Return the core's keys plus those of every installed backend (``Backend.config_keys``).

    A key declared by both the core and a backend keeps the core's spec; two backends
    declaring one key is a :class:`~hsds_backends.errors.PluginError` raised by the plugin
    manager.
    """
    return {**backend_config_keys(), **CORE_KEYS}


def is_unset(value: Any) -> bool:
    """Return whether a config value means "not set": ``None``, ``""`` or HSDS's ``"xxx"``."""
    return value is None or value == "" or value == HSDS_UNSET


#: Storage credential keys and the standard environment variables that carry them (AWS, Azure).
CREDENTIAL_ENV: Final = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "azure_connection_string": "AZURE_CONNECTION_STRING",
}


def credentials_env(config: Mapping[str, Any]) -> dict[str, str]:
    """Return the config's storage credentials as environment variables (``AWS_*``, ``AZURE_CONNECTION_STRING``; unset keys omitted).

    The one way credentials leave a process: in a child's environment, never on a command
    line or in a task.
    """
    return {var: str(config[key]) for key, var in CREDENTIAL_ENV.items() if not is_unset(config.get(key))}


def option(config: Mapping[str, Any], key: str, spec: ConfigKey) -> Any:
    """Return ``key`` from ``config`` cast by ``spec``, else its env override, else ``spec.default``.

    For backends reading their own keys. A :class:`Config` from :func:`load_config`
    already holds every known key, resolved and cast; a plain mapping (a caller's
    ``dict``) may lack it, and then the environment (``HSDS_BACKENDS_<KEY>``, then
    ``<KEY>``) is consulted as :func:`load_config` would. HSDS's unset sentinels (``None``,
    ``""``) mean the default.
    """
    value = config.get(key)
    source = "config"
    if value is None or value == "":
        if key not in config or not isinstance(config, Config):
            name = key.upper()
            env = os.environ.get(ENV_PREFIX + name) or os.environ.get(name)
            if env:
                return spec.cast(key, env, f"env {ENV_PREFIX + name if os.environ.get(ENV_PREFIX + name) else name}")
        value, source = spec.default, "default"
        if value is None:
            return None
    elif isinstance(config, Config):
        source = config.source(key) if key in config._sources else "config"
    return spec.cast(key, value, source)


def _caster_for(key: str, like: Any = None) -> Caster:
    """Caster of a known key, else one inferred from an existing value (HSDS: cast by the yml type)."""
    spec = CORE_KEYS.get(key) or known_keys().get(key)
    if spec is not None:
        return spec.cast
    if key in SIZE_KEYS:
        return as_size
    if isinstance(like, bool):
        return as_bool
    if isinstance(like, int):
        return as_int
    if isinstance(like, float):
        return as_float
    if isinstance(like, (list, tuple)):
        return as_list
    if isinstance(like, str):
        return as_str
    return lambda _key, value, _source: value  # null/unknown/mapping: kept as given


# -- Config -----------------------------------------------------------------------------------


class Config(Mapping[str, Any]):
    """An immutable mapping of resolved config values.

    ``Config(data)`` is the known keys' defaults updated with ``data`` (known keys are cast; ``None``
    sets ``None``). Use
    :func:`load_config` to read a file and the environment. ``repr`` hides secrets
    (:data:`SECRET_KEYS`); :meth:`to_dict` returns the real values unless ``redact=True``.
    List values are returned as copies, so the mapping cannot be changed through them.
    """

    __slots__ = ("_data", "_sources")

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for key, spec in known_keys().items():
            values[key] = None if spec.default is None else spec.cast(key, spec.default, "defaults")
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
    must exist; else ``$CONFIG_DIR/config.yml`` or ``config.yaml`` (docs/hsds-format.md §6.5 step 1;
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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not UTF-8 text ({exc.reason}); pass a YAML file of key: value lines") from exc
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

    Known keys are the core's (:data:`CORE_KEYS`) and those of every installed backend
    (:func:`known_keys`).

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
        Every known key plus every key of the file, cast by type.

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

    known = known_keys()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    keys = list(known)
    keys += [k for k in yml if k not in known]
    keys += [k for k in overrides if k not in known and k not in yml]
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
        elif key in known:
            value, source = known[key].default, "default"
        elif key in yml:
            values[key], sources[key] = None, f"file {file}"  # an unknown key set to null
            continue
        else:
            continue
        values[key] = cast(key, value, source)
        sources[key] = source
    return Config._resolved(values, sources)
