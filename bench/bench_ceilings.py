"""Ceilings and the figures that sit under them, measured in one run (issue 11).

- raw Ed25519 verify per library (pyca/OpenSSL, libsodium through PyNaCl), one core;
- the verify path (CloudEvents unwrap, decode, canonical bytes, schema, registry, Ed25519) with each
  library behind `schemas.signing.verify_ed25519`, as a share of that library's raw rate;
- SQLite bare insert (raw sqlite3, WAL, 1000 rows per transaction, a 600-byte blob per row);
- a bare aiokafka two-hop relay (produce, consume, produce, consume, no work) against the project's
  own broker (streams/localbroker.py): the ceiling of a worker's Kafka side;
- the Publisher (kafka-python, its default producer settings, the `crc32c` wheel when installed):
  events signed, sent and acknowledged per second, each ack reported by `publish_many`, beside its two
  ceilings measured in the same rounds: raw Ed25519 signing with pyca, and bare kafka-python
  produce + ack in the Publisher's producer configuration.

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
from schemas.signing import decode, generate_key, public_bytes, signer

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


def bench_publisher(bootstrap: str, n: int, rounds: int = 4) -> dict[str, Any]:
    """The Publisher beside its two ceilings, measured in the same run, in alternating rounds so that
    load from other processes hits all four alike:

    - raw Ed25519 signing with pyca and with libsodium (the canonical unsigned bytes of the same events,
      one core; the Publisher signs with libsodium when PyNaCl is installed: `schemas.signing.signer`);
    - bare kafka-python produce + ack in the Publisher's own producer configuration (`producer_config`,
      prebuilt CloudEvents messages, every future awaited): the ceiling of its Kafka side;
    - Publisher.publish_many of unsigned events (validate + sign + send), every ack reported via on_ack;
    - the same with `sign_processes` signing helpers (streams/signpool.py; BENCH_SIGN_PROCESSES, 1);
    - Publisher.publish_many of bytes signed elsewhere (decode + send), every ack reported via on_ack.
    """
    from kafka import KafkaProducer

    from schemas.canonical import encode_validated
    from schemas.events import SPEC
    from streams.localbroker import create_topics
    from streams.publisher import Publisher, binary_message, kafka_crc32c_native, producer_config
    from streams.topics import ALL_TOPICS

    topic = f"bench-pub-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [ALL_TOPICS(2)[0].renamed(topic)])
    fid, key = "mine-pub", generate_key()
    per = max(1, n // rounds)
    acks = 0

    def on_ack(_: Any) -> None:
        nonlocal acks
        acks += 1

    def unsigned_block() -> list[dict[str, Any]]:
        return _unsigned_events(fid, per)

    times = {"sign": 0.0, "sign_sodium": 0.0, "bare": 0.0, "publisher": 0.0, "pooled": 0.0, "presigned": 0.0}
    helpers = int(os.environ.get("BENCH_SIGN_PROCESSES", "1"))
    sodium_sign = signer(key, backend="libsodium")
    bare_acked = 0
    receipts = 0
    with (
        Publisher(bootstrap, fid, key, topic=topic) as pub,
        Publisher(bootstrap, fid, key, topic=topic, sign_processes=helpers) as pooled,
    ):
        bare = KafkaProducer(**producer_config(bootstrap, fid, client_id="bench-bare"))
        try:
            pub.publish_many(_unsigned_events(fid, 200))  # connect, metadata, producer id
            pooled.publish_many(_unsigned_events(fid, 2000))  # the same, and the helpers started
            for fut in [bare.send(topic, value=b"warm", key=fid.encode()) for _ in range(200)]:
                fut.get(timeout=30)
            for _ in range(rounds):
                # inputs built outside the timed sections
                objs = [{**ev, "spec": SPEC, "facility_id": fid} for ev in unsigned_block()]
                messages = [encode_validated(o) for o in objs]
                t = time.perf_counter()
                for m in messages:
                    key.sign(m)
                times["sign"] += time.perf_counter() - t
                t = time.perf_counter()
                for m in messages:
                    sodium_sign(m)
                times["sign_sodium"] += time.perf_counter() - t

                wire = []
                for o in objs:
                    raw = pub.sign(o)
                    d = decode(raw)
                    wire.append(binary_message(d.event_id, d.event, raw))
                t = time.perf_counter()
                futs = [bare.send(topic, value=w.value, key=w.key, headers=w.headers) for w in wire]
                bare.flush(timeout=60)
                for fut in futs:
                    fut.get(timeout=60)
                    bare_acked += 1
                times["bare"] += time.perf_counter() - t

                block = unsigned_block()
                t = time.perf_counter()
                receipts += len(pub.publish_many(block, on_ack=on_ack))
                times["publisher"] += time.perf_counter() - t

                block = unsigned_block()
                t = time.perf_counter()
                receipts += len(pooled.publish_many(block, on_ack=on_ack))
                times["pooled"] += time.perf_counter() - t

                signed = [pub.sign(ev) for ev in unsigned_block()]
                t = time.perf_counter()
                receipts += len(pub.publish_many(signed, on_ack=on_ack))
                times["presigned"] += time.perf_counter() - t
        finally:
            bare.close(timeout=10)
    total = per * rounds
    rate = {name: total / t for name, t in times.items()}
    return {
        "pyca_sign_per_s": rate["sign"],
        "libsodium_sign_per_s": rate["sign_sodium"],
        "kafka_python_bare_send_acked_per_s": rate["bare"],
        "publisher_sign_send_acked_per_s": rate["publisher"],
        "publisher_presigned_send_acked_per_s": rate["presigned"],
        "publisher_sign_processes": helpers,
        "publisher_pooled_sign_send_acked_per_s": rate["pooled"],
        "pooled_vs_bare_kafka_python": rate["pooled"] / rate["bare"],
        "pooled_vs_publisher": rate["pooled"] / rate["publisher"],
        "publisher_vs_pyca_sign": rate["publisher"] / rate["sign"],
        "publisher_vs_libsodium_sign": rate["publisher"] / rate["sign_sodium"],
        "publisher_vs_bare_kafka_python": rate["publisher"] / rate["bare"],
        "presigned_vs_bare_kafka_python": rate["presigned"] / rate["bare"],
        "acks_reported": acks,
        "receipts": receipts,
        "bare_acked": bare_acked,
        "crc32c_wheel": kafka_crc32c_native(),
        "load_avg": os.getloadavg(),
    }


def _print_publisher(pub: dict[str, Any]) -> None:
    print(f"raw Ed25519 sign, pyca:                     {pub['pyca_sign_per_s']:10,.0f} /s")
    print(f"raw Ed25519 sign, libsodium (ceiling):      {pub['libsodium_sign_per_s']:10,.0f} /s")
    print(
        f"bare kafka-python produce + ack (ceiling):  {pub['kafka_python_bare_send_acked_per_s']:10,.0f} /s"
        f"  (the Publisher's producer settings; crc32c wheel: {pub['crc32c_wheel']})"
    )
    print(
        f"Publisher, sign + send + ack:               {pub['publisher_sign_send_acked_per_s']:10,.0f} /s"
        f"  ({pub['publisher_vs_libsodium_sign']:.0%} of raw libsodium signing, "
        f"{pub['publisher_vs_bare_kafka_python']:.0%} of bare kafka-python; target 20k/s)"
    )
    print(
        f"Publisher, {pub['publisher_sign_processes']} signing helper(s):       "
        f"{pub['publisher_pooled_sign_send_acked_per_s']:10,.0f} /s"
        f"  ({pub['pooled_vs_bare_kafka_python']:.0%} of bare kafka-python; "
        f"{pub['pooled_vs_publisher']:.2f}x the Publisher signing itself)"
    )
    print(
        f"Publisher, pre-signed send + ack:           {pub['publisher_presigned_send_acked_per_s']:10,.0f} /s"
        f"  ({pub['presigned_vs_bare_kafka_python']:.0%} of bare kafka-python; "
        f"{pub['acks_reported']:,} acks reported)"
    )
    print("load average during the Publisher figures:  " + " ".join(f"{x:.2f}" for x in pub["load_avg"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--quick", action="store_true", help="small runs (smoke)")
    ap.add_argument("--no-kafka", action="store_true", help="skip the broker figures")
    ap.add_argument("--publisher-only", action="store_true", help="only the Publisher and its two ceilings")
    ap.add_argument("--bootstrap", help="use this running broker instead of starting one")
    args, _ = ap.parse_known_args()
    n = 4000 if args.quick else args.events
    results: dict[str, Any] = {
        "bench": "ceilings",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
    }
    print(f"machine: {results['machine']} (shared: other processes may be running)")
    if args.publisher_only:
        if args.bootstrap:
            results["publisher"] = bench_publisher(args.bootstrap, n)
        else:
            from streams.localbroker import LocalBroker

            with tempfile.TemporaryDirectory(prefix="bl-bench-") as tmpdir:
                broker = LocalBroker(Path(tmpdir) / "kafka")
                try:
                    results["publisher"] = bench_publisher(broker.start(timeout=120), n)
                finally:
                    broker.stop()
        _print_publisher(results["publisher"])
        print(json.dumps(results, sort_keys=True))
        return
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
                _print_publisher(pub)
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
