"""HSDS type JSON ⇄ numpy dtypes (docs/hsds-format.md §2.2).

Variable-length types map to numpy ``object`` dtypes tagged with metadata the
way h5py tags them (``metadata={"vlen": bytes | str | dtype}``), so the tag
survives inside compound fields. Enums carry ``metadata={"enum": mapping}``.
Compounds are packed (no alignment padding), as HSDS stores them.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .errors import TypeJsonError

__all__ = [
    "dtype_from_type_json",
    "type_json_from_dtype",
    "vlen_of",
    "has_vlen",
    "PREDEFINED",
]

_INT_RE = re.compile(r"^H5T_STD_([IU])(8|16|32|64)(LE|BE)$")
_FLOAT_RE = re.compile(r"^H5T_IEEE_F(16|32|64)(LE|BE)$")

#: Predefined base type names accepted wherever a type is expected (§2.2 ``getBaseTypeJson``).
PREDEFINED: tuple[str, ...] = tuple(
    [f"H5T_STD_{s}{b}{o}" for s in "IU" for b in (8, 16, 32, 64) for o in ("LE", "BE")]
    + [f"H5T_IEEE_F{b}{o}" for b in (16, 32, 64) for o in ("LE", "BE")]
)


def _base_dtype(name: str) -> np.dtype[Any]:
    m = _INT_RE.match(name)
    if m:
        kind, bits, order = m.groups()
        return np.dtype(("<" if order == "LE" else ">") + kind.lower() + str(int(bits) // 8))
    m = _FLOAT_RE.match(name)
    if m:
        bits, order = m.groups()
        return np.dtype(("<" if order == "LE" else ">") + "f" + str(int(bits) // 8))
    raise TypeJsonError(
        f"unknown base type {name!r}; expected an integer 'H5T_STD_[IU]{{8,16,32,64}}{{LE,BE}}'"
        " or float 'H5T_IEEE_F{16,32,64}{LE,BE}' name"
    )


def dtype_from_type_json(type_json: Any) -> np.dtype[Any]:
    """Return the numpy dtype of an HSDS type JSON (or a predefined type name).

    Parameters
    ----------
    type_json
        A dict such as ``{"class": "H5T_INTEGER", "base": "H5T_STD_I32BE"}`` or a
        bare predefined name such as ``"H5T_IEEE_F32LE"``.

    Returns
    -------
    numpy.dtype
        Fixed-size types map to their exact byte layout; variable-length types
        to ``object`` with ``metadata["vlen"]`` set.

    Raises
    ------
    TypeJsonError
        The JSON names an unknown class or base, or is missing a key.
    """
    if isinstance(type_json, str):
        return _base_dtype(type_json)
    if not isinstance(type_json, dict):
        raise TypeJsonError(f"type JSON must be an object or a predefined name, got {type_json!r}")
    cls = type_json.get("class")
    try:
        if cls in ("H5T_INTEGER", "H5T_FLOAT"):
            return _base_dtype(type_json["base"] if isinstance(type_json["base"], str) else type_json["base"]["base"])
        if cls == "H5T_STRING":
            length = type_json.get("length")
            charset = type_json.get("charSet", "H5T_CSET_ASCII")
            if length == "H5T_VARIABLE":
                return np.dtype("O", metadata={"vlen": str if charset == "H5T_CSET_UTF8" else bytes})
            if not isinstance(length, int) or length < 1:
                raise TypeJsonError(f"string type length {length!r} must be a positive integer or 'H5T_VARIABLE'")
            # §2.2: both charsets are kept as raw bytes (S<N>)
            return np.dtype(f"S{length}")
        if cls == "H5T_VLEN":
            base = dtype_from_type_json(type_json["base"])
            return np.dtype("O", metadata={"vlen": base})
        if cls == "H5T_OPAQUE":
            size = type_json["size"]
            return np.dtype(f"V{int(size)}")
        if cls == "H5T_ARRAY":
            base = dtype_from_type_json(type_json["base"])
            dims = tuple(int(d) for d in type_json["dims"])
            if base.hasobject:
                raise TypeJsonError("array types of variable-length members are not supported")
            return np.dtype((base, dims))
        if cls == "H5T_ENUM":
            base = dtype_from_type_json(type_json["base"])
            raw = type_json.get("mapping")
            if raw is None:  # hsds 1.0.2 (h5json 2.x) writes "members": [{"name": ..., "value": ...}, ...]
                raw = type_json.get("members", {})
            mapping = {m["name"]: m["value"] for m in raw} if isinstance(raw, list) else dict(raw)
            if base == np.dtype("i1") and set(mapping) == {"TRUE", "FALSE"}:
                return np.dtype(bool)  # §2.2 exception: int8 TRUE/FALSE enum → numpy bool
            return np.dtype(base, metadata={"enum": mapping})
        if cls == "H5T_REFERENCE":
            length = int(type_json.get("length", 48))
            return np.dtype(f"S{length}")
        if cls == "H5T_COMPOUND":
            fields = type_json["fields"]
            names: list[str] = []
            formats: list[np.dtype[Any]] = []
            offsets: list[int] = []
            off = 0
            for f in fields:
                name = f["name"]
                if not isinstance(name, str) or not name.isascii():
                    raise TypeJsonError(f"compound field name {name!r} must be an ASCII string")
                dt = dtype_from_type_json(f["type"])
                names.append(name)
                formats.append(dt)
                offsets.append(off)
                off += dt.itemsize
            return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": off})
    except KeyError as exc:
        raise TypeJsonError(f"type JSON {type_json!r} of class {cls!r} is missing key {exc.args[0]!r}") from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeJsonError(f"type JSON {type_json!r} is malformed: {exc}") from exc
    raise TypeJsonError(
        f"unknown type class {cls!r}; expected one of H5T_INTEGER, H5T_FLOAT, H5T_STRING, H5T_VLEN,"
        " H5T_OPAQUE, H5T_ARRAY, H5T_ENUM, H5T_REFERENCE, H5T_COMPOUND"
    )


def vlen_of(dt: np.dtype[Any]) -> Any:
    """Return the vlen tag of ``dt`` (``bytes``, ``str`` or a base dtype), or ``None``."""
    md = dt.metadata
    if dt.kind == "O" and md and "vlen" in md:
        return md["vlen"]
    return None


def has_vlen(dt: np.dtype[Any]) -> bool:
    """Return whether ``dt`` or any of its fields is variable-length."""
    return bool(dt.hasobject)


def _base_name(dt: np.dtype[Any]) -> str:
    order = "BE" if dt.byteorder == ">" or (dt.byteorder == "=" and not np.little_endian) else "LE"
    if dt.itemsize == 1:
        order = "LE"
    if dt.kind in "iu":
        return f"H5T_STD_{dt.kind.upper()}{dt.itemsize * 8}{order}"
    if dt.kind == "f":
        return f"H5T_IEEE_F{dt.itemsize * 8}{order}"
    raise TypeJsonError(f"dtype {dt} has no predefined HSDS base type")


def type_json_from_dtype(dt: np.dtype[Any]) -> dict[str, Any]:
    """Return the HSDS type JSON that :func:`dtype_from_type_json` maps back to ``dt``.

    Used by the writer (:mod:`hsds_backends.writer`).
    """
    dt = np.dtype(dt)
    vlen = vlen_of(dt)
    if vlen is not None:
        if vlen is str:
            return {"class": "H5T_STRING", "charSet": "H5T_CSET_UTF8", "length": "H5T_VARIABLE", "strPad": "H5T_STR_NULLTERM"}
        if vlen is bytes:
            return {"class": "H5T_STRING", "charSet": "H5T_CSET_ASCII", "length": "H5T_VARIABLE", "strPad": "H5T_STR_NULLTERM"}
        return {"class": "H5T_VLEN", "base": type_json_from_dtype(np.dtype(vlen))}
    if dt.kind == "O":
        raise TypeJsonError("object dtypes need metadata {'vlen': bytes|str|dtype}; use hsds_backends.vlen_dtype()")
    if dt.subdtype is not None:
        base, dims = dt.subdtype
        return {"class": "H5T_ARRAY", "dims": list(dims), "base": type_json_from_dtype(base)}
    if dt.names is not None:
        return {
            "class": "H5T_COMPOUND",
            "fields": [{"name": n, "type": type_json_from_dtype(dt.fields[n][0])} for n in dt.names],  # type: ignore[index]
        }
    if dt.kind == "b":
        return {"class": "H5T_ENUM", "base": {"class": "H5T_INTEGER", "base": "H5T_STD_I8LE"}, "mapping": {"FALSE": 0, "TRUE": 1}}
    if dt.kind in "iu":
        tj: dict[str, Any] = {"class": "H5T_INTEGER", "base": _base_name(dt)}
        if dt.metadata and "enum" in dt.metadata:
            return {"class": "H5T_ENUM", "base": tj, "mapping": dict(dt.metadata["enum"])}
        return tj
    if dt.kind == "f":
        return {"class": "H5T_FLOAT", "base": _base_name(dt)}
    if dt.kind == "S":
        return {"class": "H5T_STRING", "charSet": "H5T_CSET_ASCII", "length": dt.itemsize, "strPad": "H5T_STR_NULLPAD"}
    if dt.kind == "V":
        return {"class": "H5T_OPAQUE", "size": dt.itemsize}
    raise TypeJsonError(f"dtype {dt} cannot be stored in HSDS; use ints, floats, bytes strings, compounds or vlen types")


def vlen_dtype(base: Any) -> np.dtype[Any]:
    """Return an object dtype tagged as variable-length of ``base`` (``str``, ``bytes`` or a dtype)."""
    if base in (str, bytes):
        return np.dtype("O", metadata={"vlen": base})
    return np.dtype("O", metadata={"vlen": np.dtype(base)})
