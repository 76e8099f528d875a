"""The fast decode path (orjson, canonical input) and the strict path give the same answer on every input.

`schemas.signing.decode` tries `_decode_canonical` first and falls back to `_decode_strict`. The fast
path may only ever *accept* what the strict path accepts, with identical bytes, id and model; anything
else it must hand over (None), so that errors keep their reason and wording.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batteryledger.sample import demo_chain
from schemas.canonical import encode_validated
from schemas.reasons import EventError
from schemas.signing import _decode_canonical, _decode_strict, decode, generate_key, sign_object

CHAIN = demo_chain()
KEY = generate_key()


def outcome(fn: Any, raw: bytes) -> tuple[str, Any]:
    try:
        d = fn(raw)
    except EventError as exc:
        return "error", (exc.reason, exc.detail)
    return "ok", (d.event_id, d.unsigned, d.signed, d.key_id, d.signature, d.event)


def assert_same(raw: bytes) -> None:
    assert outcome(decode, raw) == outcome(_decode_strict, raw)
    fast = _decode_canonical(raw)
    if fast is not None:  # the fast path vouched: the strict path must agree byte for byte
        strict = _decode_strict(raw)
        assert (fast.event_id, fast.unsigned, fast.signed, fast.key_id, fast.signature, fast.event) == (
            strict.event_id,
            strict.unsigned,
            strict.signed,
            strict.key_id,
            strict.signature,
            strict.event,
        )


def test_every_code_point_encodes_as_the_canonical_encoder_does() -> None:
    """orjson's string escaping equals the RFC 8785 encoder's for all of Unicode (no lone surrogates)."""
    for start in range(0, 0x110000, 0x1000):
        text = "".join(
            chr(c) for c in range(start, min(start + 0x1000, 0x110000)) if not 0xD800 <= c <= 0xDFFF
        )
        assert orjson.dumps({"k": text}, option=orjson.OPT_SORT_KEYS) == encode_validated({"k": text})


def test_every_demo_event_takes_the_fast_path_and_agrees() -> None:
    for ev in CHAIN.good_events:
        assert _decode_canonical(ev.raw) is not None, ev.label
        assert_same(ev.raw)


def test_bad_demo_events_are_decided_alike() -> None:
    for _label, raw, _reason in CHAIN.bad_events:
        assert_same(raw)


def _signed(obj: dict[str, Any]) -> bytes:
    return sign_object(obj, KEY)[0]


def _base(note: str = "ok") -> dict[str, Any]:
    return {
        "spec": "batteryledger/1",
        "kind": "batch.extracted",
        "facility_id": "mine-x",
        "time": "2025-03-01T00:00:00Z",
        "note": note,
        "outputs": [{"batch_id": "ORE-1", "material": "ore", "kg": "10.5", "contained_kg": {"li": "1"}}],
    }


def _reencode(raw: bytes, **dumps: Any) -> bytes:
    return json.dumps(json.loads(raw), **dumps).encode()


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda raw: b" " + raw, id="leading-space"),
        pytest.param(lambda raw: _reencode(raw, indent=2), id="pretty"),
        pytest.param(lambda raw: _reencode(raw, sort_keys=False, ensure_ascii=True), id="ascii-escapes"),
        pytest.param(lambda raw: raw.replace(b'"spec"', b'"note":"twice","spec"', 1), id="duplicate-key"),
        pytest.param(lambda raw: raw.replace(b'"10.5"', b"10.5", 1), id="float-quantity"),
        pytest.param(lambda raw: raw.replace(b'"10.5"', b"18446744073709551616", 1), id="huge-int"),
        pytest.param(lambda raw: b"\xef\xbb\xbf" + raw, id="bom"),
        pytest.param(lambda raw: raw.replace(b'"ok"', b'"\\ud800"', 1), id="lone-surrogate"),
        pytest.param(lambda raw: raw.replace(b'"ok"', b'"\xff"', 1), id="not-utf8"),
        pytest.param(lambda raw: raw.replace(b'"ok"', b"NaN", 1), id="nan"),
        pytest.param(
            lambda raw: raw.replace(b'"alg":"Ed25519"', b'"alg":"Ed25519","x":1', 1), id="sig-extra"
        ),
        pytest.param(lambda raw: raw.replace(b"==", b"=", 1), id="sig-padding"),
        pytest.param(lambda raw: raw.replace(b'"batch.extracted"', b'"batch.mined"', 1), id="unknown-kind"),
        pytest.param(lambda raw: raw.replace(b'"mine-x"', b'"mine x"', 1), id="schema-invalid"),
        pytest.param(lambda raw: b"[" + raw + b"]", id="array"),
    ],
)
def test_non_canonical_or_bad_input_is_left_to_the_strict_path(mutate: Any) -> None:
    raw = mutate(_signed(_base()))
    assert _decode_canonical(raw) is None
    assert_same(raw)


def test_a_noncanonical_but_valid_event_decodes_to_its_canonical_bytes() -> None:
    raw = _signed(_base("é"))
    pretty = _reencode(raw, indent=1, ensure_ascii=True)
    assert _decode_canonical(pretty) is None
    d = decode(pretty)
    assert d.signed == raw and d == decode(raw)


def test_padding_bits_in_the_signature_are_refused_on_both_paths() -> None:
    raw = _signed(_base())
    value = json.loads(raw)["sig"]["value"]
    sig = base64.b64decode(value)
    # the last base64 character before "==" carries 4 unused bits: set one, same bytes decode
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = value[-3]
    twin = value[:-3] + alphabet[alphabet.index(last) | 1] + "=="
    if twin == value:
        twin = value[:-3] + alphabet[alphabet.index(last) | 2] + "=="
    assert base64.b64decode(twin) == sig
    bad = raw.replace(value.encode(), twin.encode())
    assert _decode_canonical(bad) is None
    assert outcome(decode, bad)[0] == "error"


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    note=TEXT,
    site=st.one_of(st.none(), TEXT),
    kg=st.from_regex(r"[0-9]{1,14}(\.[0-9]{1,8})?", fullmatch=True),
    li=st.integers(min_value=0, max_value=10**13),
)
def test_random_events_agree(note: str, site: str | None, kg: str, li: int) -> None:
    obj = _base(note)
    obj["outputs"][0]["kg"] = kg
    obj["outputs"][0]["contained_kg"] = {"li": li}
    if site is not None:
        obj["site"] = site
    try:
        raw = _signed(obj)
    except Exception:
        return  # not canonicalisable: nothing to compare
    assert_same(raw)
    # the same event sent with another spelling decodes to the same canonical bytes (or error)
    assert_same(_reencode(raw, ensure_ascii=True))
