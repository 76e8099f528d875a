"""RFC 8785 (JSON Canonicalization Scheme) bytes.

The `rfc8785` library is the reference. It costs about a third of an Ed25519 verify, so events with no
JSON floats (ours carry quantities as decimal strings) take a fast path through the C json encoder,
whose output is byte-identical to JCS for that value domain: keys sorted by code point (equal to JCS's
UTF-16 order for keys without astral characters), no whitespace, the same escapes, integers as digits.
Anything outside that domain (floats, astral-plane keys, huge ints) goes through rfc8785.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

_MAX_SAFE_INT = 2**53 - 1
_encode = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode


class CanonicalError(ValueError):
    """The value cannot be expressed as RFC 8785 canonical JSON."""


def _fast_ok(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str or v is None or t is bool:
            continue
        if t is dict:
            for k, item in v.items():
                if type(k) is not str or any(ord(c) > 0xFFFF for c in k):
                    return False
                stack.append(item)
        elif t is list:
            stack.extend(v)
        elif t is int:
            if not -_MAX_SAFE_INT <= v <= _MAX_SAFE_INT:
                return False
        else:
            return False
    return True


def canonicalize(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of a JSON value."""
    try:
        if _fast_ok(value):
            return _encode(value).encode("utf-8")
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
        raise CanonicalError(str(exc)) from exc


def encode_validated(value: Any) -> bytes:
    """Canonical bytes of a value already known to be in the fast-path domain (a validated event).

    The schema admits no floats, no keys outside its ASCII field names and ints far below 2**53, so the
    per-value walk of `canonicalize` is redundant there (tests/unit/test_canonical.py holds the two equal).
    """
    try:
        return _encode(value).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
        raise CanonicalError(str(exc)) from exc
