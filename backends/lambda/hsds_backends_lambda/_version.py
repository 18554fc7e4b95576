"""The distribution's version (a module of its own, so nothing needs the package facade for it)."""

from __future__ import annotations

__version__ = "0.1.0"
