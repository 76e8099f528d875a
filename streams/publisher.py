"""Publisher SDK: how a plant system puts signed events on the ledger's Kafka topic.

    >>> with Publisher("127.0.0.1:9092", "cam-kr-gwangyang", key) as pub:
    ...     event_id = pub.publish({"kind": "material.produced", "time": ..., "outputs": [...]})

`publish` validates the event, signs its RFC 8785 canonical bytes with the facility's Ed25519 key, sends
it as a CloudEvents 1.0 binary-mode Kafka message (headers ``ce_id``, ``ce_source``, ``ce_type``,
``ce_time``, ``ce_subject``, ``ce_specversion``, ``content-type``; key = facility id, so one facility's
events stay in order on one partition), waits for the broker's acknowledgement from all in-sync replicas
and returns the event id. The producer is idempotent (kafka-python: ``acks=all``,
``enable_idempotence=True``), so a retried send is not a second record; a second *publish* of the same
event is a second record, which the ledger recognises by its event id and appends once.

Acknowledged means durably on the topic, not yet decided by the ledger: the verdict (appended, or
rejected with a reason) is in the ledger store, found by event id or by the Receipt's `source`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ValidationError

from schemas.canonical import CanonicalError
from schemas.cloudevents import WireMessage, binary_message, to_structured
from schemas.events import MAX_EVENT_BYTES, SPEC, Event, event_to_json_obj, parse_event
from schemas.reasons import EventError
from schemas.signing import SIG_FIELD, decode, key_id, sign_validated, signer
from streams.topics import MATERIAL_EVENTS

__all__ = [
    "MessageBuilder",
    "PublishError",
    "Publisher",
    "Receipt",
    "binary_message",
    "kafka_crc32c_native",
    "producer_config",
]

#: Seconds to wait for the broker's acknowledgement of one message before giving up.
DEFAULT_ACK_TIMEOUT_S = 30.0
#: publish_many signs this many events, then sends them (see there).
PUBLISH_CHUNK = 512


class PublishError(Exception):
    """An event could not be signed or was not acknowledged by the broker."""

    def diagnostics(self) -> str:
        return str(self)


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where the broker put a message: its position is how the ledger names a rejection's source."""

    event_id: str | None
    topic: str
    partition: int
    offset: int

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


EventLike = Mapping[str, Any] | BaseModel | bytes


def producer_config(bootstrap: str, facility_id: str, **overrides: Any) -> dict[str, Any]:
    """The Publisher's kafka-python producer settings (keyword arguments to `Publisher` override them,
    e.g. linger_ms=0 for the lowest latency of a lone publish). Batching never costs the per-event ack:
    every send has its own future, and publish / publish_many wait on each one.

    - acks=all + idempotence: an ack means on every in-sync replica; a retried send is not a second
      record.
    - linger_ms=50: publish_many lets a batch fill for up to 50 ms, so hundreds of events go in one
      request (fewer, fuller batches: less per-batch work in the producer's threads, which share the
      GIL with signing); its final flush sends the tail at once. A lone publish() flushes its event
      at once, so it never pays the linger.
    - batch_size=512 KiB: hundreds of ~0.5-1 KiB events per batch, and half the topic's
      max.message.bytes (1 MiB, streams.topics.TOPIC_MAX_MESSAGE_BYTES), so a full batch is never
      refused for size.
    - max_request_size=2 MiB: room for batches of several partitions in one request.
    - CRC-32C of each batch: kafka-python uses the `crc32c` wheel (a dependency) when installed, else
      pure Python, several times slower (`kafka_crc32c_native` says which).
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 50,
        "batch_size": 512 * 1024,
        "max_request_size": 2 * 1024 * 1024,
        "client_id": f"batteryledger-publisher-{facility_id}",
    }
    config.update(overrides)
    return config


def kafka_crc32c_native() -> bool:
    """True when kafka-python's record batches get their CRC-32C from the `crc32c` wheel (C), not from
    its pure-Python fallback: the function kafka-python calls binds its implementation at import."""
    try:
        import crc32c
    except ImportError:
        return False
    from kafka.record import default_records, util

    return default_records.calc_crc32c is util.calc_crc32c and util.calc_crc32c.__defaults__ == (
        crc32c.crc32c,
    )


class MessageBuilder:
    """The Publisher's work before Kafka: validate, sign and wrap events as CloudEvents Kafka messages.

    It runs in the Publisher's process, or in signing helpers (streams/signpool.py) when the Publisher
    has `sign_processes`; either way an event's bytes are the same. No Kafka here.
    """

    def __init__(self, key: Ed25519PrivateKey | None, structured: bool = False) -> None:
        self.key = key
        self.structured = structured
        self.key_id = key_id(key.public_key()) if key is not None else None
        self.signer = signer(key) if key is not None else None  # libsodium's when installed: same bytes

    def sign(self, event: Mapping[str, Any] | BaseModel, facility_id: str) -> tuple[str, bytes, Event]:
        """(event id, signed bytes, validated event): validated once, canonicalised once, never
        re-decoded (the bytes are those `decode` computes: tests/unit/test_signing_fast.py)."""
        if self.key is None:
            raise PublishError(f"no signing key for {facility_id}: give one (--key FILE)")
        obj = event_to_json_obj(event) if isinstance(event, BaseModel) else dict(event)
        obj.setdefault("spec", SPEC)
        obj.setdefault("facility_id", facility_id)
        if obj["facility_id"] != facility_id:
            raise PublishError(
                f"event is for facility {obj['facility_id']!r} but this publisher signs as "
                f"{facility_id!r}: use a Publisher for that facility"
            )
        if SIG_FIELD in obj:
            raise PublishError("event is already signed: use publish_signed")
        try:
            event = parse_event(obj)  # refuse to sign what the ledger would reject as schema-invalid
        except ValidationError as exc:
            raise PublishError(f"event is not valid: {_first_error(exc)}") from None
        try:
            raw, event_id = sign_validated(obj, self.key, self.key_id, self.signer)
        except CanonicalError as exc:
            raise PublishError(
                f"event has a value with no JSON form ({exc}): give quantities and times as strings"
            ) from None
        if len(raw) > MAX_EVENT_BYTES:  # what decode() would refuse as oversized
            raise PublishError(
                f"cannot publish: oversized: event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}"
            )
        return event_id, raw, event

    def message(self, signed: bytes) -> tuple[str, WireMessage]:
        """Event id and CloudEvents Kafka message of already-signed bytes (binary or structured mode)."""
        try:
            decoded = decode(signed)
        except EventError as exc:
            raise PublishError(f"cannot publish: {exc.diagnostics()}") from None
        if self.structured:
            return decoded.event_id, to_structured(decoded)
        return decoded.event_id, binary_message(decoded.event_id, decoded.event, decoded.signed)

    def build(self, event: EventLike, facility_id: str) -> tuple[str, WireMessage]:
        """Event id and message of an unsigned event (signed here, never re-decoded) or signed bytes."""
        if isinstance(event, bytes):
            return self.message(event)
        if self.structured:
            return self.message(self.sign(event, facility_id)[1])
        event_id, raw, parsed = self.sign(event, facility_id)
        return event_id, binary_message(event_id, parsed, raw)

    def build_many(
        self, items: Iterable[tuple[str, EventLike]]
    ) -> tuple[list[tuple[str, WireMessage]], Exception | None]:
        """The messages of (facility id, event) items in order, up to the first that fails, and that
        failure (None if none did)."""
        out: list[tuple[str, WireMessage]] = []
        try:
            for facility_id, event in items:
                out.append(self.build(event, facility_id))
        except Exception as exc:
            return out, exc
        return out, None


def close_producer(producer: Any, timeout: float) -> Exception | None:
    """Close a kafka-python producer within about 2 x `timeout` s whatever its state; the KafkaError of a
    close that could not deliver every send (those sends failed: they may be lost), else None.

    kafka-python's `close()` flushes first, and when the flush times out it raises before it stops the
    producer's I/O thread: the thread would go on retrying the unacknowledged sends and holding its
    sockets until the process exits, one more for every failed acknowledgement (the Publisher starts a
    fresh producer after each). Here the thread is stopped all the same, failing what is still pending,
    as `close()` itself does when its wait runs out after a flush that succeeded.
    """
    from kafka.errors import KafkaError

    try:
        producer.close(timeout=timeout)
        return None
    except KafkaError as exc:
        failure: Exception = exc
    sender = getattr(producer, "_sender", None)  # the I/O thread, which close() stops the same way
    if sender is not None:
        sender.force_close()
        sender.join(timeout)
    with contextlib.suppress(Exception):
        producer.close(timeout=0)  # the rest of close(): metrics, serializers, the closed flag
    return failure


class Publisher:
    """Signs and publishes one facility's events. Not thread-safe; one per facility and thread."""

    def __init__(
        self,
        bootstrap: str,
        facility_id: str,
        key: Ed25519PrivateKey | None,
        *,
        topic: str = MATERIAL_EVENTS,
        structured: bool = False,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT_S,
        sign_processes: int = 0,
        **producer_config_overrides: Any,
    ) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.bootstrap = bootstrap
        self.facility_id = facility_id
        self.topic = topic
        self.ack_timeout = ack_timeout
        #: publish_many validates and signs in this many helper processes (streams/signpool.py); 0: here
        self.sign_processes = max(0, sign_processes)
        self._builder = MessageBuilder(key, structured)
        self._pool: Any = None  # streams.signpool.SignPool, started by the first publish_many that uses it
        config = producer_config(bootstrap, facility_id, **producer_config_overrides)
        self._config = config
        try:
            self._producer = KafkaProducer(**config)
        except KafkaError as exc:
            raise PublishError(
                f"cannot reach Kafka at {bootstrap} ({type(exc).__name__}): start it with "
                "`batteryledger broker start` or pass the right --broker"
            ) from None
        self.last_receipt: Receipt | None = None

    @property
    def key(self) -> Ed25519PrivateKey | None:
        return self._builder.key

    @property
    def structured(self) -> bool:
        return self._builder.structured

    # -- context manager -----------------------------------------------------------------------
    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Close the producer; sends still unacknowledged by then raise PublishError (they may be lost).
        Either way its I/O thread and connections are gone when this returns (`close_producer`)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        failure = close_producer(self._producer, timeout)
        if failure is not None:
            raise PublishError(
                f"closing the publisher to {self.bootstrap}: sends not acknowledged within {timeout:g} s "
                f"({type(failure).__name__}: {failure})"
            )

    # -- building messages ---------------------------------------------------------------------
    def sign(self, event: Mapping[str, Any] | BaseModel) -> bytes:
        """Validate and sign an unsigned event (spec and facility_id default to this publisher's)."""
        return self._builder.sign(event, self.facility_id)[1]

    def message(self, signed: bytes) -> tuple[str, WireMessage]:
        """Event id and CloudEvents Kafka message of already-signed bytes (binary or structured mode)."""
        return self._builder.message(signed)

    # -- publishing ----------------------------------------------------------------------------
    def publish(self, event: Mapping[str, Any] | BaseModel) -> str:
        """Sign, send, wait for the broker's ack; returns the event id.

        The send is flushed at once: a lone event never waits out `linger_ms` (which is for
        publish_many's batches). Many events: publish_many, far faster than a loop of publish().
        """
        return self._one(self._send_unsigned(event))

    def publish_signed(self, raw: bytes) -> str:
        """Send an event signed elsewhere (bytes as signed); returns its event id after the ack."""
        return self._one(self._send_signed(raw))

    def _one(self, pending: tuple[str, Any]) -> str:
        deadline = time.monotonic() + self.ack_timeout
        self._flush_quietly()  # a flush that times out leaves the future unresolved: _wait names it
        receipt = self._wait(pending, deadline)
        assert receipt.event_id is not None
        return receipt.event_id

    def publish_raw(
        self,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] | None = None,
        key: bytes | None = None,
    ) -> Receipt:
        """Send bytes exactly as given (tests, replays of captured traffic, deliberately bad input)."""
        fut = self._producer.send(
            self.topic,
            value=value,
            key=self.facility_id.encode() if key is None else key,
            headers=list(headers or []),
        )
        deadline = time.monotonic() + self.ack_timeout
        self._flush_quietly()
        return self._wait((None, fut), deadline)

    def publish_many(
        self,
        events: Iterable[EventLike],
        *,
        on_ack: Callable[[Receipt], None] | None = None,
        window: int = 10_000,
    ) -> list[Receipt]:
        """Send many events (unsigned dicts/models are signed; bytes are taken as signed) and wait for all.

        Up to `window` sends are in flight before the oldest is awaited, so memory stays bounded. Every
        event's acknowledgement is reported via `on_ack`, in order, until the first failure: an event
        that cannot be signed or sent, or an acknowledgement that fails or times out, raises
        PublishError after all the events before it were acknowledged and reported (so the events up to
        the failure are known to be on the topic, and the rest can be sent again).
        """
        pending: deque[tuple[str | None, Any]] = deque()
        receipts: list[Receipt] = []

        def drain(keep: int, deadline: float | None = None) -> None:
            while len(pending) > keep:
                r = self._wait(pending.popleft(), deadline)
                receipts.append(r)
                if on_ack is not None:
                    on_ack(r)

        # Sign a chunk, then send it: the same work as alternating one sign and one send, in two tight
        # loops (measured 10-20% less CPU per event: pydantic, OpenSSL and kafka-python's code each stay
        # warm in the CPU's caches). With sign_processes, helpers sign the next chunks meanwhile.
        chunk_size = max(1, min(PUBLISH_CHUNK, window))
        for chunk, failure in self._built_chunks(iter(events), chunk_size):
            for event_id, msg in chunk:
                try:
                    sent = self._send(event_id, msg)
                except Exception as exc:
                    failure = exc
                    break
                pending.append(sent)
                drain(window)
            if failure is not None:
                deadline = time.monotonic() + self.ack_timeout
                self._flush_quietly()
                drain(0, deadline)  # the events before it: acknowledged and reported (or the first failure)
                raise failure
        deadline = time.monotonic() + self.ack_timeout  # one ack timeout for the flush and the acks
        self._flush_quietly()  # a flush that times out leaves futures unresolved: drain names them
        drain(0, deadline)
        return receipts

    def _flush_quietly(self) -> None:
        from kafka.errors import KafkaError

        with contextlib.suppress(KafkaError):
            self._producer.flush(timeout=self.ack_timeout)

    def flush(self) -> None:
        self._producer.flush(timeout=self.ack_timeout)

    def _reset(self) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        with contextlib.suppress(Exception):  # the old producer is already broken: nothing to keep
            close_producer(self._producer, 1.0)
        with contextlib.suppress(KafkaError):  # else the next send fails with a clear PublishError
            self._producer = KafkaProducer(**self._config)

    # -- internals -----------------------------------------------------------------------------
    def _send_unsigned(self, event: Mapping[str, Any] | BaseModel) -> tuple[str, Any]:
        return self._send(*self._message_of(event))

    def _message_of(self, event: EventLike) -> tuple[str, WireMessage]:
        return self._builder.build(event, self.facility_id)

    def _built_chunks(
        self, events: Iterator[EventLike], size: int
    ) -> Iterator[tuple[list[tuple[str, WireMessage]], Exception | None]]:
        """Messages of `events` in chunks of `size`, in order; a chunk with a failure (an event that
        cannot be signed, or the iterable's own) is the last. Built here, or by the signing helpers."""
        if self.sign_processes and self.key is not None:
            if self._pool is None or self._pool.closed:  # first use, or a helper died last time
                from streams.signpool import SignPool

                self._pool = SignPool(self.sign_processes, self.key, self.structured)
            yield from self._pool.chunks(events, size, lambda: self.facility_id)
            return
        while True:
            items: list[tuple[str, EventLike]] = []
            unreadable: Exception | None = None
            try:
                for ev in itertools.islice(events, size):
                    items.append((self.facility_id, ev))
            except Exception as exc:  # the iterable failed: the events before it still go
                unreadable = exc
            built, failure = self._builder.build_many(items)
            failure = failure or unreadable
            yield built, failure
            if failure is not None or len(items) < size:
                return

    def _send_signed(self, raw: bytes) -> tuple[str, Any]:
        return self._send(*self.message(raw))

    def _send(self, event_id: str, msg: WireMessage) -> tuple[str, Any]:
        from kafka.errors import KafkaError

        try:
            fut = self._producer.send(self.topic, value=msg.value, key=msg.key, headers=msg.headers)
        except KafkaError as exc:  # e.g. no metadata for the topic within max_block_ms: say so, once
            raise PublishError(
                f"Kafka at {self.bootstrap} did not take event {event_id} for {self.topic}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return event_id, fut

    def _wait(self, pending: tuple[str | None, Any], deadline: float | None = None) -> Receipt:
        """The receipt of one send, waiting up to ack_timeout (or until `deadline`, time.monotonic())."""
        from kafka.errors import KafkaError, KafkaTimeoutError

        event_id, fut = pending
        timeout = self.ack_timeout if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            md = fut.get(timeout=timeout)
        except KafkaError as exc:
            # an idempotent producer whose batch the broker refused (e.g. MessageSizeTooLarge) keeps
            # failing every later send: start a fresh one so this Publisher stays usable
            why = (
                f"KafkaTimeoutError: no acknowledgement within {self.ack_timeout:g} s"
                if isinstance(exc, KafkaTimeoutError) and not fut.is_done
                else f"{type(exc).__name__}: {exc}"
            )
            self._reset()
            raise PublishError(
                f"Kafka at {self.bootstrap} did not acknowledge "
                f"{'event ' + event_id if event_id else 'a message'} on {self.topic}: {why}"
            ) from None
        receipt = Receipt(event_id, md.topic, md.partition, md.offset)
        self.last_receipt = receipt
        return receipt


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(event)"
    more = exc.error_count() - 1
    return f"{loc}: {err['msg']}" + (f" (and {more} more)" if more > 0 else "")


def load_json_lines(lines: Iterable[str]) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank JSON-lines entry; raises PublishError on a bad line."""
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise PublishError(f"line {n}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise PublishError(f"line {n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj
