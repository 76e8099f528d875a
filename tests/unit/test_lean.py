"""The worker's consumer: the inline hand-off of fetched messages, and its copy of Faust's fetch loop."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any, cast

import pytest
from faust.transport.consumer import Consumer as FaustConsumer
from mode import Service

from streams.app import create_app
from streams.lean import BatchingFetchThread, FastDrainConsumer, LeanMonitor, RawSchema, Resumed, deliver
from streams.settings import Settings


class Loop(Service):
    """A mode Service: what deliver() borrows wait_first from (the consumer, in the worker)."""


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_callback_that_does_not_suspend_is_delivered_inline_without_tasks() -> None:
    async def main() -> list[str]:
        seen: list[str] = []

        class NoWait(Loop):
            async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
                raise AssertionError("the slow path was taken")

        async def callback() -> None:
            seen.append("delivered")

        before = len(asyncio.all_tasks())
        await deliver(NoWait(), callback(), asyncio.Event())
        assert len(asyncio.all_tasks()) == before
        return seen

    assert _run(main()) == ["delivered"]


def test_a_callback_that_suspends_is_finished_under_wait_first() -> None:
    async def main() -> list[Any]:
        got: list[Any] = []
        gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def callback() -> None:
            got.append("before")
            got.append(await gate)  # a full stream buffer, say
            got.append("after")

        asyncio.get_running_loop().call_later(0.01, gate.set_result, 42)
        await deliver(Loop(), callback(), asyncio.Event())
        return got

    assert _run(main()) == ["before", 42, "after"]


def test_a_suspended_callback_is_cut_short_when_the_flow_is_suspended() -> None:
    async def main() -> list[str]:
        got: list[str] = []
        suspend_flow = asyncio.Event()

        async def callback() -> None:
            try:
                await asyncio.sleep(30)  # blocked: a buffer that never drains
            except asyncio.CancelledError:
                got.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.01, suspend_flow.set)
        await asyncio.wait_for(deliver(Loop(), callback(), suspend_flow), timeout=5)
        await asyncio.sleep(0)  # let the cancellation reach the callback
        return got

    assert _run(main()) == ["cancelled"]


def test_an_error_raised_after_suspending_reaches_the_fetch_loop() -> None:
    async def main() -> None:
        async def callback() -> None:
            await asyncio.sleep(0.001)
            raise ValueError("bad message handler")

        await deliver(Loop(), callback(), asyncio.Event())

    with pytest.raises(ValueError, match="bad message handler"):
        _run(main())


def test_resumed_returns_the_coroutine_value_and_passes_exceptions_in() -> None:
    async def main() -> tuple[int, str]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def inner() -> int:
            return (await fut) + 1

        coro = inner()
        first = coro.send(None)
        assert first is fut
        fut.set_result(41)
        value = await Resumed(coro, first)

        fut2: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def catches() -> str:
            try:
                await fut2
            except KeyError:
                return "caught"
            return "not caught"

        coro2 = catches()
        first2 = coro2.send(None)
        fut2.set_exception(KeyError("x"))
        return value, await Resumed(coro2, first2)

    assert _run(main()) == (42, "caught")


def _normalised(fn: Any) -> str:
    src = "\n".join(line.split("#", 1)[0] for line in inspect.getsource(fn).splitlines())
    flat = re.sub(r"\s+", "", src)
    return flat[flat.index(")->None:") + len(")->None:") :]  # the body, without the signature


def test_the_fetch_loop_is_fausts_own_but_for_the_hand_off() -> None:
    """An upgrade of faust-streaming that changes Consumer._drain_messages must be looked at here."""
    theirs = _normalised(FaustConsumer._drain_messages)
    ours = _normalised(FastDrainConsumer._drain_messages)
    for old, new in [
        (
            "awaitself.wait_first(callback(message),self.suspend_flow.wait())",
            "awaitdeliver(self,callback(message),suspend_flow)",
        ),
        ("ait=cast(AsyncIterator,getmany(timeout=1.0))", "ait=getmany(timeout=1.0)"),
        (
            "acks_enabled_for=self.app.topics.acks_enabled_for",
            "acks_enabled_for=self.app.topics.acks_enabled_forsuspend_flow=self.suspend_flow",
        ),
    ]:
        assert old in theirs, f"faust-streaming's loop changed: {old!r} is gone"
        theirs = theirs.replace(old, new)
    assert ours == theirs


def test_the_worker_consumer_asks_the_broker_for_fuller_fetches(tmp_path: Path) -> None:
    """The settings reach the aiokafka consumer the worker builds (it is not started: no broker)."""
    settings = Settings(data_dir=tmp_path / "faust", fetch_min_bytes=4096, fetch_wait_s=0.007)

    async def main() -> tuple[Any, Any, int, int]:
        app = create_app(settings, install=False)
        consumer = cast(FastDrainConsumer, app.consumer)
        thread = consumer._new_consumer_thread()
        client = thread._create_worker_consumer(app.transport)  # type: ignore[arg-type]
        try:
            return type(consumer), type(thread), client._fetch_min_bytes, client._fetch_max_wait_ms
        finally:
            await client.stop()

    consumer_type, thread_type, min_bytes, wait_ms = _run(main())
    assert issubclass(consumer_type, FastDrainConsumer)
    assert issubclass(thread_type, BatchingFetchThread)
    assert (min_bytes, wait_ms) == (4096, 7)


@pytest.mark.parametrize(
    ("key", "value", "headers"),
    [
        (
            b"mine-au-1",
            b'{"kind":"batch.extracted"}',
            [("ce_id", b"abc"), ("content-type", b"application/json")],
        ),
        (None, b"\xff\xfe not utf-8", []),
        (b"", b"", [("ce_id", b"")]),
        (b"k", None, None),
    ],
)
def test_the_raw_schema_makes_the_event_fausts_own_schema_makes(
    tmp_path: Path, key: bytes | None, value: bytes | None, headers: Any
) -> None:
    from faust import Schema
    from faust.types import Message

    async def main() -> tuple[Any, Any]:
        app = create_app(Settings(data_dir=tmp_path / "faust"), install=False)
        message = Message("material-events", 1, 42, 0.0, 0, headers, key, value, None)
        theirs: Schema[bytes, bytes] = Schema(
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )
        ours = RawSchema()
        a = await theirs.compile(app)(message)
        b = await ours.compile(app)(message)
        return a, b

    a, b = _run(main())
    assert type(a) is type(b)
    assert (a.key, a.value, a.headers, a.message) == (b.key, b.value, b.headers, b.message)


def test_the_worker_app_keeps_totals_but_no_per_event_statistics(tmp_path: Path) -> None:
    from faust.types import TP, Message

    app = create_app(Settings(data_dir=tmp_path / "faust"), install=False)
    monitor = app.monitor
    assert isinstance(monitor, LeanMonitor)
    tp = TP("material-events", 0)
    message = Message("material-events", 0, 7, 0.0, 0, [], b"k", b"v", None)
    monitor.on_message_in(tp, 7, message)
    assert monitor.on_stream_event_in(tp, 7, cast(Any, None), cast(Any, None)) is None
    monitor.on_stream_event_out(tp, 7, cast(Any, None), cast(Any, None), None)
    monitor.on_message_out(tp, 7, message)
    assert (monitor.messages_received_total, monitor.events_total) == (1, 1)
    assert not monitor.messages_received_by_topic and not monitor.tp_read_offsets
