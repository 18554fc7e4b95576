"""One way to open an aiobotocore client (S3 storage, the Lambda invoke client).

aiobotocore is imported on first use only: the core imports no cloud SDK at import time
(docs/architecture.md §2).
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["Credentials", "open_client"]

#: ``(access key id, secret access key, session token)``; ``None`` parts: the AWS default chain.
Credentials = tuple[str | None, str | None, str | None]


async def open_client(
    service: str, *, region: str | None, endpoint_url: str | None, credentials: Credentials, **config: Any
) -> tuple[contextlib.AsyncExitStack, Any]:
    """Open an aiobotocore client for ``service`` on the running loop; return ``(stack, client)``.

    ``config`` are :class:`aiobotocore.config.AioConfig` arguments. ``await stack.aclose()``
    closes the client; if opening fails, nothing is left open and the error is raised.
    """
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    key, secret, token = credentials
    stack = contextlib.AsyncExitStack()
    try:
        client = await stack.enter_async_context(
            get_session().create_client(
                service,
                region_name=region,
                endpoint_url=endpoint_url,
                aws_access_key_id=key,
                aws_secret_access_key=secret,
                aws_session_token=token,
                config=AioConfig(**config),
            )
        )
    except BaseException:
        await stack.aclose()
        raise
    return stack, client
