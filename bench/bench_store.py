"""Append throughput of the ledger store on SQLite and PostgreSQL, measured in one run.

Two paths per backend, in batches of --batch events (one store transaction each):
- append only: pre-signed, pre-decoded events (`Incoming(decoded=..., signature_checked=True)`), what the
  sequencer does after the verify stage; the design's target is >= 50k appends/s on SQLite;
- full: raw signed bytes, so `Ledger.append` also decodes, canonicalises and verifies each signature.

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
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bench_core import extraction_events, register
from ledger.core import Incoming, Ledger
from schemas.signing import decode, generate_key

TARGET_SQLITE_APPENDS_PER_S = 50_000  # design.md "Budgets"
FACILITY = "mine-bench"


def registration(op: Ed25519PrivateKey, key: Ed25519PrivateKey) -> bytes:
    return register(op, FACILITY, "AU", ["batch.extracted"], key, legal_entity="Bench Mining Pty Ltd")


class Workload:
    def __init__(self, n: int) -> None:
        self.op, self.key = generate_key(), generate_key()
        self.register = registration(self.op, self.key)
        self.raws = extraction_events(self.key, FACILITY, n, prefix="AU-SPOD")
        self.decoded = [decode(r) for r in self.raws]

    def pre_verified(self) -> list[Incoming]:
        return [
            Incoming(raw=r, decoded=d, signature_checked=True)
            for r, d in zip(self.raws, self.decoded, strict=True)
        ]

    def raw(self) -> list[Incoming]:
        return [Incoming(raw=r) for r in self.raws]


def run_appends(url: str, w: Workload, items: Sequence[Incoming], batch: int) -> float:
    """Events/s through Ledger.append on a fresh ledger at `url`; checks every event was appended."""
    led = Ledger.init(url, operator_key=w.op, origin="bench/store")
    try:
        [reg] = led.append([w.register])
        assert reg.status == "appended", reg
        t = time.perf_counter()
        for i in range(0, len(items), batch):
            results = led.append(items[i : i + batch])
            if any(r.status != "appended" for r in results):
                bad = next(r for r in results if r.status != "appended")
                raise RuntimeError(f"benchmark event not appended: {bad}")
        took = time.perf_counter() - t
        assert led.size == len(items) + 2
    finally:
        led.close()
    return len(items) / took


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


def measure_backend(name: str, make_url: Callable[[str], str], w: Workload, batch: int) -> dict[str, float]:
    append = run_appends(make_url("append_only"), w, w.pre_verified(), batch)
    full = run_appends(make_url("full"), w, w.raw(), batch)
    return {f"{name}_append_only_per_s": append, f"{name}_full_per_s": full}


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
    print(f"signed and decoded {n:,} events in {time.perf_counter() - t:.1f} s")
    results["ed25519_verify_per_s"] = ed25519_verify_rate(w, min(n, 10_000))
    if args.verify_only:
        results.update(measure_verify(w, args.batch))
        for k, v in results.items():
            if k.startswith("verify_") and k != "verify_entries":
                print(f"{k:<36} {v:8.2f} s over {results['verify_entries']:,.0f} entries")
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}))
        return

    with tempfile.TemporaryDirectory() as d:
        results.update(measure_backend("sqlite", lambda tag: f"sqlite:///{Path(d) / tag}.db", w, args.batch))

    try:
        from tests.support.pg import PostgresError, ThrowawayPostgres
    except ImportError as exc:  # run from the repository root: `python -m bench.bench_store`
        raise SystemExit(f"cannot import tests.support.pg ({exc}): run from the repository root") from exc
    try:
        with ThrowawayPostgres() as pg:
            results["postgres_version"] = pg.binaries.version()
            results.update(
                measure_backend("postgres", lambda tag: pg.create_database(f"bench_{tag}"), w, args.batch)
            )
    except PostgresError as exc:
        results["postgres_error"] = exc.diagnostics().splitlines()[0]

    s_app, s_full = results["sqlite_append_only_per_s"], results["sqlite_full_per_s"]
    results["sqlite_target_ratio"] = s_app / TARGET_SQLITE_APPENDS_PER_S
    results["sqlite_full_over_ed25519"] = s_full / results["ed25519_verify_per_s"]
    print(f"Ed25519 verify (pyca, 1 core):         {results['ed25519_verify_per_s']:>10,.0f} /s")
    print(
        f"SQLite     append only (pre-verified): {s_app:>10,.0f} /s "
        f"= {results['sqlite_target_ratio']:.0%} of the {TARGET_SQLITE_APPENDS_PER_S:,}/s target"
    )
    print(
        f"SQLite     full (decode+verify+append): {s_full:>9,.0f} /s "
        f"= {results['sqlite_full_over_ed25519']:.0%} of raw Ed25519 verify/s"
    )
    if "postgres_append_only_per_s" in results:
        p_app, p_full = results["postgres_append_only_per_s"], results["postgres_full_per_s"]
        results["postgres_over_sqlite"] = p_app / s_app
        print(
            f"PostgreSQL append only (pre-verified): {p_app:>10,.0f} /s = {results['postgres_over_sqlite']:.2f}x SQLite"
            " (throwaway cluster, fsync off)"
        )
        print(f"PostgreSQL full (decode+verify+append): {p_full:>9,.0f} /s")
    else:
        print(f"PostgreSQL: not measured ({results.get('postgres_error')})")

    if args.profile:
        text, hot = profile_sqlite(w, args.batch, args.top)
        print(text)
        results["sqlite_profile_top"] = hot
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
