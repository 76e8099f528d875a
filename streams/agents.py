"""The ledger's Faust agents: thin. Each decodes a message, calls a plain function, routes the result.

* ``verify`` on material-events (N partitions; scales with partitions and worker processes), in
  ``noack_take`` batches: ``ledger.intake.verify_message`` per message (in a helper process,
  streams/verifypool.py, when ``verify_processes`` >= 1), then the whole batch as one (or a few)
  material-events-verified record(s) authenticated with the worker key's HMAC
  (``ledger.intake.pack_verified``; good events AND verify-stage rejections, see below) and, for
  rejections, material-events-rejected (original bytes + reason headers). :class:`VerifyPipeline` keeps
  up to eight batches in flight (checked, handed to the producer and acknowledged by the broker in
  overlapping steps) and acks each batch's raw messages in order, after every send for it is
  acknowledged by the broker (retried with back-off), so Faust never commits a raw offset past an
  unsent record.
* ``sequencer`` on material-events-verified (1 partition: one total order, one writer):
  ``ledger.intake.Sequencer.process`` appends a batch (``stream.take_events``) in one store transaction
  together with the consumed offset, in the store process (streams/storeproc.py) when ``store_process``
  is on; its rejections go to material-events-rejected.
* timers: parked events whose parents never came are rejected (``parents_timeout``), and a signed
  checkpoint is made every N entries or T seconds and published to ledger-checkpoints. They act only in
  the worker that currently holds the verified partition, so the store keeps a single writer.

Why verify-stage rejections go through the verified topic too (rather than a recorder agent reading the
rejected topic): the store then has exactly one writer, and each rejection is written in the same
transaction as the verified-topic offset that carried it, so a crash can neither lose nor double it.
The rejected topic is the plants' feed: at-least-once, so a consumer dedupes on ``bl_source``.

Every agent catches per event (per batch for the sequencer): an exception is a rejection with reason
``internal_error``, never a stopped agent. A store that cannot be written is not an event's fault: the
sequencer retries with back-off and acks nothing meanwhile. ``concurrency=1`` everywhere (issue #606).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from ledger.core import Ledger
from ledger.intake import HopKey, VerifiedRecord, rejection_headers, source_of
from ledger.registry import Registry
from schemas.reasons import Reason
from schemas.signing import DecodedEvent, load_private_key
from streams.lean import RawSchema
from streams.settings import Settings, resolve_hop_key
from streams.storeproc import Checkpointed, Decided, LocalSequencer, SequenceCounts, StoreProcess
from streams.verifypool import CheckedBatch, VerifyPool, check_batch, raw_messages, rejection_record

__all__ = ["LedgerAgents", "VerifyPipeline", "install_agents"]

log = logging.getLogger("batteryledger.agents")

#: Most decoded events kept for this process's sequencer (about 8 KiB each with their bytes: 16 MiB);
#: beyond it, the sequencer rebuilds the event from the verified record (schemas/trusted.py). At 10,000
#: the 1M soak's worker grew by 28 MiB over its first 300k events while the cache filled to its lag.
DECODED_CACHE_MAX = 2_000
#: Smallest raw batch handed to a helper process. A steady stream at 1,000 events/s arrives in batches
#: of tens of events: checked here they cost a few ms of this process's time, while the trip to a helper
#: added 20-25 ms to the median publish -> appended latency (p99 230-304 -> 245-417 ms with one worker,
#: 239-314 -> 562-783 ms with two). A backlog arrives in full batches (verify_batch), which go to helpers.
HELPER_MIN_BATCH = 100
#: Raw batches the verify agent has in flight: taken and not yet acked (checked ahead in a helper, or
#: handed to the producer and waiting for the broker's acknowledgement).
VERIFY_IN_FLIGHT = 8
#: Longest back-off between retries of a batch the store could not take (or the broker did not ack).
MAX_RETRY_DELAY_S = 10.0


@dataclass
class Counters(SequenceCounts):
    verified: int = 0
    verify_rejected: int = 0
    send_retries: int = 0

    def line(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.__dict__.items())


@dataclass(frozen=True, slots=True)
class PendingSend:
    """A record handed to the producer, and what resolves when the broker acknowledges it."""

    topic: str
    value: bytes
    headers: list[tuple[str, bytes]]
    ack: Awaitable[Any]


@dataclass
class LedgerAgents:
    """State shared by the agents of one worker process (a reader for the registry, the writer)."""

    app: faust.App
    settings: Settings
    reader: Ledger
    hop_key: HopKey
    operator_key: Any = None
    #: the sequence stage's store work: here, or in a helper process (streams/storeproc.py)
    store: LocalSequencer | StoreProcess = field(default=None)  # type: ignore[assignment]
    store_opened: bool = False
    writer_size: int = 0
    counters: Counters = field(default_factory=Counters)
    last_refresh: float = 0.0
    needs_reload: bool = False
    last_checkpoint_size: int = 0
    last_checkpoint_time: float = field(default_factory=time.monotonic)
    agents: dict[str, Any] = field(default_factory=dict)
    topics: dict[str, Any] = field(default_factory=dict)
    direct_send: bool = True
    is_sequencer: bool = False  # this process holds the verified partition (from the last assignment)
    #: events this process's verify agent decoded, by source, for its own sequencer (saves a second parse)
    decoded: dict[str, DecodedEvent] = field(default_factory=dict)
    #: helper processes that check raw batches (streams/verifypool.py); None = in this process
    pool: VerifyPool | None = None

    # -- registry (verify stage) -----------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        return self.reader.registry

    def maybe_refresh_registry(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_refresh >= self.settings.registry_refresh_s:
            self.last_refresh = now
            try:
                self.reader.refresh_registry()
            except Exception:
                log.exception("could not re-read the registry from %s", self.settings.store)

    # -- verify stage ----------------------------------------------------------------------------
    def _on_unknown(self) -> None:
        self.maybe_refresh_registry()

    async def on_raw_batch(self, messages: list[Any]) -> None:
        """Verify a batch of raw messages and forward it (:meth:`check_raw`, then :meth:`forward`)."""
        await self.forward(await self.check_raw(messages))

    async def check_raw(self, messages: list[Any]) -> CheckedBatch:
        """Verify a batch of raw messages, in the helper processes when there are some, they are up and
        the batch has at least HELPER_MIN_BATCH messages (streams/verifypool.py), else here; pack the
        verified-topic and rejected-topic records."""
        raw = raw_messages(messages, source_of)
        pool = self.pool if len(raw) >= HELPER_MIN_BATCH else None
        checked = await pool.check(raw) if pool is not None else None
        if checked is None:
            checked = check_batch(
                raw,
                self.registry,
                self.hop_key,
                self.settings.verified_topic,
                on_unknown=self._on_unknown,
                keep_outcomes=True,
            )
        return checked

    async def forward(self, checked: CheckedBatch) -> None:
        """Send a checked batch: its authenticated verified record(s), then its rejections. Returns only
        when the broker acknowledged every record (so the raw offsets Faust commits after this never pass
        an unsent message); retries with back-off until it does."""
        await self.settle(await self.send(checked))

    async def send(self, checked: CheckedBatch) -> list[PendingSend]:
        """Hand a checked batch's records to the producer, in order (verified records first, then its
        rejections), without waiting for the broker: :meth:`settle` waits. The producer keeps one
        partition's records in the order they were handed over."""
        if self.is_sequencer and isinstance(self.store, LocalSequencer):
            # before the records can reach this process's sequencer: it reuses these decoded events
            for it in checked.outcomes:
                if it.error is None and it.decoded is not None and len(self.decoded) < DECODED_CACHE_MAX:
                    self.decoded[it.source] = it.decoded
        pending = [await self._enqueue("verified", value, headers) for headers, value in checked.records]
        pending += [await self._enqueue("rejected", value, headers) for value, headers in checked.rejections]
        self.counters.verified += checked.verified
        self.counters.verify_rejected += len(checked.rejections)
        return pending

    async def settle(self, pending: list[PendingSend]) -> None:
        """Wait until the broker acknowledged every record handed over by :meth:`send`; one it refused is
        sent again (with back-off, until acknowledged). A record sent again may land after records
        handed over later: the sequencer looks those up in the store (Sequencer._already_decided), so
        nothing is lost or doubled, and the raw offsets are still acked only after this returns."""
        for p in pending:
            try:
                await p.ack
            except Exception as exc:
                self.counters.send_retries += 1
                log.warning(
                    "the broker did not acknowledge a %d-byte record for %s (%s: %s); sending it again",
                    len(p.value),
                    p.topic,
                    type(exc).__name__,
                    exc,
                )
                await self._send_acked(p.topic, p.value, p.headers)

    async def _enqueue(self, topic: str, value: bytes, headers: list[tuple[str, bytes]]) -> PendingSend:
        """Hand one record to the producer (retrying with back-off if it refuses to take it)."""
        ack = await self._until_taken(
            "producer", topic, value, lambda: self._hand_over(topic, value, headers, None)
        )
        return PendingSend(topic, value, headers, ack)

    async def _send_acked(
        self, topic: str, value: bytes, headers: list[tuple[str, bytes]], key: bytes | None = None
    ) -> None:
        """Send one record and wait for the broker's acknowledgement, retrying with back-off until it
        comes: the caller's input offsets are not committed meanwhile, so nothing is lost."""
        await self._until_taken("broker", topic, value, lambda: self._send(topic, value, headers, key))

    async def _until_taken(
        self, who: str, topic: str, value: bytes, attempt: Callable[[], Awaitable[Any]]
    ) -> Any:
        """`attempt()` until it does not raise, with back-off (counted in send_retries, logged)."""
        delay = 0.25
        while True:
            try:
                return await attempt()
            except Exception as exc:
                self.counters.send_retries += 1
                log.warning(
                    "the %s did not take a %d-byte record for %s (%s: %s); retrying in %.2f s",
                    who,
                    len(value),
                    topic,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)

    async def _send(
        self, topic: str, value: bytes, headers: list[tuple[str, bytes]], key: bytes | None = None
    ) -> None:
        """Hand a record to the producer and await the broker's acknowledgement (raises if refused)."""
        await (await self._hand_over(topic, value, headers, key))

    async def _hand_over(
        self, topic: str, value: bytes, headers: list[tuple[str, bytes]], key: bytes | None
    ) -> Awaitable[Any]:
        """Hand a record to the producer; returns what resolves when the broker acknowledges it."""
        target = self.topics[topic]
        if self.direct_send:
            # straight to the producer: Faust's Topic.send costs more than the rest of the verify stage
            fut: Awaitable[Any] = await self.app.producer.send(
                target.get_topic_name(), key, value, None, None, headers
            )
        else:
            fut = await target.send(key=key, value=value, headers=headers)
        return fut

    # -- sequence stage --------------------------------------------------------------------------
    async def _store_call(self, name: str, *args: Any) -> Any:
        """LocalSequencer.`name` in this process or in the store process (streams/storeproc.py); the
        writer's state is re-read from the store first after a reassignment or a failed call."""
        if self.needs_reload:
            await self.store.call("reload")
            self.needs_reload = False
        if not self.store_opened:
            self.writer_size, self.last_checkpoint_size = await self.store.call("opened")
            self.store_opened = True
        return await self.store.call(name, *args)

    async def on_verified_batch(self, records: list[VerifiedRecord]) -> None:
        decided = await self._process_with_retry(records)
        for source in decided.sources:
            self.decoded.pop(source, None)
        self.counters.add(decided)
        self.writer_size = decided.size
        for raw, source, reason, detail, event_id in decided.rejections:
            await self._publish_rejection(raw, source, reason, detail, event_id)
        if self.writer_size - self.last_checkpoint_size >= self.settings.checkpoint_every:
            await self.checkpoint()

    async def _process_with_retry(self, records: list[VerifiedRecord]) -> Decided:
        # the decoded-event cache helps a sequencer in this process only (a store process rebuilds)
        known = self.decoded if isinstance(self.store, LocalSequencer) else None
        delay = 0.25
        while True:
            try:
                decided: Decided = await self._store_call("process", records, known)
                return decided
            except Exception:
                log.exception("the ledger store did not take the batch; retrying in %.2f s", delay)
                self.needs_reload = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)

    async def _publish_rejection(
        self, raw: bytes, source: str, reason: str | None, detail: str | None, event_id: str | None
    ) -> None:
        value, headers = rejection_record(
            raw,
            rejection_headers(
                reason or Reason.INTERNAL_ERROR.value,
                detail,
                source=source,
                event_id=event_id,
                stage="sequence",
            ),
        )
        await self._send_acked("rejected", value, headers)

    # -- timers (writer only) --------------------------------------------------------------------
    def owns_sequencer(self) -> bool:
        try:
            assignment = self.app.consumer.assignment()
        except Exception:
            return False
        return TP(self.settings.verified_topic, 0) in assignment

    async def expire_parked(self) -> None:
        if not self.owns_sequencer():
            return
        try:
            expired = await self._store_call("expire", self.settings.park_max_age_s)
        except Exception:
            log.exception("expiring parked events failed; will retry")
            self.needs_reload = True
            return
        for raw, source, reason, detail, event_id in expired:
            self.counters.sequence_rejected += 1
            await self._publish_rejection(raw, source, reason, detail, event_id)

    async def checkpoint(self) -> None:
        if self.operator_key is None or not self.store_opened:
            return
        try:
            made: Checkpointed | None = await self._store_call("checkpoint")
        except Exception:
            log.exception("signing a checkpoint failed; will retry")
            return
        if made is None:
            return
        self.last_checkpoint_time = time.monotonic()
        self.last_checkpoint_size = self.writer_size = made.size
        if made.note is not None:
            await self._send("checkpoints", made.note.encode(), [], key=made.origin.encode())
            log.info("checkpoint at size %d published", made.size)

    async def checkpoint_tick(self) -> None:
        if not self.owns_sequencer() or not self.store_opened:
            return
        if self.writer_size > self.last_checkpoint_size:
            await self.checkpoint()
        log.info("worker counters: %s", self.counters.line())


class VerifyPipeline:
    """The verify agent's batches in flight, in three overlapping steps, each strictly in the order the
    batches were taken:

    1. check: as soon as a batch is taken (in a helper process when there are some);
    2. hand over (the sender task): its records go to the producer as soon as its check is done and the
       batch before it was handed over;
    3. settle (the settler task): the broker's acknowledgements are awaited, then the batch's raw
       messages are acked.

    So the helpers check batch N+2 while the producer carries N+1 and the broker acknowledges N, and
    Faust still commits a raw offset only after the records that carry it are acknowledged. Waiting for
    each batch's acknowledgements before handing over the next held one worker to a verified record per
    broker round trip (40-50 ms with the sequencer sharing the event loop) and left its sequencer idle
    a third of the time.

    At most `depth` batches are in flight (taken and not yet acked); :meth:`submit` waits for a free
    slot. A batch whose routing fails (a bug: sends themselves retry until acknowledged) is logged and
    acked, as before."""

    def __init__(self, state: LedgerAgents, stream: Any, depth: int) -> None:
        self.state = state
        self.stream = stream
        self.slots = asyncio.Semaphore(depth)
        self.checking: asyncio.Queue[tuple[list[Any], asyncio.Task[CheckedBatch]]] = asyncio.Queue()
        self.sent: asyncio.Queue[tuple[list[Any], list[PendingSend] | None]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []

    async def submit(self, events: list[Any]) -> None:
        await self.slots.acquire()
        if not self.tasks or any(t.done() for t in self.tasks):
            for t in self.tasks:
                t.cancel()
            self.tasks = [asyncio.ensure_future(self._hand_over()), asyncio.ensure_future(self._settle())]
        check = asyncio.ensure_future(self.state.check_raw([e.message for e in events]))
        self.checking.put_nowait((list(events), check))

    async def _hand_over(self) -> None:
        while True:
            events, check = await self.checking.get()
            pending: list[PendingSend] | None = None
            try:
                pending = await self.state.send(await check)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._routing_failed(events)
            self.sent.put_nowait((events, pending))

    async def _settle(self) -> None:
        while True:
            events, pending = await self.sent.get()
            if pending is not None:
                try:
                    await self.state.settle(pending)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self._routing_failed(events)
            for event in events:
                await self.stream.ack(event)
            self.slots.release()

    def _routing_failed(self, events: list[Any]) -> None:
        self.state.counters.internal_errors += 1
        log.exception("verify agent could not route a batch of %d messages", len(events))

    def close(self) -> None:
        """Stop without acking what is in flight: it is taken again after a restart or a rebalance."""
        for t in self.tasks:
            t.cancel()
        while not self.checking.empty():
            _, check = self.checking.get_nowait()
            check.cancel()


def install_agents(app: faust.App, settings: Settings) -> LedgerAgents:
    """Declare the topics, agents and timers of one ledger on `app`."""
    operator_key = load_private_key(settings.operator_key) if settings.operator_key else None
    state = LedgerAgents(
        app=app,
        settings=settings,
        reader=Ledger(settings.store),
        hop_key=resolve_hop_key(settings),
        operator_key=operator_key,
    )
    store_args = (settings.store, settings.app_id, state.hop_key, settings.max_batch, settings.operator_key)
    state.store = StoreProcess(*store_args) if settings.store_process else LocalSequencer(*store_args)
    if isinstance(state.store, StoreProcess):
        store_process = state.store

        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def close_store_process(sender: Any, **kwargs: Any) -> None:
            store_process.close()

    if settings.verify_processes > 0:
        state.pool = VerifyPool(
            settings.verify_processes,
            settings.store,
            state.hop_key,
            settings.verified_topic,
            settings.registry_refresh_s,
        )

        @app.on_before_shutdown.connect  # type: ignore[arg-type]
        async def close_pool(sender: Any, **kwargs: Any) -> None:
            if state.pool is not None:
                state.pool.close()

    events_topic = app.topic(settings.events_topic, partitions=settings.partitions, schema=RawSchema())
    verified_topic = app.topic(settings.verified_topic, partitions=1, schema=RawSchema())
    rejected_topic = app.topic(settings.rejected_topic, partitions=1, schema=RawSchema())
    checkpoints_topic = app.topic(settings.checkpoints_topic, partitions=1, schema=RawSchema())
    state.topics = {
        "events": events_topic,
        "verified": verified_topic,
        "rejected": rejected_topic,
        "checkpoints": checkpoints_topic,
    }

    async def verify(stream: Any) -> None:
        # noack_take: the batch is acked by the pipeline once its records are acknowledged, so the next
        # batch can be taken (and checked in a helper) while this one is checked and sent
        pipeline = VerifyPipeline(state, stream, depth=VERIFY_IN_FLIGHT)
        try:
            async for events in stream.noack_take(settings.verify_batch, within=settings.verify_within_s):
                await pipeline.submit(events)
        finally:
            pipeline.close()

    async def sequencer(stream: Any) -> None:
        # each record carries up to verify_batch events: take few records, the sequencer splits its
        # transactions at max_batch events
        take = max(1, settings.max_batch // 20)
        async for events in stream.take_events(take, within=settings.batch_within_s):
            records = [
                VerifiedRecord(
                    e.message.topic, e.message.partition, e.message.offset, e.message.headers, e.message.value
                )
                for e in events
            ]
            try:
                await state.on_verified_batch(records)
            except Exception:  # only publishing can get here; the batch is in the store
                state.counters.internal_errors += 1
                log.exception("sequencer could not publish the outcome of a batch")

    state.agents["verify"] = app.agent(events_topic, name="verify", concurrency=1)(verify)
    state.agents["sequencer"] = app.agent(verified_topic, name="sequencer", concurrency=1)(sequencer)

    async def expire_timer() -> None:
        try:
            await state.expire_parked()
        except Exception:  # a timer that raises is not run again: log and go on
            log.exception("expire timer failed; will run again")

    async def checkpoint_timer() -> None:
        try:
            await state.checkpoint_tick()
        except Exception:
            log.exception("checkpoint timer failed; will run again")

    async def refresh_timer() -> None:
        state.maybe_refresh_registry()

    app.timer(settings.expire_interval_s, name="expire_parked")(expire_timer)
    app.timer(settings.checkpoint_interval_s, name="checkpoint")(checkpoint_timer)
    app.timer(settings.registry_refresh_s, name="refresh_registry")(refresh_timer)

    async def quiet_clients() -> None:
        # aiokafka builds a DEBUG record per request when the root logger lets it: a tenth of the CPU
        if settings.log_level.lower() != "debug":
            for name in ("aiokafka", "kafka"):
                logging.getLogger(name).setLevel(logging.WARNING)

    app.task(quiet_clients)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any = (), **kwargs: Any) -> None:
        state.decoded.clear()
        state.is_sequencer = TP(settings.verified_topic, 0) in set(assigned)
        if state.is_sequencer:
            state.needs_reload = True
            if isinstance(state.store, StoreProcess):
                state.store.start()  # now, not at the first batch: it takes about a second to start
        if state.pool is not None and any(tp.topic == settings.events_topic for tp in set(assigned)):
            state.pool.start()  # now, not at the first batch: a helper takes about a second to start
        log.info("batteryledger worker ready: %d partitions assigned", len(set(assigned)))

    return state
