"""The ``--filter`` language: parse once, evaluate per segment as a NumPy mask.

Grammar (keywords are case-insensitive)::

    expr       := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expr ")" | comparison
    comparison := NAME op literal
                | NAME ["not"] "in" "[" literal ("," literal)* "]"
                | NAME "is" ["not"] "null"
    op         := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
    literal    := number | 'string' | "string" | true | false
    NAME       := [A-Za-z_][A-Za-z0-9_.]*  |  `any name in backquotes`

Semantics: a comparison is false on a row where the attribute is missing (so
``color != "red"`` keeps only rows that have a color), ``not`` negates the mask (so
``not color = "red"`` also keeps rows without a color), ``is null`` tests for a missing
value. Numbers compare with numbers (int and float mix), strings with strings
(lexicographic by code point), booleans with ``=``/``!=`` only.

Limits: an expression is at most :data:`~tidepool_cli.limits.MAX_FILTER_CHARS`
characters long and nests ``not`` and parentheses at most
:data:`~tidepool_cli.limits.MAX_FILTER_DEPTH` deep; beyond either it is refused with
:class:`FilterSyntaxError` before it is parsed further.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine.columns import Column
from tidepool_cli.errors import FilterSyntaxError
from tidepool_cli.limits import MAX_FILTER_CHARS, MAX_FILTER_DEPTH

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<op><=|>=|==|!=|=|<|>)
    | (?P<punct>[()\[\],])
    | (?P<name>`[^`]+`|[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}
_OPS = {"=": "==", "==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


@dataclass(frozen=True)
class Compare:
    """``name op value``; ``op`` in ==, !=, <, <=, >, >=."""

    name: str
    op: str
    value: object


@dataclass(frozen=True)
class In:
    """``name in [values]`` (``negate``: ``not in``)."""

    name: str
    values: tuple
    negate: bool = False


@dataclass(frozen=True)
class IsNull:
    """``name is null`` (``negate``: ``is not null``)."""

    name: str
    negate: bool = False


@dataclass(frozen=True)
class Not:
    """Negation of a sub-expression."""

    arg: object


@dataclass(frozen=True)
class BoolOp:
    """``and`` / ``or`` over two or more sub-expressions."""

    op: str
    args: tuple


Expr = Compare | In | IsNull | Not | BoolOp


def parse_filter(text: str) -> Expr:
    """Parse a filter expression.

    Parameters
    ----------
    text : str

    Returns
    -------
    Expr
        The syntax tree.

    Raises
    ------
    FilterSyntaxError
        With the position of the problem; also for an expression beyond the length or
        nesting limits.
    """
    if len(text) > MAX_FILTER_CHARS:
        raise FilterSyntaxError(f"filter: {len(text):,} characters long; at most {MAX_FILTER_CHARS:,} are allowed")
    parser = _Parser(text)
    expr = parser.expr()
    if parser.peek() is not None:
        parser.fail("unexpected text")
    return expr


def names_in(expr: Expr) -> set[str]:
    """Attribute names an expression refers to."""
    if isinstance(expr, (Compare, In, IsNull)):
        return {expr.name}
    if isinstance(expr, Not):
        return names_in(expr.arg)
    return set().union(*(names_in(a) for a in expr.args))


def check_filter(expr: Expr, schema: Mapping[str, str]) -> None:
    """Check names and literal types against the index schema (attribute -> kind).

    Raises
    ------
    FilterSyntaxError
        Unknown attribute, or a literal that cannot compare with the attribute's kind.
    """
    if isinstance(expr, Not):
        return check_filter(expr.arg, schema)
    if isinstance(expr, BoolOp):
        for a in expr.args:
            check_filter(a, schema)
        return
    if expr.name not in schema:
        known = ", ".join(sorted(schema)) or "none"
        raise FilterSyntaxError(f"filter: unknown attribute {expr.name!r} (attributes in this index: {known})")
    kind = schema[expr.name]
    values = (expr.value,) if isinstance(expr, Compare) else expr.values if isinstance(expr, In) else ()
    for v in values:
        if _literal_kind(v) != ("number" if kind in ("int", "float") else kind):
            raise FilterSyntaxError(f"filter: attribute {expr.name!r} holds {kind} values and cannot compare with {v!r}")
    if isinstance(expr, Compare) and kind == "bool" and expr.op not in ("==", "!="):
        raise FilterSyntaxError(f"filter: boolean attribute {expr.name!r} supports only = and !=")


def evaluate(expr: Expr, column: Callable[[str], Column | None], n: int) -> np.ndarray:
    """Rows of a segment that satisfy ``expr``.

    Parameters
    ----------
    expr : Expr
    column : callable(name) -> Column or None
        The segment's column of that name (None: no row has the attribute).
    n : int
        Rows in the segment.

    Returns
    -------
    (n,) bool
    """
    if isinstance(expr, Not):
        return ~evaluate(expr.arg, column, n)
    if isinstance(expr, BoolOp):
        masks = (evaluate(a, column, n) for a in expr.args)
        return np.logical_and.reduce(list(masks)) if expr.op == "and" else np.logical_or.reduce(list(masks))
    col = column(expr.name)
    if col is None:
        return np.full(n, isinstance(expr, IsNull) and not expr.negate)
    present = col.present()
    if isinstance(expr, IsNull):
        return present if expr.negate else ~present
    if isinstance(expr, In):
        hit = np.zeros(n, bool)
        for v in expr.values:
            hit |= _compare(col, "==", v)
        return (present & ~hit) if expr.negate else hit
    return _compare(col, expr.op, expr.value)


def _compare(col: Column, op: str, value) -> np.ndarray:
    present = col.present()
    if col.kind == "string":
        codes = np.asarray(col.values)
        d = col.dictionary
        lo = int(np.searchsorted(d, value, side="left"))
        hi = int(np.searchsorted(d, value, side="right"))
        # The dictionary is sorted, so a string comparison is a comparison of codes.
        match op:
            case "==":
                return (codes >= lo) & (codes < hi)
            case "!=":
                return present & ~((codes >= lo) & (codes < hi))
            case "<":
                return present & (codes < lo)
            case "<=":
                return present & (codes < hi)
            case ">":
                return codes >= hi
            case ">=":
                return codes >= lo
    vals = np.asarray(col.values)
    if col.kind == "int" and isinstance(value, float):
        vals = vals.astype(np.float64)
    ufunc = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[op]
    return present & ufunc(vals, value)


def _literal_kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return "string"


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos, end = 0, len(text.rstrip())
        while pos < end:
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise FilterSyntaxError(f"filter: cannot read {text[pos:pos + 40].strip()[:20]!r} at position {pos}")
            kind = m.lastgroup
            self.tokens.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0
        self.depth = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def fail(self, what: str):
        tok = self.peek()
        where = f"at position {tok[2]} ({tok[1]!r})" if tok else "at the end"
        shown = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        raise FilterSyntaxError(f"filter: {what} {where} in {shown!r}")

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok and tok[0] == "name" and tok[1].lower() == word:
            self.i += 1
            return True
        return False

    def punct(self, ch: str) -> bool:
        tok = self.peek()
        if tok and tok[0] == "punct" and tok[1] == ch:
            self.i += 1
            return True
        return False

    def expr(self) -> Expr:
        args = [self.term()]
        while self.keyword("or"):
            args.append(self.term())
        return args[0] if len(args) == 1 else BoolOp("or", tuple(args))

    def term(self) -> Expr:
        args = [self.factor()]
        while self.keyword("and"):
            args.append(self.factor())
        return args[0] if len(args) == 1 else BoolOp("and", tuple(args))

    def factor(self) -> Expr:
        # Every nested `not` or `(` goes one level deeper: bounded, so no input recurses
        # past MAX_FILTER_DEPTH levels of this parser or of evaluate().
        if self.keyword("not"):
            self.enter()
            e = Not(self.factor())
            self.depth -= 1
            return e
        if self.punct("("):
            self.enter()
            e = self.expr()
            if not self.punct(")"):
                self.fail("expected ')'")
            self.depth -= 1
            return e
        return self.comparison()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_FILTER_DEPTH:
            self.i -= 1
            self.fail(f"nested more than {MAX_FILTER_DEPTH} levels deep (not, parentheses)")

    def comparison(self) -> Expr:
        tok = self.peek()
        if tok is None or tok[0] != "name" or tok[1].lower() in _KEYWORDS:
            self.fail("expected an attribute name")
        self.i += 1
        name = tok[1][1:-1] if tok[1].startswith("`") else tok[1]
        if self.keyword("is"):
            negate = self.keyword("not")
            if not self.keyword("null"):
                self.fail("expected 'null'")
            return IsNull(name, negate)
        negate = self.keyword("not")
        if self.keyword("in"):
            if not self.punct("["):
                self.fail("expected '['")
            values = [self.literal()]
            while self.punct(","):
                values.append(self.literal())
            if not self.punct("]"):
                self.fail("expected ']'")
            return In(name, tuple(values), negate)
        if negate:
            self.fail("expected 'in' after 'not'")
        tok = self.peek()
        if tok is None or tok[0] != "op":
            self.fail("expected a comparison operator")
        self.i += 1
        return Compare(name, _OPS[tok[1]], self.literal())

    def literal(self):
        tok = self.peek()
        if tok is None:
            self.fail("expected a value")
        kind, text, _ = tok
        self.i += 1
        if kind == "num":
            try:
                return float(text) if any(c in text for c in ".eE") else int(text)
            except ValueError:  # more digits than Python converts
                self.i -= 1
                self.fail("number too long")
        if kind == "str":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "name" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        self.i -= 1
        self.fail("expected a value")
