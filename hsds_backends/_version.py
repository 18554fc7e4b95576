"""The version of the core distribution (one place, imported by the package root and the plugin manager)."""

__version__ = "0.1.0"
