"""Faust's parts on the per-message path, made cheaper: the consumer, the raw-bytes schema, the monitor.

Measured with a worker that only takes events off a raw topic (no ledger work), Faust 0.15.3's own
parts cost 240 µs of CPU per message on the development VM; with these, under 100 µs (issue 11).

**The consumer.**

Faust's fetch loop (``Consumer._drain_messages``, faust-streaming 0.15.3) hands every message to the
conductor with ``await self.wait_first(callback(message), self.suspend_flow.wait())``: four tasks and
an ``asyncio.wait`` per message, so that a delivery blocked on a full stream buffer is abandoned when a
rebalance suspends the flow. Measured on the verify agent (issue 11), that is the largest single item
of Faust's per-message cost, yet the conductor's callback almost never blocks: it puts the event on a
queue with room.

:class:`FastDrainConsumer` runs the callback inline first. If it finishes without suspending (the
common case), the message is delivered and no task was made. If it suspends (a full buffer, flow
control, a producer buffer to ebb), the rest of that same callback is handed to Faust's own
``wait_first`` with ``suspend_flow``, exactly as before, so a rebalance still cuts it short. Nothing
else in the loop differs from Faust's; ``tests/unit/test_lean.py`` holds the copy to the
installed Faust's source so an upgrade that changes the loop is noticed.

**The schema.** The ledger's topics carry raw bytes and the agents read ``event.message`` only, so
:class:`RawSchema` makes each Faust Event straight from the message, without the serializer registry's
two codec look-ups (its key and value types are fixed to raw bytes).

**The monitor.** Faust's default Monitor sensor time-stamps and counts every message and every stream
event in dictionaries keyed by topic, stream and task, for Faust's web statistics pages, which this
worker does not serve. :class:`LeanMonitor` keeps the totals and drops the per-event bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, cast

from faust import Schema
from faust.sensors import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumerDriver
from mode import Service, ServiceT

__all__ = ["BatchingFetchThread", "FastDrainConsumer", "LeanMonitor", "RawSchema", "Resumed", "deliver"]


class Resumed:
    """The rest of a coroutine that was stepped by hand and suspended on `first`, as an awaitable.

    Awaiting it yields `first` to the event loop (the future the coroutine is blocked on), then keeps
    driving the coroutine as ``await`` would: values and exceptions (cancellation included) go in, the
    return value comes out.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def deliver(service: Service, coro: Awaitable[Any], suspend_flow: Any) -> None:
    """Run `coro` inline; if it suspends, finish it under ``service.wait_first(..., suspend_flow)``."""
    if not isinstance(coro, Coroutine):  # not a coroutine: Faust's way, unchanged
        await service.wait_first(coro, suspend_flow.wait())
        return
    try:
        first = coro.send(None)
    except StopIteration:
        return
    await service.wait_first(Resumed(coro, first), suspend_flow.wait())


class BatchingFetchThread(AIOKafkaConsumerThread):
    """Faust's consumer thread, whose fetches wait a little for data to accumulate.

    Faust asks aiokafka for ``fetch_min_bytes=1``: under a steady stream the broker answers each fetch
    with the one or two messages that arrived since the last, so at 1,000 events/s the worker and the
    broker spend their time on fetch round trips. ``fetch_min_bytes`` lets the broker hold a fetch for
    up to ``fetch_max_wait_ms`` until that much data is there (a backlog is served at once as before).
    """

    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_min_bytes = self.fetch_min_bytes
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class FastDrainConsumer(AIOKafkaConsumerDriver):
    """Faust's aiokafka consumer whose fetch loop delivers each message through :func:`deliver`."""

    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 1500

    @classmethod
    def configured(cls, *, fetch_min_bytes: int, fetch_max_wait_ms: int) -> type[FastDrainConsumer]:
        """This class with the given fetch sizing (a subclass per app: the class itself is untouched)."""
        attrs = {"fetch_min_bytes": fetch_min_bytes, "fetch_max_wait_ms": fetch_max_wait_ms}
        return type("LedgerConsumer", (cls,), attrs)

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        thread = BatchingFetchThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_min_bytes = self.fetch_min_bytes
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        return thread

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover - the worker's loop
        # Faust's Consumer._drain_messages (faust-streaming 0.15.3), with the per-message wait_first
        # replaced by deliver(); everything else as written there.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspend_flow = self.suspend_flow

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:  # noqa: SIM102 - as Faust wrote it
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            await deliver(self, callback(message), suspend_flow)
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)


class RawSchema(Schema[bytes, bytes]):
    """A Faust schema for raw-bytes keys and values that builds each Event straight from the message."""

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, **kwargs: Any) -> Any:
        make_event = app.conf.Event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            # what Faust's decode gives for raw bytes (its raw codec returns the bytes as they are)
            return make_event(app, message.key, message.value, message.headers, message)

        return decode


class LeanMonitor(Monitor):
    """Faust's Monitor without the per-message and per-event bookkeeping (totals are kept)."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        self.messages_received_total += 1

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> dict[str, Any] | None:
        self.events_total += 1
        return None  # no per-event state for on_stream_event_out

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None
