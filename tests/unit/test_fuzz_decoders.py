"""Property-based fuzzing of the decoders (hypothesis): never an exception, never `internal_error`.

Whatever bytes and headers arrive, `verify_message` returns an outcome with a stable reason code that is
not `internal_error`, keeps the original bytes, and accepts only what decodes and verifies. The broker
path is fuzzed in tests/integration/test_fuzz.py.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batteryledger.sample import demo_chain
from ledger.core import Ledger
from ledger.intake import HopKey, pack_verified, unpack_verified, verify_message
from schemas.cloudevents import to_binary, to_structured
from schemas.reasons import Reason
from schemas.signing import decode

CHAIN = demo_chain()
GOOD = [e.raw for e in CHAIN.chain_events[:20]]
HEADERS = to_binary(decode(GOOD[0])).headers
KEY = HopKey.generate()
_REGISTRY: list[Any] = []


def registry() -> Any:
    if not _REGISTRY:
        led = Ledger.init("sqlite:///:memory:", operator_key=CHAIN.operator_key, origin="fuzz")
        led.append([e.raw for e in CHAIN.registry_events])
        _REGISTRY.append(led.registry)
    return _REGISTRY[0]


def check(headers: Any, value: bytes | None) -> None:
    it = verify_message(headers, value, registry(), source="material-events/0/1")
    assert it.raw == (value or b"")
    if it.error is not None:
        assert it.error.reason != Reason.INTERNAL_ERROR, it.error
        assert it.error.reason in set(Reason)
    # and the hop carries it intact
    [(h, v)] = pack_verified([it], KEY, "verified")
    [back] = unpack_verified(h, v, KEY, topic="verified", position="verified/0/0")
    assert back.source == it.source and (back.error is None) == (it.error is None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(value: bytes) -> None:
    check(HEADERS, value)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(GOOD), st.data())
def test_mutated_valid_events(raw: bytes, data: st.DataObject) -> None:
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "json"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        value = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    elif how == "truncate":
        value = raw[: data.draw(st.integers(0, len(raw)))]
    elif how == "insert":
        i = data.draw(st.integers(0, len(raw)))
        value = raw[:i] + data.draw(st.binary(min_size=1, max_size=8)) + raw[i:]
    else:
        obj = json.loads(raw)
        path = data.draw(st.sampled_from(sorted(obj)))
        obj[path] = data.draw(json_values)
        value = json.dumps(obj).encode()
    check(to_binary(decode(raw)).headers, value)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.text(max_size=12), st.binary(max_size=64)), max_size=8),
    st.sampled_from(GOOD),
    st.booleans(),
)
def test_arbitrary_headers_and_structured_envelopes(
    headers: list[tuple[str, bytes]], raw: bytes, structured: bool
) -> None:
    if structured:
        msg = to_structured(decode(raw))
        check([*msg.headers, *headers], msg.value)
    else:
        check(headers, raw)
