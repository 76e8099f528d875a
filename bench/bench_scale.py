"""Proofs on PostgreSQL at the largest size that fits a few minutes (README "How far one ledger goes").

Fills a throwaway PostgreSQL store (tests/support/pg.py) with N synthetic entries and their Merkle nodes
(the same direct fill as bench_proofs: proofs read only the tree), signs a checkpoint, then measures
inclusion and consistency proof latency (one call each, as an API request makes them) and checks each
proof. Run: `python -m bench.bench_scale --entries 1000000`. Prints figures, then one JSON line.
Not part of `make bench` (the fill dominates; 10M entries would take most of an hour on a 2-core VM).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

from bench.bench_proofs import SAMPLES, _fill, _timed
from ledger.checkpoint import Checkpoint, open_note
from ledger.core import Ledger
from ledger.merkle import verify_inclusion
from ledger.proofs import consistency_proof, inclusion_proof
from ledger.store import ENTRIES
from schemas.signing import generate_key
from tests.support.pg import ThrowawayPostgres


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    n = ap.parse_args().entries
    op = generate_key()
    rng = random.Random(6962)
    with ThrowawayPostgres() as pg:
        Ledger.init(pg.url, operator_key=op, origin="bench/scale").close()
        fill_s = _fill(pg.url, n)
        led = Ledger(pg.url, operator_key=op)
        with led.engine.begin() as conn:  # what autovacuum would do after a bulk load: fresh planner stats
            conn.exec_driver_sql("ANALYZE")
        note = led.make_checkpoint()
        assert note is not None
        cp = Checkpoint.parse(open_note(note, led.origin, led.operator_public_key))
        seqs = rng.sample(range(n), SAMPLES)
        with led.engine.connect() as conn:
            leaf_of = dict(
                conn.execute(
                    ENTRIES.select()
                    .with_only_columns(ENTRIES.c.seq, ENTRIES.c.leaf_hash)
                    .where(ENTRIES.c.seq.in_(seqs))
                ).all()
            )
        inc = []
        for s in seqs:
            took, proof = _timed(lambda s=s: inclusion_proof(led, s, n))
            inc.append(took)
            verify_inclusion(bytes(leaf_of[s]), s, n, proof, cp.root_hash)
        cons = [_timed(lambda: consistency_proof(led, rng.randrange(1, n), n))[0] for _ in range(SAMPLES)]
        led.close()
    q = statistics.quantiles
    out = {
        "entries": n,
        "fill_s": fill_s,
        "fill_per_s": n / fill_s,
        "inclusion_p50_ms": statistics.median(inc) * 1e3,
        "inclusion_p95_ms": q(inc, n=20)[18] * 1e3,
        "consistency_p50_ms": statistics.median(cons) * 1e3,
        "consistency_p95_ms": q(cons, n=20)[18] * 1e3,
    }
    print(
        f"PostgreSQL, {n:,} entries (filled in {fill_s:.0f} s, {out['fill_per_s']:,.0f}/s): inclusion p50 "
        f"{out['inclusion_p50_ms']:.2f} ms p95 {out['inclusion_p95_ms']:.2f} ms; consistency p50 "
        f"{out['consistency_p50_ms']:.2f} ms p95 {out['consistency_p95_ms']:.2f} ms"
    )
    print(json.dumps({"bench": "scale", **out}))


if __name__ == "__main__":
    main()
