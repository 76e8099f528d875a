"""CloudEvents 1.0 mapping of signed events onto Kafka messages (Kafka protocol binding).

Binary mode: the signed event bytes are the message value; `ce_id` (event id), `ce_source`
(`/facilities/<id>`), `ce_type` (`org.batteryledger.<kind>`), `ce_time`, `ce_subject` (the batch) and
`ce_specversion` are headers, `content-type` is `application/json`, and the key is the facility id.
Structured mode: one `application/cloudevents+json` object whose `data` is the signed event.

The `cloudevents` SDK builds structured mode. Binary headers are built here (the SDK validates and
copies every attribute, as dear as signing), and reading either mode back is a few dict lookups (the
SDK would re-serialise `data`); tests hold both equal to the SDK (`sdk_binary`, `from_binary`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from schemas.canonical import canonicalize
from schemas.events import Event, Kind
from schemas.reasons import EventError, Reason
from schemas.signing import DecodedEvent, loads_strict

TYPE_PREFIX = "org.batteryledger."
SOURCE_PREFIX = "/facilities/"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
_FORMAT = JSONFormat()


def ce_type(kind: Kind | str) -> str:
    return TYPE_PREFIX + str(kind)


def ce_source(facility_id: str) -> str:
    return SOURCE_PREFIX + facility_id


def subject_of(event: Event) -> str:
    """The batch an event is about: its first output, the shipped batch, or the registry subject."""
    outputs = getattr(event, "outputs", None)
    if outputs:
        return str(outputs[0].batch_id)
    for attr in ("batch_id", "subject_facility_id", "corrects"):
        value = getattr(event, attr, None)
        if isinstance(value, str):
            return value
    batch_ids = getattr(event, "batch_ids", None)
    if batch_ids:
        return str(batch_ids[0])
    return event.facility_id


def _attributes(decoded: DecodedEvent) -> dict[str, Any]:
    ev = decoded.event
    return {
        "id": decoded.event_id,
        "source": ce_source(ev.facility_id),
        "type": ce_type(ev.kind),
        "specversion": "1.0",
        "time": ev.time,
        "subject": subject_of(ev),
        "datacontenttype": "application/json",
    }


@dataclass(frozen=True, slots=True)
class WireMessage:
    key: bytes
    headers: list[tuple[str, bytes]]
    value: bytes


def to_binary(decoded: DecodedEvent) -> WireMessage:
    """Binary mode: the signed bytes as value, the attributes as `ce_` headers, the facility as key."""
    return binary_message(decoded.event_id, decoded.event, decoded.signed)


def binary_message(event_id: str, event: Event, signed: bytes) -> WireMessage:
    """`to_binary` from an event's parts (a signer has them without decoding its own output).

    Built here rather than by the SDK, which validates and copies every attribute (as dear as signing):
    the same headers in the same order as the SDK's binary binding (`sdk_binary`), which tests hold
    equal to this on every event kind."""
    t = event.time.isoformat()
    if t.endswith("+00:00"):
        t = t[:-6] + "Z"
    fid = event.facility_id
    return WireMessage(
        fid.encode(),
        [
            ("ce_id", event_id.encode()),
            ("ce_source", ce_source(fid).encode()),
            ("ce_type", ce_type(event.kind).encode()),
            ("ce_specversion", b"1.0"),
            ("ce_time", t.encode()),
            ("ce_subject", subject_of(event).encode()),
            ("content-type", b"application/json"),
        ],
        signed,
    )


def sdk_binary(decoded: DecodedEvent) -> WireMessage:
    """The CloudEvents SDK's binary binding of an event: the reference `binary_message` is held to."""
    msg = ce_kafka.to_binary(CloudEvent(_attributes(decoded), decoded.signed), _FORMAT)
    return WireMessage(decoded.facility_id.encode(), list(msg.headers.items()), msg.value)


def to_structured(decoded: DecodedEvent) -> WireMessage:
    data = json.loads(decoded.signed)
    msg = ce_kafka.to_structured(CloudEvent(_attributes(decoded), data), _FORMAT)
    headers = dict(msg.headers)
    headers["content-type"] = STRUCTURED_CONTENT_TYPE.encode()
    return WireMessage(decoded.facility_id.encode(), list(headers.items()), msg.value)


@dataclass(frozen=True, slots=True)
class Envelope:
    """What arrived: the CloudEvents attributes (as strings) and the signed event bytes."""

    attributes: dict[str, str]
    event_bytes: bytes
    mode: str  # "binary" | "structured"


_BYTES = (bytes, bytearray)  # a tuple: isinstance with `bytes | bytearray` builds the union each call


def unwrap(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None, value: bytes) -> Envelope:
    """Split a Kafka message into CloudEvents attributes and event bytes. Raises EventError."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    # One pass over the headers (the verify hot path): every value must be UTF-8, names are
    # case-insensitive, and a repeated name keeps its last value.
    content_type = ""
    ce: dict[str, str] = {}
    try:
        for name, raw in items:
            text = raw.decode("utf-8") if isinstance(raw, _BYTES) else str(raw)
            lname = name.lower()
            if lname.startswith("ce_"):
                ce[lname[3:]] = text
            elif lname == "content-type":
                content_type = text
    except UnicodeDecodeError:
        raise EventError(Reason.HEADER_MISMATCH, "a header is not UTF-8") from None
    if content_type.startswith(STRUCTURED_CONTENT_TYPE):
        try:
            obj = loads_strict(value)
        except EventError as exc:
            raise EventError(Reason.MALFORMED, f"structured CloudEvent: {exc.detail}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("data"), dict):
            raise EventError(Reason.MALFORMED, "structured CloudEvent needs an object with a `data` object")
        data = obj.pop("data")
        attrs: dict[str, str] = {}
        for k, v in obj.items():
            if k == "data_base64":
                continue
            if not isinstance(v, str | int | bool) or v is None:
                raise EventError(
                    Reason.MALFORMED,
                    f"structured CloudEvent attribute {k!r} must be a string, not {type(v).__name__}",
                )
            attrs[k] = str(v)
        try:
            event_bytes = canonicalize(data)
        except (ValueError, RecursionError) as exc:
            raise EventError(Reason.MALFORMED, f"data is not canonicalisable JSON: {exc}") from None
        return Envelope(attrs, event_bytes, "structured")
    attrs = ce
    if not attrs:
        raise EventError(
            Reason.MISSING_HEADERS,
            "no CloudEvents headers (ce_id, ce_source, ce_type, ce_specversion); send binary or structured mode",
        )
    if content_type:
        attrs["datacontenttype"] = content_type
    return Envelope(attrs, value, "binary")


def check_attributes(envelope: Envelope, decoded: DecodedEvent) -> None:
    """The CloudEvents attributes must agree with the signed event (they are not signed themselves)."""
    attrs = envelope.attributes
    for required in ("id", "source", "type", "specversion"):
        if required not in attrs:
            raise EventError(Reason.MISSING_HEADERS, f"CloudEvents attribute `{required}` is missing")
    if attrs["specversion"] != "1.0":
        raise EventError(
            Reason.HEADER_MISMATCH, f"specversion {attrs['specversion']!r}; only 1.0 is supported"
        )
    expected = {
        "id": decoded.event_id,
        "source": ce_source(decoded.facility_id),
        "type": ce_type(decoded.kind),
    }
    for name, want in expected.items():
        if attrs[name] != want:
            raise EventError(Reason.HEADER_MISMATCH, f"ce_{name} is {attrs[name]!r}, the event says {want!r}")
    if "subject" in attrs and attrs["subject"] != subject_of(decoded.event):
        raise EventError(Reason.HEADER_MISMATCH, f"ce_subject {attrs['subject']!r} is not the event's batch")
    if "time" in attrs:
        try:
            t = datetime.fromisoformat(attrs["time"].replace("Z", "+00:00"))
        except ValueError:
            raise EventError(Reason.HEADER_MISMATCH, f"ce_time {attrs['time']!r} is not RFC 3339") from None
        if t.tzinfo is None or t != decoded.event.time:
            raise EventError(Reason.HEADER_MISMATCH, f"ce_time {attrs['time']!r} differs from the event time")
