"""hsds-backends-lambda: chunk reads in the ``chunk_read`` AWS Lambda function.

Modules: :mod:`.plugin` (the hooks), :mod:`.backend` (batching, retries, placement),
:mod:`.client` (the aiobotocore invoke client), :mod:`.wire` (AWS limits and prices, the
raw-answer format), :mod:`.handler` (the function), :mod:`.build` and :mod:`.deploy` (zip and
function management), :mod:`.cost` (the AWS cost/latency model), :mod:`.bench` (benchmark
figures), :mod:`.cli`; :mod:`.local` (a local Lambda runtime for development and tests: Invoke
API in front, awslambdaric workers behind). Importing this package imports no cloud SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = ["LambdaBackend", "__version__"]

if TYPE_CHECKING:
    from .backend import LambdaBackend


def __getattr__(name: str) -> Any:
    if name == "LambdaBackend":
        from .backend import LambdaBackend

        return LambdaBackend
    raise AttributeError(f"module 'hsds_backends_lambda' has no attribute {name!r}")
