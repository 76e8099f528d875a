"""The way into the ledger from a message bus: the verify stage and the sequence stage, as plain code.

The Faust agents in ``streams/agents.py`` only decode, call these functions and route what they return,
so everything here is testable without a broker and could move to another consumer unchanged. Nothing
here imports Kafka or Faust: a message is ``(headers, value)`` plus its position.

Verify stage (:func:`verify_message`, stateless, runs on every worker in parallel):

1. size limit before any parsing (a structured envelope may add :data:`ENVELOPE_SLACK_BYTES`);
2. CloudEvents unwrap, binary or structured mode (``schemas.cloudevents.unwrap``);
3. decode: JSON object, detached signature, known kind, schema, canonical bytes, event id;
4. the CloudEvents attributes must agree with the signed event (they are not signed themselves);
5. identity against this worker's copy of the registry: key registered, valid at the event's time, not
   revoked, Ed25519 signature over the canonical bytes, role allows the kind.

The worker's registry copy may be stale (a facility registered a moment ago by the sequencer in another
process). A stale copy can only *lack* facilities and keys: registrations, revocations and key
retirements only ever add facts, and roles, keys and validity starts never change once written. So a
stale copy never rejects what the authoritative one accepts, except for an unknown facility or key; such
events pass on with ``signature_checked=False`` and the sequencer, which holds the authoritative
registry, checks them in full.

Sequence stage (:class:`Sequencer`, single writer): turns records of the verified topic back into
:class:`~ledger.core.Incoming`, drops what the store has already decided (at-least-once delivery upstream
means re-deliveries), and appends a batch in ONE store transaction together with two tracking records:
the next offset of the verified topic, and per source partition of the raw topic the highest source
offset seen (which is how re-deliveries of the verify stage are recognised without a query per event).

Verify-stage rejections also travel through the verified topic (as records carrying a reason header and
the original bytes) instead of being written by a second agent: the store keeps exactly one writer, and
the rejection is recorded exactly once, in the same transaction as the offset that consumed it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from ledger.core import AppendResult, Incoming, Ledger
from schemas.cloudevents import check_attributes, unwrap
from schemas.events import MAX_EVENT_BYTES
from schemas.reasons import EventError, Reason
from schemas.signing import DecodedEvent, decode

__all__ = [
    "ENVELOPE_SLACK_BYTES",
    "H_DETAIL",
    "H_EVENT",
    "H_EVENT_ID",
    "H_REASON",
    "H_SIG_CHECKED",
    "H_SOURCE",
    "H_STAGE",
    "MAX_MESSAGE_BYTES",
    "Headers",
    "KeyLookup",
    "Position",
    "SequencedBatch",
    "Sequencer",
    "VerifiedRecord",
    "from_verified",
    "parse_source",
    "rejection_headers",
    "source_of",
    "to_verified",
    "verify_message",
]

#: Room a structured-mode CloudEvents envelope may take around an event of MAX_EVENT_BYTES (attributes
#: are a few hundred bytes; 4 KiB is generous and still bounds what is parsed before the event itself).
ENVELOPE_SLACK_BYTES = 4096
#: Largest message value the verify stage parses at all.
MAX_MESSAGE_BYTES = MAX_EVENT_BYTES + ENVELOPE_SLACK_BYTES

# Headers of the internal verified topic and of the rejected topic (prefix ``bl_`` like CloudEvents' ``ce_``).
H_SIG_CHECKED = "bl_sig_checked"  # "1": the verify stage checked the signature; "0": the sequencer must
H_SOURCE = "bl_source"  # "<topic>/<partition>/<offset>" of the original message on the raw topic
H_REASON = "bl_reason"  # stable reason code (schemas.reasons.Reason) of a rejection
H_DETAIL = "bl_detail"  # human detail of a rejection (may change between versions)
H_EVENT_ID = "bl_event_id"  # event id when the event could be decoded
H_STAGE = "bl_stage"  # "verify" | "sequence": which stage rejected it
H_EVENT = "bl_event"  # canonical event bytes of a verify-stage rejection whose original was not them

#: Longest detail put in a header (the store keeps up to 2000 characters).
_MAX_DETAIL_HEADER = 1000

Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None


class KeyLookup(Protocol):
    """What the verify stage needs of a registry (``ledger.registry.Registry`` is one)."""

    def public_key(self, facility_id: str, kid: str) -> object | None: ...

    def authorize(self, decoded: DecodedEvent, *, check_signature: bool = True) -> None: ...


# ------------------------------------------------------------------------------------ positions


@dataclass(frozen=True, slots=True)
class Position:
    topic: str
    partition: int
    offset: int


def source_of(topic: str, partition: int, offset: int) -> str:
    """The `source` string under which the ledger records (and finds) a Kafka-originated rejection."""
    return f"{topic}/{partition}/{offset}"


def parse_source(source: str) -> Position | None:
    """Inverse of :func:`source_of`; None for sources that are not Kafka positions (e.g. "api")."""
    topic, sep, rest = source.rpartition("/")
    if not sep:
        return None
    topic2, sep2, part = topic.rpartition("/")
    if not sep2 or not topic2:
        return None
    try:
        partition, offset = int(part), int(rest)
    except ValueError:
        return None
    if partition < 0 or offset < 0:
        return None
    return Position(topic2, partition, offset)


# ------------------------------------------------------------------------------------ verify stage


def verify_message(
    headers: Headers,
    value: bytes | None,
    registry: KeyLookup,
    *,
    source: str,
) -> Incoming:
    """Check one raw message. Never raises: a failure is an Incoming with `error` set and the original bytes."""
    raw = b"" if value is None else bytes(value)
    decoded: DecodedEvent | None = None
    try:
        # 1. size before parsing: never parse an arbitrarily large body
        if len(raw) > MAX_MESSAGE_BYTES:
            raise EventError(
                Reason.OVERSIZED,
                f"message is {len(raw)} bytes; an event may be at most {MAX_EVENT_BYTES} bytes",
            )
        # 2. CloudEvents envelope (binary: headers + event bytes; structured: one JSON object)
        envelope = unwrap(headers, raw)
        # 3. the signed event itself
        decoded = decode(envelope.event_bytes)
        # 4. unsigned attributes must say what the signed event says
        check_attributes(envelope, decoded)
        # 5. identity, when this worker knows the facility and key; else the sequencer decides
        known = registry.public_key(decoded.facility_id, decoded.key_id) is not None
        if known:
            registry.authorize(decoded, check_signature=True)
        return Incoming(raw=raw, decoded=decoded, signature_checked=known, source=source)
    except EventError as exc:
        return Incoming(raw=raw, decoded=decoded, source=source, error=exc)
    except Exception as exc:  # a bug must cost one event, never the agent
        err = EventError(Reason.INTERNAL_ERROR, f"verify stage: {type(exc).__name__}: {exc}")
        return Incoming(raw=raw, decoded=decoded, source=source, error=err)


def _h(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def rejection_headers(
    reason: str, detail: str | None, *, source: str, event_id: str | None, stage: str
) -> list[tuple[str, bytes]]:
    """Headers of a record on the rejected topic (its value is the original bytes)."""
    hdrs = [
        (H_REASON, _h(reason)),
        (H_DETAIL, _h((detail or "")[:_MAX_DETAIL_HEADER])),
        (H_SOURCE, _h(source)),
        (H_STAGE, _h(stage)),
    ]
    if event_id:
        hdrs.append((H_EVENT_ID, _h(event_id)))
    return hdrs


def to_verified(incoming: Incoming) -> tuple[list[tuple[str, bytes]], bytes]:
    """The (headers, value) of the verified-topic record that carries a verify-stage outcome.

    Accepted: value = canonical signed bytes. Rejected: value = the original bytes, plus reason headers.
    """
    if incoming.error is None and incoming.decoded is not None:
        hdrs = [
            (H_SIG_CHECKED, b"1" if incoming.signature_checked else b"0"),
            (H_SOURCE, _h(incoming.source)),
        ]
        return hdrs, incoming.decoded.signed
    err = incoming.error or EventError(Reason.INTERNAL_ERROR, "neither decoded nor rejected")
    event_id = incoming.decoded.event_id if incoming.decoded is not None else None
    hdrs = rejection_headers(
        err.reason.value, err.detail, source=incoming.source, event_id=event_id, stage="verify"
    )
    if incoming.decoded is not None and incoming.decoded.signed != incoming.raw:
        # the canonical event bytes let the sequencer record the event id with the rejection
        hdrs.append((H_EVENT, incoming.decoded.signed))
    return hdrs, incoming.raw


def _header_map(headers: Headers) -> dict[str, bytes]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    return {str(k): bytes(v) if v is not None else b"" for k, v in items}


def from_verified(
    headers: Headers,
    value: bytes | None,
    *,
    fallback_source: str,
    known: Mapping[str, DecodedEvent] | None = None,
) -> Incoming:
    """Rebuild the Incoming a verified-topic record carries. Never raises.

    `known` maps sources to events this process decoded in its own verify stage; one whose canonical
    bytes are exactly the record's value is reused instead of being parsed a second time.
    """
    raw = b"" if value is None else bytes(value)
    try:
        hdrs = _header_map(headers)
        source = hdrs.get(H_SOURCE, b"").decode("utf-8", "replace") or fallback_source
        reason = hdrs.get(H_REASON)
        if reason is not None:
            code = reason.decode("utf-8", "replace")
            try:
                rsn = Reason(code)
            except ValueError:
                rsn = Reason.INTERNAL_ERROR
            err = EventError(rsn, hdrs.get(H_DETAIL, b"").decode("utf-8", "replace") or code)
            decoded: DecodedEvent | None = None
            with contextlib.suppress(EventError):
                decoded = decode(hdrs.get(H_EVENT, raw))
            return Incoming(raw=raw, decoded=decoded, source=source, error=err)
        checked = hdrs.get(H_SIG_CHECKED) == b"1"
        mine = known.get(source) if known is not None else None
        if mine is not None and mine.signed == raw:
            return Incoming(raw=raw, decoded=mine, signature_checked=checked, source=source)
        try:
            return Incoming(raw=raw, decoded=decode(raw), signature_checked=checked, source=source)
        except EventError as exc:
            return Incoming(raw=raw, source=source, error=exc)
    except Exception as exc:
        err = EventError(Reason.INTERNAL_ERROR, f"sequence stage: {type(exc).__name__}: {exc}")
        return Incoming(raw=raw, source=fallback_source, error=err)


# ------------------------------------------------------------------------------------ sequence stage


@dataclass(frozen=True, slots=True)
class VerifiedRecord:
    """One record of the verified topic as the agent received it."""

    topic: str
    partition: int
    offset: int
    headers: Headers
    value: bytes | None


@dataclass(slots=True)
class SequencedBatch:
    """What one `Sequencer.process` call did, for the agent to route."""

    results: list[tuple[Incoming, AppendResult]] = field(default_factory=list)
    skipped_offsets: int = 0  # below the store's tracking record (a restart re-read them)
    redeliveries: int = 0  # already decided by the store (the verify stage sent them twice)

    def rejected(self) -> list[tuple[Incoming, AppendResult]]:
        """Rejections decided by the sequencer (verify-stage ones were routed by the verify agent)."""
        return [(it, r) for it, r in self.results if r.status == "rejected" and not _verify_stage(it)]


def _verify_stage(it: Incoming) -> bool:
    return it.error is not None


class Sequencer:
    """The single writer's logic: idempotent, offset-tracked batched appends. No Kafka in here."""

    def __init__(self, ledger: Ledger, consumer: str) -> None:
        self.ledger = ledger
        self.consumer = consumer
        self.sources_consumer = consumer + "/sources"
        self.reload()

    def reload(self) -> None:
        """Re-read the tracking records (after (re)assignment, or an append that failed)."""
        self.next_offsets: dict[tuple[str, int], int] = self.ledger.stored_offsets(self.consumer)
        self.source_marks: dict[tuple[str, int], int] = self.ledger.stored_offsets(self.sources_consumer)

    def process(
        self, records: Sequence[VerifiedRecord], *, known: Mapping[str, DecodedEvent] | None = None
    ) -> SequencedBatch:
        """Append a batch in one transaction with its offsets. Raises only if the store itself fails.

        `known`: see :func:`from_verified` (events this process already decoded in its verify stage).
        """
        out = SequencedBatch()
        fresh: list[tuple[VerifiedRecord, Incoming]] = []
        offsets: dict[tuple[str, str, int], int] = {}
        marks: dict[tuple[str, int], int] = {}
        for rec in records:
            tp = (rec.topic, rec.partition)
            if rec.offset < self.next_offsets.get(tp, 0):
                out.skipped_offsets += 1
                continue
            key = (self.consumer, rec.topic, rec.partition)
            offsets[key] = max(offsets.get(key, 0), rec.offset + 1)
            it = from_verified(
                rec.headers,
                rec.value,
                fallback_source=source_of(rec.topic, rec.partition, rec.offset),
                known=known,
            )
            fresh.append((rec, it))
        if not offsets:
            return out
        # re-deliveries: a source position at or below what the store has already seen
        maybe_seen: list[Incoming] = []
        for _, it in fresh:
            pos = parse_source(it.source)
            if pos is None:
                continue
            sk = (pos.topic, pos.partition)
            if pos.offset < self.source_marks.get(sk, 0) or pos.offset < marks.get(sk, 0):
                maybe_seen.append(it)
            marks[sk] = max(marks.get(sk, 0), pos.offset + 1)
        seen = self._already_decided(maybe_seen)
        todo: list[Incoming] = []
        seen_in_batch: set[str] = set()
        for _, it in fresh:
            if id(it) in seen or it.source in seen_in_batch:
                out.redeliveries += 1
                continue
            if parse_source(it.source) is not None:
                seen_in_batch.add(it.source)
            todo.append(it)
        for (topic, partition), mark in marks.items():
            if mark > self.source_marks.get((topic, partition), 0):
                offsets[(self.sources_consumer, topic, partition)] = mark
        results = self.ledger.append(todo, offsets=offsets, park=True)
        # committed: from here on nothing may fail before the tracking records move on
        for (consumer, topic, partition), nxt in offsets.items():
            if consumer == self.consumer:
                self.next_offsets[(topic, partition)] = nxt
            else:
                self.source_marks[(topic, partition)] = nxt
        # one result per item in order, then one per parked event the batch released (children whose
        # parents just arrived): those are paired with what the store kept of them
        out.results = list(zip(todo, results[: len(todo)], strict=True))
        released = results[len(todo) :]
        if released:
            out.results.extend(self._released(released))
        return out

    @staticmethod
    def _released(results: Sequence[AppendResult]) -> list[tuple[Incoming, AppendResult]]:
        """Pair each released (formerly parked) result with its own bytes and source (the store's copy)."""
        return [(Incoming(raw=r.raw or b"", source=r.source or "parked"), r) for r in results]

    def record_failure(self, rec: VerifiedRecord, exc: BaseException) -> SequencedBatch:
        """Record one record that broke the append as an internal_error rejection, with its offset."""
        fallback = source_of(rec.topic, rec.partition, rec.offset)
        source = from_verified(rec.headers, None, fallback_source=fallback).source
        it = Incoming(
            raw=b"" if rec.value is None else bytes(rec.value),
            source=source,
            error=EventError(Reason.INTERNAL_ERROR, f"sequence stage: {type(exc).__name__}: {exc}"[:2000]),
        )
        nxt = max(self.next_offsets.get((rec.topic, rec.partition), 0), rec.offset + 1)
        [res] = self.ledger.append([it], offsets={(self.consumer, rec.topic, rec.partition): nxt})
        self.next_offsets[(rec.topic, rec.partition)] = nxt
        return SequencedBatch(results=[(it, res)])

    def expire(self, max_age: timedelta) -> list[tuple[bytes, str, AppendResult]]:
        """Reject parked events older than `max_age`; returns (original bytes, source, result) of each."""
        return [(r.raw or b"", r.source or "", r) for r in self.ledger.expire_parked(max_age)]

    def _already_decided(self, items: Sequence[Incoming]) -> set[int]:
        """ids (object ids) of items whose event id or source the store already knows."""
        if not items:
            return set()
        known = self.ledger.decisions(
            event_ids=[it.decoded.event_id for it in items if it.decoded is not None],
            sources=[it.source for it in items],
        )
        return {
            id(it)
            for it in items
            if it.source in known or (it.decoded is not None and it.decoded.event_id in known)
        }
