"""JSON and text from users (data files, HTTP request bodies), read without crashing on hostile shapes.

`loads` is `json.loads` with three guards: nesting deep enough to exhaust Python's recursion limit, integers
longer than Python converts (`int()` refuses over 4,300 digits), and an object that repeats a key (the JSON
standard leaves that undefined; json keeps the last silently) all raise `JSONError` with a message for people.
`unicode_problem` says why a string is not valid Unicode text (a lone surrogate, as a JSON "\\ud800" escape gives).
"""
from __future__ import annotations

import json
import reprlib
import sys

MAX_INT_DIGITS = 4300  # Python's own limit for int(str) (sys.int_info.default_max_str_digits)


class JSONError(ValueError):
    """Not JSON, or JSON that loraclf will not read. `line` where known; `extra_data`: one value, then more."""

    def __init__(self, message: str, line: int | None = None, extra_data: bool = False):
        super().__init__(message)
        self.message, self.line, self.extra_data = message, line, extra_data


class _Refused(Exception):
    """Raised from inside the parser's hooks; `loads` turns it into a JSONError."""


def _int(s: str) -> int:
    digits = len(s) - s.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"a number with {digits:,} digits (at most {MAX_INT_DIGITS:,} are read)")
    return int(s)


def _object(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"an object repeats the key {show(key)}")
            seen.add(key)
    return obj


def loads(text: str | bytes):
    """json.loads for untrusted input; JSONError for anything that is not plain, reasonable JSON."""
    try:
        return json.loads(text, parse_int=_int, object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        raise JSONError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", e.lineno,
                        e.msg == "Extra data") from None
    except RecursionError:
        raise JSONError(f"JSON nested too deeply (Python reads at most about {sys.getrecursionlimit()} levels)") from None
    except _Refused as e:
        raise JSONError(str(e)) from None
    except UnicodeDecodeError:  # bytes that are not UTF-8, UTF-16 or UTF-32
        raise JSONError("not valid JSON (the bytes are not UTF-8 text)") from None


def unicode_problem(s: str) -> str | None:
    """Why `s` cannot be written as UTF-8 (a lone surrogate), or None. Cheap for ASCII strings."""
    if s.isascii():
        return None
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"a lone surrogate {s[e.start]!r} at character {e.start}, so it is not valid Unicode"
    return None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 40, 40, 4, 4


def show(v) -> str:
    """A short repr for messages: bounded in length and depth, whatever `v` is (a 10 MB string, a list nested
    900 deep, an integer too long for str())."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 100:
        return f"a {v.bit_length() * 30103 // 100000 + 1:,}-digit number"
    try:
        return _REPR.repr(v)
    except Exception:  # noqa: BLE001 - an object whose repr fails (or is too long to make) is named by its type
        return type(v).__name__
