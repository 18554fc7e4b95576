"""A plugin with a misspelled hook name."""

from hsds_backends import hookimpl


@hookimpl
def hsds_backends_make_backnd(name, config):  # type: ignore[no-untyped-def]
    return None
