"""Attribute columns: typed NumPy arrays with missing values, and their type rules.

An attribute column holds one value per row, of one of four kinds:

=======  ======================================  ==============================
kind     ``values``                              missing value
=======  ======================================  ==============================
bool     bool                                    ``valid`` is False
int      int64                                   ``valid`` is False
float    float64                                 ``valid`` is False
string   int32 codes into a sorted ``dictionary``  code -1
=======  ======================================  ==============================

Filters evaluate on these arrays as NumPy masks (see :mod:`~tidepool_cli.engine.filters`).
int and float mix into float; every other mix of kinds in one attribute is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidepool_cli.errors import InvalidInputError
from tidepool_cli.limits import MAX_STRING_CHARS

KINDS = ("bool", "int", "float", "string")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_string(s: str, what: str, allow_empty: bool = True) -> str | None:
    """Why ``s`` cannot be stored as a string id, attribute name or value (None: it can).

    A stored string is valid UTF-8 (so no lone surrogates, which JSON's ``\\ud800``
    escapes can produce), holds no NUL character, and is at most
    :data:`~tidepool_cli.limits.MAX_STRING_CHARS` characters long.

    Parameters
    ----------
    s : str
    what : str
        How the message names the string ("string id", "attribute 'color'").
    allow_empty : bool
        Whether "" is acceptable (values: yes; ids and names: no).

    Returns
    -------
    str or None
        A one-line reason for refusing ``s``, or None when it is acceptable.
    """
    if not s and not allow_empty:
        return f"{what} is empty"
    if len(s) > MAX_STRING_CHARS:
        return f"{what} is {len(s):,} characters long; at most {MAX_STRING_CHARS:,} are allowed"
    if "\0" in s:
        return f"{what} contains a NUL character"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid Unicode (a lone surrogate)"
    return None


@dataclass(frozen=True)
class Column:
    """One attribute over n rows.

    Attributes
    ----------
    kind : {"bool", "int", "float", "string"}
    values : (n,) bool | int64 | float64 | int32
        Values, or codes into ``dictionary`` for strings (-1 = missing).
    valid : (n,) bool or None
        False where the value is missing (None: all present); unused for strings.
    dictionary : (m,) str array or None
        Sorted distinct strings (numpy ``U`` dtype) for the string kind.
    """

    kind: str
    values: np.ndarray
    valid: np.ndarray | None = None
    dictionary: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def present(self) -> np.ndarray:
        """(n,) bool: True where the row has a value."""
        if self.kind == "string":
            return np.asarray(self.values) >= 0
        return np.ones(len(self), bool) if self.valid is None else np.asarray(self.valid, bool)

    def take(self, idx: np.ndarray) -> "Column":
        """The rows ``idx`` (int array) as a new column."""
        valid = None if self.valid is None else np.asarray(self.valid)[idx]
        return Column(self.kind, np.asarray(self.values)[idx], valid, self.dictionary)

    def python_values(self, idx: np.ndarray) -> list[Any]:
        """Python values of rows ``idx`` (None where missing), for JSON output."""
        idx = np.asarray(idx)
        present = self.present()[idx]
        if self.kind == "string":
            raw = self.dictionary[np.maximum(np.asarray(self.values)[idx], 0)] if len(self.dictionary) else np.array([""] * len(idx))
            return [str(v) if p else None for v, p in zip(raw.tolist(), present.tolist())]
        vals = np.asarray(self.values)[idx].tolist()
        return [v if p else None for v, p in zip(vals, present.tolist())]


def missing_column(kind: str, n: int) -> Column:
    """A column of n missing values of ``kind``."""
    if kind == "string":
        return Column("string", np.full(n, -1, np.int32), None, np.array([], dtype="U1"))
    dtype = {"bool": bool, "int": np.int64, "float": np.float64}[kind]
    return Column(kind, np.zeros(n, dtype), np.zeros(n, bool))


def merge_kinds(a: str, b: str, name: str) -> str:
    """The kind of an attribute seen as ``a`` and then as ``b``.

    Raises
    ------
    InvalidInputError
        For any mix other than int with float.
    """
    if a == b:
        return a
    if {a, b} == {"int", "float"}:
        return "float"
    raise InvalidInputError(f"attribute {name!r} holds {a} values in this index but the input has {b} values")


def string_column(values: np.ndarray) -> Column:
    """Dictionary-encode a string array (numpy ``U``) with ``None``/"" handled by the caller."""
    dictionary, codes = np.unique(values, return_inverse=True)
    return Column("string", codes.astype(np.int32).reshape(-1), None, dictionary)


def columns_from_records(attributes: Sequence[Mapping[str, Any] | None], first_line: int = 1) -> dict[str, Column]:
    """Columns from per-row attribute objects (parsed JSON).

    Parameters
    ----------
    attributes : sequence of mapping or None
        One object per row; keys are attribute names; values are str, bool, int, float
        or None (missing).
    first_line : int
        Input line number of the first row, for error messages.

    Returns
    -------
    dict of str to Column

    Raises
    ------
    InvalidInputError
        A value that is not a scalar, an integer outside int64, a non-finite float, a
        name or string refused by :func:`check_string`, or one attribute with mixed kinds.
    """
    n = len(attributes)
    seen: dict[str, list[Any]] = {}
    for i, attrs in enumerate(attributes):
        if not attrs:
            continue
        if not isinstance(attrs, Mapping):
            raise InvalidInputError(f"line {first_line + i}: \"attributes\" must be an object")
        for key, value in attrs.items():
            if key not in seen:
                problem = check_string(key, "attribute name", allow_empty=False)
                if problem:
                    raise InvalidInputError(f"line {first_line + i}: {problem}")
            seen.setdefault(key, [None] * n)[i] = value
    columns = {name: _column_from_values(name, vals, first_line) for name, vals in sorted(seen.items())}
    # An attribute that is null on every row has no kind yet; it is simply absent.
    return {name: col for name, col in columns.items() if col is not None}


def _column_from_values(name: str, vals: list[Any], first_line: int) -> Column | None:
    kind = None
    for i, v in enumerate(vals):
        if v is None:
            continue
        k = _kind_of(v)
        if k is None:
            raise InvalidInputError(f"line {first_line + i}: attribute {name!r} must be a string, number, boolean or null")
        kind = k if kind is None else _merge_or_fail(kind, k, name, first_line + i)
    if kind is None:
        return None
    valid = np.array([v is not None for v in vals], dtype=bool)
    if kind == "string":
        for i, v in enumerate(vals):
            problem = None if v is None else check_string(v, f"attribute {name!r}")
            if problem:
                raise InvalidInputError(f"line {first_line + i}: {problem}")
        arr = np.array(["" if v is None else v for v in vals], dtype=str)
        col = string_column(arr)
        return Column("string", np.where(valid, col.values, -1).astype(np.int32), None, col.dictionary)
    filler = {"bool": False, "int": 0, "float": 0.0}[kind]
    dtype = {"bool": bool, "int": np.int64, "float": np.float64}[kind]
    try:
        values = np.array([filler if v is None else v for v in vals], dtype=dtype)
    except OverflowError:
        raise InvalidInputError(f"attribute {name!r}: integer outside the 64-bit range") from None
    if kind == "float" and not np.isfinite(values[valid]).all():
        raise InvalidInputError(f"attribute {name!r}: NaN or Inf is not a valid attribute value")
    return Column(kind, values, None if valid.all() else valid)


def _kind_of(v: Any) -> str | None:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return None


def _merge_or_fail(a: str, b: str, name: str, line: int) -> str:
    try:
        return merge_kinds(a, b, name)
    except InvalidInputError:
        raise InvalidInputError(f"line {line}: attribute {name!r} mixes {a} and {b} values") from None


def concat_columns(parts: Sequence[Column | None], lengths: Sequence[int], kind: str) -> Column:
    """Concatenate column parts (None = rows without the attribute) as ``kind``.

    Parameters
    ----------
    parts : sequence of Column or None
    lengths : sequence of int
        Rows of each part.
    kind : str
        Kind of the result (from :func:`merge_kinds` over the parts).

    Returns
    -------
    Column
    """
    filled = [missing_column(kind, n) if c is None else c for c, n in zip(parts, lengths)]
    if kind == "string":
        # Merge the dictionaries and remap codes: memory grows with distinct strings, not rows.
        dicts = [c.dictionary for c in filled if len(c.dictionary)]
        if not dicts:
            return missing_column("string", sum(lengths))
        dictionary = np.unique(np.concatenate(dicts))
        codes = []
        for c in filled:
            vals = np.asarray(c.values)
            remap = np.searchsorted(dictionary, c.dictionary).astype(np.int32) if len(c.dictionary) else np.zeros(0, np.int32)
            codes.append(np.where(vals >= 0, remap[np.maximum(vals, 0)] if len(remap) else -1, -1).astype(np.int32))
        out = np.concatenate(codes)
        if not (out >= 0).any():
            return missing_column("string", len(out))
        used = np.unique(out[out >= 0])
        if len(used) < len(dictionary):  # drop strings no row holds any more
            out = np.where(out >= 0, np.searchsorted(used, out), -1).astype(np.int32)
            dictionary = dictionary[used]
        return Column("string", out, None, dictionary)
    dtype = {"bool": bool, "int": np.int64, "float": np.float64}[kind]
    values = np.concatenate([np.asarray(c.values).astype(dtype) for c in filled])
    valid = np.concatenate([c.present() for c in filled])
    return Column(kind, values, None if valid.all() else valid)
