"""Parse and evaluate HSDS table queries safely, without ``eval``.

HSDS filters the rows of a 1-d compound dataset with a query string
(docs/hsds-format.md §5.3). Two dialects exist in the wild and this module accepts
both, with one grammar:

* **master** (numpy style): ``(temp > 20) & (station == b'AB')``, ``|``,
  parentheses, ``where station in (b'AB', b'CD')``. HSDS evaluates this with
  Python, where ``&``/``|`` bind tighter than comparisons, so every comparison
  must be parenthesised there.
* **1.0.2 / SN** (``BooleanParser``): ``temp > 20 AND id < 5``, ``OR``, and
  unparenthesised ``temp > 20 & id < 5``.

Here comparisons bind tighter than negation, negation tighter than AND, and
AND tighter than OR, as in SQL. Every fully parenthesised master query means
the same as in HSDS; an unparenthesised one means what its author meant (HSDS
master rejects it). Nothing in the text is ever handed to ``eval``/``exec``.

Grammar (EBNF; keywords are case-insensitive, whitespace is ignored)::

    query      = condition [ where ] | where ;
    where      = "WHERE" field "IN" "(" literal { "," literal } [ "," ] ")" ;
    condition  = or_expr ;                      (* must be a condition, not a bare value *)
    or_expr    = and_expr { ( "|" | "OR" ) and_expr } ;
    and_expr   = not_expr { ( "&" | "AND" ) not_expr } ;
    not_expr   = { "~" | "NOT" } comparison ;
    comparison = operand [ cmp_op operand ] ;   (* no chains: a < b < c is an error *)
    operand    = field | literal | "(" or_expr ")" ;
    cmp_op     = "<" | "<=" | ">" | ">=" | "==" | "!=" ;
    literal    = [ "+" | "-" ] number | string | bytes ;
    field      = ? ASCII identifier [A-Za-z_][A-Za-z0-9_]* that is not a keyword ? ;
    number     = ? digits [ "." [ digits ] ] [ exponent ] | "." digits [ exponent ] ? ;
    string     = ? '...' or "..." with Python escapes (\\n, \\xNN, \\uNNNN, ...) ? ;
    bytes      = ? b'...' or b"..." (ASCII characters and Python escapes) ? ;

Keywords: ``AND``, ``OR``, ``NOT``, ``WHERE``, ``IN``; a field with one of
these names (in any case) cannot be named in a query. ``~`` and ``NOT`` are
logical negation of a condition and bind *looser* than a comparison, so
``~temp > 3`` means ``~(temp > 3)`` (Python would read it as a bitwise NOT of
``temp``). Parentheses may nest :data:`MAX_NESTING` deep, both as written and
once :meth:`Query.to_wire` has added its own.

Semantics:

* A comparison needs a field on at least one side; ``20 < temp`` and
  ``temp > id`` both work. A bare field, a bare constant, a comparison of two
  constants and a comparison whose side is itself a condition are errors.
* Numeric fields (bool, int, uint, float) compare with numbers using the
  installed numpy's rules (``id > 2.5`` compares in float64). Integer constants
  compared with an integer field are exact, never rounded through float64
  (``id == 9223372036854775807`` does not match 2**63 - 2), and a constant
  outside the field's range decides every row (``id < 10000000000000000000000``
  is all true). There is no arithmetic and no hex, ``inf`` or ``nan``
  literals; ``1e999`` is infinity.
* String fields (``S``, and object fields tagged ``vlen=bytes``) compare with
  bytes; a ``'str'`` constant is encoded as UTF-8. ``U`` fields and object
  fields tagged ``vlen=str`` compare with str; a bytes constant is decoded as
  UTF-8. Numbers against string fields (and the reverse) are errors, and so
  are array, nested compound, opaque and untagged object fields.
* ``where f in (v1, v2, ...)`` converts the values to the field's dtype and
  keeps the rows matched by :func:`numpy.isin`, intersected with the
  condition if there is one (object fields: matched with ``==``). Unlike
  HSDS, an integer field does not truncate: a value it cannot hold exactly
  (``2.5``, ``-1`` for ``uint8``) is an error.

Errors are :class:`~hsds_backends.errors.QueryError` (syntax, types) and
:class:`~hsds_backends.errors.FieldError` (unknown field names); positions in
messages are 0-based character offsets into the query text.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeAlias

import numpy

from .errors import FieldError, QueryError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import DTypeLike, NDArray

__all__ = ["MAX_NESTING", "Query", "parse_query"]

MAX_NESTING: Final = 100
"""Deepest parenthesis nesting :func:`parse_query` accepts, as written and in :meth:`Query.to_wire` form.

Keeps parsing and evaluation far from Python's recursion limit (about four frames per level).
"""

_Scalar: TypeAlias = int | float | str | bytes
_Category: TypeAlias = Literal["number", "bytes", "text"]

_CMP: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
# `20 < temp` is evaluated as `temp > 20`: the same numpy comparison with the field on the left.
_FLIP: Final[dict[str, str]] = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
# Result of comparing a field with a constant above / below every value of its integer dtype.
_ALL_BELOW_TRUE: Final = frozenset({"<", "<=", "!="})
_ALL_ABOVE_TRUE: Final = frozenset({">", ">=", "!="})

_KEYWORDS: Final = frozenset({"AND", "OR", "NOT", "WHERE", "IN"})
_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_RE: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_IDENT_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_")
_HEX: Final = frozenset(string.hexdigits)
_OCT: Final = frozenset("01234567")
_SIMPLE_ESCAPES: Final[dict[str, str]] = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\n": "",
}
_MAX_QUOTE: Final = 200


# ----------------------------------------------------------------------------------------------
# Syntax tree. Positions are kept for messages but ignored by ==, so a query and its
# to_wire() re-parse compare equal node for node.


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    pos: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Const:
    value: _Scalar
    pos: int = field(compare=False)
    src: str = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Compare:
    op: str
    left: _Field | _Const
    right: _Field | _Const
    pos: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Not:
    operand: _Cond
    pos: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class _And:
    operands: tuple[_Cond, ...]
    pos: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Or:
    operands: tuple[_Cond, ...]
    pos: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Where:
    column: _Field
    values: tuple[_Const, ...]
    pos: int = field(compare=False)


_Cond: TypeAlias = _Compare | _Not | _And | _Or
_Node: TypeAlias = _Cond | _Field | _Const


# ----------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query, ready to filter rows of a compound dataset.

    Build one with :func:`parse_query`; constructing it directly is not supported.

    Attributes
    ----------
    text : str
        The query text as given to :func:`parse_query`.
    fields : tuple of str
        The field names the query refers to, in order of first use.
    """

    text: str
    fields: tuple[str, ...]
    _expr: _Cond | None = field(default=None, repr=False)
    _where: _Where | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._expr is None and self._where is None:
            raise QueryError(f"Query({self.text!r}) has no condition; build queries with parse_query(text, dtype)")

    def evaluate(self, rows: NDArray[Any]) -> NDArray[numpy.bool_]:
        """Return the mask of the rows that match the query.

        Evaluation is vectorised over the columns (one numpy operation per
        comparison); object (vlen) fields compare element by element inside numpy.

        Parameters
        ----------
        rows : numpy.ndarray
            A 1-d structured array holding (at least) the fields in
            :attr:`fields`, in any byte order; it may be empty.

        Returns
        -------
        numpy.ndarray
            A new boolean array of ``len(rows)`` elements.

        Raises
        ------
        QueryError
            If ``rows`` is not a 1-d structured array, or a field's type in
            ``rows`` cannot be compared with the query's constants.
        FieldError
            If ``rows`` lacks a field the query uses.
        """
        ctx = _Context(self.text)
        if not isinstance(rows, numpy.ndarray) or rows.dtype.names is None or rows.ndim != 1:
            got = f"{type(rows).__name__}" if not isinstance(rows, numpy.ndarray) else f"{rows.ndim}-d {rows.dtype}"
            raise QueryError(
                f"cannot evaluate query {ctx.quoted}: rows must be a 1-d structured numpy array, got {got}"
            )
        names = rows.dtype.names
        for name in self.fields:
            if name not in names:
                raise FieldError(
                    f"cannot evaluate query {ctx.quoted}: the rows have no field {name!r}; "
                    f"their fields are {list(names)}"
                )
        with numpy.errstate(all="ignore"):
            n = len(rows)
            mask = _eval(self._expr, rows, ctx) if self._expr is not None else numpy.ones(n, dtype=bool)
            if self._where is not None:
                mask &= _eval_where(self._where, rows, ctx)
        return mask

    def to_wire(self) -> str:
        """Return the canonical text of this query.

        The canonical form is the master (numpy) dialect, fully parenthesised:
        every comparison is wrapped in parentheses, ``&``, ``|`` and ``~``
        combine them, every nested group is parenthesised (only the outermost
        ``&``/``|`` chain is not), constants are written as Python literals
        (integers exactly, floats by ``repr`` with infinities as ``1e999``,
        strings and bytes by ``repr``; str constants compared with bytes fields
        become ``b'...'``), followed by `` where f in (v1, v2)`` if present.
        Double negations are dropped and nested chains of the same operator are
        flattened. For example ``temp > 20 AND NOT station == 'AB'`` has the
        canonical form ``(temp > 20) & ~(station == b'AB')``.

        :func:`parse_query` parses this text back to an equivalent query
        (same fields, same mask; ``to_wire`` of that is the same text). The
        condition part is plain Python/numpy syntax with every comparison
        parenthesised, which is the form HSDS master needs.

        Returns
        -------
        str
            The canonical query text.
        """
        parts = []
        if self._expr is not None:
            parts.append(_render(self._expr, top=True))
        if self._where is not None:
            values = ", ".join(_render_const(c.value) for c in self._where.values)
            parts.append(f"where {self._where.column.name} in ({values})")
        return " ".join(parts)


def parse_query(text: str, dtype: DTypeLike) -> Query:
    """Parse an HSDS query against a compound dataset type.

    Both dialects are accepted (see the module docstring for the grammar):
    ``(temp > 20) & (station == b'AB')`` and ``temp > 20 AND station == b'AB'``
    mean the same, as does ``temp > 20 & station == b'AB'``.

    Parameters
    ----------
    text : str
        The query, e.g. ``"temp > 20 & id < 5 where station in (b'AB', b'CD')"``.
    dtype : numpy.dtype
        The dataset's compound (structured) dtype; the query's field names and
        constant types are checked against it.

    Returns
    -------
    Query
        The parsed query.

    Raises
    ------
    QueryError
        If the dataset is not compound, or the text is empty, malformed,
        nested more than :data:`MAX_NESTING` deep, or compares values of
        incompatible types. The message quotes the text and gives the
        0-based position of the problem.
    FieldError
        If the text names a field the dtype does not have.

    See Also
    --------
    Query.evaluate : apply the query to rows.
    Query.to_wire : canonical text of the query.
    """
    try:
        dt = numpy.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise QueryError(f"query needs a compound (table) dataset; {dtype!r} is not a numpy dtype") from exc
    if dt.names is None:
        raise QueryError(f"query needs a compound (table) dataset; this dataset's type is {dt}")
    if not isinstance(text, str):
        raise QueryError(f"query must be a str, not {type(text).__name__}: {text!r}")
    parser = _Parser(text, dt)
    expr, where = parser.parse()
    return Query(text, tuple(parser.fields), expr, where)


# ----------------------------------------------------------------------------------------------
# Messages


class _Context:
    """The query text, for messages."""

    __slots__ = ("quoted", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        if len(text) > _MAX_QUOTE:
            self.quoted = f"{text[:_MAX_QUOTE]!r}... ({len(text)} characters)"
        else:
            self.quoted = repr(text)

    def error(self, message: str) -> QueryError:
        return QueryError(f"bad query {self.quoted}: {message}")


def _show(src: str) -> str:
    """Quote a token for a message, shortened if long."""
    return repr(src if len(src) <= 40 else src[:37] + "...")


# ----------------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # name kw num str bytes cmp & | ~ ( ) , + - eof
    pos: int
    src: str
    value: _Scalar | None = None


def _tokenize(ctx: _Context) -> list[_Token]:
    text = ctx.text
    n = len(text)
    tokens: list[_Token] = []
    i = 0
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "<>=!":
            two = text[i : i + 2]
            if two in ("<=", ">=", "==", "!="):
                tokens.append(_Token("cmp", i, two, two))
                i += 2
            elif c in "<>":
                tokens.append(_Token("cmp", i, c, c))
                i += 1
            elif c == "=":
                raise ctx.error(f"unexpected '=' at position {i}; use '==' to test equality")
            else:
                raise ctx.error(f"unexpected '!' at position {i}; use '!=' to test inequality, or NOT / '~' to negate")
        elif c in "&|":
            if text[i + 1 : i + 2] == c:
                word = "AND" if c == "&" else "OR"
                raise ctx.error(f"unexpected {c + c!r} at position {i}; use {c!r} or {word}")
            tokens.append(_Token(c, i, c))
            i += 1
        elif c in "~(),+-":
            tokens.append(_Token(c, i, c))
            i += 1
        elif c in "'\"":
            value, end = _scan_string(ctx, i, i, as_bytes=False)
            tokens.append(_Token("str", i, text[i:end], value))
            i = end
        elif c in _IDENT_CHARS and not c.isdigit():
            m = _NAME_RE.match(text, i)
            assert m is not None  # c is an ASCII letter or '_'
            word = m.group()
            end = m.end()
            if word in ("b", "B") and text[end : end + 1] in ("'", '"'):
                value, end = _scan_string(ctx, i, end, as_bytes=True)
                tokens.append(_Token("bytes", i, text[i:end], value))
            elif word.upper() in _KEYWORDS:
                tokens.append(_Token("kw", i, word, word.upper()))
            else:
                tokens.append(_Token("name", i, word, word))
            i = end
        elif c in "0123456789" or (c == "." and text[i + 1 : i + 2].isdigit() and text[i + 1].isascii()):
            m = _NUMBER_RE.match(text, i)
            if m is None:  # pragma: no cover - the branch condition guarantees a digit
                raise ctx.error(f"unexpected {c!r} at position {i}")
            end = m.end()
            if end < n and (text[end] in _IDENT_CHARS or text[end] == "."):
                raise ctx.error(f"unexpected {text[end]!r} at position {end}; a number cannot be followed by it")
            src = m.group()
            number: int | float
            if any(ch in src for ch in ".eE"):
                number = float(src)
            else:
                try:
                    number = int(src)
                except ValueError as exc:  # longer than sys.get_int_max_str_digits()
                    raise ctx.error(f"the integer at position {i} has too many digits ({len(src)})") from exc
            tokens.append(_Token("num", i, src, number))
            i = end
        else:
            raise ctx.error(f"unexpected {c!r} at position {i}")
    tokens.append(_Token("eof", n, ""))
    return tokens


def _scan_string(ctx: _Context, start: int, quote_at: int, *, as_bytes: bool) -> tuple[_Scalar, int]:
    """Read a quoted literal whose quote is at ``quote_at``; return its value and end offset.

    Escapes follow Python: ``\\\\ \\' \\" \\a \\b \\f \\n \\r \\t \\v``, ``\\ooo``,
    ``\\xhh``, and for str also ``\\uhhhh`` and ``\\Uhhhhhhhh``. An unknown escape
    is kept as written, as Python does.
    """
    text = ctx.text
    n = len(text)
    quote = text[quote_at]
    kind = "bytes" if as_bytes else "string"
    out: list[str] = []
    i = quote_at + 1
    while True:
        if i >= n:
            raise ctx.error(f"unterminated {kind} starting at position {start}; close it with {quote}")
        c = text[i]
        if c == quote:
            break
        if c != "\\":
            if as_bytes and not c.isascii():
                raise ctx.error(
                    f"non-ASCII character {c!r} at position {i} in the bytes starting at position {start}; "
                    "write it as \\x escapes or use a str literal"
                )
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise ctx.error(f"unterminated {kind} starting at position {start}; close it with {quote}")
        e = text[i + 1]
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        elif e in _OCT:
            j = i + 1
            while j < n and j < i + 4 and text[j] in _OCT:
                j += 1
            code = int(text[i + 1 : j], 8)
            if as_bytes and code > 0xFF:
                raise ctx.error(f"octal escape {text[i:j]!r} at position {i} is above \\377 in a bytes literal")
            out.append(chr(code))
            i = j
        elif e == "x" or (not as_bytes and e in "uU"):
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = text[i + 2 : i + 2 + width]
            if len(digits) != width or not all(d in _HEX for d in digits):
                raise ctx.error(f"truncated \\{e} escape at position {i}; it needs {width} hex digits")
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise ctx.error(f"escape {text[i : i + 2 + width]!r} at position {i} is beyond U+10FFFF")
            out.append(chr(code))
            i += 2 + width
        elif e == "N" and not as_bytes:
            raise ctx.error(f"\\N{{...}} escapes are not supported (position {i}); use \\u or \\U")
        else:  # unknown escape: Python keeps the backslash
            out.append("\\")
            i += 1
    value = "".join(out)
    if as_bytes:
        return value.encode("latin-1"), i + 1
    return value, i + 1


# ----------------------------------------------------------------------------------------------
# Types


def _category(dt: numpy.dtype[Any]) -> _Category | str:
    """Return the comparison category of a field dtype, or a reason it cannot be compared."""
    if dt.subdtype is not None:
        return f"an array field (shape {dt.shape})"
    kind = dt.kind
    if kind in "biuf" or kind == "c":
        return "number"
    if kind == "S":
        return "bytes"
    if kind == "U":
        return "text"
    if kind == "O":
        vlen = dt.metadata.get("vlen") if dt.metadata else None
        if vlen is bytes:
            return "bytes"
        if vlen is str:
            return "text"
        return "a variable-length field that is not a string"
    if kind == "V" and dt.names is not None:
        return "a nested compound field"
    if kind == "V":
        return "an opaque field"
    return f"a field of unsupported type {dt}"


def _field_category(ctx: _Context, name: str, dt: numpy.dtype[Any], pos: int) -> _Category:
    cat = _category(dt)
    if cat in ("number", "bytes", "text"):
        return cat  # type: ignore[return-value]
    raise ctx.error(f"field {name!r} at position {pos} is {cat} ({dt}); queries compare numeric and string fields only")


def _describe(cat: _Category) -> str:
    return "numeric" if cat == "number" else "string"


def _coerce(ctx: _Context, name: str, dt: numpy.dtype[Any], cat: _Category, const: _Const) -> _Scalar:
    """Return ``const``'s value in the form a field of category ``cat`` compares with, or raise."""
    value = const.value
    if cat == "number":
        if isinstance(value, (int, float)):
            return value
        raise ctx.error(
            f"cannot compare numeric field {name!r} ({dt}) with the string {const.src} at position {const.pos}; "
            "compare it with a number"
        )
    if isinstance(value, (int, float)):
        example = f"b'{const.src}'" if cat == "bytes" else f"'{const.src}'"
        raise ctx.error(
            f"cannot compare string field {name!r} ({dt}) with the number {const.src} at position {const.pos}; "
            f"quote the value, e.g. {example}"
        )
    if cat == "bytes" and isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ctx.error(
                f"the string {const.src} at position {const.pos} cannot be encoded as UTF-8 to compare with "
                f"field {name!r} ({dt})"
            ) from exc
    if cat == "text" and isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ctx.error(
                f"the bytes {const.src} at position {const.pos} are not UTF-8, so they cannot be compared with "
                f"text field {name!r} ({dt})"
            ) from exc
    return value


def _to_float(value: float) -> float:
    """Convert like numpy would, but give infinities instead of OverflowError for huge ints."""
    if isinstance(value, float):
        return value
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _int_range(dt: numpy.dtype[Any]) -> tuple[int, int]:
    if dt.kind == "b":
        return 0, 1
    info = numpy.iinfo(dt)
    return int(info.min), int(info.max)


def _where_array(ctx: _Context, name: str, dt: numpy.dtype[Any], values: Sequence[_Const]) -> NDArray[Any] | None:
    """Convert ``values`` to an array for :func:`numpy.isin` against a field of dtype ``dt``.

    Returns ``None`` for object fields, which are matched value by value instead.
    """
    cat = _field_category(ctx, name, dt, values[0].pos)
    coerced = [_coerce(ctx, name, dt, cat, c) for c in values]
    if cat == "number":
        native = dt.newbyteorder("=")
        if dt.kind in "biu":
            lo, hi = _int_range(dt)
            exact: list[int] = []
            for const, v in zip(values, coerced, strict=True):
                iv: int | None = v if isinstance(v, int) else None
                if isinstance(v, float) and math.isfinite(v) and v.is_integer():
                    iv = int(v)
                if iv is None or not lo <= iv <= hi:
                    raise ctx.error(
                        f"the value {const.src} at position {const.pos} does not fit field {name!r} ({dt}); "
                        f"WHERE ... IN values for it must be whole numbers from {lo} to {hi}"
                    )
                exact.append(iv)
            return numpy.array(exact, dtype=native)
        with numpy.errstate(over="ignore"):  # 1e300 in a float32 field is inf, as in a comparison
            return numpy.array([_to_float(v) for v in coerced], dtype=native)  # type: ignore[arg-type]
    if dt.kind == "O":
        return None
    return numpy.array(coerced, dtype="S" if cat == "bytes" else "U")


# ----------------------------------------------------------------------------------------------
# Parser


class _Parser:
    """Recursive descent over the token list; four Python frames per parenthesis level."""

    def __init__(self, text: str, dtype: numpy.dtype[Any]) -> None:
        self.ctx = _Context(text)
        self.dtype = dtype
        self.names: tuple[str, ...] = dtype.names or ()
        self.tokens = _tokenize(self.ctx)
        self.i = 0
        self.depth = 0
        self.fields: list[str] = []
        self.categories: dict[str, _Category] = {}

    # -- helpers

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_kw(self, tok: _Token, word: str) -> bool:
        return tok.kind == "kw" and tok.value == word

    def fail(self, tok: _Token, expected: str) -> NoReturn:
        what = "unexpected end of query" if tok.kind == "eof" else f"unexpected {_show(tok.src)}"
        raise self.ctx.error(f"{what} at position {tok.pos}; expected {expected}")

    def condition(self, node: _Node, role: str) -> _Cond:
        """Return ``node`` if it is a condition, else raise naming ``role``."""
        if isinstance(node, _Field):
            raise self.ctx.error(
                f"field {node.name!r} at position {node.pos} is not a condition ({role}); "
                f"compare it with a value, e.g. {node.name} > 0"
            )
        if isinstance(node, _Const):
            raise self.ctx.error(
                f"the constant {node.src} at position {node.pos} is not a condition ({role}); "
                "compare a field with it, e.g. field == value"
            )
        return node

    def field(self, tok: _Token) -> _Field:
        name = tok.src
        if name not in self.names:
            hint = difflib.get_close_matches(name, self.names, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise FieldError(
                f"bad query {self.ctx.quoted}: unknown field {name!r} at position {tok.pos}; "
                f"this dataset's fields are {list(self.names)}{extra}"
            )
        if name not in self.categories:
            self.categories[name] = _field_category(self.ctx, name, self.dtype[name], tok.pos)
            self.fields.append(name)
        return _Field(name, tok.pos)

    # -- grammar

    def parse(self) -> tuple[_Cond | None, _Where | None]:
        tok = self.peek()
        if tok.kind == "eof":
            raise self.ctx.error("the query is empty; write a condition such as 'temp > 0', or 'where id in (1, 2)'")
        expr: _Cond | None = None
        if not self.is_kw(tok, "WHERE"):
            node = self.parse_or()
            tok = self.peek()
            if tok.kind != "eof" and not self.is_kw(tok, "WHERE"):
                more = "a comparison operator, " if isinstance(node, (_Field, _Const)) else ""
                self.fail(tok, f"{more}'&', '|', AND, OR, WHERE or the end of the query")
            expr = self.condition(node, "a query must compare something")
            if _wire_depth(expr, top=True) > MAX_NESTING:
                # to_wire() adds parentheses (a | b & c -> (a) | ((b) & (c))); refuse what it could not re-parse.
                raise self.ctx.error(
                    f"conditions nested deeper than {MAX_NESTING} levels once written with full parentheses; "
                    "simplify the query"
                )
        where = None
        if self.is_kw(self.peek(), "WHERE"):
            where = self.parse_where()
            tok = self.peek()
            if tok.kind != "eof":
                self.fail(tok, "the end of the query after the WHERE list")
        return expr, where

    def parse_or(self) -> _Node:
        return self._chain(self.parse_and, "|", "OR", _Or)

    def parse_and(self) -> _Node:
        return self._chain(self.parse_unary, "&", "AND", _And)

    def _chain(self, operand: Callable[[], _Node], symbol: str, word: str, kind: type[_And | _Or]) -> _Node:
        """``operand (symbol|word operand)*`` as one flat ``kind`` node (or the lone operand)."""
        first = operand()
        tok = self.peek()
        if not (tok.kind == symbol or self.is_kw(tok, word)):
            return first
        items: list[_Cond] = []
        self._extend(items, self.condition(first, f"left of {_show(tok.src)} at position {tok.pos}"), kind)
        while tok.kind == symbol or self.is_kw(tok, word):
            self.advance()
            node = operand()
            self._extend(items, self.condition(node, f"right of {_show(tok.src)} at position {tok.pos}"), kind)
            tok = self.peek()
        return kind(tuple(items), _pos(first))

    @staticmethod
    def _extend(items: list[_Cond], node: _Cond, kind: type[_And | _Or]) -> None:
        # Flatten (a & b) & c into one chain so the tree stays shallow and to_wire is canonical.
        if isinstance(node, kind):
            items.extend(node.operands)
        else:
            items.append(node)

    def parse_unary(self) -> _Node:
        """Parse ``{NOT} operand [cmp_op operand]`` (one frame, to keep deep nesting cheap)."""
        first = self.peek()
        negations = 0
        while self.peek().kind == "~" or self.is_kw(self.peek(), "NOT"):
            self.advance()
            negations += 1
        node = self.parse_operand()
        tok = self.peek()
        if tok.kind == "cmp":
            self.advance()
            right = self.parse_operand()
            nxt = self.peek()
            if nxt.kind == "cmp":
                raise self.ctx.error(
                    f"unexpected {_show(nxt.src)} at position {nxt.pos}: chained comparisons are not supported; "
                    "join two comparisons with '&' or AND, e.g. (1 < temp) & (temp < 5)"
                )
            op = str(tok.value)
            for side, operand in (("left", node), ("right", right)):
                if not isinstance(operand, (_Field, _Const)):
                    raise self.ctx.error(
                        f"the {side} side of {op!r} at position {tok.pos} is a condition; "
                        "compare a field with a constant or another field"
                    )
            assert isinstance(node, (_Field, _Const)) and isinstance(right, (_Field, _Const))
            node = self.resolve(op, node, right, tok.pos)
        if not negations:
            return node
        cond = self.condition(node, f"after {_show(first.src)} at position {first.pos}")
        if negations % 2 == 0:
            return cond
        if isinstance(cond, _Not):  # ~(~x) is x
            return cond.operand
        return _Not(cond, first.pos)

    def resolve(self, op: str, left: _Field | _Const, right: _Field | _Const, pos: int) -> _Compare:
        """Type-check a comparison and normalise its constant (str -> bytes for bytes fields, ...)."""
        if isinstance(left, _Const) and isinstance(right, _Const):
            raise self.ctx.error(
                f"the comparison {left.src} {op} {right.src} at position {pos} has no field; "
                "one side must be a field name"
            )
        if isinstance(left, _Field) and isinstance(right, _Field):
            lc, rc = self.categories[left.name], self.categories[right.name]
            if lc != rc:
                raise self.ctx.error(
                    f"cannot compare {_describe(lc)} field {left.name!r} ({self.dtype[left.name]}) with "
                    f"{_describe(rc)} field {right.name!r} ({self.dtype[right.name]}) at position {pos}"
                )
            return _Compare(op, left, right, pos)
        fld, const = (left, right) if isinstance(left, _Field) else (right, left)
        assert isinstance(fld, _Field) and isinstance(const, _Const)
        cat = self.categories[fld.name]
        value = _coerce(self.ctx, fld.name, self.dtype[fld.name], cat, const)
        norm = _Const(value, const.pos, const.src)
        if isinstance(left, _Field):
            return _Compare(op, left, norm, pos)
        return _Compare(op, norm, right, pos)

    def parse_operand(self) -> _Node:
        tok = self.peek()
        if tok.kind == "name":
            self.advance()
            return self.field(tok)
        if tok.kind in ("num", "str", "bytes", "+", "-"):
            return self.parse_literal()
        if tok.kind == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise self.ctx.error(f"parentheses nested deeper than {MAX_NESTING} levels at position {tok.pos}")
            self.advance()
            node = self.parse_or()
            close = self.peek()
            if close.kind != ")":
                self.fail(close, f"')' to close the '(' at position {tok.pos}")
            self.advance()
            self.depth -= 1
            return node
        self.fail(tok, "a field name, a number, a string or '('")

    def parse_literal(self) -> _Const:
        tok = self.advance()
        if tok.kind in ("str", "bytes"):
            assert tok.value is not None
            return _Const(tok.value, tok.pos, tok.src)
        if tok.kind == "num":
            assert isinstance(tok.value, (int, float))
            return _Const(tok.value, tok.pos, tok.src)
        if tok.kind in ("+", "-"):
            num = self.peek()
            if num.kind != "num":
                self.fail(num, f"a number after {tok.src!r}")
            self.advance()
            assert isinstance(num.value, (int, float))
            value = -num.value if tok.kind == "-" else num.value
            return _Const(value, tok.pos, f"{tok.src}{num.src}")
        self.i -= 1
        self.fail(tok, "a number or a quoted string")

    def parse_where(self) -> _Where:
        kw = self.advance()
        tok = self.peek()
        if tok.kind != "name":
            self.fail(tok, "a field name after WHERE")
        self.advance()
        fld = self.field(tok)
        tok = self.peek()
        if not self.is_kw(tok, "IN"):
            self.fail(tok, f"IN after 'where {fld.name}'")
        self.advance()
        opening = self.peek()
        if opening.kind != "(":
            self.fail(opening, "'(' to start the list of values")
        self.advance()
        values: list[_Const] = []
        while True:
            tok = self.peek()
            if tok.kind == ")" and values:  # a trailing comma is fine, as in a Python tuple
                self.advance()
                break
            if tok.kind not in ("num", "str", "bytes", "+", "-"):
                self.fail(tok, "a number or a quoted string")
            values.append(self.parse_literal())
            tok = self.peek()
            if tok.kind == ",":
                self.advance()
                continue
            if tok.kind == ")":
                self.advance()
                break
            self.fail(tok, f"',' or ')' to close the '(' at position {opening.pos}")
        name = fld.name
        dt = self.dtype[name]
        cat = self.categories[name]
        normalised = tuple(_Const(_coerce(self.ctx, name, dt, cat, c), c.pos, c.src) for c in values)
        if cat == "number" and dt.kind in "biu":
            # Store whole floats as ints (2.0 -> 2): same match, canonical text.
            arr = _where_array(self.ctx, name, dt, normalised)
            assert arr is not None
            normalised = tuple(
                _Const(int(v), c.pos, c.src) if isinstance(c.value, float) else c
                for c, v in zip(normalised, arr.tolist(), strict=True)
            )
        else:
            _where_array(self.ctx, name, dt, normalised)
        return _Where(fld, normalised, kw.pos)


def _pos(node: _Node) -> int:
    return node.pos


# ----------------------------------------------------------------------------------------------
# Evaluation


def _eval(node: _Cond, rows: NDArray[Any], ctx: _Context) -> NDArray[numpy.bool_]:
    if isinstance(node, _Compare):
        return _eval_compare(node, rows, ctx)
    if isinstance(node, _Not):
        return numpy.logical_not(_eval(node.operand, rows, ctx))
    combine = numpy.logical_and if isinstance(node, _And) else numpy.logical_or
    mask = _eval(node.operands[0], rows, ctx)
    for child in node.operands[1:]:  # a loop, not a comprehension: one frame less per level
        mask = combine(mask, _eval(child, rows, ctx))
    return mask


def _as_mask(result: Any, n: int) -> NDArray[numpy.bool_]:
    mask = numpy.asarray(result, dtype=bool)
    if mask.shape != (n,):
        mask = numpy.broadcast_to(mask, (n,)).copy()
    return mask


def _eval_compare(node: _Compare, rows: NDArray[Any], ctx: _Context) -> NDArray[numpy.bool_]:
    n = len(rows)
    op, left, right = node.op, node.left, node.right
    if isinstance(left, _Const):  # 20 < temp  ->  temp > 20
        op, left, right = _FLIP[op], right, left
    assert isinstance(left, _Field)
    col = rows[left.name]
    cat = _field_category(ctx, left.name, col.dtype, left.pos)
    if isinstance(right, _Field):
        other = rows[right.name]
        rcat = _field_category(ctx, right.name, other.dtype, right.pos)
        if rcat != cat:
            raise ctx.error(
                f"cannot compare {_describe(cat)} field {left.name!r} ({col.dtype}) with "
                f"{_describe(rcat)} field {right.name!r} ({other.dtype}) at position {node.pos}"
            )
        operand: Any = other
    else:
        operand = _coerce(ctx, left.name, col.dtype, cat, right)
        kind = col.dtype.kind
        if cat == "number" and isinstance(operand, int):
            if kind in "biu":
                # Exact integer comparison; constants outside the dtype's range decide every row.
                lo, hi = _int_range(col.dtype)
                if operand > hi:
                    return numpy.full(n, op in _ALL_BELOW_TRUE)
                if operand < lo:
                    return numpy.full(n, op in _ALL_ABOVE_TRUE)
            else:
                operand = _to_float(operand)
    try:
        result = _CMP[op](col, operand)
    except TypeError as exc:  # object fields holding None, mixed str/bytes, ...
        raise ctx.error(
            f"cannot evaluate the comparison at position {node.pos} on field {left.name!r} ({col.dtype}): {exc}"
        ) from exc
    return _as_mask(result, n)


def _eval_where(where: _Where, rows: NDArray[Any], ctx: _Context) -> NDArray[numpy.bool_]:
    name = where.column.name
    col = rows[name]
    values = _where_array(ctx, name, col.dtype, where.values)
    if values is not None:
        return numpy.isin(col, values)
    cat = _field_category(ctx, name, col.dtype, where.column.pos)
    mask = numpy.zeros(len(rows), dtype=bool)
    for const in where.values:
        try:
            mask |= _as_mask(col == _coerce(ctx, name, col.dtype, cat, const), len(rows))
        except TypeError as exc:
            raise ctx.error(f"cannot evaluate WHERE {name} IN (...) on field {name!r} ({col.dtype}): {exc}") from exc
    return mask


# ----------------------------------------------------------------------------------------------
# Canonical text


def _render_const(value: _Scalar) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "1e999" if value > 0 else "-1e999"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return repr(value)


def _render(node: _Node, *, top: bool = False) -> str:
    if isinstance(node, _Field):
        return node.name
    if isinstance(node, _Const):
        return _render_const(node.value)
    if isinstance(node, _Compare):
        return f"({_render(node.left)} {node.op} {_render(node.right)})"
    if isinstance(node, _Not):
        return "~" + _render(node.operand)
    parts = []
    for child in node.operands:  # a loop, not a generator: one frame less per level
        parts.append(_render(child))
    body = (" & " if isinstance(node, _And) else " | ").join(parts)
    return body if top else f"({body})"


def _wire_depth(node: _Cond, *, top: bool = False) -> int:
    """Return the parenthesis depth of ``_render(node, top=top)``."""
    if isinstance(node, _Compare):
        return 1
    if isinstance(node, _Not):
        return _wire_depth(node.operand)
    deepest = 0
    for child in node.operands:
        deepest = max(deepest, _wire_depth(child))
    return deepest if top else deepest + 1
