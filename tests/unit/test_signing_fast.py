"""Fast signing (issue 11): the bytes the Publisher signs and sends are the bytes the ledger decodes.

`sign_validated` (schema-valid events: the C encoder, each half of the object encoded once) and
`sign_object` (any object: `canonicalize`, with the rfc8785 fallback) must give exactly the signed bytes
and event id that `decode` computes from them, and that the `rfc8785` reference gives; the Publisher's
own CloudEvents headers must equal the SDK's `to_binary`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from batteryledger.sample import DemoChain
from schemas.canonical import CanonicalError
from schemas.cloudevents import binary_message, sdk_binary, to_binary
from schemas.events import parse_event
from schemas.signing import (
    ALG,
    SIG_FIELD,
    decode,
    generate_key,
    key_id,
    sign_event,
    sign_object,
    sign_validated,
)

SETTINGS = settings(max_examples=150, deadline=None)
KEY = generate_key()
KID = key_id(KEY.public_key())

# Free text across Unicode (no lone surrogates: not UTF-8): astral, control characters, quotes,
# backslashes, U+2028, private use, noncharacters.
SPECIAL = st.sampled_from(
    [
        "",
        '"',
        "\\",
        "\x00",
        "\x1f",
        "\x7f",
        "\b\f\n\r\t",
        "\u2028",
        "\ue000",
        "\uffff",
        "😀",
        "\U0010ffff",
        "é",
    ]
)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40) | SPECIAL
IDENT = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:/-]{0,20}\Z")
# quantities: decimal strings (up to 6 places) or ints up to the schema's 10**12
QTY = st.one_of(
    st.integers(min_value=0, max_value=10**12),
    st.builds(
        lambda i, f: f"{i}.{f}" if f else str(i),
        st.integers(min_value=0, max_value=10**9),
        st.from_regex(r"\A[0-9]{0,6}\Z"),
    ),
)
TIME = st.builds(
    lambda dt, off, frac: dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + off,
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 30)),
    st.sampled_from(["Z", "+00:00", "+01:00", "-05:30", "+14:00"]),
    st.sampled_from(["", ".5", ".123456", ".123456789"]),
)


def _output(batch_id: str, kg: Any, extra: dict[str, Any]) -> dict[str, Any]:
    return {"batch_id": batch_id, "material": "cathode_nmc811", "kg": kg, **extra}


OUTPUT_EXTRAS = st.fixed_dictionaries(
    {},
    optional={
        "units": st.integers(min_value=0, max_value=10**9),
        "value_usd": QTY,
        "kwh": QTY,
        "purity_pct": st.sampled_from(["99.5", "100", 0, "0.000001"]),
        "contained_kg": st.fixed_dictionaries({}, optional={"li": st.just("0.5"), "ni": st.just(0)}),
    },
)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    fid = draw(IDENT)
    ids = draw(st.lists(IDENT, min_size=1, max_size=4, unique=True))
    kg = draw(st.integers(min_value=10, max_value=10**12))
    ev: dict[str, Any] = {
        "spec": "batteryledger/1",
        "facility_id": fid,
        "time": draw(TIME),
        "outputs": [_output(b, kg, draw(OUTPUT_EXTRAS)) for b in ids],
    }
    kind = draw(st.sampled_from(["batch.extracted", "batch.processed", "batch.recycled"]))
    ev["kind"] = kind
    if kind == "batch.extracted":
        ev["site"] = draw(TEXT)
    else:
        ins = draw(st.lists(IDENT, min_size=1, max_size=3, unique=True))
        ev["inputs"] = [{"batch_id": b, "kg": draw(QTY)} for b in ins]
    if kind == "batch.recycled":
        ev["external_feed"] = [
            {"description": draw(TEXT), "consumer": "post", "kg": draw(QTY), "origin_country": "KR"}
        ]
    if draw(st.booleans()):
        ev["note"] = draw(TEXT)
    if draw(st.booleans()):
        ev["nonce"] = draw(st.text(max_size=64))
    return ev


def _reference(obj: dict[str, Any], kid: str, signature: bytes) -> tuple[bytes, str]:
    """RFC 8785 (the rfc8785 library) of the signed object, and SHA-256 of the unsigned one."""
    signed_obj = {
        **obj,
        SIG_FIELD: {"alg": ALG, "key_id": kid, "value": base64.b64encode(signature).decode()},
    }
    return rfc8785.dumps(signed_obj), hashlib.sha256(rfc8785.dumps(obj)).hexdigest()


def _check_against_decode(obj: dict[str, Any], signed: bytes, event_id: str) -> None:
    d = decode(signed)
    assert d.signed == signed
    assert d.event_id == event_id
    KEY.public_key().verify(d.signature, d.unsigned)
    assert _reference(obj, KID, d.signature) == (signed, event_id)


@given(valid_events())
@SETTINGS
def test_sign_validated_equals_what_decode_computes(ev: dict[str, Any]) -> None:
    parse_event(ev)
    signed, event_id = sign_validated(ev, KEY, KID)
    _check_against_decode(ev, signed, event_id)
    assert sign_validated(ev, KEY) == (signed, event_id)  # key id computed when not given
    assert sign_event(ev, KEY) == (signed, event_id)
    assert sign_object(ev, KEY) == (signed, event_id)


@given(valid_events())
@SETTINGS
def test_the_publishers_headers_equal_the_sdks(ev: dict[str, Any]) -> None:
    event = parse_event(ev)
    signed, event_id = sign_validated(ev, KEY, KID)
    assert binary_message(event_id, event, signed) == sdk_binary(decode(signed)) == to_binary(decode(signed))


def test_every_demo_event_signs_to_the_decoded_bytes_and_headers(bl_demo: DemoChain) -> None:
    events = [e.raw for e in bl_demo.good_events] + [e.raw for e in bl_demo.registry_events]
    assert len(events) > 20
    for raw in events:
        d = decode(raw)
        obj = {k: v for k, v in json.loads(raw).items() if k != SIG_FIELD}
        signed, event_id = sign_validated(obj, KEY, KID)
        assert decode(signed).signed == signed and decode(signed).event_id == event_id == d.event_id
        assert binary_message(event_id, decode(signed).event, signed) == sdk_binary(decode(signed))


# -- sign_object: any JSON object, inside the fast domain or not --------------------------------------

SAFE_INT = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
BIG_INT = st.integers(min_value=2**53, max_value=2**70) | st.integers(min_value=-(2**70), max_value=-(2**53))
FLOAT = st.floats(allow_nan=False, allow_infinity=False)
KEYS = st.one_of(
    TEXT, st.sampled_from(["sig ", "sif", "sih", "si", "sig\x00", "s", "t", "A", "😀", "\uffff"])
)


def _json(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
        max_leaves=20,
    )


ANY_JSON = _json(st.none() | st.booleans() | SAFE_INT | BIG_INT | FLOAT | TEXT)
# the fast domain (what a schema-valid event holds): no floats, no big ints, no astral keys
BMP_KEYS = KEYS.filter(lambda k: all(ord(c) <= 0xFFFF for c in k))
FAST = st.recursive(
    st.none() | st.booleans() | SAFE_INT | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(BMP_KEYS, inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(BMP_KEYS.filter(lambda k: k != SIG_FIELD), FAST, max_size=6))
@SETTINGS
def test_sign_object_in_the_fast_domain_is_rfc8785(obj: dict[str, Any]) -> None:
    signed, event_id = sign_object(obj, KEY)
    signature = json.loads(signed)[SIG_FIELD]["value"]
    assert _reference(obj, KID, base64.b64decode(signature)) == (signed, event_id)
    assert sign_validated(obj, KEY, KID) == (signed, event_id)  # same bytes when the domain holds


@given(st.dictionaries(KEYS.filter(lambda k: k != SIG_FIELD), ANY_JSON, max_size=6))
@SETTINGS
def test_sign_object_outside_the_fast_domain_falls_back_to_rfc8785(obj: dict[str, Any]) -> None:
    try:
        rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError:  # e.g. an int beyond 2**53: refused, never mis-signed
        with pytest.raises(CanonicalError):
            sign_object(obj, KEY)
        return
    signed, event_id = sign_object(obj, KEY)
    sig = json.loads(signed)[SIG_FIELD]
    assert sig["alg"] == ALG and sig["key_id"] == KID
    signature = base64.b64decode(sig["value"])
    assert _reference(obj, KID, signature) == (signed, event_id)
    KEY.public_key().verify(signature, rfc8785.dumps(obj))


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"a": 1},
        {"z": 1},
        {"sif": [1.5, 2**53 - 1], "sih": {"😀": "x", "\uffff": None, "\ue000": 1}},
        {"float": 0.1, "neg": -0.0, "exp": 1e21, "tiny": 5e-324},
    ],
)
def test_sign_object_edge_shapes(obj: dict[str, Any]) -> None:
    signed, event_id = sign_object(obj, KEY)
    signature = base64.b64decode(json.loads(signed)[SIG_FIELD]["value"])
    assert _reference(obj, KID, signature) == (signed, event_id)


def test_values_with_no_json_form_are_refused_not_mis_signed() -> None:
    ev = {
        "spec": "batteryledger/1",
        "facility_id": "mine-1",
        "kind": "batch.extracted",
        "time": datetime(2025, 3, 1, tzinfo=UTC),  # schema-valid in Python, but not JSON
        "outputs": [{"batch_id": "B-1", "material": "ore", "kg": Decimal("5")}],
    }
    parse_event(ev)
    with pytest.raises(CanonicalError):
        sign_validated(ev, KEY, KID)
    with pytest.raises(CanonicalError):
        sign_object(ev, KEY)
    with pytest.raises(CanonicalError):
        sign_object({1: "x"}, KEY)  # type: ignore[dict-item]
    with pytest.raises(CanonicalError):
        sign_object({"big": 2**64}, KEY)  # beyond I-JSON's exact integers: rfc8785 refuses it
    with pytest.raises(ValueError, match="already signed"):
        sign_validated({SIG_FIELD: {}}, KEY, KID)


def test_a_non_utc_time_gives_the_sdks_utc_header() -> None:
    t = datetime(2025, 3, 1, 12, 0, 0, 500000, tzinfo=timezone(timedelta(hours=1)))
    ev = {
        "spec": "batteryledger/1",
        "facility_id": "mine-1",
        "kind": "batch.extracted",
        "time": t.isoformat(),
        "outputs": [{"batch_id": "B-1", "material": "ore", "kg": "5"}],
    }
    signed, event_id = sign_validated(ev, KEY, KID)
    msg = binary_message(event_id, parse_event(ev), signed)
    assert msg == sdk_binary(decode(signed)) == to_binary(decode(signed))
    assert dict(msg.headers)["ce_time"] == b"2025-03-01T11:00:00.500000Z"


def test_another_key_gives_another_signature_with_its_own_key_id() -> None:
    other = Ed25519PrivateKey.generate()
    ev = {"spec": "batteryledger/1", "facility_id": "f", "kind": "batch.extracted",
          "time": "2025-03-01T00:00:00Z", "outputs": [{"batch_id": "B", "material": "ore", "kg": "1"}]}  # fmt: skip
    a, ida = sign_validated(ev, KEY, KID)
    b, idb = sign_validated(ev, other)
    assert ida == idb and a != b
    assert decode(b).key_id == key_id(other.public_key())
