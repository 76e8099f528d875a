"""The soak: 1M events through Kafka and one Faust worker; memory flat, every event appended once.

    python -m bench soak [--events 1000000] [--chunk 20000]      (make bench ARGS=soak)

Not part of the default `make bench` (6-7 minutes on a 2-core machine at 2.5-2.8k events/s, plus set-up). The publisher
publishes in chunks while the worker runs, keeping the backlog under two chunks, so the worker sees
steady load for the whole run. After warm-up (the first 10% of the events appended), the worker's
resident memory with its helpers' (verify and store processes; VmRSS from /proc, summed) is sampled
after every chunk; "flat" means the largest sample is within 10% of the first. At the end: entries
appended == events published, every published event id is in the ledger exactly once, no rejections.
Prints figures, then one JSON line; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.bench_kafka import Chain, Run
from ledger.core import Ledger
from ledger.store import ENTRIES, REJECTIONS
from streams.localbroker import LocalBroker


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """Direct children of `pid`: a worker's verify helpers and store process (streams/verifypool.py,
    streams/storeproc.py)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def worker_rss_bytes(pid: int) -> int:
    """The worker's resident memory with its helper processes'."""
    return sum(rss_parts(pid))


def rss_parts(pid: int) -> list[int]:
    """The worker's resident memory, then each helper process's."""
    parts = [rss_bytes(pid)]
    for child in sorted(children(pid)):
        try:
            parts.append(rss_bytes(child))
        except (OSError, RuntimeError):
            continue  # gone meanwhile
    return parts


def _ledger_data(store: str, first_seq: int) -> tuple[int, int, int, set[bytes]]:
    """(entries, distinct event ids, rejections, SHA-256 of each entry's stored bytes)."""
    with Ledger(store) as led, led.engine.connect() as conn:
        rows = conn.execute(select(ENTRIES.c.event_id, ENTRIES.c.data).where(ENTRIES.c.seq >= first_seq))
        ids, digests = set(), set()
        n = 0
        for event_id, data in rows:
            n += 1
            ids.add(event_id)
            digests.add(hashlib.sha256(data if isinstance(data, bytes) else data.encode()).digest())
        rejected = conn.execute(select(func.count()).select_from(REJECTIONS)).scalar_one()
    return n, len(ids), int(rejected), digests


def soak(events: int, chunk: int) -> dict[str, Any]:
    chain = Chain()
    with tempfile.TemporaryDirectory(prefix="bl-soak-") as tmpdir:
        tmp = Path(tmpdir)
        broker = LocalBroker(tmp / "kafka")
        bootstrap = broker.start(timeout=120)
        run = Run(tmp, bootstrap, chain, partitions=2)
        try:
            reg = chain.registry_events()
            run.pub.publish_many(reg)
            run.start_workers(1)
            base = 1 + len(reg)
            run.wait_entries(base)
            pid = run.workers[0].pid
            assert pid is not None
            published: set[bytes] = set()
            samples: list[tuple[int, int]] = []  # (events appended, RSS bytes) after warm-up
            warm_at = base + events // 10
            t0 = time.perf_counter()
            sent = 0
            while sent < events:
                batch = chain.events(min(chunk, events - sent), "soak")
                published.update(hashlib.sha256(raw).digest() for raw in batch)
                run.pub.publish_many(batch)
                sent += len(batch)
                # keep at most two chunks in flight: steady load, bounded broker backlog
                run.wait_entries(base + max(0, sent - chunk), timeout=1800)
                done = run.entries()
                if done >= warm_at:
                    parts = rss_parts(pid)
                    samples.append((done - base, sum(parts)))
                    each = " + ".join(f"{p / 2**20:.0f}" for p in parts)
                    print(
                        f"  {done - base:>9,} appended  worker RSS with helpers {samples[-1][1] / 2**20:7.1f} MiB"
                        f" ({each})",
                        flush=True,
                    )
            run.wait_entries(base + events, timeout=1800)
            wall = time.perf_counter() - t0
            samples.append((events, worker_rss_bytes(pid)))
            n, distinct, rejected, stored = _ledger_data(run.settings.store, base)
        finally:
            run.close()
            broker.stop()
    first = samples[0][1]
    peak = max(s[1] for s in samples)
    return {
        "bench": "soak",
        "events": events,
        "events_per_s_wall": events / wall,
        "rss_after_warmup_mib": first / 2**20,
        "rss_peak_mib": peak / 2**20,
        "rss_growth": peak / first - 1,
        "rss_flat_within_10pct": peak <= first * 1.10,
        "appended": n,
        "distinct_event_ids": distinct,
        "rejections": rejected,
        # the ledger stores the canonical signed bytes, which is what the Publisher sent
        "every_event_exactly_once": n == distinct == events and stored == published and rejected == 0,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=20_000)
    args = ap.parse_args(argv)
    r = soak(args.events, args.chunk)
    print(
        f"soak: {r['events']:,} events at {r['events_per_s_wall']:,.0f} /s; worker + helpers RSS after warm-up "
        f"{r['rss_after_warmup_mib']:.1f} MiB, peak {r['rss_peak_mib']:.1f} MiB ({r['rss_growth']:+.1%}; "
        f"flat within 10%: {r['rss_flat_within_10pct']}); appended {r['appended']:,}, distinct ids "
        f"{r['distinct_event_ids']:,}, rejections {r['rejections']}; every event exactly once: "
        f"{r['every_event_exactly_once']}"
    )
    print(json.dumps(r, sort_keys=True))


if __name__ == "__main__":
    main()
