"""RFC 8785 canonical bytes: our fast path must be byte-identical to the `rfc8785` reference."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from batteryledger.sample import DemoChain
from schemas.canonical import CanonicalError, canonicalize, encode_validated

SETTINGS = settings(max_examples=200, deadline=None)

# Strings across the whole of Unicode except lone surrogates (not representable in UTF-8): astral
# characters, control characters, quotes and backslashes all come up.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
SPECIAL = st.sampled_from(
    ["", '"', "\\", "\x00", "\x1f", "\x7f", "\b\f\n\r\t", "\u2028", "\ue000", "\uffff", "😀", "\U0010ffff"]
)
KEYS = st.one_of(TEXT, SPECIAL)
SAFE_INT = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
FLOAT = st.floats(allow_nan=False, allow_infinity=False)


def json_values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=5),
        max_leaves=25,
    )


NO_FLOATS = json_values(st.none() | st.booleans() | SAFE_INT | TEXT | SPECIAL)
WITH_FLOATS = json_values(st.none() | st.booleans() | SAFE_INT | FLOAT | TEXT | SPECIAL)


@SETTINGS
@given(NO_FLOATS)
def test_equals_rfc8785_without_floats(value: Any) -> None:
    assert canonicalize(value) == rfc8785.dumps(value)


@SETTINGS
@given(WITH_FLOATS)
def test_equals_rfc8785_with_floats(value: Any) -> None:
    assert canonicalize(value) == rfc8785.dumps(value)


def same_json(loaded: Any, original: Any) -> bool:
    """Equal as JSON values: a float comes back as the same IEEE double (1e16 may read back as an int)."""
    if isinstance(original, float):
        return type(loaded) in (int, float) and float(loaded) == original
    if isinstance(original, list):
        return (
            isinstance(loaded, list)
            and len(loaded) == len(original)
            and all(map(same_json, loaded, original))
        )
    if isinstance(original, dict):
        return (
            isinstance(loaded, dict)
            and loaded.keys() == original.keys()
            and all(same_json(loaded[k], original[k]) for k in original)
        )
    return type(loaded) is type(original) and loaded == original


@SETTINGS
@given(NO_FLOATS)
def test_round_trips_through_json_exactly(value: Any) -> None:
    assert json.loads(canonicalize(value)) == value


@SETTINGS
@given(WITH_FLOATS)
def test_round_trips_floats_to_the_same_double(value: Any) -> None:
    assert same_json(json.loads(canonicalize(value)), value)


@SETTINGS
@given(NO_FLOATS)
def test_is_a_fixed_point(value: Any) -> None:
    once = canonicalize(value)
    assert canonicalize(json.loads(once)) == once


@SETTINGS
@given(st.integers(min_value=2**53, max_value=2**80) | st.integers(min_value=-(2**80), max_value=-(2**53)))
def test_integers_beyond_2_53_are_refused_like_the_reference(value: int) -> None:
    with pytest.raises(rfc8785.CanonicalizationError):
        rfc8785.dumps(value)
    with pytest.raises(CanonicalError):
        canonicalize({"n": [value]})


def test_astral_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is D83D DE00 in UTF-16, which sorts before U+FFFF; by code point it sorts after.
    value = {"\uffff": 1, "😀": 2, "a": 3}
    expected = '{"a":3,"😀":2,"\uffff":1}'.encode()
    assert canonicalize(value) == expected == rfc8785.dumps(value)
    # the same keys one level down take the same route
    assert canonicalize({"x": [value]}) == rfc8785.dumps({"x": [value]})


def test_control_characters_and_escapes() -> None:
    value = {"s": '\x00\x01\x1f\x7f\b\f\n\r\t"\\/\u2028é😀'}
    out = canonicalize(value)
    assert out == rfc8785.dumps(value)
    assert (
        out == b'{"s":"\\u0000\\u0001\\u001f\x7f\\b\\f\\n\\r\\t\\"\\\\/\xe2\x80\xa8\xc3\xa9\xf0\x9f\x98\x80"}'
    )


def test_booleans_stay_booleans_and_numbers_stay_numbers() -> None:
    assert (
        canonicalize([True, False, None, 1, -0, 0.5, 1e21, 1e-7]) == b"[true,false,null,1,0,0.5,1e+21,1e-7]"
    )


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), {1: "int key"}, {"d": {1, 2}}, object(), "\ud800", {"k": "x\udfff"}],
    ids=["nan", "inf", "int-key", "set", "object", "lone-surrogate", "nested-lone-surrogate"],
)
def test_refuses_values_outside_json(value: Any) -> None:
    with pytest.raises(CanonicalError):
        canonicalize(value)


def test_encode_validated_refuses_nan() -> None:
    with pytest.raises(CanonicalError):
        encode_validated({"kg": float("nan")})


def test_encode_validated_equals_rfc8785_on_every_demo_event(bl_demo: DemoChain) -> None:
    events = bl_demo.good_events
    assert len(events) > 50
    for ev in events:
        signed = json.loads(ev.raw)
        assert encode_validated(signed) == rfc8785.dumps(signed) == ev.raw, ev.label
        unsigned = {k: v for k, v in signed.items() if k != "sig"}
        assert encode_validated(unsigned) == rfc8785.dumps(unsigned) == canonicalize(unsigned), ev.label


def test_encode_validated_equals_rfc8785_on_parseable_bad_demo_events(bl_demo: DemoChain) -> None:
    checked = 0
    for label, raw, _ in bl_demo.bad_events:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        assert encode_validated(obj) == rfc8785.dumps(obj), label
        checked += 1
    assert checked >= 3
