"""Never stale: writes through HSDS and reads through the fronts, at once (docs/architecture.md §12 "never stale").

HSDS's DNs flush to storage ``s3_age_time`` (1 s) after a write, checked every
``s3_sync_interval`` (1 s); the backends read storage. The fronts send reads of a chunk
written (or a dataset resized) within the dirty window to the DN. The default window is
12 s (those two plus ``s3_sync_task_timeout``); here it is 4 s, so the test need not wait
12 s to see the backend serve the new bytes.

The control: with ``front_dirty_window: 0`` the very same loop reads stale bytes, so the
test would fail without the dirty tracking.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
import pytest

pytest.importorskip("hsds_backends_containers")

try:
    import front_harness as F
except ImportError:  # tests/ turned into a package
    from tests import front_harness as F

pytestmark = pytest.mark.hsds

#: Twice what HSDS's default flush takes (s3_age_time + s3_sync_interval), well under the default 12 s.
WINDOW = 4.0

_WRITE_READ = r"""
rng = np.random.default_rng(args["seed"])
f = h5pyd.File(args["domain"], "w", **kw)
d = f.create_dataset("x", shape=(64, 64), maxshape=(None, 64), dtype="<f4", chunks=(16, 16))
f.flush()
mirror = np.zeros((64, 64), "<f4")
stale = []

def server_read(sel):
    # a new handle: h5pyd 1.0 answers reads from its own cache of what this handle wrote
    r = h5pyd.File(args["domain"], "r", **kw)
    try:
        return r["x"][sel]
    finally:
        r.close()

for i in range(args["n"]):
    a, c = (int(v) for v in rng.integers(0, 60, 2))
    b, e = int(rng.integers(a + 1, 65)), int(rng.integers(c + 1, 65))
    v = rng.random((b - a, e - c), dtype=np.float32)
    d[a:b, c:e] = v
    f.flush()
    mirror[a:b, c:e] = v
    if not np.array_equal(server_read(np.s_[...]), mirror):
        stale.append(i)
    if not np.array_equal(server_read(np.s_[[a, b - 1], c:e]), mirror[[a, b - 1], c:e]):
        stale.append(i)
# a resize, then a write into the new rows, read at once
d.resize((80, 64))
d[70:80, :] = 7.0
f.flush()
mirror = np.concatenate([mirror, np.zeros((16, 64), "<f4")])
mirror[70:80, :] = 7.0
if not np.array_equal(server_read(np.s_[...]), mirror):
    stale.append("resize")
f.close()
np.save(args["out"], mirror)
emit({"stale": stale})
"""

_READ = r"""
f = h5pyd.File(args["domain"], "r", **kw)
emit({"equal": bool(np.array_equal(f["x"][...], np.load(args["mirror"]))), "shape": list(f["x"].shape)})
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("front-writes")
    (r / "hsdstest").mkdir()
    return r


def _deployment(root: Path, window: float) -> F.Deployment:
    return F.Deployment(root, backend="inline", config={"front_dirty_window": window})


@pytest.fixture(scope="module")
def fronts(root: Path) -> Iterator[F.Deployment]:
    with _deployment(root, WINDOW) as dep:
        F.ensure_home(dep.client())
        yield dep


def test_write_then_read_at_once_is_never_stale(fronts: F.Deployment, tmp_path: Path) -> None:
    client = fronts.client()
    domain = "/home/admin/never_stale.h5"
    before = fronts.totals()
    res = client.run_h5pyd(_WRITE_READ, domain=domain, n=40, seed=1, out=str(tmp_path / "mirror.npy"), timeout=300)
    assert res["stale"] == [], f"stale reads in iterations {res['stale']}"
    mid = fronts.totals()
    assert mid["dirty_hits"] > before["dirty_hits"], mid  # the reads right after the writes went to the DN
    # once the window has passed, the backend serves the new bytes
    assert {p["dirty_window_s"] for p in fronts.stats()["processes"]} == {WINDOW}
    time.sleep(WINDOW + 0.5)
    res = client.run_h5pyd(_READ, domain=domain, mirror=str(tmp_path / "mirror.npy"))
    assert res == {"equal": True, "shape": [80, 64]}
    after = fronts.totals()
    assert after["by_backend"].get("inline", 0) > mid["by_backend"].get("inline", 0), after
    assert after["dirty_hits"] == mid["dirty_hits"], after


def test_without_the_dirty_window_reads_are_stale(root: Path, fronts: F.Deployment, tmp_path: Path) -> None:
    """The control: the same loop with ``front_dirty_window: 0`` reads what storage holds, which lags the DN."""
    with _deployment(root, 0.0) as dep:
        res = dep.client().run_h5pyd(_WRITE_READ, domain="/home/admin/stale.h5", n=10, seed=2, out=str(tmp_path / "m.npy"), timeout=300)
    assert len(res["stale"]) >= 5, res


_CACHE = r"""
f = h5pyd.File(args["domain"], "a" if args["step"] else "w", **kw)
if args["step"] == 0:
    d = f.create_dataset("y", shape=(32, 32), dtype="<i4", chunks=(16, 16))
else:
    d = f["y"]
d[...] = np.full((32, 32), args["value"], "<i4")
f.close()
"""

_CACHE_READ = r"""
out = []
for _ in range(3):
    r = h5pyd.File(args["domain"], "r", **kw)
    out.append(np.unique(r["y"][...]).tolist())
    r.close()
emit(out)
"""


def test_kept_chunks_are_never_served_after_a_write(fronts: F.Deployment) -> None:
    """The front keeps decoded chunks (as a DN does); a write through HSDS makes them stale at once."""
    client = fronts.client()
    domain = "/home/admin/kept.h5"
    for step, value in enumerate((1, 2, 3)):
        client.run_h5pyd(_CACHE, domain=domain, step=step, value=value)
        assert client.run_h5pyd(_CACHE_READ, domain=domain) == [[value]] * 3  # dirty: the DNs answer
        before = fronts.totals()["by_backend"].get("cache", 0)
        time.sleep(WINDOW + 0.5)
        assert client.run_h5pyd(_CACHE_READ, domain=domain) == [[value]] * 3  # clean: read once, then kept
        assert fronts.totals()["by_backend"].get("cache", 0) - before >= 8  # 4 chunks × the 2nd and 3rd reads
