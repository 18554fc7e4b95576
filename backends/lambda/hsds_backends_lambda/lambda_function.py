"""The Lambda entry module: handler ``lambda_function.lambda_handler`` (HSDS 2021 naming).

The deployment zip puts a copy of this file at its root, so the function's handler setting
is ``lambda_function.lambda_handler``; the local runtime runs
``hsds_backends_lambda.lambda_function.lambda_handler`` from the installed package.
"""

from hsds_backends_lambda.handler import lambda_handler

__all__ = ["lambda_handler"]
