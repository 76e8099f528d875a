"""End to end through a real Kafka broker, measured in one run beside its physical limits.

- raw Ed25519 verify/s (pyca, one core): the verify stage's ceiling;
- raw kafka-python produce (acks=all) + consume of the very messages the ledger gets: the broker's ceiling;
- end-to-end events/s with one worker and with two workers on two partitions: a backlog of signed
  extraction events is published first, then the worker(s) start; the rate is the number of events over
  the span of their ``appended_at`` times in the store (worker start-up and group join not counted);
- the no-Faust reference (bench/reference.py), in rounds interleaved with the Faust runs (``--repeat``,
  3 by default): each ratio compares runs of the same round, and medians are reported;
- p50/p99 publish-to-appended latency at a fixed offered load against idle, warmed workers (one, then
  two), split into publish -> verified and verified -> appended, for two shapes of load: one produce
  request per event (linger 0) and 5 ms of events per request (linger 5), with the CPU the load
  generator's sender and the broker took meanwhile (they share the ledger's two cores here).

Run: ``python -m bench.bench_kafka [--events N] [--rate R] [--seconds S] [--repeat K]
[--latency-rounds L] [--latency-only] [--quick]``. Prints figures,
then one JSON line. Not a test: nothing here asserts (issue 11: >= 4k/s and >= 0.8x the reference with
one worker; p99 < 250 ms at 1,000/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, func, select

from bench.procstat import proc_stat
from ledger.core import Ledger
from ledger.store import ENTRIES
from schemas.cloudevents import to_binary
from schemas.events import Kind
from schemas.signing import decode, generate_key, key_id, public_key_b64, save_private_key, sign_object
from streams.localbroker import LocalBroker, create_topics
from streams.publisher import Publisher
from streams.settings import Settings
from streams.topics import ALL_TOPICS
from streams.worker import WorkerProcess

T0 = datetime(2025, 3, 1, tzinfo=UTC)
#: Pause before the latency run's second warm-up: longer than a group join and a helper's start.
SETTLE_S = 5.0


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Chain:
    """An operator, a few extraction facilities and their keys; signs as many events as asked."""

    def __init__(self, n_facilities: int = 8) -> None:
        self.operator = generate_key()
        self.facilities = [(f"mine-bench-{i:02d}", generate_key()) for i in range(n_facilities)]
        self.counter = 0

    def registry_events(self) -> list[bytes]:
        out = []
        for fid, key in self.facilities:
            obj = {
                "spec": "batteryledger/1",
                "kind": Kind.FACILITY_REGISTERED.value,
                "facility_id": "registry",
                "time": iso(T0 - timedelta(days=30)),
                "nonce": fid,
                "subject_facility_id": fid,
                "legal_entity": f"{fid} Pty Ltd",
                "country": "AU",
                "roles": [Kind.BATCH_EXTRACTED.value],
                "attestation": {"feoc": False, "as_of": iso(T0 - timedelta(days=30))},
                "key": {
                    "key_id": key_id(key.public_key()),
                    "public_key": public_key_b64(key.public_key()),
                    "valid_from": iso(T0 - timedelta(days=30)),
                },
            }
            out.append(sign_object(obj, self.operator)[0])
        return out

    def events(self, n: int, tag: str) -> list[bytes]:
        out = []
        for i in range(n):
            fid, key = self.facilities[i % len(self.facilities)]
            self.counter += 1
            obj = {
                "spec": "batteryledger/1",
                "kind": Kind.BATCH_EXTRACTED.value,
                "facility_id": fid,
                "time": iso(T0 + timedelta(seconds=self.counter)),
                "outputs": [
                    {
                        "batch_id": f"{tag}-{self.counter}",
                        "material": "spodumene_concentrate",
                        "kg": "1000.500",
                        "value_usd": "1250",
                        "contained_kg": {"li": "30.250"},
                    }
                ],
                "site": "pit 3",
            }
            out.append(sign_object(obj, key)[0])
        return out


_PUB: dict[str, Any] = {}


def _verify_rate(decoded: list[Any]) -> float:
    start = time.perf_counter()
    for d in decoded:
        _PUB[d.facility_id].verify(d.signature, d.unsigned)
    return len(decoded) / (time.perf_counter() - start)


def bench_raw_kafka(bootstrap: str, raws: list[bytes]) -> dict[str, float]:
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [ALL_TOPICS(2)[0].renamed(topic)])
    msgs = [to_binary(decode(r)) for r in raws]
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, batch_size=256 * 1024
    )
    start = time.perf_counter()
    for m in msgs:
        producer.send(topic, value=m.value, key=m.key, headers=m.headers)
    producer.flush()
    produce_s = time.perf_counter() - start
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    got = 0
    start = time.perf_counter()
    deadline = time.monotonic() + 120
    while got < len(msgs) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got += len(records)
    consume_s = time.perf_counter() - start
    consumer.close()
    n = len(msgs)
    return {
        "produce_per_s": n / produce_s,
        "consume_per_s": got / consume_s,
        "produce_plus_consume_per_s": n / (produce_s + consume_s),
    }


class Run:
    """A fresh ledger + topics for one measurement."""

    def __init__(self, tmp: Path, bootstrap: str, chain: Chain, partitions: int) -> None:
        self.tmp = tmp / uuid.uuid4().hex[:8]
        self.tmp.mkdir(parents=True)
        suffix = f"bench-{uuid.uuid4().hex[:8]}"
        self.settings = Settings(
            broker=bootstrap,
            store=f"sqlite:///{self.tmp}/ledger.db",
            app_id=f"bench-{suffix}",
            partitions=partitions,
            topic_suffix=suffix,
            operator_key=self.tmp / "operator.key",
            data_dir=self.tmp / "faust",
            checkpoint_interval_s=5.0,
            log_level="warning",
        )
        create_topics(bootstrap, [s.renamed(self.settings.topic(s.name)) for s in ALL_TOPICS(partitions)])
        Ledger.init(self.settings.store, operator_key=chain.operator, origin="bench/ledger").close()
        save_private_key(chain.operator, self.settings.operator_key)  # type: ignore[arg-type]
        self.chain = chain
        self.bootstrap = bootstrap
        self.workers: list[WorkerProcess] = []
        self._probe: Engine | None = None
        self.pub = Publisher(bootstrap, "registry", None, topic=self.settings.events_topic)

    def entries(self) -> int:
        """Entries in the store, genesis included: one indexed query on a kept connection (opening a
        Ledger and counting its tables on every poll cost the measured workers a few percent of a core)."""
        if self._probe is None:
            self._probe = create_engine(self.settings.store)
        with self._probe.connect() as conn:
            top = conn.execute(select(func.max(ENTRIES.c.seq))).scalar()
        return 0 if top is None else int(top) + 1

    def wait_entries(self, n: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.entries() < n:
            for w in self.workers:
                if not w.is_running():
                    raise SystemExit(f"worker died:\n{w.log_tail(40)}")
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"timed out at {self.entries()} of {n} entries\n{self.workers[0].log_tail(40)}"
                )
            time.sleep(0.25)

    def start_workers(self, n: int) -> None:
        for i in range(n):
            self.workers.append(WorkerProcess(self.settings, self.tmp / f"worker-{i}.log").start())

    def close(self) -> None:
        if self._probe is not None:
            self._probe.dispose()
        self.pub.close()
        for w in self.workers:
            w.stop()


def appended_span(store: str, first_seq: int) -> tuple[int, float]:
    with Ledger(store) as led, led.engine.connect() as conn:
        row = conn.execute(
            select(func.count(), func.min(ENTRIES.c.appended_at), func.max(ENTRIES.c.appended_at)).where(
                ENTRIES.c.seq >= first_seq
            )
        ).one()
    n, lo, hi = int(row[0]), row[1], row[2]
    return n, max((hi - lo).total_seconds(), 1e-6)


def bench_end_to_end(tmp: Path, bootstrap: str, chain: Chain, n_events: int, workers: int) -> dict[str, Any]:
    """Backlog mode: the events wait on the topic, then the worker(s) start and drain them.

    The publisher, the broker and the workers share this machine's cores, so the worker is measured
    alone: registry and a warm-up first (so every key is known), workers stopped, the backlog published,
    workers started again; the rate is over the span of the backlog's `appended_at` times.
    """
    run = Run(tmp, bootstrap, chain, partitions=max(2, workers))
    try:
        reg = chain.registry_events()
        run.pub.publish_many(reg)
        run.start_workers(1)
        run.wait_entries(1 + len(reg))
        warm = chain.events(200, f"warm{workers}")
        run.pub.publish_many(warm)
        base = 1 + len(reg) + len(warm)
        run.wait_entries(base)
        for w in run.workers:
            w.stop()
        run.workers.clear()
        events = chain.events(n_events, f"e2e{workers}")
        t_pub = time.perf_counter()
        run.pub.publish_many(events)
        publish_s = time.perf_counter() - t_pub
        t0 = time.perf_counter()
        run.start_workers(workers)
        run.wait_entries(base + n_events)
        wall_s = time.perf_counter() - t0
        n, span = appended_span(run.settings.store, base)
        return {
            "workers": workers,
            "events": n,
            "events_per_s_store_span": n / span,
            "events_per_s_wall_incl_startup": n_events / wall_s,
            "publish_per_s": n_events / publish_s,
        }
    finally:
        run.close()


def _cpu_ticks(pid: int | None) -> int:
    """User + system clock ticks of a process so far (0 when unknown)."""
    stat = proc_stat(pid) if pid is not None else None
    return stat[1] if stat is not None else 0


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def _verified_times(run: Run, wanted: set[str]) -> dict[str, datetime]:
    """Event id -> timestamp of the verified-topic record that carried it (the worker's produce time)."""
    from kafka import KafkaConsumer

    from ledger.intake import unpack_verified
    from streams.settings import resolve_hop_key

    key = resolve_hop_key(run.settings)
    topic = run.settings.verified_topic
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=run.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    out: dict[str, datetime] = {}
    try:
        for rec in consumer:
            at = datetime.fromtimestamp(rec.timestamp / 1000, UTC)
            for it in unpack_verified(rec.headers, rec.value, key, topic=topic, position="bench"):
                if it.decoded is not None and it.decoded.event_id in wanted:
                    out.setdefault(it.decoded.event_id, at)
    finally:
        consumer.close()
    return out


def bench_latency(
    tmp: Path,
    bootstrap: str,
    chain: Chain,
    rate: float,
    seconds: float,
    workers: int = 1,
    linger_ms: float = 0,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """Publish -> appended at `rate` events/s offered by one kafka-python producer. `linger_ms` 0: one
    produce request per event (what `Publisher.publish` sends); 5: the producer gathers 5 ms of events
    per request, as a plant gateway's `publish_many` does (each event's latency counts the wait)."""
    run = Run(tmp, bootstrap, chain, partitions=2)
    try:
        reg = chain.registry_events()
        run.pub.publish_many(reg)
        run.start_workers(workers)
        run.wait_entries(1 + len(reg))  # facilities' events must not overtake their registration
        warm = chain.events(200, "lwarm")
        run.pub.publish_many(warm)
        base = 1 + len(reg) + len(warm)
        run.wait_entries(base)
        # a second worker may join (and the group rebalance, and its verify helper start) after the first
        # warm-up was served: let the group settle, then warm up again, so the run measures steady state
        time.sleep(SETTLE_S)
        warm = chain.events(200, "lwarm2")
        run.pub.publish_many(warm)
        base += len(warm)
        run.wait_entries(base)
        n = int(rate * seconds)
        events = chain.events(n, "lat")
        sent_at: dict[str, datetime] = {}
        pub = Publisher(bootstrap, "registry", None, topic=run.settings.events_topic, linger_ms=linger_ms)
        # The plants' work (signing, the CloudEvents envelope) is done before the clock starts: on a
        # real line it runs on the plants' machines, not on the two cores the ledger is measured on.
        messages = [pub.message(raw) for raw in events]
        cpu0 = (_cpu_ticks(broker_pid), os.times())
        start = time.perf_counter()
        futures = []
        for i, (eid, msg) in enumerate(messages):
            due = start + i / rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.001))
            sent_at[eid] = datetime.now(UTC)
            futures.append(
                pub._producer.send(
                    run.settings.events_topic, value=msg.value, key=msg.key, headers=msg.headers
                )
            )
        pub.flush()
        span = time.perf_counter() - start
        offered = n / span
        broker_cpu = (_cpu_ticks(broker_pid) - cpu0[0]) / os.sysconf("SC_CLK_TCK") / span
        t1 = os.times()
        sender_cpu = (t1.user + t1.system - cpu0[1].user - cpu0[1].system) / span
        pub.close()
        run.wait_entries(base + n)
        with Ledger(run.settings.store) as led, led.engine.connect() as conn:
            rows = conn.execute(
                select(ENTRIES.c.event_id, ENTRIES.c.appended_at).where(ENTRIES.c.seq >= base)
            ).all()
        lat = sorted(
            (r.appended_at.replace(tzinfo=UTC) - sent_at[r.event_id]).total_seconds() * 1000
            for r in rows
            if r.event_id in sent_at
        )
        # where the time goes: the verified-topic record of each event is timestamped by the worker's
        # producer right after the verify stage, so publish -> verified and verified -> appended split it
        verified_at = _verified_times(run, set(sent_at))
        appended = {r.event_id: r.appended_at.replace(tzinfo=UTC) for r in rows}
        to_verified = sorted(
            (verified_at[e] - sent_at[e]).total_seconds() * 1000 for e in verified_at if e in sent_at
        )
        to_appended = sorted(
            (appended[e] - verified_at[e]).total_seconds() * 1000 for e in verified_at if e in appended
        )
        return {
            "workers": workers,
            "publisher_linger_ms": linger_ms,
            "offered_per_s": offered,
            "broker_cpu_cores": broker_cpu,
            "load_generator_cpu_cores": sender_cpu,
            "events": len(lat),
            "p50_ms": statistics.median(lat),
            "p99_ms": _p99(lat),
            "max_ms": lat[-1],
            "publish_to_verified_p50_ms": statistics.median(to_verified) if to_verified else None,
            "publish_to_verified_p99_ms": _p99(to_verified) if to_verified else None,
            "verified_to_appended_p50_ms": statistics.median(to_appended) if to_appended else None,
            "verified_to_appended_p99_ms": _p99(to_appended) if to_appended else None,
        }
    finally:
        run.close()


def _median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in runs))


def _spread(runs: list[dict[str, Any]], key: str) -> str:
    return ", ".join(f"{r[key]:,.0f}" for r in runs)


def _print_latency(lat: dict[str, Any]) -> None:
    print(
        f"publish->appended at {lat['offered_per_s']:,.0f} /s offered, {lat['workers']} worker(s), "
        f"linger {lat['publisher_linger_ms']:g} ms: p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, "
        f"max {lat['max_ms']:.0f} ms ({lat['events']} events; target p99 < 250 ms at 1,000 /s)"
    )
    print(
        f"  load on the machine beside the ledger: the load generator's sender "
        f"{lat['load_generator_cpu_cores']:.0%} of a core, the broker {lat['broker_cpu_cores']:.0%}"
    )
    if lat["publish_to_verified_p50_ms"] is not None:
        print(
            f"  of which publish->verified p50 {lat['publish_to_verified_p50_ms']:.0f} ms, "
            f"p99 {lat['publish_to_verified_p99_ms']:.0f} ms; verified->appended p50 "
            f"{lat['verified_to_appended_p50_ms']:.0f} ms, p99 {lat['verified_to_appended_p99_ms']:.0f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=30000, help="events per end-to-end run")
    ap.add_argument("--rate", type=float, default=1000.0, help="offered load for the latency run (events/s)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of (1 worker, 2 workers, reference), interleaved; medians are reported",
    )
    ap.add_argument("--quick", action="store_true", help="small runs (smoke)")
    ap.add_argument("--latency-only", action="store_true", help="only the latency runs")
    ap.add_argument(
        "--latency-rounds", type=int, default=3, help="rounds of latency runs (median by p99 reported)"
    )
    args = ap.parse_args()
    if args.quick:
        args.events, args.seconds, args.repeat, args.latency_rounds = 5000, 3.0, 1, 1

    chain = Chain()
    global _PUB
    _PUB = {fid: key.public_key() for fid, key in chain.facilities}
    sample = chain.events(5000, "ed")
    ed_per_s = _verify_rate([decode(r) for r in sample])

    results: dict[str, Any] = {
        "bench": "kafka",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "ed25519_verify_per_s_one_core": ed_per_s,
    }
    print(f"machine: {results['machine']}")
    print(f"raw Ed25519 verify (pyca, one core):        {ed_per_s:10,.0f} /s")
    with tempfile.TemporaryDirectory(prefix="bl-bench-") as tmpdir:
        tmp = Path(tmpdir)
        broker = LocalBroker(tmp / "kafka")
        bootstrap = broker.start(timeout=120)
        try:
            if not args.latency_only:
                raw = bench_raw_kafka(bootstrap, chain.events(args.events, "raw"))
                results["raw_kafka_python"] = raw
                print(f"raw kafka-python produce (acks=all):        {raw['produce_per_s']:10,.0f} /s")
                print(f"raw kafka-python consume:                   {raw['consume_per_s']:10,.0f} /s")
                print(
                    f"raw produce + consume (same messages):      {raw['produce_plus_consume_per_s']:10,.0f} /s"
                )
                from bench.reference import run_reference

                # Interleaved rounds: this VM's speed drifts by tens of percent from minute to minute, so
                # each ratio compares runs of the same rounds, and the medians are reported.
                runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": [], "ref": []}
                for round_no in range(args.repeat):
                    for workers in (1, 2):
                        r = bench_end_to_end(tmp, bootstrap, chain, args.events, workers)
                        runs[str(workers)].append(r)
                        print(
                            f"  round {round_no + 1}: {workers} worker(s) {r['events_per_s_store_span']:8,.0f} /s"
                        )
                    ref = run_reference(tmp, bootstrap, chain, args.events)
                    runs["ref"].append(ref)
                    print(f"  round {round_no + 1}: reference   {ref['events_per_s_store_span']:8,.0f} /s")
                key = "events_per_s_store_span"
                ref_median = _median_of(runs["ref"], key)
                for workers in (1, 2):
                    median = _median_of(runs[str(workers)], key)
                    ratios = [a[key] / b[key] for a, b in zip(runs[str(workers)], runs["ref"], strict=True)]
                    results[f"end_to_end_{workers}_worker"] = {
                        "workers": workers,
                        "events": args.events,
                        "events_per_s_store_span": median,
                        "runs": runs[str(workers)],
                        "vs_reference_per_round": ratios,
                    }
                    print(
                        f"end to end, {workers} worker(s), 2 partitions:    {median:10,.0f} /s median of "
                        f"[{_spread(runs[str(workers)], key)}]  ({statistics.median(ratios):.2f} x reference, "
                        f"median of the rounds; {median / ed_per_s:.2f} x raw pyca verify)"
                    )
                results["no_faust_reference"] = {"events_per_s_store_span": ref_median, "runs": runs["ref"]}
                one_w = results["end_to_end_1_worker"]["vs_reference_per_round"]
                results["faust_vs_reference"] = statistics.median(one_w)
                results["faust_2_workers_vs_reference"] = statistics.median(
                    results["end_to_end_2_worker"]["vs_reference_per_round"]
                )
                print(
                    f"no-Faust reference (aiokafka verify | sequence): {ref_median:10,.0f} /s median of "
                    f"[{_spread(runs['ref'], key)}]  (target: 1 Faust worker >= 0.8 x reference)"
                )
            # Latency with both shapes of offered load: one produce request per event (linger 0), and
            # 5 ms of events per request (linger 5). Rounds interleaved; each figure is the median run
            # by p99 (a single 10 s run's p99 rests on its 100 slowest events).
            lat_runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
            for _ in range(args.latency_rounds):
                for linger in (0, 5):
                    for workers in (1, 2):
                        lat = bench_latency(
                            tmp, bootstrap, chain, args.rate, args.seconds, workers, linger, broker.pid
                        )
                        lat_runs.setdefault((linger, workers), []).append(lat)
            for (linger, workers), lruns in lat_runs.items():
                lruns.sort(key=lambda r: r["p99_ms"])
                lat = dict(lruns[len(lruns) // 2], p99_ms_runs=[r["p99_ms"] for r in lruns])
                results[f"latency_{workers}_worker" + (f"_linger_{linger}" if linger else "")] = lat
                _print_latency(lat)
                if len(lruns) > 1:
                    print(
                        f"  p99 of the {len(lruns)} rounds, lowest first: {', '.join(f'{p:.0f}' for p in lat['p99_ms_runs'])} ms"
                    )
            if args.latency_only:
                print(json.dumps({k: v for k, v in results.items() if k.startswith("latency")}))
                return
        finally:
            broker.stop()
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
