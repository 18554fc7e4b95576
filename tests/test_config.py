"""Tests for hsds_backends.config: HSDS-style resolution (docs/hsds-format.md §6.5) minus its pitfalls."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from hsds_backends.config import Config, find_config_file, known_keys, load_config, parse_bool, parse_size
from hsds_backends.errors import ConfigError, HsdsBackendsError


def write_yml(folder: Path, text: str, name: str = "config.yml") -> Path:
    p = folder / name
    p.write_text(text, encoding="utf-8")
    return p


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_without_file_or_env() -> None:
    cfg = load_config(env={})
    assert set(known_keys()) <= set(cfg)
    assert cfg["backend"] == "auto"
    assert cfg["backend_policy"] == "auto"
    assert cfg["bucket_name"] == "hsdstest"
    assert cfg["aws_region"] == "us-east-1"
    assert cfg["aws_lambda_threshold"] == 4
    assert cfg["aws_lambda_max_invoke"] == 1000
    assert cfg["dn_urls"] == []
    assert cfg["max_tasks_per_node_per_request"] == 16
    assert cfg["max_workers"] is None
    assert cfg["chunk_mem_cache_size"] == 128 * 1024**2
    assert cfg["timeout"] == 30
    assert cfg["dn_max_retries"] == 3
    assert cfg["dn_retry_backoff_exp"] == 0.1
    for key in ("root_dir", "aws_s3_gateway", "aws_access_key_id", "aws_lambda_gateway", "dask_scheduler"):
        assert cfg[key] is None
    assert cfg.source("bucket_name") == "default"
    assert known_keys()["chunk_mem_cache_size"].default == "128m"  # the key table itself is untouched


# -- precedence -------------------------------------------------------------------------------

# (override, prefixed env, plain env, yml, expected, expected source prefix)
PRECEDENCE = [
    (None, None, None, None, 4, "default"),
    (None, None, None, 5, 5, "file"),
    (None, None, "6", 5, 6, "env AWS_LAMBDA_THRESHOLD"),
    (None, "7", "6", 5, 7, "env HSDS_BACKENDS_AWS_LAMBDA_THRESHOLD"),
    (8, "7", "6", 5, 8, "override"),
    ("9", None, None, None, 9, "override"),
    (None, "", "6", 5, 6, "env AWS_LAMBDA_THRESHOLD"),  # empty env values are ignored
    (None, "", "", 5, 5, "file"),
    (None, None, "", None, 4, "default"),
]


@pytest.mark.parametrize(("override", "prefixed", "plain", "yml", "expected", "source"), PRECEDENCE)
def test_precedence(tmp_path: Path, override, prefixed, plain, yml, expected, source) -> None:
    path = write_yml(tmp_path, f"aws_lambda_threshold: {yml}\n" if yml is not None else "{}\n")
    env = {}
    if prefixed is not None:
        env["HSDS_BACKENDS_AWS_LAMBDA_THRESHOLD"] = prefixed
    if plain is not None:
        env["AWS_LAMBDA_THRESHOLD"] = plain
    overrides = {"aws_lambda_threshold": override} if override is not None else None
    cfg = load_config(path, env=env, overrides=overrides)
    assert cfg["aws_lambda_threshold"] == expected
    assert cfg.source("aws_lambda_threshold").startswith(source)


def test_none_override_is_skipped() -> None:
    cfg = load_config(env={"BUCKET_NAME": "fromenv"}, overrides={"bucket_name": None})
    assert cfg["bucket_name"] == "fromenv"


def test_yml_null_means_default(tmp_path: Path) -> None:
    cfg = load_config(write_yml(tmp_path, "bucket_name: null\naws_lambda_threshold: null\n"), env={})
    assert cfg["bucket_name"] == "hsdstest"
    assert cfg["aws_lambda_threshold"] == 4


def test_env_read_for_known_keys_absent_from_file(tmp_path: Path) -> None:
    # HSDS only reads env for keys present in the yml (§6.5 step 4); we read it for every known key.
    cfg = load_config(write_yml(tmp_path, "bucket_name: b\n"), env={"ROOT_DIR": "/data"})
    assert cfg["root_dir"] == "/data"


def test_unknown_yml_keys_are_kept_and_env_cast_by_yml_type(tmp_path: Path) -> None:
    path = write_yml(
        tmp_path,
        "http_compression: true\nlog_level: INFO\nsn_port: 5101\nsome_null: null\nratio: 0.5\n",
    )
    cfg = load_config(path, env={"HTTP_COMPRESSION": "false", "SN_PORT": "6101"})
    assert cfg["http_compression"] is False  # HSDS pitfall: bool("false") is True
    assert cfg["log_level"] == "INFO"
    assert cfg["sn_port"] == 6101
    assert cfg["some_null"] is None
    assert cfg["ratio"] == 0.5
    with pytest.raises(ConfigError, match=r"'sn_port'.*'abc'.*env SN_PORT.*not an integer"):
        load_config(path, env={"SN_PORT": "abc"})


# -- casting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FALSE", False),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("Off", False),
        (" false ", False),
        ("TRUE", True),
        ("true", True),
        ("1", True),
        ("yes", True),
        ("ON", True),
        (True, True),
        (False, False),
        (0, False),
        (1, True),
    ],
)
def test_boolean_spellings(text, expected) -> None:
    assert parse_bool(text) is expected


def test_boolean_env_override_of_yml_bool(tmp_path: Path) -> None:
    path = write_yml(tmp_path, "use_cache: true\n")
    for spelling in ("FALSE", "false", "0", "no", "off"):
        assert load_config(path, env={"USE_CACHE": spelling})["use_cache"] is False
    assert load_config(path, env={"HSDS_BACKENDS_USE_CACHE": "ON"})["use_cache"] is True


@pytest.mark.parametrize("bad", ["maybe", "t", "2", "", "nope"])
def test_bad_bool_raises(bad) -> None:
    with pytest.raises(ConfigError, match=r"is not a boolean; use one of true/false, 1/0, yes/no, on/off"):
        parse_bool(bad, key="flag", source="env FLAG")


def test_bad_bool_from_env_names_key_value_source(tmp_path: Path) -> None:
    path = write_yml(tmp_path, "use_cache: false\n")
    with pytest.raises(ConfigError, match=r"'use_cache': 'maybe' from env USE_CACHE is not a boolean"):
        load_config(path, env={"USE_CACHE": "maybe"})


def test_bad_int_from_env() -> None:
    with pytest.raises(ConfigError, match=r"'aws_lambda_threshold': 'four' from env AWS_LAMBDA_THRESHOLD"):
        load_config(env={"AWS_LAMBDA_THRESHOLD": "four"})


def test_bad_int_from_file(tmp_path: Path) -> None:
    path = write_yml(tmp_path, "max_workers: lots\n")
    with pytest.raises(ConfigError, match=r"'max_workers': 'lots' from file .*config\.yml is not an integer"):
        load_config(path, env={})


def test_int_rejects_bool_and_checks_minimum(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an integer"):
        load_config(write_yml(tmp_path, "dn_count: true\n"), env={})
    with pytest.raises(ConfigError, match=r"'max_workers': '0' from env MAX_WORKERS is not >= 1"):
        load_config(env={"MAX_WORKERS": "0"})


def test_numbers_and_floats() -> None:
    cfg = load_config(env={"TIMEOUT": "2.5", "DN_RETRY_BACKOFF_EXP": "0.25", "MAX_WORKERS": " 8 "})
    assert cfg["timeout"] == 2.5
    assert cfg["dn_retry_backoff_exp"] == 0.25
    assert cfg["max_workers"] == 8
    assert load_config(env={"TIMEOUT": "10"})["timeout"] == 10
    with pytest.raises(ConfigError, match=r"'timeout'.*is not > 0"):
        load_config(env={"TIMEOUT": "0"})
    with pytest.raises(ConfigError, match=r"'dn_retry_backoff_exp': 'fast'.*not a number"):
        load_config(env={"DN_RETRY_BACKOFF_EXP": "fast"})


def test_auto_explore() -> None:
    assert load_config(env={})["auto_explore"] == 3.0
    assert load_config(env={"HSDS_BACKENDS_AUTO_EXPLORE": "0"})["auto_explore"] == 0.0
    assert load_config(env={"AUTO_EXPLORE": "1.5"})["auto_explore"] == 1.5
    with pytest.raises(ConfigError, match=r"'auto_explore': '-1' from env AUTO_EXPLORE is not >= 0"):
        load_config(env={"AUTO_EXPLORE": "-1"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128m", 128 * 1024**2),
        ("128M", 128 * 1024**2),
        ("512k", 512 * 1024),
        ("2g", 2 * 1024**3),
        ("4096", 4096),
        (4096, 4096),
        (" 1G ", 1024**3),
    ],
)
def test_size_suffixes(text, expected) -> None:
    assert parse_size(text) == expected
    assert load_config(overrides={"chunk_mem_cache_size": text}, env={})["chunk_mem_cache_size"] == expected


@pytest.mark.parametrize("bad", ["12x", "1.5m", "-1", "m", "lots"])
def test_bad_size(bad) -> None:
    with pytest.raises(ConfigError, match=r"'chunk_mem_cache_size'.*from env CHUNK_MEM_CACHE_SIZE is not a size"):
        load_config(env={"CHUNK_MEM_CACHE_SIZE": bad})


def test_dn_urls_from_env_and_yml(tmp_path: Path) -> None:
    env = {"DN_URLS": "http://127.0.0.1:6101, http://127.0.0.1:6102,,"}
    assert load_config(env=env)["dn_urls"] == ["http://127.0.0.1:6101", "http://127.0.0.1:6102"]
    path = write_yml(tmp_path, "dn_urls:\n  - http://a:6101\n  - http://b:6101\n")
    assert load_config(path, env={})["dn_urls"] == ["http://a:6101", "http://b:6101"]
    assert load_config(write_yml(tmp_path, "dn_urls: http://a:1,http://b:2\n"), env={})["dn_urls"] == [
        "http://a:1",
        "http://b:2",
    ]
    assert load_config(path, env={"HSDS_BACKENDS_DN_URLS": "http://c:1"})["dn_urls"] == ["http://c:1"]


def test_backend_is_lowercased_loosely() -> None:
    cfg = load_config(env={"BACKEND": " Lambda "})
    assert cfg["backend"] == "lambda"
    assert load_config(env={"HSDS_BACKENDS_BACKEND": "whatever"})["backend"] == "whatever"


# -- files ------------------------------------------------------------------------------------


def test_config_dir_lookup(tmp_path: Path) -> None:
    write_yml(tmp_path, "bucket_name: from_dir\n")
    cfg = load_config(env={"CONFIG_DIR": str(tmp_path)})
    assert cfg["bucket_name"] == "from_dir"
    assert cfg.source("bucket_name") == f"file {tmp_path / 'config.yml'}"


def test_config_dir_yaml_extension(tmp_path: Path) -> None:
    write_yml(tmp_path, "bucket_name: from_yaml\n", name="config.yaml")
    assert load_config(env={"CONFIG_DIR": str(tmp_path)})["bucket_name"] == "from_yaml"


def test_config_dir_without_file_and_missing_dir(tmp_path: Path) -> None:
    assert find_config_file(env={"CONFIG_DIR": str(tmp_path)}) is None
    assert load_config(env={"CONFIG_DIR": str(tmp_path)})["bucket_name"] == "hsdstest"
    with pytest.raises(ConfigError, match=r"CONFIG_DIR=.*is not a folder"):
        load_config(env={"CONFIG_DIR": str(tmp_path / "nope")})


def test_explicit_path_wins_over_config_dir(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_yml(tmp_path / "a", "bucket_name: a\n")
    explicit = write_yml(tmp_path / "b", "bucket_name: b\n")
    assert load_config(explicit, env={"CONFIG_DIR": str(tmp_path / "a")})["bucket_name"] == "b"
    assert load_config(tmp_path / "b", env={})["bucket_name"] == "b"  # a folder works too


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*missing\.yml.* does not exist"):
        load_config(tmp_path / "missing.yml", env={})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yml_must_be_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write_yml(tmp_path, text), env={})


def test_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write_yml(tmp_path, "a: [1, 2\n"), env={})


def test_empty_file_is_empty_mapping(tmp_path: Path) -> None:
    assert load_config(write_yml(tmp_path, ""), env={})["bucket_name"] == "hsdstest"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFIG_DIR", raising=False)
    monkeypatch.setenv("HSDS_BACKENDS_BUCKET_NAME", "envbucket")
    assert load_config()["bucket_name"] == "envbucket"


# -- the Config mapping -----------------------------------------------------------------------


def test_config_is_immutable_mapping() -> None:
    cfg = load_config(env={"DN_URLS": "http://a:1"})
    with pytest.raises(TypeError):
        cfg["bucket_name"] = "x"  # type: ignore[index]
    with pytest.raises(AttributeError, match="immutable"):
        cfg.foo = 1  # type: ignore[attr-defined]
    cfg["dn_urls"].append("http://evil:1")
    assert cfg["dn_urls"] == ["http://a:1"]
    assert cfg.get("nope") is None
    assert cfg.get("nope", 3) == 3
    with pytest.raises(KeyError):
        cfg["nope"]


def test_with_overrides_casts_and_returns_new_config() -> None:
    cfg = load_config(env={})
    new = cfg.with_overrides(aws_lambda_threshold="12", root_dir="/data", extra=1)
    assert new["aws_lambda_threshold"] == 12
    assert new["root_dir"] == "/data"
    assert new["extra"] == 1
    assert new.source("root_dir") == "override"
    assert cfg["aws_lambda_threshold"] == 4 and cfg["root_dir"] is None
    assert new.with_overrides(root_dir=None)["root_dir"] is None
    with pytest.raises(ConfigError, match=r"'aws_lambda_threshold': 'x' from override"):
        cfg.with_overrides(aws_lambda_threshold="x")


def test_config_from_mapping_uses_defaults() -> None:
    cfg = Config({"root_dir": "/x", "timeout": "5"})
    assert cfg["root_dir"] == "/x"
    assert cfg["timeout"] == 5
    assert cfg["bucket_name"] == "hsdstest"
    assert cfg == Config({"root_dir": "/x", "timeout": 5})
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_secrets_redacted_in_repr() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "AWS_SESSION_TOKEN": "tok-value",
    }
    cfg = load_config(env=env, overrides={"my_password": "hunter2"})
    text = repr(cfg) + str(cfg) + repr(cfg.to_dict(redact=True))
    for secret in ("AKIAEXAMPLEKEYID", "s3cr3t-value", "tok-value", "hunter2"):
        assert secret not in text
    assert "<redacted>" in repr(cfg)
    assert "'aws_region': 'us-east-1'" in repr(cfg)
    # the real values stay available to code that needs them
    assert cfg["aws_secret_access_key"] == "s3cr3t-value"
    assert cfg.to_dict()["aws_session_token"] == "tok-value"


def test_unset_secret_shown_as_none() -> None:
    assert "'aws_secret_access_key': None" in repr(load_config(env={}))


def test_config_error_is_package_error() -> None:
    assert issubclass(ConfigError, HsdsBackendsError)
    assert not issubclass(ConfigError, ValueError)


# -- keys owned by backends, and the helpers backends use ---------------------------------------


def test_option_reads_config_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from hsds_backends.config import ConfigKey, as_int, at_least, option

    spec = ConfigKey(7, at_least(as_int, 1), "a test key")
    monkeypatch.delenv("HSDS_BACKENDS_TEST_WIDGETS", raising=False)
    monkeypatch.delenv("TEST_WIDGETS", raising=False)
    assert option({}, "test_widgets", spec) == 7
    assert option({"test_widgets": "3"}, "test_widgets", spec) == 3
    assert option({"test_widgets": ""}, "test_widgets", spec) == 7  # unset means the default
    monkeypatch.setenv("TEST_WIDGETS", "5")
    assert option({}, "test_widgets", spec) == 5  # a plain mapping without the key: env, as load_config would
    monkeypatch.setenv("HSDS_BACKENDS_TEST_WIDGETS", "6")
    assert option({}, "test_widgets", spec) == 6
    assert option({"test_widgets": 2}, "test_widgets", spec) == 2  # the mapping wins
    with pytest.raises(ConfigError, match=r"config key 'test_widgets': 0 from config is not >= 1; set test_widgets to a value >= 1"):
        option({"test_widgets": 0}, "test_widgets", spec)
    with pytest.raises(ConfigError, match=r"config key 'test_widgets': 'x' from env HSDS_BACKENDS_TEST_WIDGETS is not an integer"):
        monkeypatch.setenv("HSDS_BACKENDS_TEST_WIDGETS", "x")
        option({}, "test_widgets", spec)


def test_a_config_from_load_config_names_where_a_bad_value_came_from(tmp_path: Path) -> None:
    from hsds_backends.config import ConfigKey, as_int, option

    cfg = load_config(write_yml(tmp_path, "test_widgets: many\n"), env={})
    with pytest.raises(ConfigError, match=r"config key 'test_widgets': 'many' from file .*config.yml is not an integer"):
        option(cfg, "test_widgets", ConfigKey(1, as_int))


def test_backends_own_their_keys_and_one_key_has_one_owner() -> None:
    from hsds_backends import plugins
    from hsds_backends.config import CORE_KEYS, DEFAULTS

    keys = known_keys()
    assert set(DEFAULTS) == set(CORE_KEYS) and not any(k.startswith(("aws_lambda_", "dn_", "dask_")) for k in DEFAULTS)
    owners = {
        name: set(cls.config_keys) for name, (cls, _plugin) in plugins._classes(plugins._get_state()).items()  # noqa: SLF001
    }
    for name, prefix in (("lambda", "aws_lambda_"), ("containers", "dn_"), ("dask", "dask_")):
        if name in owners:
            assert {k for k in keys if k.startswith(prefix)} <= owners[name], name
    assert not set(CORE_KEYS) & set().union(*owners.values())


def test_two_backends_declaring_one_key_is_a_plugin_error() -> None:
    import types
    from typing import ClassVar

    import pluggy

    from hsds_backends import hookimpl, hookspecs, plugins
    from hsds_backends.config import ConfigKey, as_int
    from hsds_backends.errors import PluginError
    from hsds_backends.model import Backend

    spec_a, spec_b = ConfigKey(1, as_int), ConfigKey(2, as_int)

    class A(Backend):
        name: ClassVar[str] = "a"
        config_keys: ClassVar[dict[str, ConfigKey]] = {"shared_key": spec_a}

        async def read_chunk(self, task: object) -> object:  # type: ignore[override]  # pragma: no cover
            raise NotImplementedError

    class B(A):
        name: ClassVar[str] = "b"
        config_keys: ClassVar[dict[str, ConfigKey]] = {"shared_key": spec_b}

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    mod = types.SimpleNamespace(hsds_backends_backend_classes=hookimpl(lambda: [A, B]))
    pm.register(mod, name="two")
    with pytest.raises(PluginError, match=r"config key 'shared_key' is declared by both backend 'a' and 'b'; a key has one owner"):
        plugins.backend_config_keys(pm)


def test_unset_and_credentials_env() -> None:
    from hsds_backends.config import credentials_env, is_unset

    assert [is_unset(v) for v in (None, "", "xxx", "0", 0, "key")] == [True, True, True, False, False, False]
    env = credentials_env({"aws_access_key_id": "AKID", "aws_secret_access_key": "SECRET", "aws_session_token": "xxx"})
    assert env == {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "SECRET"}
    assert credentials_env({}) == {}
