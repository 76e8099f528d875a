"""`make bench`: run every benchmark module in turn (each in its own process) and print a summary.

`python -m bench soak [--events N]` (`make bench ARGS=soak`) runs the 1M-event soak instead (bench/soak.py).
`make bench ARGS=--quick` runs every module small (a smoke run of a few minutes: figures too small to quote).

Each module prints its own figures and ends with one JSON line; this collects those lines into one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MODULES = ["bench_ceilings", "bench_core", "bench_merkle", "bench_store", "bench_proofs", "bench_kafka"]


def main() -> None:
    if sys.argv[1:2] == ["soak"]:  # the 1M-event soak: only when asked (make bench ARGS=soak)
        from bench.soak import main as soak_main

        soak_main(sys.argv[2:])
        return
    here = Path(__file__).parent
    summary: dict[str, object] = {}
    failed = []
    for name in MODULES:
        if not (here / f"{name}.py").exists():
            continue
        print(f"\n=== {name} ===", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", *sys.argv[1:]], stdout=subprocess.PIPE, text=True
        )
        sys.stdout.write(proc.stdout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            failed.append(name)
            continue
        summary[name] = json.loads(lines[-1])
    print(json.dumps(summary))
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
