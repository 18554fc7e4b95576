"""The config keys the ``lambda`` backend owns (``LambdaBackend.config_keys``).

Read with :func:`hsds_backends.config.option`: from the config, else the environment
(``HSDS_BACKENDS_<KEY>``, then ``<KEY>``), else the default below. A default that depends on
another key or on the machine is ``None`` here and resolved where the key is read: the GB-s
price (by ``aws_lambda_arch``), the result bytes per invoke (by ``aws_lambda_answer``), the
embedded runtime's environments (by the cores).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from hsds_backends.config import ConfigKey, as_bool, as_float, as_int, as_lower, as_str, at_least, optional

from .wire import PRICE_REQUEST

__all__ = ["CONFIG_KEYS", "DEFAULT_FUNCTION", "DEFAULT_LOG_LEVEL"]

#: The function's name when ``aws_lambda_chunkread_function`` is unset (HSDS's 2021 name).
DEFAULT_FUNCTION: Final = "chunk_read"
#: ``LOG_LEVEL`` of the embedded runtime's workers when ``log_level`` is unset.
DEFAULT_LOG_LEVEL: Final = "WARNING"

CONFIG_KEYS: Final[Mapping[str, ConfigKey]] = {
    "aws_lambda_chunkread_function": ConfigKey(None, optional(as_str), "the chunk_read function's name or ARN"),
    "aws_lambda_threshold": ConfigKey(4, at_least(as_int, 0), "hsds2021: Lambda from this many chunks per DN"),
    "aws_lambda_max_invoke": ConfigKey(1000, at_least(as_int, 1), "invokes in flight at once"),
    "aws_lambda_gateway": ConfigKey(None, optional(as_str), "Lambda endpoint URL (unset: the embedded local runtime)"),
    "aws_lambda_timeout": ConfigKey(60.0, as_float, "function timeout in seconds (the invoke read timeout is 30 s more)"),
    "aws_lambda_memory_mb": ConfigKey(1769, as_int, "function memory in MB (1769: one vCPU); prices GB-s"),
    "aws_lambda_arch": ConfigKey("x86_64", as_str, "function architecture, x86_64 or arm64 (sets the default GB-s price)"),
    "aws_lambda_price_gb_s": ConfigKey(None, optional(as_float), "dollars per GB-s (default: the arch's us-east-1 price)"),
    "aws_lambda_price_request": ConfigKey(PRICE_REQUEST, as_float, "dollars per invoke"),
    "aws_lambda_batch_tasks": ConfigKey(64, as_int, "most chunk tasks per invoke"),
    "aws_lambda_max_attempts": ConfigKey(
        8, as_int, "attempts per invoke (429, 5xx, connection errors, Sandbox.Timedout, Runtime.ExitError)"
    ),
    "aws_lambda_retry_base": ConfigKey(0.05, as_float, "seconds: base of the full-jitter retry backoff"),
    "aws_lambda_local_workers": ConfigKey(
        None, optional(as_int), "environments of the embedded runtime (default: the cores + 1, at most 4)"
    ),
    "aws_lambda_local_process": ConfigKey(
        True, as_bool, "run the embedded runtime in a child process (false: on the reader's event loop)"
    ),
    "aws_lambda_answer": ConfigKey("raw", as_lower, "raw: results as binary; base64: base64 in JSON (HSDS's 2021 form)"),
    "aws_lambda_result_bytes": ConfigKey(
        None, optional(as_int), "result bytes per invoke (default: what one answer of the aws_lambda_answer form holds)"
    ),
    "log_level": ConfigKey(None, optional(as_str), f"LOG_LEVEL of the embedded Lambda runtime's workers (default {DEFAULT_LOG_LEVEL})"),
}
