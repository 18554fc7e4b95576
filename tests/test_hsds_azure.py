"""A real HSDS 1.0.2 on Azure Blob storage (Azurite): what it writes, every backend that reads Azure reads.

HSDS picks its Azure driver when ``azure_connection_string`` is set and neither ``root_dir``
nor ``aws_s3_gateway`` is (docs/hsds-format.md §1.5); the launcher gives it, and the fronts,
the connection string in their environment only. h5pyd writes a gzip+shuffle grid and a
compound table through HSDS; h5pyd reads them back through the fronts (inline on Azure), and
our own readers on ``inline``, ``containers`` and ``dask`` read the same domain from the
container byte for byte.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

import hsds_backends as hb  # noqa: E402

try:
    import front_harness as F
except ImportError:  # tests/ turned into a package
    from tests import front_harness as F

pytestmark = [pytest.mark.hsds, pytest.mark.azure]

_WRITE_TABLE = r"""
f = h5pyd.File(args["domain"], "a", **kw)
dt = np.dtype([("id", "<i8"), ("temp", "<f4"), ("tag", "S4")])
t = np.zeros(1000, dtype=dt)
t["id"] = np.arange(1000)
t["temp"] = (np.arange(1000) % 37) - 5.5
t["tag"] = [b"t%03d" % (i % 1000) for i in range(1000)]
f.create_dataset("table", data=t, chunks=(128,))
f.close()
np.save(args["out"], t)
"""

_READ = r"""
f = h5pyd.File(args["domain"], "r", **kw)
a = np.load(args["grid"])
t = np.load(args["table"])
d = f["grid"]
emit({"full": bool(np.array_equal(d[...], a)), "strided": bool(np.array_equal(d[3:290:7, 5:400:9], a[3:290:7, 5:400:9])),
      "table": bool(f["table"][...].tobytes() == t.tobytes())})
"""


def test_hsds_writes_to_azurite_and_every_azure_backend_reads_it(azurite_server: Any, tmp_path: Path) -> None:
    azurite_server.create_container("hsdsazure")
    azure = azurite_server.config()
    with F.Deployment(None, backend="inline", bucket="hsdsazure", config={**azure, "front_dirty_window": 3}) as dep:
        # the secret is in no file of the run folder (it travels in the environment)
        run_dir = Path(dep.dep.run_dir)
        for path in run_dir.rglob("*"):
            if path.is_file() and not path.is_socket():
                assert azurite_server.key not in path.read_text(errors="replace"), path
        client = dep.client()
        F.ensure_home(client)
        client.run_h5pyd(F.WRITE_GRID, domain="/home/admin/az.h5", name="grid", shape=[300, 400], mod=997, dtype="<i4",
                         chunks=[64, 100], out=str(tmp_path / "grid.npy"), timeout=300)
        client.run_h5pyd(_WRITE_TABLE, domain="/home/admin/az.h5", out=str(tmp_path / "table.npy"), timeout=300)
        time.sleep(3.5)  # HSDS flushes to storage (s3_sync_interval); the front's dirty window passes
        res = client.run_h5pyd(_READ, domain="/home/admin/az.h5", grid=str(tmp_path / "grid.npy"), table=str(tmp_path / "table.npy"))
        assert res == {"full": True, "strided": True, "table": True}
        t = dep.totals()
        assert t["by_backend"].get("inline", 0) >= 20 and t["fallbacks"] == 0, t  # chunks read from Azure by the fronts
    grid, table = np.load(tmp_path / "grid.npy"), np.load(tmp_path / "table.npy")
    config = {**azure, "bucket_name": "hsdsazure", "dn_count": 2, "dask_n_workers": 2}
    with hb.open_domain("/home/admin/az.h5", config=config) as dom:
        for backend in ("inline", "containers", "dask"):
            assert dom["/grid"].read(backend=backend).tobytes() == grid.tobytes(), backend
            assert dom["/grid"].read("[3:290:7, 5:400:9]", backend=backend).tobytes() == grid[3:290:7, 5:400:9].tobytes(), backend
            assert dom["/table"].read(backend=backend).tobytes() == table.tobytes(), backend
            got = dom["/table"].query("temp > 20", backend=backend)  # rows with their index first
            hits = np.flatnonzero(table["temp"] > 20)
            assert got["index"].tolist() == hits.tolist(), backend
            assert got[["id", "temp", "tag"]].tolist() == table[hits].tolist(), backend


def test_hsds_serve_azure_needs_the_connection_string_in_the_environment(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    drop = ("ROOT_DIR", "AWS_S3_GATEWAY", "AZURE_CONNECTION_STRING", "STORAGE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSDS_BACKENDS_") and k not in drop}
    argv = [sys.executable, "-m", "hsds_backends.cli", "hsds", "serve", "--port", "0", "--bucket", "c"]
    r = subprocess.run([*argv, "--azure"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout) == (1, ""), r
    assert r.stderr.strip() == (
        "Error: azure_connection_string is not set (or is not a connection string); set it, or the environment"
        " variable AZURE_CONNECTION_STRING, to the storage account's connection string"
    )
    r = subprocess.run([*argv, "--azure", "--s3-gateway", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60, env=env,
                       cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "Error: give one storage: --root-dir, --s3-gateway or --azure" in r.stderr, r
