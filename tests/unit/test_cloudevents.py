"""CloudEvents 1.0 Kafka binding: headers out, attributes back in, and every disagreement refused."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from batteryledger.sample import DemoChain
from schemas.cloudevents import (
    STRUCTURED_CONTENT_TYPE,
    Envelope,
    WireMessage,
    ce_source,
    ce_type,
    check_attributes,
    subject_of,
    to_binary,
    to_structured,
    unwrap,
)
from schemas.events import parse_event
from schemas.reasons import EventError, Reason
from schemas.signing import DecodedEvent, decode, generate_key, sign_object


def _first(demo: DemoChain, kind: str) -> DecodedEvent:
    return decode(next(e.raw for e in demo.good_events if e.kind == kind))


def _reason(envelope: Envelope, decoded: DecodedEvent) -> EventError:
    with pytest.raises(EventError) as info:
        check_attributes(envelope, decoded)
    return info.value


def test_to_binary_headers_key_and_value(bl_demo: DemoChain) -> None:
    d = _first(bl_demo, "batch.processed")
    msg = to_binary(d)
    assert isinstance(msg, WireMessage)
    headers = dict(msg.headers)
    assert len(headers) == len(msg.headers)  # no header twice
    assert headers == {
        "ce_id": d.event_id.encode(),
        "ce_source": f"/facilities/{d.facility_id}".encode(),
        "ce_type": f"org.batteryledger.{d.kind.value}".encode(),
        "ce_specversion": b"1.0",
        "ce_time": d.event.time.strftime("%Y-%m-%dT%H:%M:%SZ").encode(),
        "ce_subject": d.event.outputs[0].batch_id.encode(),  # type: ignore[union-attr]
        "content-type": b"application/json",
    }
    assert msg.key == d.facility_id.encode()
    assert msg.value == d.signed


def test_binary_round_trip_for_every_demo_event(bl_demo: DemoChain) -> None:
    for ev in bl_demo.good_events:
        d = decode(ev.raw)
        msg = to_binary(d)
        env = unwrap(msg.headers, msg.value)
        assert env.mode == "binary"
        assert env.event_bytes == ev.raw
        assert env.attributes["id"] == ev.event_id
        check_attributes(env, decode(env.event_bytes))


def test_structured_round_trip_for_every_demo_event(bl_demo: DemoChain) -> None:
    for ev in bl_demo.good_events:
        d = decode(ev.raw)
        msg = to_structured(d)
        assert dict(msg.headers)["content-type"] == STRUCTURED_CONTENT_TYPE.encode()
        assert msg.key == d.facility_id.encode()
        body = json.loads(msg.value)
        assert body["id"] == ev.event_id and body["specversion"] == "1.0"
        assert body["data"] == json.loads(ev.raw)
        env = unwrap(msg.headers, msg.value)
        assert env.mode == "structured"
        assert env.event_bytes == ev.raw  # the data object canonicalises back to the signed bytes
        check_attributes(env, decode(env.event_bytes))


def test_unwrap_accepts_a_header_mapping_and_mixed_case_names(bl_demo: DemoChain) -> None:
    d = _first(bl_demo, "batch.shipped")
    msg = to_binary(d)
    shouted = {name.upper(): value for name, value in msg.headers}
    env = unwrap(shouted, msg.value)
    assert env.attributes["id"] == d.event_id
    assert env.attributes["datacontenttype"] == "application/json"
    check_attributes(env, d)


def test_a_repeated_header_keeps_its_last_value(bl_demo: DemoChain) -> None:
    d = _first(bl_demo, "batch.shipped")
    msg = to_binary(d)
    env = unwrap([("ce_id", b"not-this-one"), *msg.headers], msg.value)
    assert env.attributes["id"] == d.event_id
    check_attributes(env, d)
    env = unwrap([*msg.headers, ("CE_ID", b"a-later-one")], msg.value)
    assert env.attributes["id"] == "a-later-one"
    with pytest.raises(EventError) as info:
        check_attributes(env, d)
    assert info.value.reason is Reason.HEADER_MISMATCH


def test_our_binary_reader_agrees_with_the_sdk(bl_demo: DemoChain) -> None:
    fmt = JSONFormat()
    for ev in bl_demo.good_events:
        msg = to_binary(decode(ev.raw))
        ours = unwrap(msg.headers, msg.value).attributes
        sdk = ce_kafka.from_binary(
            ce_kafka.KafkaMessage(headers=dict(msg.headers), key=msg.key, value=msg.value), fmt
        )
        theirs = sdk.get_attributes()
        for name in ("id", "source", "type", "specversion", "subject", "datacontenttype"):
            assert ours[name] == theirs[name], (ev.label, name)
        sdk_time = theirs["time"]
        assert isinstance(sdk_time, datetime)
        assert datetime.fromisoformat(ours["time"].replace("Z", "+00:00")) == sdk_time
        assert theirs["partitionkey"] == ev.facility_id
        assert set(ours) == set(theirs) - {"partitionkey"}
        assert sdk.get_data() == json.loads(ev.raw)


def test_sdk_structured_reader_sees_our_attributes(bl_demo: DemoChain) -> None:
    d = _first(bl_demo, "batch.recycled")
    msg = to_structured(d)
    sdk = ce_kafka.from_structured(
        ce_kafka.KafkaMessage(headers=dict(msg.headers), key=msg.key, value=msg.value), JSONFormat()
    )
    assert sdk.get_id() == d.event_id
    assert sdk.get_type() == ce_type(d.kind)
    assert sdk.get_source() == ce_source(d.facility_id)
    assert sdk.get_subject() == subject_of(d.event)
    assert sdk.get_data() == json.loads(d.signed)


# -- disagreements between the unsigned attributes and the signed event ----------------------------
@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("ce_id", "0" * 64),
        ("ce_type", "org.batteryledger.batch.extracted"),
        ("ce_type", "batch.processed"),
        ("ce_source", "/facilities/ref-cn-ningbo"),
        ("ce_source", "ref-us-kings-mountain"),
        ("ce_subject", "US-LIOH-999"),
        ("ce_time", "2025-01-01T00:00:00Z"),
        ("ce_time", "2025-01-06T12:00:00"),  # no offset: not RFC 3339
        ("ce_time", "next tuesday"),
        ("ce_specversion", "0.3"),
        ("ce_specversion", "1.1"),
    ],
)
def test_mismatching_header_is_header_mismatch(bl_demo: DemoChain, header: str, value: str) -> None:
    d = _first(bl_demo, "batch.processed")
    msg = to_binary(d)
    headers = [(n, value.encode() if n == header else v) for n, v in msg.headers]
    err = _reason(unwrap(headers, msg.value), d)
    assert err.reason is Reason.HEADER_MISMATCH
    assert repr(value) in err.detail


def test_header_from_another_event_is_refused(bl_demo: DemoChain) -> None:
    """Replaying one event's headers with another event's bytes: the id check catches it."""
    a, b = (decode(e.raw) for e in bl_demo.chain_events[:2])
    env = unwrap(to_binary(a).headers, b.signed)
    err = _reason(env, b)
    assert err.reason is Reason.HEADER_MISMATCH and "ce_id" in err.detail


def test_same_instant_in_another_offset_is_accepted(bl_demo: DemoChain) -> None:
    d = _first(bl_demo, "batch.processed")
    msg = to_binary(d)
    kolkata = d.event.time.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    assert "+05:30" in kolkata
    shifted = d.event.time.strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    for t in (kolkata, shifted):
        headers = [(n, t.encode() if n == "ce_time" else v) for n, v in msg.headers]
        check_attributes(unwrap(headers, msg.value), d)


def test_optional_time_and_subject_may_be_absent(bl_demo: DemoChain) -> None:
    d = _first(bl_demo, "batch.processed")
    msg = to_binary(d)
    headers = [(n, v) for n, v in msg.headers if n not in ("ce_time", "ce_subject")]
    check_attributes(unwrap(headers, msg.value), d)


def test_no_ce_headers_is_missing_headers(bl_demo: DemoChain) -> None:
    d = _first(bl_demo, "batch.processed")
    for headers in (None, [], [("content-type", b"application/json")], {"key": b"x"}):
        with pytest.raises(EventError) as info:
            unwrap(headers, d.signed)
        assert info.value.reason is Reason.MISSING_HEADERS
        assert "ce_id" in info.value.detail


@pytest.mark.parametrize("required", ["ce_id", "ce_source", "ce_type", "ce_specversion"])
def test_missing_required_attribute_is_missing_headers(bl_demo: DemoChain, required: str) -> None:
    d = _first(bl_demo, "batch.processed")
    msg = to_binary(d)
    env = unwrap([(n, v) for n, v in msg.headers if n != required], msg.value)
    err = _reason(env, d)
    assert err.reason is Reason.MISSING_HEADERS
    assert f"`{required[3:]}`" in err.detail


@pytest.mark.parametrize("name", ["ce_note", "traceparent"])
def test_non_utf8_header_is_header_mismatch(bl_demo: DemoChain, name: str) -> None:
    # any header, CloudEvents attribute or not, must be UTF-8
    d = _first(bl_demo, "batch.processed")
    msg = to_binary(d)
    headers = [*msg.headers, (name, b"\xff\xfe")]
    with pytest.raises(EventError) as info:
        unwrap(headers, msg.value)
    assert info.value.reason is Reason.HEADER_MISMATCH


def test_structured_mode_mismatch_and_malformed(bl_demo: DemoChain) -> None:
    d = _first(bl_demo, "batch.processed")
    msg = to_structured(d)
    body = json.loads(msg.value)
    body["type"] = "org.batteryledger.batch.extracted"
    err = _reason(unwrap(msg.headers, json.dumps(body).encode()), d)
    assert err.reason is Reason.HEADER_MISMATCH and "ce_type" in err.detail
    for bad in (b"not json", b"[1]", json.dumps({"id": "x", "data": "a string"}).encode()):
        with pytest.raises(EventError) as info:
            unwrap(msg.headers, bad)
        assert info.value.reason is Reason.MALFORMED


def test_structured_data_is_canonicalised_before_decode(bl_demo: DemoChain) -> None:
    """A structured message with pretty-printed data still carries the same signed bytes."""
    d = _first(bl_demo, "batch.processed")
    msg = to_structured(d)
    pretty = json.dumps(json.loads(msg.value), indent=4).encode()
    env = unwrap(msg.headers, pretty)
    assert env.event_bytes == d.signed


def test_subject_of_each_kind_of_event() -> None:
    key = generate_key()
    base = {"spec": "batteryledger/1", "facility_id": "ref-1", "time": "2025-01-01T00:00:00Z"}
    cases = [
        ({"kind": "batch.extracted", "outputs": [{"batch_id": "B1", "material": "ore", "kg": "1"}]}, "B1"),
        ({"kind": "batch.shipped", "batch_id": "B2", "kg": "1", "to_facility_id": "x"}, "B2"),
        ({"kind": "batch.received", "batch_id": "B3", "kg": "1", "from_facility_id": "x"}, "B3"),
        (
            {
                "kind": "supplier.certified",
                "batch_ids": ["B4", "B5"],
                "statement": "not_prohibited_foreign_entity",
            },
            "B4",
        ),
        ({"kind": "correction", "corrects": "c" * 64, "reason": "other", "explanation": "x"}, "c" * 64),
        (
            {
                "kind": "facility.attested",
                "subject_facility_id": "plant-9",
                "attestation": {"feoc": False, "as_of": "2025-01-01T00:00:00Z"},
            },
            "plant-9",
        ),
    ]
    for fields, subject in cases:
        obj = {**base, **fields}
        assert subject_of(parse_event(obj)) == subject
        d = decode(sign_object(obj, key)[0])
        assert dict(to_binary(d).headers)["ce_subject"] == subject.encode()
