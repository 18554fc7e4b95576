"""Shared test configuration.

Fixtures that start services live in plugins: ``hsds_harness`` (real HSDS on unix
sockets, from its own virtualenv) and ``hsds_backends.testing.fixtures`` (moto server on
127.0.0.1, sample domains).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = ["hsds_harness", "hsds_backends.testing.fixtures"]
