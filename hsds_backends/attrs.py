"""Attributes of domains, groups and datasets, read like h5py's ``.attrs``.

HSDS keeps attributes inline in the object JSON under ``attributes``
(docs/hsds-format.md §2): name → ``{"type": type JSON, "shape": shape JSON,
"value": JSON value}``. Types are decoded as datasets' are (§2.2); shapes as
dataset shapes (§2.1). No I/O happens here: the object JSON is already read.
"""

from __future__ import annotations

import math

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .dtypes import dtype_from_type_json, vlen_of
from .errors import AttributeNotFoundError, DatasetJsonError, HsdsBackendsError

__all__ = ["AttributeManager", "AttributeNotFoundError", "decode_attribute", "reference_target"]


def reference_target(value: Any) -> str:
    """Return the object id an HSDS reference value points to (``"datasets/d-…"`` → ``"d-…"``).

    Parameters
    ----------
    value
        The stored reference: ``"groups/g-…"``, ``"datasets/d-…"``, ``"datatypes/t-…"``,
        a bare id, or bytes of any of them (null-padded, §2.2).

    Returns
    -------
    str
        The id, or ``""`` for a null reference.
    """
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).rstrip(b"\x00").decode("utf-8", "replace")
    text = str(value)
    return text.rsplit("/", 1)[-1] if "/" in text else text


def _is_reference(type_json: Any) -> bool:
    return isinstance(type_json, dict) and type_json.get("class") == "H5T_REFERENCE"


def _check_count(name: str, count: int, shape: tuple[int, ...]) -> None:
    """Refuse a shape the stored values do not fill, before an array of that shape is allocated."""
    if count != math.prod(shape):
        raise DatasetJsonError(f"attribute {name!r} has {count} values for shape {list(shape)}; the object JSON is corrupt")


def _shape(shape_json: Any, name: str) -> tuple[int, ...] | None:
    """The attribute's shape (§2.1): ``()`` for scalar, ``None`` for ``H5S_NULL``."""
    if shape_json is None:
        return ()
    if isinstance(shape_json, list):
        return tuple(int(d) for d in shape_json)
    if not isinstance(shape_json, dict):
        raise DatasetJsonError(f"attribute {name!r} has shape {shape_json!r}; expected an HSDS shape object")
    cls = shape_json.get("class", "H5S_SIMPLE")
    if cls == "H5S_SCALAR":
        return ()
    if cls == "H5S_NULL":
        return None
    try:
        return tuple(int(d) for d in shape_json["dims"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetJsonError(f"attribute {name!r} has shape {shape_json!r} without integer 'dims'") from exc


def _map(value: Any, depth: int, dt: np.dtype[Any]) -> Any:
    """Convert the elements ``depth`` list levels down in ``value`` with :func:`_elem`."""
    if depth == 0:
        return _elem(value, dt)
    if not isinstance(value, list):
        raise TypeError(f"expected a list {depth} levels deep, found {value!r}")
    return [_map(v, depth - 1, dt) for v in value]


def _elem(value: Any, dt: np.dtype[Any]) -> Any:
    """JSON value of one element → what numpy accepts for ``dt`` (or the object stored for a vlen)."""
    if dt.names is not None:
        if isinstance(value, dict):  # some writers keep compound elements as {field: value}
            value = [value[n] for n in dt.names]
        if not isinstance(value, list) or len(value) != len(dt.names):
            raise TypeError(f"compound element {value!r} does not have the {len(dt.names)} fields {list(dt.names)}")
        return tuple(_elem(v, dt.fields[n][0]) for v, n in zip(value, dt.names, strict=True))  # type: ignore[index]
    if dt.subdtype is not None:
        base, sub = dt.subdtype
        return _map(value, len(sub), base)
    vlen = vlen_of(dt)
    if vlen is str:
        return value if isinstance(value, str) else bytes(value).decode("utf-8")
    if vlen is bytes or dt.kind == "S":
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if vlen is not None:
        return np.asarray(value, dtype=vlen)
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "surrogateescape")


def decode_attribute(name: str, attr_json: Mapping[str, Any]) -> Any:
    """Return the value of attribute ``name`` as h5py returns it.

    Parameters
    ----------
    name
        The attribute's name (for messages).
    attr_json
        ``{"type": …, "shape": …, "value": …}`` as HSDS stores it (docs/hsds-format.md §2).

    Returns
    -------
    Any
        A numpy scalar for a scalar attribute (``str`` for a variable-length string of
        either charset, as h5py reads them; the target id for a reference), a numpy array for a simple one, and
        ``None`` for an ``H5S_NULL`` (empty) attribute.

    Raises
    ------
    DatasetJsonError
        The JSON is missing its type or its value does not fit type and shape.
    """
    if not isinstance(attr_json, Mapping) or "type" not in attr_json:
        raise DatasetJsonError(f"attribute {name!r} is {attr_json!r}; expected an object with 'type', 'shape' and 'value'")
    type_json = attr_json["type"]
    shape = _shape(attr_json.get("shape"), name)
    if shape is None:
        return None
    value = attr_json.get("value")
    try:
        if _is_reference(type_json):
            values = np.asarray(value, dtype=object).reshape(-1)
            _check_count(name, values.size, shape)
            refs = np.empty(shape, dtype=object)
            flat_refs = refs.reshape(-1)
            for i, v in enumerate(values):
                flat_refs[i] = reference_target(v)
            return refs[()] if not shape else refs
        dt = dtype_from_type_json(type_json)
        if dt.kind == "O":
            items: list[Any] = [value]
            for _ in shape:
                items = [x for v in items for x in v]
            _check_count(name, len(items), shape)
            arr = np.empty(shape, dtype=dt)
            flat = arr.reshape(-1)
            as_text = vlen_of(dt) in (str, bytes)  # h5py reads variable-length string attributes as str, either charset
            for i, v in enumerate(items):
                flat[i] = _text(v) if as_text else _elem(v, dt)
        elif dt.subdtype is not None:  # numpy expands sub-array dtypes: the element dims trail the shape
            base, sub = dt.subdtype
            return np.asarray(_map(value, len(shape) + len(sub), base), dtype=base).reshape(shape + sub)
        else:
            arr = np.array(_map(value, len(shape), dt), dtype=dt).reshape(shape)
    except HsdsBackendsError:
        raise
    except (TypeError, ValueError, OverflowError, AttributeError, IndexError) as exc:
        raise DatasetJsonError(
            f"attribute {name!r}: value {str(value)[:80]!r} does not fit type {type_json!r} and shape {list(shape)}: {exc}"
        ) from exc
    return arr[()] if not shape else arr


class AttributeManager(Mapping[str, Any]):
    """A read-only mapping of an object's attributes, decoded on access (like h5py's ``.attrs``).

    Parameters
    ----------
    attributes
        The object JSON's ``attributes`` (a dict, or the older list of ``{"name": …}`` items).
    owner
        What the attributes belong to, for messages (``"group '/g'"``).
    """

    def __init__(self, attributes: Any, owner: str) -> None:
        if isinstance(attributes, list):  # older layouts keep a list of attribute objects with a name
            attributes = {str(a.get("name")): a for a in attributes if isinstance(a, dict)}
        self._json: dict[str, Any] = dict(attributes or {})
        self._owner = owner

    def __repr__(self) -> str:
        return f"<Attributes of {self._owner} ({len(self._json)} members)>"

    def __getitem__(self, name: str) -> Any:
        j = self._json.get(name)
        if j is None:
            raise AttributeNotFoundError(f"no attribute {name!r} on {self._owner}; attributes there: {sorted(self._json)[:20]}")
        return decode_attribute(name, j)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._json))

    def __len__(self) -> int:
        return len(self._json)

    def __contains__(self, name: object) -> bool:
        return name in self._json

    def get_type_json(self, name: str) -> Any:
        """Return attribute ``name``'s HSDS type JSON (§2.2), undecoded."""
        if name not in self._json:
            raise AttributeNotFoundError(f"no attribute {name!r} on {self._owner}; attributes there: {sorted(self._json)[:20]}")
        return self._json[name].get("type")

    def get_shape(self, name: str) -> tuple[int, ...] | None:
        """Return attribute ``name``'s shape (``()`` scalar, ``None`` for ``H5S_NULL``)."""
        if name not in self._json:
            raise AttributeNotFoundError(f"no attribute {name!r} on {self._owner}; attributes there: {sorted(self._json)[:20]}")
        return _shape(self._json[name].get("shape"), name)
