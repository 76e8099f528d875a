"""Append throughput of the ledger store on SQLite and PostgreSQL, measured in one run.

Paths per backend, in batches of --batch events (one store transaction each):
- append only: pre-signed, pre-decoded events (`Incoming(decoded=..., signature_checked=True)`), what the
  sequencer does after the verify stage; the design's target is >= 50k appends/s on SQLite;
- sequencer: the same events as verified-hop records (`intake.pack_verified`, one record per batch) through
  `Sequencer.process`: unpack, rebuild of each carried event, re-delivery check, append with offsets;
- full: raw signed bytes, so `Ledger.append` also decodes, canonicalises and verifies each signature;
- mixed: append only and sequencer again on a chain with transformations (per 8 events: 5 extractions,
  2 `batch.processed` with 2 inputs and 2 outputs each, 1 `material.produced` with 2 inputs), where the
  rules and the provenance index do real work.

Issue 11's budget is CPU per event of the sequencer's append of pre-verified events: at most 70 us
(about 14k events/s) on SQLite, PostgreSQL at least 0.7x SQLite. Each figure is printed as events/s and
this process's CPU us per event (PostgreSQL's own CPU is in its server processes), next to the load
average and the SQLite bare-insert ceiling (bench_ceilings.bench_sqlite_bare) measured in the same run.

The events are `batch.extracted` events of one registered facility (one new batch each). SQLite is a
file in WAL mode (synchronous=NORMAL, the store's default); PostgreSQL is a throwaway local cluster with
fsync/synchronous_commit/full_page_writes off, so its figure is an upper bound for a real server.
`--profile` runs cProfile over the SQLite append-only path and prints the top functions.

`--verify-only` times `verify` instead: chain + signatures, full (derived tables too), incremental.

Run: `python -m bench.bench_store [--events 50000] [--batch 1000] [--quick] [--profile] [--verify-only]`.
Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_ceilings import bench_sqlite_bare
from bench.bench_core import T0, _ts, extraction_events, register
from bench.procstat import proc_stat
from ledger.core import Incoming, Ledger
from ledger.intake import HopKey, Sequencer, VerifiedRecord, pack_verified
from schemas.signing import decode, generate_key, sign_object

TARGET_SQLITE_APPENDS_PER_S = 50_000  # design.md "Budgets"
TARGET_APPEND_CPU_US = 70.0  # issue 11: the sequencer's append of pre-verified events, CPU per event
FACILITY = "mine-bench"
ROLES = ["batch.extracted", "batch.processed", "material.produced"]


def registration(op: Ed25519PrivateKey, key: Ed25519PrivateKey) -> bytes:
    return register(op, FACILITY, "AU", ROLES, key, legal_entity="Bench Mining Pty Ltd")


def mixed_events(key: Ed25519PrivateKey, fid: str, n: int) -> list[bytes]:
    """A chain with transformations, per block of 8 events: 4 extractions, 2 `batch.processed` (2 inputs,
    2 outputs each), 1 `material.produced` (2 inputs), 1 more extraction."""
    objs: list[dict[str, Any]] = []
    block = 0
    while len(objs) < n:

        def ev(k: int, kind: str, block: int = block, **fields: Any) -> dict[str, Any]:
            t = _ts(T0 + timedelta(seconds=block * 10 + k))
            return {"spec": "batteryledger/1", "kind": kind, "facility_id": fid, "time": t, **fields}

        def out(bid: str, material: str, kg: str, li: str, usd: str) -> dict[str, Any]:
            return {
                "batch_id": bid,
                "material": material,
                "kg": kg,
                "contained_kg": {"li": li},
                "value_usd": usd,
            }

        ores = [f"ORE-{block}-{k}" for k in range(5)]
        for k, o in enumerate(ores[:4]):
            objs.append(
                ev(
                    k,
                    "batch.extracted",
                    outputs=[out(o, "spodumene_concentrate", "1000.000", "28.500", "1200")],
                )
            )
        refs = [f"REF-{block}-{k}" for k in range(2)]
        for k, r in enumerate(refs):
            inputs = [{"batch_id": ores[2 * k + j], "kg": "1000.000"} for j in range(2)]
            outputs = [
                out(r, "li_carbonate", "150", "28.0", "5000"),
                out(r + "-b", "li_carbonate", "150", "28.0", "5000"),
            ]
            objs.append(ev(4 + k, "batch.processed", inputs=inputs, outputs=outputs))
        inputs = [{"batch_id": r, "kg": "150"} for r in refs]
        objs.append(
            ev(
                6,
                "material.produced",
                inputs=inputs,
                outputs=[out(f"CAM-{block}", "nmc811", "300", "55.0", "20000")],
            )
        )
        objs.append(
            ev(
                7,
                "batch.extracted",
                outputs=[out(ores[4], "spodumene_concentrate", "1000.000", "28.500", "1200")],
            )
        )
        block += 1
    return [sign_object(o, key)[0] for o in objs[:n]]


class Workload:
    def __init__(self, n: int, *, mixed: bool = False) -> None:
        self.op, self.key = generate_key(), generate_key()
        self.register = registration(self.op, self.key)
        if mixed:
            self.raws = mixed_events(self.key, FACILITY, n)
        else:
            self.raws = extraction_events(self.key, FACILITY, n, prefix="AU-SPOD")
        self.decoded = [decode(r) for r in self.raws]

    def pre_verified(self) -> list[Incoming]:
        return [
            Incoming(raw=r, decoded=d, signature_checked=True)
            for r, d in zip(self.raws, self.decoded, strict=True)
        ]

    def raw(self) -> list[Incoming]:
        return [Incoming(raw=r) for r in self.raws]

    def verified_records(self, hop: HopKey, topic: str, batch: int) -> list[VerifiedRecord]:
        """The verify stage's output: one verified-topic record per `batch` events (as a worker packs them)."""
        records: list[VerifiedRecord] = []
        for i in range(0, len(self.raws), batch):
            items = [
                Incoming(raw=r, decoded=d, signature_checked=True, source=f"raw/0/{i + k}")
                for k, (r, d) in enumerate(
                    zip(self.raws[i : i + batch], self.decoded[i : i + batch], strict=True)
                )
            ]
            for headers, value in pack_verified(items, hop, topic):
                records.append(VerifiedRecord(topic, 0, len(records), headers, value))
        return records


ServerCpu = Callable[[], float] | None
SERVER_READER: list[ServerCpu] = [None]  # how to read the store server's CPU seconds (PostgreSQL runs)
SERVER_CPU_US: list[float] = [0.0]  # the last run's server CPU per event


def _server_cpu() -> float:
    reader = SERVER_READER[0]
    return reader() if reader is not None else 0.0


def cluster_cpu_s(data_dir: Path) -> ServerCpu:
    """CPU seconds used so far by a local PostgreSQL cluster (its postmaster and every child: backends,
    WAL writer, checkpointer), from /proc; None where that cannot be read."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = proc_stat(entry)
            if stat is not None and postmaster in (int(entry), stat[0]):
                total += stat[1]
        return total / tick

    return read if Path("/proc/self/stat").exists() else None


def run_appends(url: str, w: Workload, items: Sequence[Incoming], batch: int) -> tuple[float, float]:
    """(events/s, CPU us/event) through Ledger.append on a fresh ledger at `url`; checks every event was
    appended."""
    led = Ledger.init(url, operator_key=w.op, origin="bench/store")
    try:
        [reg] = led.append([w.register])
        assert reg.status == "appended", reg
        c, t, sc = time.process_time(), time.perf_counter(), _server_cpu()
        for i in range(0, len(items), batch):
            results = led.append(items[i : i + batch])
            if any(r.status != "appended" for r in results):
                bad = next(r for r in results if r.status != "appended")
                raise RuntimeError(f"benchmark event not appended: {bad}")
        took, cpu = time.perf_counter() - t, time.process_time() - c
        SERVER_CPU_US[-1] = (_server_cpu() - sc) / len(items) * 1e6
        assert led.size == len(items) + 2
    finally:
        led.close()
    return len(items) / took, cpu / len(items) * 1e6


def run_sequencer(url: str, w: Workload, batch: int) -> tuple[float, float]:
    """(events/s, CPU us/event) through Sequencer.process, one verified record (`batch` events) per call."""
    hop, topic = HopKey.generate(), "bench-verified"
    records = w.verified_records(hop, topic, batch)
    led = Ledger.init(url, operator_key=w.op, origin="bench/store")
    try:
        [reg] = led.append([w.register])
        assert reg.status == "appended", reg
        seq = Sequencer(led, "bench-sequencer", hop)
        c, t, sc = time.process_time(), time.perf_counter(), _server_cpu()
        for rec in records:
            done = seq.process([rec])
            bad = [r for _, r in done.results if r.status != "appended"]
            if bad:
                raise RuntimeError(f"benchmark event not appended: {bad[0]}")
        took, cpu = time.perf_counter() - t, time.process_time() - c
        SERVER_CPU_US[-1] = (_server_cpu() - sc) / len(w.raws) * 1e6
        assert led.size == len(w.raws) + 2
    finally:
        led.close()
    return len(w.raws) / took, cpu / len(w.raws) * 1e6


def ed25519_verify_rate(w: Workload, n: int) -> float:
    pub = w.key.public_key()
    sample = w.decoded[:n]
    t = time.perf_counter()
    for d in sample:
        pub.verify(d.signature, d.unsigned)
    return len(sample) / (time.perf_counter() - t)


def profile_sqlite(w: Workload, batch: int, top: int) -> tuple[str, list[dict[str, Any]]]:
    items = w.pre_verified()
    with tempfile.TemporaryDirectory() as d:
        prof = cProfile.Profile()
        url = f"sqlite:///{Path(d) / 'profile.db'}"
        led = Ledger.init(url, operator_key=w.op, origin="bench/profile")
        led.append([w.register])
        prof.enable()
        for i in range(0, len(items), batch):
            led.append(items[i : i + batch])
        prof.disable()
        led.close()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    hot = []
    raw_stats: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (file, line, fn), (_cc, calls, tottime, cumtime, _callers) in sorted(
        raw_stats.items(), key=lambda kv: kv[1][2], reverse=True
    )[:top]:
        hot.append(
            {
                "function": f"{_short_path(file)}:{line}:{fn}",
                "calls": calls,
                "tottime_share": round(tottime / total, 4),
                "cumtime_share": round(cumtime / total, 4),
            }
        )
    return buf.getvalue(), hot


def _short_path(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def measure_backend(
    name: str, make_url: Callable[[str], str], w: Workload, mixed: Workload, batch: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    runs: list[tuple[str, Callable[[], tuple[float, float]]]] = [
        ("append_only", lambda: run_appends(make_url("append_only"), w, w.pre_verified(), batch)),
        ("sequencer", lambda: run_sequencer(make_url("sequencer"), w, batch)),
        (
            "mixed_append_only",
            lambda: run_appends(make_url("mixed_append"), mixed, mixed.pre_verified(), batch),
        ),
        ("mixed_sequencer", lambda: run_sequencer(make_url("mixed_sequencer"), mixed, batch)),
    ]
    for path, run in runs:
        out[f"{name}_{path}_per_s"], out[f"{name}_{path}_cpu_us"] = run()
        if SERVER_READER[0] is not None:
            out[f"{name}_{path}_server_cpu_us"] = SERVER_CPU_US[-1]
    out[f"{name}_full_per_s"] = run_appends(make_url("full"), w, w.raw(), batch)[0]
    return out


def measure_verify(w: Workload, batch: int) -> dict[str, float]:
    """`verify` on a SQLite ledger of the workload: chain + signatures only (what verify did before it
    recomputed the derived tables), full (derived tables too, records the verified mark), incremental
    (nothing new since the mark) and incremental after 1% more entries and a checkpoint."""
    from ledger.core import verify_ledger
    from ledger.verify import verify_store

    items = w.pre_verified()
    tail = max(1, len(items) // 100)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        led = Ledger.init(f"sqlite:///{Path(d) / 'verify.db'}", operator_key=w.op, origin="bench/verify")
        led.append([w.register])
        for i in range(0, len(items) - tail, batch):
            led.append(items[i : min(i + batch, len(items) - tail)])
        led.make_checkpoint()

        def timed(fn: Callable[[], Any]) -> float:
            t = time.perf_counter()
            report = fn()
            assert report.ok, report.errors[:3]
            return time.perf_counter() - t

        out["verify_chain_and_signatures_s"] = timed(
            lambda: verify_store(
                led.engine, origin=led.origin, operator_public_key=led.operator_public_key, derived=False
            )
        )
        out["verify_full_s"] = timed(lambda: verify_ledger(led, full=True))
        out["verify_incremental_s"] = timed(lambda: verify_ledger(led))
        led.append(items[len(items) - tail :])
        led.make_checkpoint()
        out["verify_incremental_after_1pct_s"] = timed(lambda: verify_ledger(led))
        out["verify_entries"] = float(led.size)
        led.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000, help="events per run (default 50000)")
    ap.add_argument("--batch", type=int, default=1_000, help="events per append transaction (default 1000)")
    ap.add_argument("--quick", action="store_true", help="5000 events (smoke run)")
    ap.add_argument("--profile", action="store_true", help="cProfile the SQLite append-only path")
    ap.add_argument("--top", type=int, default=25, help="functions listed by --profile")
    ap.add_argument("--verify-only", action="store_true", help="only time `verify` (SQLite) on --events")
    args = ap.parse_args()
    n = 5_000 if args.quick else args.events

    results: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores {platform.processor() or platform.machine()}",
        "events": n,
        "batch": args.batch,
    }
    t = time.perf_counter()
    w = Workload(n)
    mixed = Workload(n, mixed=True)
    print(f"signed and decoded 2 x {n:,} events in {time.perf_counter() - t:.1f} s")
    results["ed25519_verify_per_s"] = ed25519_verify_rate(w, min(n, 10_000))
    if args.verify_only:
        results.update(measure_verify(w, args.batch))
        for k, v in results.items():
            if k.startswith("verify_") and k != "verify_entries":
                print(f"{k:<36} {v:8.2f} s over {results['verify_entries']:,.0f} entries")
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}))
        return

    results["load_avg_1m_before"] = os.getloadavg()[0]
    results["sqlite_bare_insert_per_s"] = bench_sqlite_bare(max(n, 50_000))
    with tempfile.TemporaryDirectory() as d:
        results.update(
            measure_backend("sqlite", lambda tag: f"sqlite:///{Path(d) / tag}.db", w, mixed, args.batch)
        )

    try:
        from tests.support.pg import PostgresError, ThrowawayPostgres
    except ImportError as exc:  # run from the repository root: `python -m bench.bench_store`
        raise SystemExit(f"cannot import tests.support.pg ({exc}): run from the repository root") from exc
    try:
        with ThrowawayPostgres() as pg:
            results["postgres_version"] = pg.binaries.version()
            SERVER_READER[0] = cluster_cpu_s(pg.data_dir)
            results.update(
                measure_backend(
                    "postgres", lambda tag: pg.create_database(f"bench_{tag}"), w, mixed, args.batch
                )
            )
    except PostgresError as exc:
        results["postgres_error"] = exc.diagnostics().splitlines()[0]

    results["load_avg_1m_after"] = os.getloadavg()[0]
    s_app, s_full = results["sqlite_append_only_per_s"], results["sqlite_full_per_s"]
    bare = results["sqlite_bare_insert_per_s"]
    results["sqlite_target_ratio"] = s_app / TARGET_SQLITE_APPENDS_PER_S
    results["sqlite_full_over_ed25519"] = s_full / results["ed25519_verify_per_s"]
    results["sqlite_sequencer_cpu_target_ratio"] = results["sqlite_sequencer_cpu_us"] / TARGET_APPEND_CPU_US
    results["sqlite_sequencer_over_bare_insert"] = results["sqlite_sequencer_per_s"] / bare
    print(
        f"load average (1 min): {results['load_avg_1m_before']:.2f} before, {results['load_avg_1m_after']:.2f} after"
    )
    print(f"Ed25519 verify (pyca, 1 core):         {results['ed25519_verify_per_s']:>10,.0f} /s")
    print(f"SQLite bare insert (ceiling):          {bare:>10,.0f} rows/s = {1e6 / bare:.1f} us/row")
    for backend in ("sqlite", "postgres"):
        if f"{backend}_append_only_per_s" not in results:
            continue
        label = "SQLite    " if backend == "sqlite" else "PostgreSQL"
        for path, what in (
            ("append_only", "append only (pre-verified)"),
            ("sequencer", "sequencer (verified hop)  "),
            ("mixed_append_only", "mixed, append only        "),
            ("mixed_sequencer", "mixed, sequencer          "),
        ):
            rate, cpu = results[f"{backend}_{path}_per_s"], results[f"{backend}_{path}_cpu_us"]
            server = results.get(f"{backend}_{path}_server_cpu_us")
            print(
                f"{label} {what} {rate:>10,.0f} /s, {cpu:6.1f} us CPU/event "
                + (f"+ {server:6.1f} us server " if server is not None else "")
                + f"(target {TARGET_APPEND_CPU_US:.0f}), {rate / bare:.0%} of bare insert"
            )
    print(
        f"SQLite     append only = {results['sqlite_target_ratio']:.0%} of the "
        f"{TARGET_SQLITE_APPENDS_PER_S:,}/s design target"
    )
    print(
        f"SQLite     full (decode+verify+append): {s_full:>9,.0f} /s "
        f"= {results['sqlite_full_over_ed25519']:.0%} of raw Ed25519 verify/s"
    )
    if "postgres_append_only_per_s" in results:
        for path in ("append_only", "sequencer", "mixed_sequencer"):
            results[f"postgres_over_sqlite_{path}"] = (
                results[f"postgres_{path}_per_s"] / results[f"sqlite_{path}_per_s"]
            )
        results["postgres_over_sqlite"] = results["postgres_over_sqlite_append_only"]
        if "postgres_sequencer_server_cpu_us" in results:
            # on a loaded machine wall-clock ratios swing with the neighbours; CPU per event does not
            for path in ("append_only", "sequencer", "mixed_sequencer"):
                pg_cpu = results[f"postgres_{path}_cpu_us"] + results[f"postgres_{path}_server_cpu_us"]
                results[f"postgres_over_sqlite_by_cpu_{path}"] = results[f"sqlite_{path}_cpu_us"] / pg_cpu
            print(
                "PostgreSQL / SQLite by CPU per event (client + server): append only "
                f"{results['postgres_over_sqlite_by_cpu_append_only']:.2f}x, sequencer "
                f"{results['postgres_over_sqlite_by_cpu_sequencer']:.2f}x, mixed sequencer "
                f"{results['postgres_over_sqlite_by_cpu_mixed_sequencer']:.2f}x"
            )
        print(
            f"PostgreSQL / SQLite: append only {results['postgres_over_sqlite_append_only']:.2f}x, sequencer "
            f"{results['postgres_over_sqlite_sequencer']:.2f}x, mixed sequencer "
            f"{results['postgres_over_sqlite_mixed_sequencer']:.2f}x (target >= 0.7x; throwaway cluster, fsync off)"
        )
        print(f"PostgreSQL full (decode+verify+append): {results['postgres_full_per_s']:>9,.0f} /s")
    else:
        print(f"PostgreSQL: not measured ({results.get('postgres_error')})")

    if args.profile:
        text, hot = profile_sqlite(w, args.batch, args.top)
        print(text)
        results["sqlite_profile_top"] = hot
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
