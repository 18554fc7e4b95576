"""Exceptions raised by hsds-backends.

Every error is rooted at :class:`HsdsBackendsError`. Some mix in a builtin so
callers can catch what they already know (``FileNotFoundError``, ``KeyError``,
``TimeoutError``); selection and field errors mix in the builtin h5py raises for the
same mistake (``IndexError``, ``TypeError``, ``ValueError``) so h5py code's ``except``
clauses keep working (docs/architecture.md §8).

Messages quote the bad value, list the valid choices where there are any, and
say what to do next.
"""

from __future__ import annotations

__all__ = [
    "HsdsBackendsError",
    "ConfigError",
    "PluginError",
    "BackendNotInstalledError",
    "UnknownBackendError",
    "NoBackendError",
    "BackendError",
    "BackendTimeoutError",
    "SelectionError",
    "SelectionTypeError",
    "SelectionValueError",
    "QueryError",
    "FieldError",
    "TypeJsonError",
    "DatasetJsonError",
    "NotFoundError",
    "DomainNotFoundError",
    "DatasetNotFoundError",
    "LinkNotFoundError",
    "AttributeNotFoundError",
    "StorageError",
    "StoragePathError",
    "ChunkDecodeError",
    "UnsupportedFilterError",
    "TaskError",
    "LimitError",
]


class HsdsBackendsError(Exception):
    """Root of every error raised by hsds-backends.

    Parameters
    ----------
    *args
        The message (and anything else the builtin mixed in takes).
    status
        The HTTP status a service answers this error with, or the one a remote service
        answered (``None``: not from or for HTTP). Kept when the error is pickled.
    """

    status: int | None = None
    """HTTP status this error is answered with or came from (``None``: none)."""

    def __init__(self, *args: object, status: int | None = None) -> None:
        super().__init__(*args)
        if status is not None:
            self.status = status


class ConfigError(HsdsBackendsError):
    """A configuration value is missing or invalid."""


class PluginError(HsdsBackendsError):
    """A plugin is broken: a misspelled hook, an import failure, a bad backend."""


class BackendNotInstalledError(PluginError):
    """A backend known by name was asked for but its distribution is not installed."""


class UnknownBackendError(PluginError, KeyError):
    """A backend name that no installed plugin provides and that we do not know of."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class NoBackendError(HsdsBackendsError):
    """No installed and configured backend can serve a request."""


class BackendError(HsdsBackendsError):
    """A backend failed to execute chunk tasks (after its own retries)."""


class BackendTimeoutError(BackendError, TimeoutError):
    """A backend (or one of its nodes) did not answer within the configured time."""


class SelectionError(HsdsBackendsError, IndexError):
    """A selection (select string, index, points) is malformed or out of range.

    Raised as is for an index out of range (h5py raises ``IndexError`` there); the two
    subclasses below carry the builtin h5py raises for the other mistakes.
    """


class SelectionTypeError(SelectionError, TypeError):
    """An index of a kind that cannot select (a float, ``None``, two index lists, a decreasing
    list, a boolean array of the wrong shape): h5py raises ``TypeError``."""


class SelectionValueError(SelectionError, ValueError):
    """An index that does not fit the dataset's rank or uses a step below 1 (or slices a
    scalar dataset): h5py raises ``ValueError``."""


class QueryError(HsdsBackendsError):
    """A query expression cannot be parsed or does not fit the dataset."""


class FieldError(HsdsBackendsError, KeyError, ValueError):
    """A compound field name does not exist in the dataset type, or the type has no fields.

    ``ValueError`` is what h5py raises for both; ``KeyError`` what a mapping of fields would.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TypeJsonError(HsdsBackendsError):
    """An HSDS type JSON cannot be mapped to a numpy dtype."""


class DatasetJsonError(HsdsBackendsError):
    """A dataset JSON is missing keys or holds inconsistent values."""


class NotFoundError(HsdsBackendsError, FileNotFoundError):
    """A domain, group, link or dataset does not exist."""


class DomainNotFoundError(NotFoundError):
    """The domain's ``.domain.json`` does not exist in the bucket."""


class DatasetNotFoundError(NotFoundError):
    """A link path does not lead to a dataset."""


class LinkNotFoundError(NotFoundError, KeyError):
    """A path with a link that does not exist (or a dangling soft link); ``KeyError`` as in h5py."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class AttributeNotFoundError(NotFoundError, KeyError):
    """An attribute name that the object does not have; ``KeyError`` as in h5py."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class StorageError(HsdsBackendsError):
    """Object storage failed (other than a missing object, which reads as fill)."""


class StoragePathError(StorageError):
    """A bucket, key or path is unsafe (``..``, absolute, bad characters)."""


class ChunkDecodeError(HsdsBackendsError):
    """A chunk's bytes are corrupt, truncated or of the wrong length.

    The message always names the chunk id and the storage key.
    """


class UnsupportedFilterError(ChunkDecodeError):
    """A dataset uses a filter that hsds-backends cannot decode."""


class TaskError(HsdsBackendsError):
    """A chunk task failed remotely; carries the remote error type and chunk id.

    Backends that run tasks out of process re-raise remote failures with the
    same class the ``inline`` backend would raise when it is known (see
    :func:`hsds_backends.tasks.error_from_wire`); this class is the fallback.
    """


class LimitError(HsdsBackendsError):
    """A request or a dataset exceeds a configured bound (HTTP 413).

    The message names the figure, the limit and the config key that raises it; nothing
    was allocated for it.
    """

    status: int | None = 413
