"""``build`` and ``deploy`` of the chunk_read function.

Deploy runs against moto server over HTTP (the Lambda control plane needs no Docker there;
the IAM role must exist first). The one build test downloads manylinux wheels from PyPI into
``<repo>/.cache/lambda-wheels`` (reused on later runs), then runs the handler from the
unpacked zip in the local runtime.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hsds_backends_lambda")

from hsds_backends_lambda.deploy import DeployError, deploy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _zip(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("lambda_function.py", date_time=(1980, 1, 1, 0, 0, 0))
        zf.writestr(info, text)
    return buf.getvalue()


@pytest.fixture
def aws(moto_server: Any) -> Iterator[dict[str, Any]]:
    import botocore.session

    kw = moto_server.client_kwargs()
    moto_server.reset()
    iam = botocore.session.get_session().create_client("iam", **kw)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName="chunk-read", AssumeRolePolicyDocument=json.dumps(policy))
    iam.close()
    lam = botocore.session.get_session().create_client("lambda", **kw)
    yield {
        "role": role["Role"]["Arn"],
        "endpoint_url": moto_server.endpoint_url,
        "credentials": (kw["aws_access_key_id"], kw["aws_secret_access_key"], None),
        "lambda": lam,
    }
    lam.close()


def test_deploy_create_update_and_noop(aws: dict[str, Any], tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1.zip", tmp_path / "v2.zip"
    v1.write_bytes(_zip("def lambda_handler(e, c):\n    return 1\n"))
    v2.write_bytes(_zip("def lambda_handler(e, c):\n    return 2\n"))
    common = {"role": aws["role"], "endpoint_url": aws["endpoint_url"], "credentials": aws["credentials"], "environment": {"LOG_LEVEL": "INFO"}}

    r = deploy(v1, **common)
    assert r.action == "created" and r.state == "Active" and r.function_arn.endswith(":function:chunk_read")
    cfg = aws["lambda"].get_function_configuration(FunctionName="chunk_read")
    assert cfg["CodeSha256"] == r.code_sha256 and cfg["Handler"] == "lambda_function.lambda_handler"
    assert cfg["MemorySize"] == 1769 and cfg["Timeout"] == 60 and cfg["Environment"]["Variables"] == {"LOG_LEVEL": "INFO"}

    r = deploy(v1, **common)
    assert r.action == "unchanged" and not r.code_updated and not r.config_updated

    r = deploy(v2, **common)
    assert r.action == "updated" and r.code_updated and not r.config_updated
    assert aws["lambda"].get_function_configuration(FunctionName="chunk_read")["CodeSha256"] == r.code_sha256

    r = deploy(v2, **{**common, "environment": {"LOG_LEVEL": "DEBUG"}}, memory_mb=3008, timeout_s=120)
    assert r.action == "updated" and r.config_updated and not r.code_updated
    cfg = aws["lambda"].get_function_configuration(FunctionName="chunk_read")
    assert (cfg["MemorySize"], cfg["Timeout"], cfg["Environment"]["Variables"]) == (3008, 120, {"LOG_LEVEL": "DEBUG"})
    assert deploy(v2, **{**common, "environment": {"LOG_LEVEL": "DEBUG"}}, memory_mb=3008, timeout_s=120).action == "unchanged"


def test_deploy_errors(aws: dict[str, Any], tmp_path: Path) -> None:
    z = tmp_path / "f.zip"
    z.write_bytes(_zip("x = 1\n"))
    with pytest.raises(DeployError, match="does not exist; give --role"):
        deploy(z, function="new_fn", endpoint_url=aws["endpoint_url"], credentials=aws["credentials"])
    with pytest.raises(DeployError, match="outside Lambda's 1–900 s"):
        deploy(z, role=aws["role"], timeout_s=901, endpoint_url=aws["endpoint_url"], credentials=aws["credentials"])


def test_deploy_cli(aws: dict[str, Any], tmp_path: Path, moto_server: Any) -> None:
    from click.testing import CliRunner

    from hsds_backends.cli import cli

    z = tmp_path / "f.zip"
    z.write_bytes(_zip("x = 1\n"))
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    args = ["lambda", "deploy", "--zip", str(z), "--role", aws["role"], "--endpoint-url", aws["endpoint_url"], "--function", "cli_fn"]
    res = CliRunner().invoke(cli, args, env=env)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("created: arn:aws:lambda:us-east-1:123456789012:function:cli_fn")
    res = CliRunner().invoke(cli, args, env=env)
    assert res.output.startswith("unchanged:"), res.output


def test_build_zip_runs_in_the_local_runtime(tmp_path: Path) -> None:
    """The one test that reaches PyPI (wheels cached under <repo>/.cache/lambda-wheels)."""
    from hsds_backends_lambda.build import MAX_UNZIPPED_BYTES, MAX_ZIPPED_BYTES, BuildError, build_zip

    cache = ROOT / ".cache" / "lambda-wheels"
    try:
        res = build_zip(tmp_path / "chunk_read.zip", arch="x86_64", python="3.11" if sys.version_info[:2] == (3, 11) else None, cache_dir=cache)
    except BuildError as exc:
        if "could not download" in str(exc) and not any(cache.rglob("*.whl")):
            pytest.skip(f"no package index reachable and no cached wheels: {exc}")
        raise
    assert 0 < res.zipped_bytes <= MAX_ZIPPED_BYTES and 0 < res.unzipped_bytes <= MAX_UNZIPPED_BYTES
    names = set(zipfile.ZipFile(res.path).namelist())
    for must in ("lambda_function.py", "hsds_backends/kernel.py", "hsds_backends_lambda/handler.py", "numpy/__init__.py", "numcodecs/__init__.py", "aiobotocore/__init__.py", "botocore/data/s3/2006-03-01/service-2.json.gz"):
        assert must in names, must
    assert not any(n.startswith(("hsds_backends/testing/", "awslambdaric/", "click/", "botocore/data/ec2/")) or "__pycache__" in n for n in names)
    assert {"numpy", "numcodecs", "aiobotocore", "botocore"} <= set(res.packages)
    # deterministic: the same inputs give the same CodeSha256 (so deploy uploads nothing)
    again = build_zip(tmp_path / "again.zip", arch="x86_64", python=res.python, cache_dir=cache)
    assert again.code_sha256 == res.code_sha256

    code = tmp_path / "unpacked"
    zipfile.ZipFile(res.path).extractall(code)
    # importable on its own: no site-packages at all
    probe = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(code)!r}); import lambda_function, numpy; print(numpy.__file__)"],
        capture_output=True, text=True, check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(code))

    # and it answers through the local runtime, handler lambda_function.lambda_handler
    from hsds_backends_lambda.backend import LambdaBackend
    from hsds_backends_lambda.local import FunctionSpec, LocalLambdaRuntime

    from hsds_backends.storage import PosixStorage
    from hsds_backends.writer import Writer

    data = tmp_path / "data"
    arr = np.arange(64 * 48, dtype="<f4").reshape(64, 48)

    async def go() -> tuple[Any, np.ndarray]:
        from hsds_backends.api import Reader

        await Writer(PosixStorage(data), "hsdstest").create_dataset("/home/t/f.h5", "/a", arr, chunks=(16, 16), filters=["shuffle", ("gzip", 4)])
        spec = FunctionSpec("chunk_read", handler="lambda_function.lambda_handler", code_dir=str(code), env={"ROOT_DIR": str(data), "BUCKET_NAME": "hsdstest", "HSDS_LAMBDA_DIAGNOSTICS": "1"}, concurrency=2)
        async with LocalLambdaRuntime(functions=[spec]) as rt:
            ping = json.loads((await rt.run("chunk_read", b'{"ping": true}'))[0])
            cfg = {"root_dir": str(data), "aws_lambda_gateway": rt.url}
            async with Reader(cfg) as reader, LambdaBackend(cfg) as backend:
                dset = await (await reader.open("/home/t/f.h5")).get("/a")
                return ping, await dset.read(np.s_[3:60:2, 5:40], backend=backend)

    ping, out = asyncio.run(go())
    assert ping["modules"]["numpy"].startswith(str(code)) and ping["modules"]["hsds_backends"].startswith(str(code))
    assert out.tobytes() == arr[3:60:2, 5:40].tobytes()
