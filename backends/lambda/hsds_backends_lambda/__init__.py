"""hsds-backends-lambda: chunk reads in the ``chunk_read`` AWS Lambda function.

Modules: :mod:`.handler` (the function), :mod:`.backend` (the invoke client backend),
:mod:`.runtime` (a local Lambda runtime: Invoke API in front, awslambdaric workers behind),
:mod:`.build` and :mod:`.deploy` (zip and function management), :mod:`.cost` (the AWS
cost/latency model). Importing this package imports no cloud SDK.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
