"""JSON from outside, read with its nesting bounded: Python's parser recurses once per level, so
a body of 5,000 `[` (10 KB) raises RecursionError deep inside it (and any code that walks the
result recurses as deep). The depth is counted first, on the raw text, and a body nested deeper
than `MAX_DEPTH` is refused as a ValueError like any other malformed JSON."""

from __future__ import annotations

import json
import re
from decimal import Decimal

MAX_DEPTH = 32
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


class TooDeep(ValueError):
    """The JSON is nested deeper than allowed."""


def depth(raw: bytes | str, limit: int | None = None) -> int:
    """How deeply the arrays and objects of `raw` nest (strings are skipped); once past `limit`,
    at least `limit + 1`. Every step is a bytes operation in C (each pass drops the innermost
    `[]` and `{}` pairs): about as long as parsing the body, a fraction of it in practice."""
    data = raw.encode() if isinstance(raw, str) else raw
    # Outside the strings: escapes gone, every remaining quote opens or closes a string.
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = b"".join(data.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    passes = 0
    while data and (limit is None or passes <= limit):
        shorter = _INNERMOST.sub(b"", data)
        if shorter == data:
            # Unbalanced (malformed): what is left still opens at most this many levels, and
            # Python's parser would recurse into them before it found the fault.
            return passes + data.count(b"[") + data.count(b"{")
        data = shorter
        passes += 1
    return passes


class Fraction(Decimal):
    """A JSON number written with a point or an exponent, kept exactly (never a float) and shown
    as written in error messages."""

    def __repr__(self) -> str:
        return str(self)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH, exact_numbers: bool = False):
    """`json.loads`, refusing (TooDeep, a ValueError) nesting deeper than `max_depth`.

    `exact_numbers`: `4900.0`, `1e10` and `1e308` arrive as `Fraction`s (Decimals) instead of
    floats, so a schema that wants an integer refuses them rather than seeing 4900.0 as one; and
    NaN or Infinity (which Python's parser accepts) are refused."""
    if depth(raw, max_depth) > max_depth:
        raise TooDeep(f"the JSON is nested more than {max_depth} levels deep")
    if exact_numbers:
        return json.loads(raw, parse_float=Fraction, parse_constant=_no_constant)
    return json.loads(raw)
