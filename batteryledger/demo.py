"""`batteryledger demo` (`make demo`): the whole system on this machine, start to finish, then tidied away.

1. fetch the Kafka jars (cached), start a local broker on free loopback ports, create the topics;
2. create a fresh SQLite ledger in ``demo-out/`` (gitignored) with a new operator key;
3. start one worker process (``python -m streams.worker``: the verify agent and the sequencer);
4. register the facilities (signed by the operator), publish the multi-tier chain, then the bad events
   (forged signature, overdrawn batch, unregistered facility, a replay, malformed bytes), all through
   the Publisher SDK and Kafka;
5. wait, bounded, until the ledger has decided every message, and until a signed checkpoint covers it;
6. print the facilities, the provenance of the final packs, the rejections by reason (each expected
   reason checked: exit 1 if one is not met), the head and the checkpoint;
7. stop the worker and the broker (also on failure or Ctrl-C).

Causal publishing: the raw topic is keyed by facility, so two facilities' events may be read in any
order. The ledger parks an event whose *input batches* are missing (children before parents), but a
shipment must be received before the receiver may consume it; in a real supply chain those steps are
days apart, here milliseconds. So the demo publishes each run of one facility's events at once and
waits until the ledger has seen it before the next facility's run (``publish_causally``).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from batteryledger.sample import DemoChain, SignedEvent, demo_chain, write_keys
from ledger.core import Ledger
from schemas.cloudevents import to_binary
from schemas.signing import decode, save_private_key
from streams import localbroker
from streams.publisher import Publisher, Receipt
from streams.settings import Settings
from streams.topics import ALL_TOPICS
from streams.worker import WorkerProcess

__all__ = ["DemoError", "DemoResult", "fta_countries", "print_audit", "publish_causally", "run_demo"]

#: Longest the demo waits for the ledger to decide everything it published (the chain takes seconds).
DECIDE_TIMEOUT_S = 120.0
#: FTA partners for the former 30D critical-mineral test, as listed in shared/domain.md (checked
#: 2025-06); used only if the rule pack (ledger.taxrules, the maintained dated list) cannot be loaded.
FTA_FALLBACK_AS_OF = date(2025, 6, 1)
FTA_FALLBACK = (
    "AU", "BH", "CA", "CL", "CO", "CR", "DO", "SV", "GT", "HN", "IL", "JO", "KR", "MX", "MA", "NI", "OM",
    "PA", "PE", "SG", "JP",
)  # fmt: skip
SHARE_ROWS = (
    ("mined in the US", "us_extracted"),
    ("processed in the US", "us_processed"),
    ("mined in US or FTA country", "fta_or_us_extracted"),
    ("processed in US/FTA country", "fta_or_us_processed"),
    ("mined in North America", "north_america_extracted"),
    ("processed in North America", "north_america_processed"),
    ("recycled, pre-consumer", "recycled_pre_consumer"),
    ("recycled, post-consumer", "recycled_post_consumer"),
    ("FEOC-touched", "feoc_touched"),
    ("unknown", "unknown"),
)


class DemoError(RuntimeError):
    def diagnostics(self) -> str:
        return str(self)


@dataclass
class DemoResult:
    ok: bool
    out_dir: Path
    entries: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    outcomes: list[tuple[str, str, str, bool]] = field(default_factory=list)  # label, expected, got, ok
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoint: str | None = None
    elapsed_s: float = 0.0


def fta_countries(on: date | None = None) -> tuple[list[str], str]:
    """FTA country codes in force on `on` (today) from the rule pack, and where the list came from."""
    day = on or datetime.now(UTC).date()
    try:
        from ledger.taxrules import load_pack

        pack = load_pack()
        codes = [c.code for c in pack.geography.fta_countries.value if c.in_force(day)]
        return codes, f"rule pack {pack.pack_id} {pack.version}"
    except Exception:
        return list(FTA_FALLBACK), f"shared/domain.md list as of {FTA_FALLBACK_AS_OF}"


def wait_decided(
    ledger: Ledger,
    event_ids: Sequence[str] = (),
    sources: Sequence[str] = (),
    *,
    timeout: float = DECIDE_TIMEOUT_S,
    parked_ok: bool = False,
    alive: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Poll the store until every id/source is decided; raises DemoError after `timeout` seconds."""
    keys = [*event_ids, *sources]
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        dec = ledger.decisions(event_ids, sources)
        if all(k in dec and (parked_ok or dec[k][0] != "parked") for k in keys):
            return dec
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            missing = [k for k in keys if k not in dec or dec[k][0] == "parked"]
            raise DemoError(f"the ledger did not decide {len(missing)} message(s) within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def publish_causally(
    pub: Publisher,
    ledger: Ledger,
    events: Sequence[SignedEvent],
    *,
    timeout: float = DECIDE_TIMEOUT_S,
    on_done: Callable[[int], None] | None = None,
    alive: Callable[[], None] | None = None,
) -> list[Receipt]:
    """Publish runs of one facility's events at once; wait for each run before the next facility's."""
    receipts: list[Receipt] = []
    i = 0
    while i < len(events):
        j = i
        while j < len(events) and events[j].facility_id == events[i].facility_id:
            j += 1
        run = events[i:j]
        receipts.extend(pub.publish_many([e.raw for e in run]))
        wait_decided(ledger, [e.event_id for e in run], timeout=timeout, parked_ok=True, alive=alive)
        if on_done is not None:
            on_done(len(run))
        i = j
    return receipts


CLAIMS_DIR = Path(__file__).resolve().parents[1] / "examples" / "claims"


def print_audit(ledger: Ledger, console: Console | None = None) -> int:
    """Audit the example claims (examples/claims/*.yaml) against the demo ledger; returns how many ran.

    Each finding is printed as the `audit` command prints it: pass/fail per requirement with the numbers,
    thresholds and years, the custody model and the events it rests on, the unconfirmed parameters.
    """
    from ledger.audit import AuditError, ClaimError, audit, load_claim

    con = console or Console()
    done = 0
    for path in sorted(CLAIMS_DIR.glob("*.yaml")):
        con.rule(f"audit {path.relative_to(CLAIMS_DIR.parents[1])}")
        try:
            result = audit(ledger, load_claim(path))
        except (AuditError, ClaimError) as exc:
            con.print(f"error: {exc}", markup=False, highlight=False)
            continue
        for line in result.summary_lines():
            con.print(line, markup=False, highlight=False)
        done += 1
    return done


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _provenance_table(pack: str, summary: dict[str, Any]) -> Table:
    t = Table(title=f"Provenance of {pack} (share of contained mass, mass balance)", title_justify="left")
    elements = summary.get("elements", {})
    t.add_column("")
    for el in elements:
        t.add_column(el, justify="right")
    t.add_row("contained kg", *(f"{d['contained_kg']:,.1f}" for d in elements.values()), end_section=True)
    for label, key in SHARE_ROWS:
        t.add_row(label, *(_pct(d["shares"][key]) for d in elements.values()))
    return t


def _bad_message(pub: Publisher, chain: DemoChain, raw: bytes) -> Receipt:
    """Publish one bad event as a plant (or an attacker) would: signed-published if it decodes."""
    try:
        decode(raw)
    except Exception:
        # bytes that are not an event at all, sent with a plausible CloudEvents header set
        headers = to_binary(decode(chain.chain_events[0].raw)).headers
        return pub.publish_raw(raw, headers=headers)
    pub.publish_signed(raw)
    assert pub.last_receipt is not None
    return pub.last_receipt


OUT_DIR_MARK = ".batteryledger-demo"


def prepare_out_dir(out_dir: Path) -> Path:
    """An empty `out_dir`: made new, or emptied only when an earlier demo made it (it holds our mark).

    A folder the demo did not create (the working directory, a home folder, a project) is never
    emptied: the demo refuses, naming it. An existing empty folder is used as it is.
    """
    out_dir = out_dir.resolve()
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DemoError(f"--out-dir {out_dir} is a file, not a folder")
        if (out_dir / OUT_DIR_MARK).is_file():
            shutil.rmtree(out_dir)
        elif any(out_dir.iterdir()):
            raise DemoError(
                f"--out-dir {out_dir} is not empty and was not made by the demo; "
                "give a new or empty folder (the demo only empties folders it created)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / OUT_DIR_MARK).write_text("made by `batteryledger demo`; it may empty this folder\n")
    return out_dir


def run_demo(
    out_dir: Path = Path("demo-out"),
    *,
    partitions: int = 2,
    console: Console | None = None,
    decide_timeout: float = DECIDE_TIMEOUT_S,
) -> DemoResult:
    """Run the demo; returns its result (ok False when an expectation failed). Raises DemoError."""
    con = console or Console()
    started = time.monotonic()
    out_dir = prepare_out_dir(out_dir)
    result = DemoResult(ok=False, out_dir=out_dir)

    con.rule("[bold]batteryledger demo")
    with con.status("fetching the Kafka broker's jars (cached after the first run) ..."):
        try:
            localbroker.fetch()
        except localbroker.BrokerError as exc:
            raise DemoError(exc.one_line()) from None
    broker = localbroker.LocalBroker(out_dir / "kafka")
    worker: WorkerProcess | None = None
    try:
        with con.status("starting Apache Kafka (KRaft, 127.0.0.1) ..."):
            try:
                bootstrap = broker.start(timeout=120)
                localbroker.create_topics(bootstrap, ALL_TOPICS(partitions))
            except localbroker.BrokerError as exc:
                raise DemoError(exc.diagnostics()) from None
        con.print(
            f"Kafka {localbroker.KAFKA_VERSION} at [cyan]{bootstrap}[/], topics created ({partitions} partitions for material-events)"
        )

        chain = demo_chain()
        store = f"sqlite:///{out_dir / 'ledger.db'}"
        save_private_key(chain.operator_key, out_dir / "operator.key")
        write_keys(chain, out_dir / "keys")
        Ledger.init(store, operator_key=chain.operator_key, origin="demo.batteryledger.local/ledger").close()
        settings = Settings(
            broker=bootstrap,
            store=store,
            app_id="batteryledger-demo",
            partitions=partitions,
            operator_key=out_dir / "operator.key",
            checkpoint_interval_s=1.0,
            park_max_age_s=10.0,
            expire_interval_s=1.0,
            data_dir=out_dir / "faust",
        )
        worker = WorkerProcess(settings, out_dir / "worker.log").start()
        con.print(
            f"worker started (pid {worker.pid}, log {out_dir / 'worker.log'}); ledger {out_dir / 'ledger.db'}"
        )

        def alive() -> None:
            if worker is not None and not worker.is_running():
                raise DemoError(f"the worker exited; its log ends:\n{worker.log_tail(30)}")

        ledger = Ledger(store)
        with Publisher(bootstrap, "registry", None) as pub:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=con,
                transient=False,
            ) as progress:
                reg = progress.add_task("register facilities", total=len(chain.registry_events))
                pub.publish_many([e.raw for e in chain.registry_events])
                wait_decided(
                    ledger, [e.event_id for e in chain.registry_events], timeout=decide_timeout, alive=alive
                )
                progress.update(reg, completed=len(chain.registry_events))
                task = progress.add_task("publish the supply chain", total=len(chain.chain_events))
                publish_causally(
                    pub,
                    ledger,
                    chain.chain_events,
                    timeout=decide_timeout,
                    on_done=lambda n: progress.advance(task, n),
                    alive=alive,
                )
                bad_task = progress.add_task("publish bad events", total=len(chain.bad_events))
                bad_receipts: list[tuple[str, str, Receipt]] = []
                for label, raw, expected in chain.bad_events:
                    bad_receipts.append((label, expected, _bad_message(pub, chain, raw)))
                    progress.advance(bad_task)
            good_ids = [e.event_id for e in chain.good_events]
            rejected_sources = [r.source for _, exp, r in bad_receipts if exp != "duplicate"]
            with con.status("waiting until the ledger has decided every message ..."):
                dec = wait_decided(ledger, good_ids, rejected_sources, timeout=decide_timeout, alive=alive)
                ledger.refresh_registry()
                deadline = time.monotonic() + decide_timeout
                while (ledger.stats()["latest_checkpoint_size"] or 0) < ledger.size:
                    alive()
                    if time.monotonic() > deadline:
                        raise DemoError("no checkpoint covering the ledger was signed in time")
                    time.sleep(0.1)
                    ledger.refresh_registry()

        # ------------------------------------------------------------------ outcome
        stats = ledger.stats()
        result.entries = int(stats["entries"])
        result.rejections = dict(stats["rejections"])
        ok = True
        appended = sum(1 for i in good_ids if dec[i][0] == "appended")
        ok &= appended == len(good_ids)
        for label, expected, receipt in bad_receipts:
            if expected == "duplicate":
                # a replay is not a rejection: the same event id, appended once, never twice
                got = "duplicate" if result.entries == 1 + len(good_ids) else "appended twice?"
            else:
                got = str(dec[receipt.source][2])
            result.outcomes.append((label, expected, got, got == expected))
            ok &= got == expected

        fac = Table(title="Facilities (registered by the operator, in the ledger)", title_justify="left")
        for col in ("facility", "legal entity", "country", "FEOC"):
            fac.add_column(col)
        for f in chain.facilities.values():
            fac.add_row(f.facility_id, f.legal_entity, f.country, "[red]yes[/]" if f.feoc else "no")
        con.print(fac)

        fta, fta_source = fta_countries()
        for pack in chain.final_packs:
            summary = ledger.provenance(pack).summary(fta=fta)
            result.provenance[pack] = summary
            con.print(_provenance_table(pack, summary))
        con.print(f"[dim]FTA countries: {', '.join(fta)} ({fta_source}); North America: US, CA, MX[/]")

        rej = Table(title="Bad events and what the ledger decided", title_justify="left")
        for col in ("event", "expected", "ledger said", ""):
            rej.add_column(col)
        for label, expected, got, good in result.outcomes:
            rej.add_row(label, expected, got, "[green]ok[/]" if good else "[red]MISMATCH[/]")
        con.print(rej)
        by_reason = Table(title="Rejections by reason (store)", title_justify="left")
        by_reason.add_column("reason")
        by_reason.add_column("count", justify="right")
        for reason, n in sorted(result.rejections.items()):
            by_reason.add_row(reason, str(n))
        con.print(by_reason)

        head = ledger.head()
        result.checkpoint = ledger.latest_checkpoint()
        con.print(
            f"ledger: {head.size} entries ({appended} of {len(good_ids)} good events appended, genesis included), "
            f"head {head.entry_hash.hex()[:16]}…, root {head.root_hash.hex()[:16]}…"
        )
        if result.checkpoint:
            con.print("[bold]latest signed checkpoint[/] (also on the ledger-checkpoints topic):")
            con.print(result.checkpoint.rstrip(), markup=False, highlight=False)
        print_audit(ledger, con)
        ledger.close()
        result.ok = ok
    finally:
        with con.status("stopping the worker and the broker ..."):
            if worker is not None:
                worker.stop()
            with contextlib.suppress(Exception):
                broker.stop()
    result.elapsed_s = time.monotonic() - started
    verdict = "[green]all expectations met[/]" if result.ok else "[red]some expectations were NOT met[/]"
    con.print(f"{verdict} in {result.elapsed_s:.0f} s; output in {out_dir}")
    return result
