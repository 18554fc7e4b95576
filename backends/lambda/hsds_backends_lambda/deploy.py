"""Create or update the ``chunk_read`` function through the AWS Lambda API.

Idempotent: the zip's SHA-256 is compared with the function's ``CodeSha256`` and the code is
uploaded only when they differ; the configuration (runtime, handler, role, memory, timeout,
environment) is updated only when it differs. Every change is followed by a wait until the
function is ``Active`` with ``LastUpdateStatus`` ``Successful`` (an invoke or a second
update during ``InProgress`` answers 409 ``ResourceConflictException``, docs/aws-lambda.md §1.3).
Works against AWS or any endpoint that speaks the Lambda control plane (moto server).
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsds_backends.errors import HsdsBackendsError

__all__ = ["DeployError", "DeployResult", "deploy"]


class DeployError(HsdsBackendsError):
    """Creating or updating the function failed."""


@dataclass
class DeployResult:
    """What :func:`deploy` did."""

    action: str
    """``created``, ``updated`` or ``unchanged``."""
    function_arn: str
    code_sha256: str
    code_updated: bool
    config_updated: bool
    state: str
    seconds: float

    def summary(self) -> str:
        what = []
        if self.code_updated:
            what.append("code")
        if self.config_updated:
            what.append("configuration")
        detail = f" ({' and '.join(what)})" if what and self.action == "updated" else ""
        return f"{self.action}{detail}: {self.function_arn} [{self.state}] CodeSha256 {self.code_sha256} in {self.seconds:.1f} s"


def _client(region: str, endpoint_url: str | None, credentials: tuple[str | None, str | None, str | None] | None) -> Any:
    import botocore.session
    from botocore.config import Config

    key, secret, token = credentials or (None, None, None)
    return botocore.session.get_session().create_client(
        "lambda",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, read_timeout=300),
    )


def _wait(client: Any, name: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        cfg: dict[str, Any] = client.get_function_configuration(FunctionName=name)
        state = cfg.get("State") or "Active"
        update = cfg.get("LastUpdateStatus") or "Successful"
        if state == "Failed" or update == "Failed":
            raise DeployError(
                f"function {name!r} is {state}/{update}: {cfg.get('StateReason') or cfg.get('LastUpdateStatusReason') or 'no reason given'}"
            )
        if state == "Active" and update == "Successful":
            return cfg
        if time.monotonic() > deadline:
            raise DeployError(f"function {name!r} is still {state}/{update} after {timeout_s:.0f} s; check it in the Lambda console")
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def deploy(
    zip_path: str | Path,
    *,
    function: str = "chunk_read",
    role: str | None = None,
    memory_mb: int = 1769,
    timeout_s: int = 60,
    environment: dict[str, str] | None = None,
    arch: str = "x86_64",
    runtime: str = "python3.11",
    handler: str = "lambda_function.lambda_handler",
    region: str = "us-east-1",
    endpoint_url: str | None = None,
    credentials: tuple[str | None, str | None, str | None] | None = None,
    wait_timeout_s: float = 600.0,
) -> DeployResult:
    """Create the function, or update its code and configuration where they differ.

    Parameters
    ----------
    zip_path
        The deployment zip (:func:`hsds_backends_lambda.build.build_zip`).
    function
        ``aws_lambda_chunkread_function``.
    role
        Execution role ARN; required to create, optional to update.
    memory_mb, timeout_s, environment, arch, runtime, handler
        Function settings (128–10,240 MB; 1–900 s, docs/aws-lambda.md §1.4).
    region, endpoint_url, credentials
        Where and as whom (``endpoint_url`` ``None`` = AWS; credentials ``None`` = the AWS chain).

    Raises
    ------
    DeployError
        A missing role for a new function, bad settings, or an API error (the message names
        the function and the step).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    t0 = time.monotonic()
    if not 128 <= memory_mb <= 10240:
        raise DeployError(f"memory {memory_mb} MB is outside Lambda's 128–10240 MB; pick a value in that range")
    if not 1 <= timeout_s <= 900:
        raise DeployError(f"timeout {timeout_s} s is outside Lambda's 1–900 s; pick a value in that range")
    code = Path(zip_path).read_bytes()
    sha = base64.b64encode(hashlib.sha256(code).digest()).decode()
    env = dict(environment or {})
    want: dict[str, Any] = {
        "Runtime": runtime,
        "Handler": handler,
        "MemorySize": int(memory_mb),
        "Timeout": int(timeout_s),
        "Environment": {"Variables": env},
    }
    if role:
        want["Role"] = role
    client = _client(region, endpoint_url, credentials)
    step = "get_function"
    try:
        try:
            current: dict[str, Any] | None = client.get_function(FunctionName=function)["Configuration"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            current = None
        if current is None:
            if not role:
                raise DeployError(f"function {function!r} does not exist; give --role (an execution role ARN) to create it")
            step = "create_function"
            client.create_function(FunctionName=function, Code={"ZipFile": code}, Architectures=[arch], Publish=False, **want)
            cfg = _wait(client, function, wait_timeout_s)
            return DeployResult("created", cfg["FunctionArn"], cfg.get("CodeSha256", sha), True, True, cfg.get("State") or "Active", time.monotonic() - t0)
        code_changed = current.get("CodeSha256") != sha or (current.get("Architectures") or ["x86_64"]) != [arch]
        if code_changed:
            step = "update_function_code"
            _wait(client, function, wait_timeout_s)
            client.update_function_code(FunctionName=function, ZipFile=code, Architectures=[arch], Publish=False)
            _wait(client, function, wait_timeout_s)
        have = {
            "Runtime": current.get("Runtime"),
            "Handler": current.get("Handler"),
            "MemorySize": current.get("MemorySize"),
            "Timeout": current.get("Timeout"),
            "Environment": {"Variables": (current.get("Environment") or {}).get("Variables") or {}},
        }
        if role:
            have["Role"] = current.get("Role")
        config_changed = have != want
        if config_changed:
            step = "update_function_configuration"
            client.update_function_configuration(FunctionName=function, **want)
        cfg = _wait(client, function, wait_timeout_s)
        action = "updated" if code_changed or config_changed else "unchanged"
        return DeployResult(action, cfg["FunctionArn"], cfg.get("CodeSha256", sha), code_changed, config_changed, cfg.get("State") or "Active", time.monotonic() - t0)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise DeployError(f"{step} of function {function!r} at {endpoint_url or 'AWS'} failed: {err.get('Code')}: {err.get('Message')}") from exc
    except BotoCoreError as exc:
        raise DeployError(f"{step} of function {function!r} at {endpoint_url or 'AWS'} failed: {exc}") from exc
    finally:
        client.close()
