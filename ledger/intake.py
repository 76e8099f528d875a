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

The verified hop (:func:`pack_verified` / :func:`unpack_verified`): one verified-topic record carries a
batch of verify-stage outcomes, authenticated once with HMAC-SHA256 under the worker key
(:class:`HopKey`); the sequencer appends only what a valid MAC vouches for.

Sequence stage (:class:`Sequencer`, single writer): turns records of the verified topic back into
:class:`~ledger.core.Incoming`, drops what the store has already decided (at-least-once delivery upstream
means re-deliveries), and appends a batch in ONE store transaction together with two tracking records:
the next offset of the verified topic, and per source partition of the raw topic the highest source
offset seen (which is how re-deliveries of the verify stage are recognised without a query per event).

Verify-stage rejections also travel through the verified topic (items carrying a reason and the
original bytes) instead of being written by a second agent: the store keeps exactly one writer, and
the rejection is recorded exactly once, in the same transaction as the offset that consumed it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from ledger.core import AppendResult, Incoming, Ledger, RecordedRejection, paused_gc
from schemas.cloudevents import check_attributes, unwrap
from schemas.events import MAX_EVENT_BYTES
from schemas.reasons import EventError, Reason
from schemas.signing import DecodedEvent, decode
from schemas.trusted import event_from_verified_json

__all__ = [
    "ENVELOPE_SLACK_BYTES",
    "HOP_MAX_BYTES",
    "H_DETAIL",
    "H_EVENT_ID",
    "H_HOP",
    "H_HOP_KID",
    "H_HOP_MAC",
    "H_REASON",
    "H_SOURCE",
    "H_STAGE",
    "MAX_MESSAGE_BYTES",
    "Headers",
    "HopKey",
    "HopKeyError",
    "KeyLookup",
    "Position",
    "SequencedBatch",
    "Sequencer",
    "VerifiedRecord",
    "fit_for_forwarding",
    "pack_verified",
    "parse_source",
    "rejection_headers",
    "source_of",
    "unpack_verified",
    "verify_message",
]

#: Room a structured-mode CloudEvents envelope may take around an event of MAX_EVENT_BYTES (attributes
#: are a few hundred bytes; 4 KiB is generous and still bounds what is parsed before the event itself).
ENVELOPE_SLACK_BYTES = 4096
#: Largest message value the verify stage parses at all.
MAX_MESSAGE_BYTES = MAX_EVENT_BYTES + ENVELOPE_SLACK_BYTES

# Headers of the internal verified topic and of the rejected topic (prefix ``bl_`` like CloudEvents' ``ce_``).
H_SOURCE = "bl_source"  # "<topic>/<partition>/<offset>" of the original message on the raw topic
H_REASON = "bl_reason"  # stable reason code (schemas.reasons.Reason) of a rejection
H_DETAIL = "bl_detail"  # human detail of a rejection (may change between versions)
H_EVENT_ID = "bl_event_id"  # event id when the event could be decoded
H_STAGE = "bl_stage"  # "verify" | "sequence": which stage rejected it

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


# ------------------------------------------------------------------------------------ the verified hop
#
# A record of the verified topic carries a BATCH of verify-stage outcomes (accepted events and
# verify-stage rejections, in the order of their raw messages), authenticated once per record with
# HMAC-SHA256 under the worker key (see HopKey). The sequencer appends only what a valid MAC vouches
# for; any other record there (forged, from an old version, another ledger's key) is recorded as an
# `unauthenticated` rejection under the verified topic's position, its bytes kept, and never appended.
#
# Value layout (all lengths big-endian u32):  b"BLH1" | count | count x item
#   item = flags (u8: 1 = rejected, 2 = signature checked) | len(source) | len(body) | len(meta)
#          | len(event) | source | body | meta | event
#   body  = canonical signed bytes (accepted) or the original message bytes (rejected)
#   meta  = JSON {"reason", "detail", "event_id"} of a rejection; empty when accepted
#   event = canonical event bytes of a rejection that could be decoded (so the event id is kept)
# Headers: bl_hop = "1" (layout version), bl_hop_kid = key id, bl_hop_mac = hex HMAC-SHA256(key,
# topic name || 0x00 || value): binding the topic name keeps a record from being replayed into another
# ledger's topic that shares the key. An equal record replayed on the same topic changes nothing
# (every item is deduplicated by its raw source position and event id).

H_HOP = "bl_hop"
H_HOP_KID = "bl_hop_kid"
H_HOP_MAC = "bl_hop_mac"
HOP_VERSION = b"1"
#: Largest verified-record value the verify stage writes (the topic takes 1 MiB per record; headers
#: and the record batch need a little room, and Faust's producer refuses above its request size).
HOP_MAX_BYTES = 900 * 1024
#: Longest prefix of a rejected message kept when the whole message cannot be forwarded (only a raw
#: message of more than HOP_MAX_BYTES, i.e. between 0.9 and 1 MiB, the raw topic's limit): its full
#: length and SHA-256 go into the detail.
KEEP_OVERSIZED_BYTES = HOP_MAX_BYTES - 16 * 1024
_MAGIC = b"BLH1"
_COUNT = struct.Struct(">I")
_ITEM = struct.Struct(">BIIII")
_F_REJECTED = 1
_F_CHECKED = 2
#: Domain separation of a worker key derived from the operator key.
_DERIVE_LABEL = b"batteryledger/worker-hop-key/v1"


class HopKeyError(Exception):
    """No usable worker key: one line, actionable."""

    def diagnostics(self) -> str:
        return str(self)


@dataclass(frozen=True, slots=True)
class HopKey:
    """The worker key: a 32-byte HMAC-SHA256 secret shared by the ledger's workers only.

    A file holds it as 64 hex characters (``batteryledger keys worker FILE`` writes one, mode 0600);
    without a file a worker derives it from the operator key it is given, so every worker of one ledger
    agrees without further provisioning.
    """

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < 32:
            raise HopKeyError("a worker key must be at least 32 bytes")

    @property
    def kid(self) -> str:
        return hashlib.sha256(b"kid" + self.secret).hexdigest()[:16]

    def mac(self, topic: str, value: bytes) -> bytes:
        return hmac.new(self.secret, topic.encode("utf-8") + b"\x00" + value, hashlib.sha256).digest()

    @classmethod
    def generate(cls) -> HopKey:
        return cls(secrets.token_bytes(32))

    @classmethod
    def derived(cls, operator_key: Ed25519PrivateKey) -> HopKey:
        raw = operator_key.private_bytes_raw()
        return cls(hmac.new(raw, _DERIVE_LABEL, hashlib.sha256).digest())

    @classmethod
    def load(cls, path: Path) -> HopKey:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise HopKeyError(
                f"cannot read the worker key {path}: {exc.strerror}; make one with "
                "`batteryledger keys worker FILE`"
            ) from None
        try:
            secret = bytes.fromhex(text)
        except ValueError:
            secret = b""
        if len(secret) < 32:
            raise HopKeyError(
                f"{path} is not a worker key (64 hex characters); make one with `batteryledger keys worker FILE`"
            )
        return cls(secret)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise HopKeyError(f"{path} exists; refusing to overwrite a worker key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.secret.hex() + "\n")


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


def fit_for_forwarding(incoming: Incoming, limit: int = HOP_MAX_BYTES) -> Incoming:
    """An outcome whose message is too large to forward becomes an `oversized` rejection keeping a prefix."""
    if len(incoming.raw) + 2048 <= limit:
        return incoming
    digest = hashlib.sha256(incoming.raw).hexdigest()
    keep = min(KEEP_OVERSIZED_BYTES, limit - 2048)
    err = EventError(
        Reason.OVERSIZED,
        f"message is {len(incoming.raw)} bytes (SHA-256 {digest}); too large to forward, the first "
        f"{keep} bytes are kept; an event may be at most {MAX_EVENT_BYTES} bytes",
    )
    return Incoming(raw=incoming.raw[:keep], source=incoming.source, error=err)


def _encode_item(it: Incoming) -> bytes:
    src = _h(it.source)
    if it.error is None and it.decoded is not None:
        # what the sequencer needs so it need not decode again: the unsigned canonical bytes (the event
        # id is their SHA-256, the model is validated straight from them) and the detached signature
        flags = _F_CHECKED if it.signature_checked else 0
        d = it.decoded
        body, event = d.signed, d.unsigned
        meta = d.key_id.encode("utf-8") + b"\n" + d.signature
    else:
        err = it.error or EventError(Reason.INTERNAL_ERROR, "neither decoded nor rejected")
        flags = _F_REJECTED
        body = it.raw
        meta = json.dumps(
            {
                "reason": err.reason.value,
                "detail": err.detail[:2000],
                "event_id": it.decoded.event_id if it.decoded is not None else None,
            }
        ).encode()
        event = it.decoded.signed if it.decoded is not None and it.decoded.signed != it.raw else b""
    return _ITEM.pack(flags, len(src), len(body), len(meta), len(event)) + src + body + meta + event


def pack_verified(
    items: Sequence[Incoming], key: HopKey, topic: str, *, limit: int = HOP_MAX_BYTES
) -> list[tuple[list[tuple[str, bytes]], bytes]]:
    """The verified-topic records ((headers, value), in order) that carry `items`, each under `limit`."""
    out: list[tuple[list[tuple[str, bytes]], bytes]] = []
    parts: list[bytes] = []
    size = len(_MAGIC) + _COUNT.size

    def flush() -> None:
        nonlocal parts, size
        if parts:
            value = _MAGIC + _COUNT.pack(len(parts)) + b"".join(parts)
            mac = key.mac(topic, value).hex().encode()
            out.append(([(H_HOP, HOP_VERSION), (H_HOP_KID, key.kid.encode()), (H_HOP_MAC, mac)], value))
        parts, size = [], len(_MAGIC) + _COUNT.size

    for it in items:
        enc = _encode_item(fit_for_forwarding(it, limit))
        if parts and size + len(enc) > limit:
            flush()
        parts.append(enc)
        size += len(enc)
    flush()
    return out


def _header_map(headers: Headers) -> dict[str, bytes]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    return {str(k): bytes(v) if v is not None else b"" for k, v in items}


def unpack_verified(
    headers: Headers,
    value: bytes | None,
    key: HopKey,
    *,
    topic: str,
    position: str,
    known: Mapping[str, DecodedEvent] | None = None,
) -> list[Incoming]:
    """The outcomes one verified-topic record carries, if its MAC holds. Never raises.

    A record that is not authenticated is one `unauthenticated` rejection under `position` (the
    verified topic's position), its value kept as the original bytes: nothing in it is appended.
    `known` maps sources to events this process decoded in its own verify stage; one whose canonical
    bytes are exactly the item's are reused instead of being parsed a second time.
    """
    raw = b"" if value is None else bytes(value)
    try:
        hdrs = _header_map(headers)
        mac = hdrs.get(H_HOP_MAC, b"")
        problem = None
        if hdrs.get(H_HOP) != HOP_VERSION:
            problem = "no bl_hop header of layout version 1: not written by a verify stage of this version"
        else:
            try:
                given = bytes.fromhex(mac.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                given = b""
            if not hmac.compare_digest(given, key.mac(topic, raw)):
                kid = hdrs.get(H_HOP_KID, b"").decode("utf-8", "replace")
                problem = (
                    f"bl_hop_mac does not verify under the worker key {key.kid} (record names key {kid!r})"
                )
        if problem is not None:
            err = EventError(Reason.UNAUTHENTICATED, f"verified-topic record refused: {problem}")
            return [Incoming(raw=raw, source=position, error=err)]
        return _items(raw, known)
    except Exception as exc:
        err = EventError(Reason.INTERNAL_ERROR, f"sequence stage: {type(exc).__name__}: {exc}")
        return [Incoming(raw=raw, source=position, error=err)]


def _carried(signed: bytes, meta: bytes, unsigned: bytes) -> DecodedEvent:
    """The decoded event the verify stage vouched for, rebuilt without validating it twice: the model
    is built from the unsigned canonical bytes the MAC vouches for (schemas.trusted: each field
    converted as validation converts it, nothing re-checked), the id is their SHA-256."""
    kid, sep, signature = meta.partition(b"\n")
    if not sep or not unsigned:
        return decode(signed)
    try:
        event = event_from_verified_json(unsigned)
    except ValidationError:
        return decode(signed)  # cannot happen for what a verify stage accepted; decide it in full
    return DecodedEvent.of(bytes(unsigned), bytes(signed), kid.decode("utf-8"), bytes(signature), event)


def _items(value: bytes, known: Mapping[str, DecodedEvent] | None) -> list[Incoming]:
    if not value.startswith(_MAGIC):
        raise ValueError("not a verified batch")
    (count,) = _COUNT.unpack_from(value, len(_MAGIC))
    pos = len(_MAGIC) + _COUNT.size
    out: list[Incoming] = []
    for _ in range(count):
        flags, ls, lb, lm, le = _ITEM.unpack_from(value, pos)
        pos += _ITEM.size
        source = value[pos : pos + ls].decode("utf-8", "replace")
        pos += ls
        body = value[pos : pos + lb]
        pos += lb
        meta = value[pos : pos + lm]
        pos += lm
        event = value[pos : pos + le]
        pos += le
        if flags & _F_REJECTED:
            m = json.loads(meta)
            try:
                rsn = Reason(m.get("reason"))
            except ValueError:
                rsn = Reason.INTERNAL_ERROR
            err = EventError(rsn, str(m.get("detail") or rsn.value))
            decoded: DecodedEvent | None = None
            with contextlib.suppress(Exception):
                decoded = decode(event or body)
            out.append(Incoming(raw=body, decoded=decoded, source=source, error=err))
            continue
        checked = bool(flags & _F_CHECKED)
        mine = known.get(source) if known is not None else None
        if mine is not None and mine.signed == body:
            out.append(Incoming(raw=body, decoded=mine, signature_checked=checked, source=source))
            continue
        try:
            out.append(
                Incoming(
                    raw=body, decoded=_carried(body, meta, event), signature_checked=checked, source=source
                )
            )
        except EventError as exc:
            out.append(Incoming(raw=body, source=source, error=exc))
    if pos != len(value):
        raise ValueError(f"{len(value) - pos} trailing bytes in a verified batch")
    return out


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
    records: int = 0  # verified records covered, skipped ones included
    #: rejections the sequencer decided and the store recorded for events of skipped records: a worker
    #: that stopped after the commit and before publishing them gets them again here, to publish (the
    #: rejected topic is at-least-once)
    recorded_rejections: list[RecordedRejection] = field(default_factory=list)

    def add(self, other: SequencedBatch) -> None:
        """Add `other`'s results and counts to these."""
        self.results.extend(other.results)
        self.skipped_offsets += other.skipped_offsets
        self.redeliveries += other.redeliveries
        self.records += other.records
        self.recorded_rejections.extend(other.recorded_rejections)

    def rejected(self) -> list[tuple[Incoming, AppendResult]]:
        """Rejections decided by the sequencer (verify-stage ones were routed by the verify agent)."""
        return [(it, r) for it, r in self.results if r.status == "rejected" and not _verify_stage(it)]


def _verify_stage(it: Incoming) -> bool:
    """A rejection the verify agent already put on the rejected topic (not a forged verified record)."""
    err = it.error
    return (
        err is not None
        and err.reason != Reason.UNAUTHENTICATED
        and not err.detail.startswith("sequence stage:")
    )


#: Most events the sequencer appends in one store transaction when a batch of records carries more.
SEQUENCE_MAX_ITEMS = 2000


class Sequencer:
    """The single writer's logic: authenticated, idempotent, offset-tracked batched appends. No Kafka here."""

    def __init__(
        self, ledger: Ledger, consumer: str, hop_key: HopKey, *, max_items: int = SEQUENCE_MAX_ITEMS
    ) -> None:
        self.ledger = ledger
        self.consumer = consumer
        self.sources_consumer = consumer + "/sources"
        self.hop_key = hop_key
        self.max_items = max(1, max_items)
        self.reload()

    def reload(self) -> None:
        """Re-read the tracking records (after (re)assignment, or an append that failed)."""
        self.next_offsets: dict[tuple[str, int], int] = self.ledger.stored_offsets(self.consumer)
        self.source_marks: dict[tuple[str, int], int] = self.ledger.stored_offsets(self.sources_consumer)

    def expand(self, rec: VerifiedRecord, known: Mapping[str, DecodedEvent] | None = None) -> list[Incoming]:
        """The outcomes one record carries (one `unauthenticated` rejection if its MAC fails)."""
        return unpack_verified(
            rec.headers,
            rec.value,
            self.hop_key,
            topic=rec.topic,
            position=source_of(rec.topic, rec.partition, rec.offset),
            known=known,
        )

    def process(
        self, records: Sequence[VerifiedRecord], *, known: Mapping[str, DecodedEvent] | None = None
    ) -> SequencedBatch:
        """Append the records' events, at most `max_items` per store transaction, each transaction with
        the offsets of the records it completes. Raises only if the store itself fails.

        `known`: see :func:`unpack_verified` (events this process already decoded in its verify stage).
        """
        out = SequencedBatch()
        for part in self.process_groups(records, known=known):
            out.add(part)
        return out

    def process_groups(
        self, records: Sequence[VerifiedRecord], *, known: Mapping[str, DecodedEvent] | None = None
    ) -> Iterator[SequencedBatch]:
        """`process`, one part per store transaction, each yielded once it committed (its `records`
        says how many of `records` it covered, skipped ones included).

        A caller that routes each part as it comes holds one transaction's events, not the whole
        call's: a sequencer that takes a large backlog in one call (tens of thousands of events) kept
        every event's decoded form and result until the call ended, about 5 KiB each, and the heap
        (a high-water mark never given back) grew with the largest call. If a transaction raises, the
        parts before it stay committed and already yielded.
        """
        # another process may have appended (a facility registered with the CLI): each append reloads
        # the registry under the writer lock when the store's head moved (Ledger._follow_head)
        group: list[tuple[VerifiedRecord, list[Incoming]]] = []
        n = 0
        part = SequencedBatch()
        skipped: list[str] = []  # sources of the part's skipped records' events (one query per part)
        with paused_gc():  # the events of a group live until it is appended: see core.paused_gc
            for rec in records:
                if rec.offset < self.next_offsets.get((rec.topic, rec.partition), 0):
                    part.skipped_offsets += 1
                    part.records += 1
                    skipped += self._sequenced_sources(rec, known)
                    continue
                items = self.expand(rec, known)
                if group and n + len(items) > self.max_items:
                    self._append_group(group, part)
                    yield self._with_recorded(part, skipped)
                    group, n, part, skipped = [], 0, SequencedBatch(), []
                group.append((rec, items))
                part.records += 1
                n += len(items)
            if group:
                self._append_group(group, part)
            if part.records:
                yield self._with_recorded(part, skipped)

    def _sequenced_sources(self, rec: VerifiedRecord, known: Mapping[str, DecodedEvent] | None) -> list[str]:
        """Sources of what a record carried whose rejection, if any, is the sequencer's to publish: the
        same rule as :meth:`SequencedBatch.rejected` (the verify agent published its own)."""
        return [it.source for it in self.expand(rec, known) if not _verify_stage(it)]

    def _with_recorded(self, part: SequencedBatch, skipped: list[str]) -> SequencedBatch:
        """`part` with the rejections the store recorded for its skipped records' events (a record is
        skipped after a restart, when it was committed but its rejections maybe never published)."""
        if skipped:
            part.recorded_rejections = self.ledger.rejections_at(skipped)
        return part

    def _append_group(self, group: list[tuple[VerifiedRecord, list[Incoming]]], out: SequencedBatch) -> None:
        offsets: dict[tuple[str, str, int], int] = {}
        for rec, _ in group:
            key = (self.consumer, rec.topic, rec.partition)
            offsets[key] = max(offsets.get(key, 0), rec.offset + 1)
        self._append_items([it for _, items in group for it in items], offsets, out)

    def _append_items(
        self, fresh: list[Incoming], offsets: dict[tuple[str, str, int], int], out: SequencedBatch
    ) -> None:
        marks: dict[tuple[str, int], int] = {}
        # re-deliveries: a source position at or below what the store has already seen
        maybe_seen: list[Incoming] = []
        positions = [parse_source(it.source) for it in fresh]
        for it, pos in zip(fresh, positions, strict=True):
            if pos is None:
                continue
            sk = (pos.topic, pos.partition)
            if pos.offset < self.source_marks.get(sk, 0) or pos.offset < marks.get(sk, 0):
                maybe_seen.append(it)
            marks[sk] = max(marks.get(sk, 0), pos.offset + 1)
        seen = self._already_decided(maybe_seen)
        todo: list[Incoming] = []
        seen_in_batch: set[str] = set()
        for it, pos in zip(fresh, positions, strict=True):
            if id(it) in seen or it.source in seen_in_batch:
                out.redeliveries += 1
                continue
            if pos is not None:
                seen_in_batch.add(it.source)
            todo.append(it)
        for (topic, partition), mark in marks.items():
            if mark > self.source_marks.get((topic, partition), 0):
                offsets[(self.sources_consumer, topic, partition)] = mark
        results = self.ledger.append(todo, offsets=offsets, park=True)
        # committed: from here on nothing may fail before the tracking records move on
        for (consumer, topic, partition), nxt in offsets.items():
            if consumer == self.consumer:
                self.next_offsets[(topic, partition)] = max(self.next_offsets.get((topic, partition), 0), nxt)
            else:
                self.source_marks[(topic, partition)] = max(self.source_marks.get((topic, partition), 0), nxt)
        # one result per item in order, then one per parked event the batch released (children whose
        # parents just arrived), each with its own bytes and source
        out.results.extend(zip(todo, results[: len(todo)], strict=True))
        out.results.extend(self._released(results[len(todo) :]))

    def process_isolated(
        self, rec: VerifiedRecord, known: Mapping[str, DecodedEvent] | None = None
    ) -> SequencedBatch:
        """One record, one event per transaction: an event that breaks the append alone becomes an
        `internal_error` rejection (its bytes and source kept). The record's offset goes with its last
        event. Raises only if the store itself fails."""
        out = SequencedBatch(records=1)
        if rec.offset < self.next_offsets.get((rec.topic, rec.partition), 0):
            out.skipped_offsets += 1
            return self._with_recorded(out, self._sequenced_sources(rec, known))
        items = self.expand(rec, known)
        for j, it in enumerate(items):
            last = j == len(items) - 1
            offsets = {(self.consumer, rec.topic, rec.partition): rec.offset + 1} if last else {}
            try:
                self._append_items([it], dict(offsets), out)
            except Exception as exc:
                self.ledger.sync()
                failed = Incoming(
                    raw=it.raw,
                    decoded=None,
                    source=it.source,
                    error=EventError(
                        Reason.INTERNAL_ERROR, f"sequence stage: {type(exc).__name__}: {exc}"[:2000]
                    ),
                )
                [res] = self.ledger.append([failed], offsets=offsets)
                if last:
                    self.next_offsets[(rec.topic, rec.partition)] = rec.offset + 1
                out.results.append((failed, res))
        return out

    @staticmethod
    def _released(results: Sequence[AppendResult]) -> list[tuple[Incoming, AppendResult]]:
        """Pair each released (formerly parked) result with its own bytes and source (the store's copy)."""
        return [(Incoming(raw=r.raw or b"", source=r.source or "parked"), r) for r in results]

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
