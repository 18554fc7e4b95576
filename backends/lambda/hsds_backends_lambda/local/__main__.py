"""``python -m hsds_backends_lambda.local``: the child side of :class:`~hsds_backends_lambda.local.RuntimeProcess`."""

from __future__ import annotations

from .process import main

if __name__ == "__main__":
    main()
