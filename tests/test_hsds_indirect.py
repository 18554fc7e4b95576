"""An HDF5 file loaded into a real HSDS 1.0.2 with h5pyd's ``hsload --link``: ``H5D_CHUNKED_REF_INDIRECT`` read everywhere.

h5py writes the file (several chunk shapes, gzip + shuffle, unwritten chunks, a dataset of
more than 100 chunks) into the bucket folder; ``hsload --link`` (h5pyd 1.0.0) makes a domain
whose datasets keep their chunks in the file and their locations in chunk tables — hsload
picks ``H5D_CHUNKED_REF_INDIRECT`` itself for datasets of more than 10 allocated chunks. Then:

- our reader, on every backend, reads each dataset byte for byte as h5py reads the file;
- h5pyd reads through HSDS with fronts: the SN looks the locations up and sends them to the
  fronts, which serve them on the backend (``stats``) with the same bytes;
- a hyper-chunk dataset written by the project's writer into the same bucket (h5pyd 1.0.0 makes
  ``hyper_dims`` only for 0.9.x servers): HSDS's SN sends the colon-separated
  ``s3offset``/``s3size``/``hyper_dims`` and the fronts answer with the bytes numpy holds.

h5pyd 1.0.0's hsload cannot link anything with the h5json it requires (2.0.x): it passes
``maxshape`` (h5py's ``maxshape`` equals the shape) to ``Hdf5db.createDataset``, which refuses
``maxdims`` for every layout but ``H5D_CHUNKED``. The load below runs hsload's own ``main``
with that one call made to leave out a ``maxdims`` equal to the shape (what the dataset's
shape says anyway); nothing installed is changed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")
h5py = pytest.importorskip("h5py")

import hsds_backends as hb  # noqa: E402
from hsds_backends.dataset import DatasetMeta  # noqa: E402
from hsds_backends.ids import dn_index  # noqa: E402
from hsds_backends.plan import plan_hyperslab  # noqa: E402
from hsds_backends.selection import parse_select  # noqa: E402
from hsds_backends.storage import PosixStorage  # noqa: E402
from hsds_backends.writer import Writer  # noqa: E402

try:
    import front_harness as F
    import hsds_harness as H
except ImportError:  # tests/ turned into a package
    from tests import front_harness as F
    from tests import hsds_harness as H

pytestmark = [pytest.mark.hsds]

BUCKET = "hsdstest"
LINK = f"{BUCKET}/linked/src.h5"

_HSLOAD = r"""
import sys
from h5json.hdf5db import Hdf5db

_create = Hdf5db.createDataset

def _createDataset(self, shape=None, maxdims=None, dtype=None, cpl=None):
    # h5json 2.0.x refuses maxdims for linked layouts; h5py gives maxshape == shape for fixed datasets
    if maxdims is not None and shape is not None and not isinstance(shape, str) and tuple(maxdims) == tuple(shape):
        maxdims = None
    return _create(self, shape=shape, maxdims=maxdims, dtype=dtype, cpl=cpl)

Hdf5db.createDataset = _createDataset
from h5pyd._apps.hsload import main
harness_argv, sys.argv = sys.argv, ["hsload", "--link", "--linkpath", args["linkpath"], args["file"], args["domain"]]
try:
    main()
except SystemExit as exc:
    if exc.code not in (None, 0):
        raise
finally:
    sys.argv = harness_argv  # emit() writes where the harness said
emit({"ok": True})
"""

_READ = r"""
f = h5pyd.File(args["domain"], "r", **kw)
out = {}
for name, expected in args["expected"].items():
    a = np.load(expected)
    d = f[name]
    out[name] = bool(d[...].tobytes() == a.tobytes()) and bool(np.array_equal(d[1::3], a[1::3]))
emit(out)
"""


def _table_rows(root: Path, meta: DatasetMeta, cid: str) -> list[tuple[int, int]]:
    """The (offset, size) of each HDF5 chunk of HSDS chunk ``cid``, looked up as the reader does."""

    async def go() -> list[tuple[int, int]]:
        async with hb.Reader({"root_dir": str(root), "bucket_name": BUCKET}) as reader:
            plan = plan_hyperslab(meta, parse_select("[30:60,32:64]", meta.shape))
            await reader.locate(plan)
            (task,) = [t for t in plan.tasks if t.chunk_id == cid]
            assert task.location is not None and task.location.parts is not None
            return list(task.location.parts)

    return asyncio.run(go())


def _write_h5(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """The file h5py writes: several chunk shapes, gzip + shuffle, unwritten chunks, > 100 chunks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(16)
    with h5py.File(path, "w") as f:
        f.create_dataset("grid2d", data=rng.normal(size=(300, 200)).astype("<f4"), chunks=(20, 16), compression="gzip",
                         compression_opts=4, shuffle=True)  # 15 x 13 = 195 chunks
        line = f.create_dataset("g/line1d", shape=(3000,), dtype="<i4", chunks=(128,), compression="gzip", shuffle=True, fillvalue=-1)
        line[0:1400] = np.arange(1400, dtype="<i4") * 3
        line[2200:2600] = -np.arange(400, dtype="<i4")  # chunks 11-16 and 21-23 are never written
        cube = f.create_dataset("g/cube3d", shape=(30, 35, 17), dtype=">f8", chunks=(8, 8, 8), compression="gzip", shuffle=True,
                                fillvalue=7.5)
        cube[0:16, :, :] = rng.normal(size=(16, 35, 17))
        img = f.create_dataset("img_u16", shape=(200, 130), dtype="<u2", chunks=(16, 15), compression="gzip", compression_opts=6,
                               shuffle=True, fillvalue=9)
        img[:, :] = (np.arange(200 * 130).reshape(200, 130) % 65000).astype("<u2")
        img[16:32, 15:30] = 9  # a chunk all fill value: h5py still writes it
        f.create_dataset("plain", data=np.arange(48, dtype="<i8").reshape(6, 8))  # contiguous, small: copied by hsload
    with h5py.File(path, "r") as f:
        return {name: f[name][...] for name in ("grid2d", "g/line1d", "g/cube3d", "img_u16")}


def _wait_flushed(bucket_dir: Path, quiet: float = 2.0, timeout: float = 90.0) -> None:
    """Wait until no object under ``bucket_dir`` has changed for ``quiet`` seconds.

    HSDS's DN writes a load's objects out some time after it answered (its sync interval). The
    front reads storage once a key's dirty window has passed, so a read that came before the
    flush on a busy machine would see the chunk table still unwritten, and fill values.
    """
    deadline = time.monotonic() + timeout
    while True:
        newest = max((p.stat().st_mtime for p in bucket_dir.rglob("*") if p.is_file()), default=0.0)
        if time.time() - newest >= quiet:
            return
        assert time.monotonic() < deadline, f"HSDS kept writing under {bucket_dir} for {timeout} s"
        time.sleep(0.2)


def test_hsload_link_reads_identically_through_every_backend_and_the_fronts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / BUCKET).mkdir(parents=True)
    expected = _write_h5(root / LINK)
    npy = {}
    for name, arr in expected.items():
        npy[name] = str(tmp_path / (name.replace("/", "_") + ".npy"))
        np.save(npy[name], arr)
    domain = "/home/admin/linked.h5"
    with F.Deployment(root, backend="inline", bucket=BUCKET, config={"front_dirty_window": 1}) as dep:
        client = dep.client()
        F.ensure_home(client)
        t0 = time.monotonic()
        assert client.run_h5pyd(_HSLOAD, linkpath=LINK, file=str(root / LINK), domain=domain, timeout=300) == {"ok": True}
        load_s = time.monotonic() - t0
        _wait_flushed(root / BUCKET)  # HSDS's DN has written everything out (later than usual on a loaded machine)
        time.sleep(1.5)  # and the dirty window of the load's writes passes
        before = dep.totals()["by_backend"].get("inline", 0)
        assert client.run_h5pyd(_READ, domain=domain, expected=npy, timeout=300) == dict.fromkeys(expected, True)
        served = dep.totals()["by_backend"].get("inline", 0) - before
        assert served >= 195, dep.totals()  # the SN sent the fronts the chunk locations; inline read the file
        assert dep.totals()["fallbacks"] == 0

        # our reader, from the bucket HSDS wrote, on every backend
        config = {"root_dir": str(root), "bucket_name": BUCKET, "dn_count": 2, "dask_n_workers": 2, "aws_lambda_local_workers": 2}
        with hb.open_domain(domain, config=config) as dom:
            layouts = {name: dom[name].async_dataset.meta.layout_class for name in expected}
            assert layouts == dict.fromkeys(expected, "H5D_CHUNKED_REF_INDIRECT"), layouts  # hsload chose it
            assert dom["plain"].read().tolist() == np.arange(48).reshape(6, 8).tolist()
            rng = np.random.default_rng(3)
            for backend in ("inline", "containers", "dask", "lambda"):
                for name, arr in expected.items():
                    assert dom[name].read(backend=backend).tobytes() == arr.tobytes(), (backend, name)
                    sel = tuple(slice(1, None, 3) for _ in arr.shape)
                    assert dom[name].read(sel, backend=backend).tobytes() == arr[sel].tobytes(), (backend, name)
                    pts = np.stack([rng.integers(0, s, 50) for s in arr.shape], axis=1)
                    assert dom[name].read_points(pts, backend=backend).tobytes() == arr[tuple(pts.T)].tobytes(), (backend, name)

        # hyper-chunks, written by the project's writer where HSDS reads: the SN sends offset and size lists
        hyper = (np.arange(90 * 64, dtype="<i4").reshape(90, 64) * 7) % 3001

        async def write_hyper() -> DatasetMeta:
            w = Writer(PosixStorage(root), BUCKET)
            return await w.create_linked_dataset(
                "/home/admin/hyper.h5", "/h", hyper, file_key="linked/hyper.h5", layout="H5D_CHUNKED_REF_INDIRECT",
                chunks=(30, 32), hyper_dims=(10, 8), filters=["shuffle", "gzip"], fillvalue=-2, skip_chunk=lambda i: i == (4, 5),
            )

        meta = asyncio.run(write_hyper())
        # one raw hyper-chunk request, as the SN sends it, to front and DN: the same status and bytes
        cid = meta.chunk_id((1, 1))
        rows = _table_rows(root, meta, cid)
        target = (f"/chunks/{cid}?bucket={BUCKET}&select=[2:29:3,0:32]&s3path={BUCKET}/linked/hyper.h5"
                  f"&s3offset={':'.join(str(o) for o, _ in rows)}&s3size={':'.join(str(n) for _, n in rows)}&hyper_dims=10:8")
        i = dn_index(cid, 2)
        before = dep.totals()
        got = H.unix_http_request(dep.front_socket(i), "GET", target)
        assert got[0] == 200 and got[2] == H.unix_http_request(dep.dn_socket(i), "GET", target)[2]
        want = hyper.copy()
        want[40:50, 40:48] = -2  # the unwritten HDF5 chunk, inside this hyper-chunk
        assert got[2] == np.ascontiguousarray(want[32:59:3, 32:64]).tobytes()
        assert dep.totals()["forwarded"] == before["forwarded"]  # served, not forwarded
        np.save(tmp_path / "hyper.npy", want)
        before = dep.totals()["by_backend"].get("inline", 0)
        assert client.run_h5pyd(_READ, domain="/home/admin/hyper.h5", expected={"h": str(tmp_path / "hyper.npy")}) == {"h": True}
        assert dep.totals()["by_backend"].get("inline", 0) - before >= 6, dep.totals()  # 3 x 2 hyper-chunks, served
        assert dep.totals()["fallbacks"] == 0
    print(f"hsload --link of {sum(a.size for a in expected.values())} elements took {load_s:.1f} s")
