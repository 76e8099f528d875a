"""Ceilings and the figures that sit under them, measured in one run (issue 11).

- raw Ed25519 verify per library (pyca/OpenSSL, libsodium through PyNaCl), one core;
- the verify path (CloudEvents unwrap, decode, canonical bytes, schema, registry, Ed25519) with each
  library behind `schemas.signing.verify_ed25519`, as a share of that library's raw rate;
- SQLite bare insert (raw sqlite3, WAL, 1000 rows per transaction, a 600-byte blob per row);
- a bare aiokafka two-hop relay (produce, consume, produce, consume, no work) against the project's
  own broker (streams/localbroker.py): the ceiling of a worker's Kafka side;
- the Publisher (kafka-python, its default producer settings, the `crc32c` wheel when installed):
  events signed, sent and acknowledged per second, each ack reported by `publish_many`.

Blocks of the raw and the full-path loops alternate so that load from other processes hits both alike.
Run: ``python -m bench.bench_ceilings [--events N] [--quick] [--no-kafka]``. Prints figures, then one
JSON line. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import schemas.signing as signing
from bench.bench_core import extraction_events, register
from ledger.core import Ledger
from ledger.intake import verify_message
from schemas.cloudevents import to_binary
from schemas.signing import decode, generate_key, public_bytes

BLOCK = 200


def bench_ed25519(n: int) -> dict[str, float]:
    """Raw verify per library and the verify path with each, blocks alternating."""
    op, key = generate_key(), generate_key()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        led = Ledger.init(str(Path(d) / "v.db"), operator_key=op, origin="bench/ceilings")
        led.append([register(op, "mine", "AU", ["batch.extracted"], key)])
        raws = extraction_events(key, "mine", n)
        decoded = [decode(r) for r in raws]
        msgs = [to_binary(dd) for dd in decoded]
        pk = public_bytes(key.public_key())
        pyca_key = Ed25519PublicKey.from_public_bytes(pk)
        from nacl.bindings import crypto_sign_open

        times = {"raw_pyca": 0.0, "raw_libsodium": 0.0, "path_pyca": 0.0, "path_libsodium": 0.0}
        default = signing.ED25519_BACKEND
        try:
            for i in range(0, n, BLOCK):
                block, mblock = decoded[i : i + BLOCK], msgs[i : i + BLOCK]
                t = time.perf_counter()
                for dd in block:
                    pyca_key.verify(dd.signature, dd.unsigned)
                times["raw_pyca"] += time.perf_counter() - t
                t = time.perf_counter()
                for dd in block:
                    crypto_sign_open(dd.signature + dd.unsigned, pk)
                times["raw_libsodium"] += time.perf_counter() - t
                for backend in ("pyca", "libsodium"):
                    signing.ED25519_BACKEND = backend  # what verify_ed25519 uses by default
                    t = time.perf_counter()
                    for m in mblock:
                        inc = verify_message(m.headers, m.value, led.registry, source="bench")
                        assert inc.error is None and inc.signature_checked
                    times[f"path_{backend}"] += time.perf_counter() - t
        finally:
            signing.ED25519_BACKEND = default
            led.close()
    for name, t in times.items():
        out[f"{name}_per_s"] = n / t
    out["path_libsodium_vs_raw_libsodium"] = out["path_libsodium_per_s"] / out["raw_libsodium_per_s"]
    out["path_pyca_vs_raw_pyca"] = out["path_pyca_per_s"] / out["raw_pyca_per_s"]
    out["libsodium_vs_pyca_raw"] = out["raw_libsodium_per_s"] / out["raw_pyca_per_s"]
    out["default_backend"] = signing.ED25519_BACKEND  # type: ignore[assignment]
    return out


def bench_sqlite_bare(n: int) -> float:
    """Rows/s of a bare insert: the floor under any SQLite append path."""
    blob = os.urandom(600)
    with tempfile.TemporaryDirectory() as d:
        con = sqlite3.connect(str(Path(d) / "bare.db"))
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, event_id TEXT UNIQUE, data BLOB)")
        start = time.perf_counter()
        for i in range(0, n, 1000):
            with con:
                con.executemany(
                    "INSERT INTO t VALUES (?, ?, ?)",
                    ((j, f"{j:064x}", blob) for j in range(i, min(n, i + 1000))),
                )
        rate = n / (time.perf_counter() - start)
        con.close()
    return rate


async def _relay(bootstrap: str, values: list[bytes]) -> float:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.localbroker import create_topics
    from streams.topics import ALL_TOPICS

    a, b = f"relay-a-{uuid.uuid4().hex[:6]}", f"relay-b-{uuid.uuid4().hex[:6]}"
    template = ALL_TOPICS(1)[0]
    create_topics(bootstrap, [template.renamed(a), template.renamed(b)])
    n = len(values)

    def consumer(topic: str) -> Any:
        return AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
            enable_auto_commit=False, fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )  # fmt: skip

    p1 = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
    p2 = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024)
    c1, c2 = consumer(a), consumer(b)
    for client in (p1, p2, c1, c2):
        await client.start()
    try:

        async def hop() -> None:
            moved = 0
            while moved < n:
                for records in (await c1.getmany(timeout_ms=200, max_records=5000)).values():
                    for r in records:
                        await p2.send(b, r.value, key=r.key, headers=r.headers)
                    moved += len(records)

        async def sink() -> None:
            got = 0
            while got < n:
                for records in (await c2.getmany(timeout_ms=200, max_records=5000)).values():
                    got += len(records)

        start = time.perf_counter()
        tasks = [asyncio.create_task(hop()), asyncio.create_task(sink())]
        for v in values:
            await p1.send(a, v, key=b"k")
        await p1.flush()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
        return n / (time.perf_counter() - start)
    finally:
        for client in (p1, p2, c1, c2):
            await client.stop()


def _unsigned_events(fid: str, n: int) -> list[dict[str, Any]]:
    from bench.bench_kafka import T0, iso

    return [
        {
            "kind": "batch.extracted",
            "time": iso(T0 + timedelta(seconds=i)),
            "outputs": [
                {
                    "batch_id": f"PUB-{uuid.uuid4().hex[:8]}-{i}",
                    "material": "spodumene_concentrate",
                    "kg": "1000.500",
                    "value_usd": "1250",
                    "contained_kg": {"li": "30.250"},
                }
            ],
            "site": "pit 3",
        }
        for i in range(n)
    ]


def bench_publisher(bootstrap: str, n: int) -> dict[str, Any]:
    """Publisher.publish_many with its default producer settings, every ack reported via on_ack:
    (a) unsigned events (validate + sign + send), (b) bytes signed elsewhere (send only)."""
    import kafka.record.util as krutil

    from streams.localbroker import create_topics
    from streams.publisher import Publisher
    from streams.topics import ALL_TOPICS

    topic = f"bench-pub-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [ALL_TOPICS(2)[0].renamed(topic)])
    fid, key = "mine-pub", generate_key()
    unsigned = _unsigned_events(fid, n)
    acks = 0

    def on_ack(_: Any) -> None:
        nonlocal acks
        acks += 1

    with Publisher(bootstrap, fid, key, topic=topic) as pub:
        pub.publish_many(unsigned[:200])  # connect, metadata, producer id
        start = time.perf_counter()
        receipts = pub.publish_many(unsigned, on_ack=on_ack)
        sign_rate = n / (time.perf_counter() - start)
        signed = [pub.sign(ev) for ev in _unsigned_events(fid, n)]
        start = time.perf_counter()
        receipts += pub.publish_many(signed, on_ack=on_ack)
        send_rate = n / (time.perf_counter() - start)
    return {
        "publisher_sign_send_acked_per_s": sign_rate,
        "publisher_presigned_send_acked_per_s": send_rate,
        "acks_reported": acks,
        "receipts": len(receipts),
        "crc32c_wheel": krutil.crc32c_c is not None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--quick", action="store_true", help="small runs (smoke)")
    ap.add_argument("--no-kafka", action="store_true", help="skip the broker figures")
    args, _ = ap.parse_known_args()
    n = 4000 if args.quick else args.events
    results: dict[str, Any] = {
        "bench": "ceilings",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
    }
    print(f"machine: {results['machine']} (shared: other processes may be running)")
    ed = bench_ed25519(min(n, 10000))
    results["ed25519"] = ed
    print(f"raw Ed25519 verify, pyca:                   {ed['raw_pyca_per_s']:10,.0f} /s")
    print(f"raw Ed25519 verify, libsodium (PyNaCl):     {ed['raw_libsodium_per_s']:10,.0f} /s"
          f"  ({ed['libsodium_vs_pyca_raw']:.2f} x pyca)")  # fmt: skip
    print(f"verify path with pyca:                      {ed['path_pyca_per_s']:10,.0f} /s"
          f"  ({ed['path_pyca_vs_raw_pyca']:.0%} of raw pyca)")  # fmt: skip
    print(f"verify path with libsodium:                 {ed['path_libsodium_per_s']:10,.0f} /s"
          f"  ({ed['path_libsodium_vs_raw_libsodium']:.0%} of raw libsodium; target 10k/s)")  # fmt: skip
    bare = bench_sqlite_bare(max(n * 5, 50000))
    results["sqlite_bare_insert_per_s"] = bare
    print(f"SQLite bare insert (sqlite3, WAL):          {bare:10,.0f} rows/s")
    if not args.no_kafka:
        from streams.localbroker import LocalBroker

        with tempfile.TemporaryDirectory(prefix="bl-bench-") as tmpdir:
            broker = LocalBroker(Path(tmpdir) / "kafka")
            bootstrap = broker.start(timeout=120)
            try:
                values = [to_binary(decode(r)).value for r in extraction_events(generate_key(), "m", 2000)]
                values = (values * (n // len(values) + 1))[:n]
                relay = asyncio.run(_relay(bootstrap, values))
                results["aiokafka_two_hop_relay_per_s"] = relay
                print(f"aiokafka two-hop relay (no work):           {relay:10,.0f} /s")
                pub = bench_publisher(bootstrap, n)
                results["publisher"] = pub
                print(
                    f"Publisher, sign + send + ack:               {pub['publisher_sign_send_acked_per_s']:10,.0f} /s"
                    "  (target 20k/s)"
                )
                print(
                    f"Publisher, pre-signed send + ack:           {pub['publisher_presigned_send_acked_per_s']:10,.0f} /s"
                    f"  ({pub['acks_reported']:,} acks reported; crc32c wheel: {pub['crc32c_wheel']})"
                )
                from bench.bench_kafka import Chain
                from bench.reference import run_reference

                ref = run_reference(Path(tmpdir), bootstrap, Chain(), n)
                results["no_faust_reference"] = ref
                print(
                    f"no-Faust reference (verify | sequence):     {ref['events_per_s_store_span']:10,.0f} /s"
                    f"  ({ref['events_per_s_store_span'] / relay:.0%} of the relay)"
                )
            finally:
                broker.stop()
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
