"""Plugin discovery, validation, lookup and the hook contract."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hsds_backends as hb
from hsds_backends import hookspecs, plugins
from hsds_backends.errors import BackendNotInstalledError, NoBackendError, UnknownBackendError
from hsds_backends.model import Choice

FIXTURES = Path(__file__).parent / "plugin_fixtures"


@pytest.fixture
def fake_dist(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Put the checked-in fake distribution (with its dist-info) on sys.path."""
    monkeypatch.syspath_prepend(str(FIXTURES))
    yield
    for mod in [m for m in sys.modules if m.startswith("hsds_backends_fake")]:
        del sys.modules[mod]


def _pm_with_fake() -> Any:
    with pytest.warns(RuntimeWarning) as record:
        pm = plugins.build_plugin_manager()
    return pm, [str(w.message) for w in record]


def test_builtin_inline_is_a_plugin() -> None:
    pm = plugins.build_plugin_manager(eps=())
    assert pm.has_plugin("inline")
    infos = plugins.list_backends(pm)
    assert [i.name for i in infos] == ["inline"]
    assert infos[0].distribution == "hsds-backends"
    assert infos[0].version == hb.__version__
    assert infos[0].capabilities.points


def test_entry_point_discovery_names_distribution_and_version(fake_dist: Any) -> None:
    pm, _ = _pm_with_fake()
    infos = {i.name: i for i in plugins.list_backends(pm)}
    assert "fake" in infos
    assert (infos["fake"].distribution, infos["fake"].version) == ("hsds-backends-fake", "0.3")
    assert infos["fake"].capabilities.query is False
    assert infos["fake"].plugin == "fake"
    b = plugins.make_backend("fake", {}, pm)
    assert b.name == "fake" and type(b).__name__ == "FakeBackend"


def test_broken_plugin_is_skipped_with_a_warning_naming_it(fake_dist: Any) -> None:
    pm, warnings = _pm_with_fake()
    broken = [w for w in warnings if "'broken'" in w]
    assert broken, warnings
    assert "hsds_backends_fake.broken" in broken[0]
    assert "'hsds-backends-fake'" in broken[0]
    assert "ModuleNotFoundError" in broken[0]
    assert pm.has_plugin("fake")  # the others still load
    with pytest.raises(BackendNotInstalledError, match="backend 'broken' is installed but its plugin failed to load") as info:
        plugins.make_backend("broken", {}, pm)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_misspelled_hook_is_rejected_with_a_suggestion(fake_dist: Any) -> None:
    pm, warnings = _pm_with_fake()
    typo = [w for w in warnings if "'typo'" in w]
    assert typo and "unknown hook 'hsds_backends_make_backnd'" in typo[0]
    assert "did you mean 'hsds_backends_make_backend'?" in typo[0]
    assert not pm.has_plugin("typo")


def test_misspelled_hook_registered_in_code_fails_check_pending() -> None:
    class Site:
        @hb.hookimpl
        def hsds_backends_select_backnd(self, request: Any) -> None:
            return None

    pm = plugins.build_plugin_manager(eps=())
    pm.register(Site(), name="site")
    import pluggy

    with pytest.raises(pluggy.PluginValidationError, match="hsds_backends_select_backnd"):
        pm.check_pending()


def test_hand_built_entry_points_broken_and_duplicate(recwarn: Any) -> None:
    eps = [
        EntryPoint(name="inline", value="hsds_backends._inline", group="hsds_backends"),  # duplicate of a built-in
        EntryPoint(name="nowhere", value="hsds_backends_no_such_module.plugin", group="hsds_backends"),
    ]
    pm = plugins.build_plugin_manager(eps=eps)
    msgs = [str(w.message) for w in recwarn.list]
    assert any("skipping hsds_backends plugin 'nowhere'" in m for m in msgs), msgs
    assert plugins.backend_names(pm) == ["inline"]


def test_known_backend_not_installed_names_the_pip_package() -> None:
    pm = plugins.build_plugin_manager(eps=())
    for name, dist in [("lambda", "hsds-backends-lambda"), ("containers", "hsds-backends-containers"), ("dask", "hsds-backends-dask")]:
        with pytest.raises(BackendNotInstalledError, match=f"backend '{name}' is not installed; run: pip install {dist}"):
            plugins.make_backend(name, {}, pm)


def test_unknown_backend_lists_installed_ones() -> None:
    pm = plugins.build_plugin_manager(eps=())
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'lamda'; installed backends: \['inline'\]"):
        plugins.make_backend("lamda", {}, pm)


def test_blocked_plugin_is_not_loaded(fake_dist: Any, recwarn: Any) -> None:
    pm = plugins.build_plugin_manager(blocked=["fake", "broken", "typo"])
    assert not pm.has_plugin("fake")
    assert "fake" not in plugins.backend_names(pm)
    assert not [w for w in recwarn.list if "'broken'" in str(w.message)]  # blocked before loading
    pm = plugins.build_plugin_manager(blocked=["inline"], eps=())
    assert plugins.backend_names(pm) == []


def test_disable_autoload(fake_dist: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSDS_BACKENDS_DISABLE_AUTOLOAD", "1")
    pm = plugins.build_plugin_manager()
    assert plugins.backend_names(pm) == ["inline"]


def test_trace_logs_hook_calls(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    monkeypatch.setenv("HSDS_BACKENDS_TRACE", "1")
    pm = plugins.build_plugin_manager(eps=())
    pm.hook.hsds_backends_backend_classes()
    assert any("hook hsds_backends_backend_classes" in r.getMessage() for r in caplog.records)


def test_site_policy_overrides_default(tmp_path: Path) -> None:
    """A site plugin's hsds_backends_select_backend runs before the built-in trylast policy."""
    pm = plugins.build_plugin_manager(eps=())
    calls: list[int] = []

    class SitePolicy:
        @hb.hookimpl
        def hsds_backends_select_backend(self, request: Any, candidates: Any) -> Choice:
            calls.append(request.num_chunks)
            return Choice(candidates[0], "site policy: always the first candidate")

    pm.register(SitePolicy(), name="site-policy")
    pm.check_pending()
    arr = np.arange(100, dtype="<i4").reshape(10, 10)
    _write(tmp_path, arr)

    async def go() -> Any:
        async with hb.Reader({"root_dir": str(tmp_path)}, pm=pm) as reader:
            d = await (await reader.open("/home/p/d.h5")).get("/x")
            return await d.read_result(np.s_[0:10, 0:10])

    import asyncio

    res = asyncio.run(go())
    assert res.data.tobytes() == arr.tobytes()
    assert res.stats.reason == "site policy: always the first candidate"
    assert calls == [4]


def test_named_backend_that_cannot_serve_says_why(fake_dist: Any, tmp_path: Path) -> None:
    pm, _ = _pm_with_fake()
    table = np.zeros(10, dtype=[("a", "<i4"), ("b", "<f4")])
    _write(tmp_path, table, chunks=(5,))
    import asyncio

    async def go() -> Any:
        async with hb.Reader({"root_dir": str(tmp_path)}, pm=pm) as reader:
            d = await (await reader.open("/home/p/d.h5")).get("/x")
            return await d.query("a > 1", backend="fake")

    with pytest.raises(NoBackendError, match=r"backend 'fake' \(asked for by the caller\) cannot serve d-.* \(2 chunks\): no queries"):
        asyncio.run(go())


def test_fake_backend_runs_the_kernel(fake_dist: Any, tmp_path: Path) -> None:
    pm, _ = _pm_with_fake()
    arr = np.arange(100, dtype=">f8").reshape(10, 10)
    _write(tmp_path, arr)
    import asyncio

    async def go() -> Any:
        async with hb.Reader({"root_dir": str(tmp_path), "backend": "fake"}, pm=pm) as reader:
            d = await (await reader.open("/home/p/d.h5")).get("/x")
            res = await d.read_result(np.s_[::3, 1:9])
            return res, reader.backend("fake")

    res, fake = asyncio.run(go())
    assert res.data.tobytes() == arr[::3, 1:9].tobytes()
    assert res.stats.backend == "fake" and res.stats.reason == "config backend=fake"
    assert len(fake.seen) == 4


def _write(root: Path, arr: np.ndarray[Any, Any], chunks: Any = (5, 5)) -> None:
    import asyncio

    from hsds_backends.storage import PosixStorage
    from hsds_backends.writer import Writer

    asyncio.run(Writer(PosixStorage(root)).create_dataset("/home/p/d.h5", "/x", arr, chunks=chunks))


def test_estimate_cost_hook_can_be_overridden() -> None:
    pm = plugins.build_plugin_manager(eps=())

    class Site:
        @hb.hookimpl
        def hsds_backends_estimate_cost(self, backend: Any) -> hb.CostEstimate:
            return hb.CostEstimate(123.0, 0.0, "site figure")

    pm.register(Site(), name="site")
    b = plugins.make_backend("inline", {}, pm)
    from hsds_backends.selector import estimate

    assert estimate(pm, b, None).seconds == 123.0  # type: ignore[arg-type]


def test_core_imports_no_cloud_sdk_or_dask() -> None:
    code = (
        "import sys, hsds_backends, hsds_backends.api, hsds_backends.cli, hsds_backends.plugins;"
        "hsds_backends.list_backends();"
        "bad = [m for m in ('aiobotocore', 'botocore', 'boto3', 'dask', 'distributed', 'aiohttp', 'pytest') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {k: v for k, v in os.environ.items() if k != "HSDS_BACKENDS_DISABLE_AUTOLOAD"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------- the hook contract


HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("hsds_backends_"))


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented(name: str) -> None:
    fn = getattr(hookspecs, name)
    doc = inspect.getdoc(fn) or ""
    for section in ("Returns", "versionadded"):
        assert section in doc, f"{name} docstring lacks {section!r}"
    params = list(inspect.signature(fn).parameters)
    if params:
        assert "Parameters" in doc
        for p in params:
            assert p in doc, f"{name} does not document parameter {p!r}"
    firstresult = fn.hsds_backends_spec.get("firstresult", False)
    assert ("Stops at the first non-None result" in doc) == firstresult


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_has_a_test(name: str) -> None:
    here = Path(__file__).parent
    text = "".join(p.read_text() for p in here.rglob("test_*.py") if p.name != "test_plugins.py")
    text += Path(__file__).read_text().split("# ------------------------------------------------------------- the hook contract")[0]
    assert name in text, f"no test exercises {name}"


def test_hook_bodies_are_only_docstrings() -> None:
    for name in HOOKS:
        src = inspect.getsource(getattr(hookspecs, name))
        body = src.split('"""')[-1].strip()
        assert body == "", f"{name} has a body beyond its docstring"
