"""The metadata filter language shared by Python ``where=``, CLI ``--where`` and HTTP ``"where"``.

    color = "red" and year >= 2020 and not tags in ["draft", "private"]
    (camera = "X100" or exists(gps)) and taken >= "2021-06-01"

Grammar (keywords are case-insensitive)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | "(" expr ")" | "exists" "(" FIELD ")" | FIELD op VALUE
                | FIELD ["not"] "in" "[" VALUE ("," VALUE)* "]"
    op         := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
    FIELD      := name ("." name)* (dots walk into nested objects) | `any text in backquotes`
    VALUE      := "string" | 'string' | number | true | false

Meaning (two-valued, the same in every engine): a comparison is true when the item has the field and
its value is of the literal's type (number, text, true/false) and satisfies the operator; otherwise it
is false (a missing field, ``null``, or text compared with a number). ``a != v`` is true when the
field exists and does not equal ``v``; ``not`` is plain complement (``not color = "red"`` also
matches items without a colour). A list value matches ``=``/``in``/``!=`` by its elements (``tags =
"cat"`` matches ``["cat", "dog"]``); ranges compare single values only. Dates are ISO 8601 text
(``"2021-06-01"``, ``"2021-06-01T12:00:00"``) and so compare correctly as text.

The parser is a hand-written recursive descent over a tokenizer (no ``eval``, no SQL): a field can
only be a name, a value only a literal, and any other input is a ``FilterSyntaxError`` that names
the offending token and its column. ``matches(expr, meta)`` is the reference evaluation on one
metadata dict; ``metadata_store.MetadataStore`` evaluates the same tree on columns, and
``to_milvus`` translates it to a Milvus boolean expression on the JSON ``meta`` field.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Union

from ..errors import InvalidInputError

MAX_FILTER_CHARS = 10_000
MAX_DEPTH = 64  # nesting depth: a deeply nested input must not exhaust the stack


class FilterSyntaxError(InvalidInputError):
    """A filter expression that does not parse; the message points at the bad token."""

    def __init__(self, message: str, text: str, pos: int) -> None:
        self.text, self.pos = text, pos
        before, after = text[max(0, pos - 60):pos], text[pos:pos + 60]
        before = ("..." if pos > 60 else "") + before
        after = after + ("..." if len(text) > pos + 60 else "")
        # one line: the message, then the filter with ">>" marking where it went wrong
        super().__init__(f"bad filter at column {pos + 1}: {message} [{before}>>{after}]".replace("\n", " "))


Value = Union[str, float, int, bool]


@dataclass(frozen=True)
class Compare:
    field: str
    op: str  # "=", "!=", "<", "<=", ">", ">="
    value: Value


@dataclass(frozen=True)
class In:
    field: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Exists:
    field: str


@dataclass(frozen=True)
class And:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Not:
    item: "Expr"


Expr = Union[Compare, In, Exists, And, Or, Not]

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<quoted>`[^`]+`)
  | (?P<op>==|!=|<>|<=|>=|=|<|>)
  | (?P<punct>[()\[\],])
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "exists", "true", "false"}
_OPS = {"==": "=", "<>": "!="}


@dataclass(frozen=True)
class _Tok:
    kind: str  # string, number, name, field, kw, op, punct, end
    text: str
    pos: int
    value: Any = None


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FilterSyntaxError(f"unexpected character {text[pos]!r}", text, pos)
        kind, raw = m.lastgroup, m.group()
        if kind == "string":
            body = raw[1:-1]
            value = re.sub(r"\\(.)", r"\1", body)  # \" \' \\ : the escaped character itself
            toks.append(_Tok("string", raw, pos, value))
        elif kind == "number":
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
            toks.append(_Tok("number", raw, pos, value))
        elif kind == "name":
            low = raw.lower()
            toks.append(_Tok("kw", raw, pos, low) if low in _KEYWORDS else _Tok("field", raw, pos, raw))
        elif kind == "quoted":
            toks.append(_Tok("field", raw, pos, raw[1:-1]))
        elif kind in ("op", "punct"):
            toks.append(_Tok(kind, raw, pos, _OPS.get(raw, raw)))
        pos = m.end()
    toks.append(_Tok("end", "", len(text)))
    return toks


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.toks, self.i, self.depth = text, _tokenize(text), 0, 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def fail(self, what: str, tok: _Tok | None = None) -> FilterSyntaxError:
        tok = tok or self.tok
        got = "the end of the filter" if tok.kind == "end" else repr(tok.text)
        return FilterSyntaxError(f"expected {what}, got {got}", self.text, tok.pos)

    def take(self, kind: str, value: Any = None) -> _Tok | None:
        t = self.tok
        if t.kind == kind and (value is None or t.value == value):
            self.i += 1
            return t
        return None

    def need(self, kind: str, value: Any, what: str) -> _Tok:
        t = self.take(kind, value)
        if t is None:
            raise self.fail(what)
        return t

    def parse(self) -> Expr:
        expr = self.or_expr()
        if self.tok.kind != "end":
            raise self.fail("'and', 'or' or the end of the filter")
        return expr

    def or_expr(self) -> Expr:
        items = [self.and_expr()]
        while self.take("kw", "or"):
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Expr:
        items = [self.unary()]
        while self.take("kw", "and"):
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterSyntaxError(f"nested more than {MAX_DEPTH} levels deep", self.text, self.tok.pos)
        try:
            if self.take("kw", "not"):
                return Not(self.unary())
            if self.take("punct", "("):
                inner = self.or_expr()
                self.need("punct", ")", "')'")
                return inner
            if self.take("kw", "exists"):
                self.need("punct", "(", "'(' after exists")
                name = self.field()
                self.need("punct", ")", "')'")
                return Exists(name)
            return self.comparison()
        finally:
            self.depth -= 1

    def field(self) -> str:
        t = self.take("field")
        if t is None:
            raise self.fail("a field name")
        return t.value

    def value(self) -> Value:
        t = self.tok
        if t.kind in ("string", "number"):
            self.i += 1
            return t.value
        if t.kind == "kw" and t.value in ("true", "false"):
            self.i += 1
            return t.value == "true"
        raise self.fail("a value (a \"string\", a number, true or false)")

    def comparison(self) -> Expr:
        name = self.field()
        if self.tok.kind == "op":
            op = self.tok.value
            self.i += 1
            return Compare(name, op, self.value())
        negated = bool(self.take("kw", "not"))
        if self.take("kw", "in"):
            close = "]" if self.take("punct", "[") else ")" if self.take("punct", "(") else None
            if close is None:
                raise self.fail("'[' after in")
            values = [self.value()]
            while self.take("punct", ","):
                values.append(self.value())
            self.need("punct", close, f"',' or '{close}'")
            node: Expr = In(name, tuple(values))
            return Not(node) if negated else node
        raise self.fail("an operator (=, !=, <, <=, >, >=, in, not in)")


def parse_filter(text: str | Expr) -> Expr:
    """Parse a filter expression (a parsed one passes through); ``FilterSyntaxError`` on bad input."""
    if isinstance(text, (Compare, In, Exists, And, Or, Not)):
        return text
    if not isinstance(text, str):
        raise InvalidInputError(f"a filter must be a string expression; got {type(text).__name__}.")
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidInputError(f"the filter is {len(text)} characters long; at most {MAX_FILTER_CHARS} are accepted.")
    if not text.strip():
        raise FilterSyntaxError("an expression", text, 0)
    return _parse_cached(text)


@functools.lru_cache(maxsize=1024)
def _parse_cached(text: str) -> Expr:
    # trees are immutable: a server that sees the same filter again skips the tokenizer
    return _Parser(text).parse()


def fields(expr: Expr) -> set[str]:
    """Every field name the expression reads."""
    if isinstance(expr, (Compare, In, Exists)):
        return {expr.field}
    if isinstance(expr, Not):
        return fields(expr.item)
    return set().union(*(fields(e) for e in expr.items))


# ---------------------------------------------------------------------------- reference evaluation
_MISSING = object()


def lookup(meta: Mapping[str, Any], field: str) -> Any:
    """A field's value: a key of that name, else dots walk into nested objects; ``_MISSING`` if absent."""
    if field in meta:
        v = meta[field]
        return _MISSING if v is None else v
    cur: Any = meta
    for part in field.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return _MISSING
        cur = cur[part]
    return _MISSING if cur is None else cur


def type_class(v: Any) -> str | None:
    """"bool", "num", "str", or None for values filters cannot compare (objects)."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "num"
    if isinstance(v, str):
        return "str"
    return None


def _cmp(a: Any, op: str, b: Value) -> bool:
    if type_class(a) != type_class(b) or type_class(a) is None:
        return False
    if op == "=":
        return a == b
    if type_class(a) == "bool":  # true/false have no order
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _equals(v: Any, lit: Value) -> bool:
    if isinstance(v, list):
        return any(_cmp(x, "=", lit) for x in v)
    return _cmp(v, "=", lit)


def matches(expr: Expr | str, meta: Mapping[str, Any]) -> bool:
    """Does one item's metadata satisfy the filter? (The reference every engine must agree with.)"""
    expr = parse_filter(expr)
    if isinstance(expr, And):
        return all(matches(e, meta) for e in expr.items)
    if isinstance(expr, Or):
        return any(matches(e, meta) for e in expr.items)
    if isinstance(expr, Not):
        return not matches(expr.item, meta)
    v = lookup(meta, expr.field)
    if v is _MISSING:
        return False
    if isinstance(expr, Exists):
        return True
    if isinstance(expr, In):
        return any(_equals(v, lit) for lit in expr.values)
    if expr.op == "=":
        return _equals(v, expr.value)
    if expr.op == "!=":
        return not _equals(v, expr.value)
    return not isinstance(v, list) and _cmp(v, expr.op, expr.value)


# ---------------------------------------------------------------------------- Milvus
def _milvus_field(field: str, column: str) -> str:
    return column + "".join(f"[{json.dumps(part)}]" for part in field.split("."))


def _milvus_literal(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def to_milvus(expr: Expr | str, column: str = "meta") -> str:
    """The filter as a Milvus boolean expression on a JSON field.

    Milvus uses three-valued logic (a missing key makes a comparison NULL, and ``not NULL`` is NULL);
    every comparison is therefore guarded by ``is not null`` so that it is plainly false for items
    without the field, and ``not`` means what it means in ``matches``. Milvus has no ``in`` on JSON
    keys: ``in`` becomes a chain of equalities. Equality also matches list elements (``json_contains``).
    """
    expr = parse_filter(expr)
    if isinstance(expr, And):
        return "(" + " and ".join(to_milvus(e, column) for e in expr.items) + ")"
    if isinstance(expr, Or):
        return "(" + " or ".join(to_milvus(e, column) for e in expr.items) + ")"
    if isinstance(expr, Not):
        return f"(not {to_milvus(expr.item, column)})"
    f = _milvus_field(expr.field, column)
    if isinstance(expr, Exists):
        return f"({f} is not null)"

    def eq(v: Value) -> str:
        lit = _milvus_literal(v)
        return f"{f} == {lit} or json_contains({f}, {lit})"

    if isinstance(expr, In):
        return f"({f} is not null and (" + " or ".join(eq(v) for v in expr.values) + "))"
    if expr.op == "=":
        return f"({f} is not null and ({eq(expr.value)}))"
    if expr.op == "!=":
        return f"({f} is not null and not ({eq(expr.value)}))"
    if isinstance(expr.value, bool):
        return "(false)"  # true/false have no order
    return f"({f} is not null and {f} {expr.op} {_milvus_literal(expr.value)})"
