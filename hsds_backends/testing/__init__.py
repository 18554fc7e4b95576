"""Test helpers for hsds-backends and its plugins.

- :class:`BackendTests`: the conformance suite every backend inherits.
- :func:`write_conformance_domain`: the datasets it reads, with numpy oracles.
- :mod:`hsds_backends.testing.fixtures`: a pytest plugin (moto server on 127.0.0.1).

Importing this package imports pytest; the core never imports it.
"""

from __future__ import annotations

from .data import CONFORMANCE_DOMAIN, ConformanceData, write_conformance_domain
from .suite import BackendTests

__all__ = ["BackendTests", "CONFORMANCE_DOMAIN", "ConformanceData", "write_conformance_domain"]
