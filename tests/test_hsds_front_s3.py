"""``hsds serve`` on S3 storage: HSDS 1.0.2 and the fronts both on a moto S3 server (docs/architecture.md §12).

HSDS gets ``aws_s3_gateway`` from its override.yml and the credentials from its environment;
the fronts read the chunks HSDS wrote through aiobotocore. h5pyd's reads equal numpy, and once
the dirty window has passed the backend serves them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_containers")

try:
    import front_harness as F
except ImportError:  # tests/ turned into a package
    from tests import front_harness as F

pytest_plugins = ["hsds_backends.testing.fixtures"]
pytestmark = [pytest.mark.hsds, pytest.mark.s3]

_READ = r"""
f = h5pyd.File(args["domain"], "r", **kw)
a = np.load(args["expected"])
d = f["grid"]
emit({"full": bool(np.array_equal(d[...], a)), "strided": bool(np.array_equal(d[3:290:7, 5:400:9], a[3:290:7, 5:400:9]))})
"""


def test_serve_on_s3(s3_config: dict[str, Any], tmp_path: Path) -> None:
    cfg = {k: v for k, v in s3_config.items() if k != "bucket_name"}
    with F.Deployment(None, backend="inline", bucket=s3_config["bucket_name"], config={**cfg, "front_dirty_window": 3}) as dep:
        client = dep.client()
        F.ensure_home(client)
        client.run_h5pyd(F.WRITE_GRID, domain="/home/admin/s3.h5", name="grid", shape=[300, 400], mod=997, dtype="<i4",
                         chunks=[64, 100], out=str(tmp_path / "grid.npy"), timeout=300)
        time.sleep(3.5)
        res = client.run_h5pyd(_READ, domain="/home/admin/s3.h5", expected=str(tmp_path / "grid.npy"))
        assert res == {"full": True, "strided": True}
        t = dep.totals()
        assert t["by_backend"].get("inline", 0) >= 20 and t["fallbacks"] == 0, t  # 5 × 4 chunks from S3, on the backend
        assert np.load(tmp_path / "grid.npy").shape == (300, 400)
