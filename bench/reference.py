"""The no-Faust reference: the same verify and append work driven by plain aiokafka, two processes.

    material-events --[verify process]--> verified topic (several signed events per message)
                    --[sequence process]--> ledger store (one transaction per message, offset inside)

The verify process calls what the verify agent calls (`ledger.intake.verify_message` with the
registry read from the store); the sequence process re-decodes each signed event and appends the
batch with `Ledger.append(..., offsets=...)`, the consumed offset in the same transaction. No Faust,
no retries, no rejections path (the events are valid): it is the yardstick the Faust pipeline is held
to (issue 11: at least 0.8x of it in the same run).

Framing of a verified message: repeated (4-byte big-endian length, signed canonical event bytes).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import struct
import time
import uuid
from pathlib import Path
from typing import Any

from ledger.core import Incoming, Ledger
from ledger.intake import source_of, verify_message
from schemas.signing import decode

LEN = struct.Struct(">I")
MAX_RECORDS = 2000


def frame(events: list[bytes]) -> bytes:
    return b"".join(LEN.pack(len(e)) + e for e in events)


def unframe(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        (n,) = LEN.unpack_from(data, i)
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out


async def _verify_loop(bootstrap: str, store: str, src: str, dst: str, n: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    registry = Ledger(store).registry
    consumer = AIOKafkaConsumer(
        src, bootstrap_servers=bootstrap, group_id=None,
        auto_offset_reset="earliest", enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024,
    )  # fmt: skip
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=900 * 1024,
        max_request_size=2 * 1024 * 1024,
    )  # fmt: skip
    await consumer.start()
    await producer.start()
    try:
        seen = 0
        while seen < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            for tp, records in batch.items():
                good = []
                for r in records:
                    inc = verify_message(
                        r.headers, r.value, registry, source=source_of(tp.topic, tp.partition, r.offset)
                    )
                    if inc.error is None and inc.decoded is not None:
                        good.append(inc.decoded.signed)
                seen += len(records)
                if good:
                    await producer.send(dst, frame(good), key=b"v")
        await producer.flush()
    finally:
        await producer.stop()
        await consumer.stop()


async def _sequence_loop(bootstrap: str, store: str, src: str, n: int) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        src, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=16 * 1024 * 1024,
    )  # fmt: skip
    await consumer.start()
    led = Ledger(store)
    try:
        done = 0
        while done < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=64)
            for tp, records in batch.items():
                for r in records:
                    items = [
                        Incoming(raw=raw, decoded=decode(raw), signature_checked=True, source="reference")
                        for raw in unframe(r.value)
                    ]
                    results = led.append(items, offsets={("reference", tp.topic, tp.partition): r.offset + 1})
                    done += sum(1 for res in results if res.status == "appended")
    finally:
        led.close()
        await consumer.stop()


def _run(target: str, *args: Any) -> None:
    fn = {"verify": _verify_loop, "sequence": _sequence_loop}[target]
    asyncio.run(fn(*args))  # type: ignore[operator]


def run_reference(tmp: Path, bootstrap: str, chain: Any, n_events: int) -> dict[str, Any]:
    """Publish a backlog of `n_events`, then start the two processes; rate over the appended_at span."""
    from bench.bench_kafka import appended_span
    from streams.localbroker import create_topics
    from streams.publisher import Publisher
    from streams.topics import ALL_TOPICS

    d = tmp / f"ref-{uuid.uuid4().hex[:6]}"
    d.mkdir(parents=True)
    store = f"sqlite:///{d}/ledger.db"
    src, dst = f"ref-events-{uuid.uuid4().hex[:6]}", f"ref-verified-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [ALL_TOPICS(2)[0].renamed(src), ALL_TOPICS(1)[0].renamed(dst)])
    led = Ledger.init(store, operator_key=chain.operator, origin="bench/reference")
    reg = chain.registry_events()
    led.append(reg)
    base = int(led.stats()["entries"])
    led.close()
    events = chain.events(n_events, f"ref{uuid.uuid4().hex[:4]}")
    with Publisher(bootstrap, "registry", None, topic=src) as pub:
        pub.publish_many(events)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_run, args=("verify", bootstrap, store, src, dst, n_events)),
        ctx.Process(target=_run, args=("sequence", bootstrap, store, dst, n_events)),
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=900)
        if p.exitcode != 0:
            raise SystemExit(f"reference {p.name} failed (exit {p.exitcode})")
    wall = time.perf_counter() - t0
    n, span = appended_span(store, base)
    return {
        "events": n,
        "events_per_s_store_span": n / span,
        "events_per_s_wall_incl_startup": n_events / wall,
    }
