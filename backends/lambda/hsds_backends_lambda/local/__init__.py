"""A local Lambda runtime, for development and tests: the Invoke API in front, awslambdaric workers behind.

Not production code: real reads go to AWS Lambda. This runs the same handler behind the
same wire behaviour (docs/aws-lambda.md §1), so what passes here is what runs on AWS.

Modules, by concern: :mod:`.runtime` (:class:`LocalLambdaRuntime`, which ties the rest
together and runs invocations), :mod:`.invoke_api` (the front), :mod:`.runtime_api` (the
side the workers talk to), :mod:`.environments` (functions and their awslambdaric
processes), :mod:`.faults` (failures to inject), :mod:`.billing` (the meter and ``REPORT``
lines), :mod:`.process` (:class:`RuntimeProcess`: the runtime in a child process,
``python -m hsds_backends_lambda.local``).
"""

from __future__ import annotations

from .billing import Meter
from .environments import DEFAULT_HANDLER, FunctionSpec
from .faults import Faults
from .process import RuntimeProcess
from .runtime import LocalLambdaRuntime

__all__ = ["DEFAULT_HANDLER", "Faults", "FunctionSpec", "LocalLambdaRuntime", "Meter", "RuntimeProcess"]
