"""The Kafka side of the command line: ``worker``, ``publish``, ``status``, ``topics create``, ``demo``.

Mounted on the root app by :func:`register`. Every error a user can cause prints one line
(``error: ...``) and exits non-zero; no tracebacks (set BATTERYLEDGER_DEBUG=1 to see them).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ledger.core import Ledger
from ledger.store import StoreError
from schemas.canonical import canonicalize
from schemas.reasons import EventError
from schemas.signing import KeyFileError, load_private_key
from streams.settings import Settings, SettingsError, bootstrap_of

__all__ = ["consumer_lag", "register", "topics_app"]

DEFAULT_BROKER = "127.0.0.1:9092"
DEFAULT_STORE = "batteryledger.db"

console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)

topics_app = typer.Typer(help="Kafka topics of a ledger.", no_args_is_help=True, add_completion=False)

BrokerOpt = Annotated[
    str, typer.Option("--broker", envvar="BATTERYLEDGER_BROKER", help="Kafka bootstrap HOST:PORT.")
]
StoreOpt = Annotated[
    str, typer.Option("--store", envvar="BATTERYLEDGER_STORE", help="Ledger store URL or SQLite file path.")
]
AppIdOpt = Annotated[
    str,
    typer.Option("--app-id", envvar="BATTERYLEDGER_APP_ID", help="Worker app id (Kafka consumer group)."),
]
SuffixOpt = Annotated[
    str,
    typer.Option(
        "--topic-suffix", envvar="BATTERYLEDGER_TOPIC_SUFFIX", help="Suffix of every topic name ('' = none)."
    ),
]
PartitionsOpt = Annotated[
    int,
    typer.Option(
        "--partitions", envvar="BATTERYLEDGER_PARTITIONS", min=1, help="Partitions of material-events."
    ),
]


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Known errors become one line and exit 1 (2 for bad input); tracebacks only with BATTERYLEDGER_DEBUG=1."""
    from batteryledger.demo import DemoError
    from streams.localbroker import BrokerError
    from streams.publisher import PublishError
    from streams.worker import WorkerError

    try:
        yield
    except typer.Exit:
        raise
    except (SettingsError, KeyFileError, EventError) as exc:
        _fail(exc.diagnostics() if hasattr(exc, "diagnostics") else str(exc), 2)
    except BrokerError as exc:
        _fail(exc.one_line())
    except (StoreError, PublishError, WorkerError, DemoError) as exc:
        _fail(str(exc).splitlines()[0] if os.environ.get("BATTERYLEDGER_DEBUG") != "1" else str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    except Exception as exc:
        if os.environ.get("BATTERYLEDGER_DEBUG") == "1":
            raise
        _fail(f"{type(exc).__name__}: {exc}")


def _open_ledger(store: str) -> Ledger:
    try:
        return Ledger(store)
    except StoreError as exc:
        _fail(str(exc))


# ------------------------------------------------------------------------------------------------ worker


def worker(
    broker: BrokerOpt = DEFAULT_BROKER,
    store: StoreOpt = DEFAULT_STORE,
    app_id: AppIdOpt = "batteryledger",
    partitions: PartitionsOpt = 2,
    topic_suffix: SuffixOpt = "",
    operator_key: Annotated[
        Path | None,
        typer.Option(
            "--operator-key",
            envvar="BATTERYLEDGER_OPERATOR_KEY",
            help="Operator key file: sign checkpoints (none: no checkpoints).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", envvar="BATTERYLEDGER_LOG_LEVEL")] = "info",
) -> None:
    """Run a Faust worker (verify agent + sequencer) against a broker and a ledger store until Ctrl-C.

    Start more workers with the same --app-id to verify on more cores; one of them sequences, and with
    two or more that one verifies nothing (BATTERYLEDGER_DEDICATED_SEQUENCER=0: Faust's even spread).
    Other settings come from the environment (see streams/settings.py).
    """
    from streams.worker import check_store, run_worker

    with _one_line_errors():
        settings = Settings.from_env(
            broker=broker,
            store=store,
            app_id=app_id,
            partitions=partitions,
            topic_suffix=topic_suffix,
            operator_key=operator_key,
            log_level=log_level,
        )
        if settings.operator_key is not None:
            load_private_key(settings.operator_key)  # fail now, in one line, not inside the worker
        check_store(settings)
    run_worker(settings)


# ------------------------------------------------------------------------------------------------ publish


def publish(
    file: Annotated[
        Path, typer.Argument(help="JSON lines: unsigned events (signed with --key) or signed ones.")
    ],
    broker: BrokerOpt = DEFAULT_BROKER,
    key: Annotated[
        Path | None, typer.Option("--key", help="Private key file to sign unsigned events with.")
    ] = None,
    facility: Annotated[
        str | None,
        typer.Option("--facility", help="Facility the key belongs to [default: each event's facility_id]."),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the ledger's decisions and print them.")
    ] = True,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for decisions.")
    ] = 120.0,
    structured: Annotated[
        bool, typer.Option("--structured", help="Send structured-mode CloudEvents instead of binary.")
    ] = False,
    sign_processes: Annotated[
        int,
        typer.Option(
            "--sign-processes",
            min=0,
            help="Validate and sign in this many helper processes (bulk files; about 1 s to start).",
        ),
    ] = 0,
    topic_suffix: SuffixOpt = "",
) -> None:
    """Publish events from a JSON-lines file to Kafka, then report what the ledger decided for each."""
    from streams.publisher import Publisher, PublishError, Receipt, load_json_lines

    with _one_line_errors():
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            _fail(f"cannot read {file}: {exc.strerror}")
        except UnicodeDecodeError:
            _fail(f"{file} is not UTF-8 text")
        objs = list(load_json_lines(lines))
        if not objs:
            _fail(f"{file} holds no events")
        signing_key = load_private_key(key) if key is not None else None
        unsigned = [n for n, o in objs if "sig" not in o]
        if unsigned and signing_key is None:
            _fail(f"line {unsigned[0]} is not signed: give --key FILE to sign it (and --facility ID)", 2)
        ledger = _open_ledger(store) if wait else None
        settings = Settings(broker=broker, topic_suffix=topic_suffix)
        facility_id = facility or str(objs[0][1].get("facility_id", "unknown"))
        receipts: list[tuple[int, Receipt]] = []
        with (
            Publisher(
                settings.bootstrap,
                facility_id,
                signing_key,
                topic=settings.events_topic,
                structured=structured,
                sign_processes=sign_processes,
            ) as pub,
            Progress(
                TextColumn("publishing"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            ) as progress,
        ):
            task = progress.add_task("publish", total=len(objs))

            def items() -> Iterator[dict[str, Any] | bytes]:
                # signed lines go as their canonical bytes; unsigned ones are signed (once) by
                # publish_many, as the facility they name unless --facility was given
                for _, obj in objs:
                    if "sig" in obj:
                        yield canonicalize(obj)
                    else:
                        if facility is None:
                            pub.facility_id = str(obj.get("facility_id", facility_id))
                        yield obj

            def acked(receipt: Receipt) -> None:
                receipts.append((objs[len(receipts)][0], receipt))
                progress.advance(task)

            try:
                pub.publish_many(items(), on_ack=acked)
            except PublishError as exc:  # the lines before it are on the topic
                raise PublishError(f"line {objs[len(receipts)][0]}: {exc}") from None
        console.print(
            f"published {len(receipts)} event(s) to {settings.events_topic} at {settings.bootstrap}"
        )
        if ledger is None:
            return
        decided = _wait_for_decisions(ledger, [r for _, r in receipts], timeout)
        table = Table(title="What the ledger decided", title_justify="left")
        for col in ("line", "event id", "decision", "entry / reason"):
            table.add_column(col)
        counts: dict[str, int] = {}
        for n, r in receipts:
            d = decided.get(r.event_id or "") or decided.get(r.source)
            if d is None:
                status, what = "undecided", f"not decided within {timeout:g} s"
            elif d[0] == "appended":
                status, what = "accepted", f"entry {d[1]}"
            elif d[0] == "parked":
                status, what = "waiting", "for its input batches (children before parents)"
            else:
                status, what = "rejected", f"{d[2]}: {d[3]}"
            counts[status] = counts.get(status, 0) + 1
            table.add_row(str(n), (r.event_id or "?")[:16], status, what)
        console.print(table)
        console.print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        if set(counts) - {"accepted"}:
            raise typer.Exit(3)


def _wait_for_decisions(ledger: Ledger, receipts: list[Any], timeout: float) -> dict[str, Any]:
    ids = [r.event_id for r in receipts if r.event_id]
    sources = [r.source for r in receipts]
    deadline = time.monotonic() + timeout
    with err_console.status("waiting for the ledger to decide ..."):
        while True:
            dec = ledger.decisions(ids, sources)
            done = all(
                (r.event_id in dec and dec[r.event_id][0] != "parked") or r.source in dec for r in receipts
            )
            if done or time.monotonic() > deadline:
                return dec
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------------ status


def consumer_lag(settings: Settings, ledger: Ledger) -> list[tuple[str, int, int, int]]:
    """(topic, partition, end offset, stored offset) per partition of the raw and the verified topic.

    Stored offsets are the ledger's own tracking records: the next verified-topic offset, and per raw
    partition one past the highest source offset the sequencer has seen.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=15000,
    )
    try:
        stored = ledger.stored_offsets(settings.app_id)
        marks = ledger.stored_offsets(settings.app_id + "/sources")
        rows: list[tuple[str, int, int, int]] = []
        for topic, tracked in ((settings.events_topic, marks), (settings.verified_topic, stored)):
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                raise SettingsError(
                    f"topic {topic} does not exist on {settings.bootstrap}: run `batteryledger topics create`"
                )
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = consumer.end_offsets(tps)
            rows.extend(
                (topic, tp.partition, int(ends[tp]), tracked.get((topic, tp.partition), 0)) for tp in tps
            )
        return rows
    finally:
        consumer.close()


def status(
    store: StoreOpt = DEFAULT_STORE,
    broker: Annotated[
        str | None,
        typer.Option("--broker", envvar="BATTERYLEDGER_BROKER", help="Kafka bootstrap, for consumer lag."),
    ] = None,
    app_id: AppIdOpt = "batteryledger",
    topic_suffix: SuffixOpt = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Ledger head, entries, rejections by reason, parked events and (with --broker) consumer lag."""
    with _one_line_errors():
        ledger = _open_ledger(store)
        stats = ledger.stats()
        head = ledger.head()
        if as_json:
            data = {**stats, "root": head.root_hash.hex()}
            if broker is not None:
                settings = Settings(broker=broker, store=store, app_id=app_id, topic_suffix=topic_suffix)
                data["consumer_lag"] = [
                    {"topic": t, "partition": p, "end_offset": e, "stored_offset": o, "lag": max(e - o, 0)}
                    for t, p, e, o in consumer_lag(settings, ledger)
                ]
            print(json.dumps(data, indent=2))
            return
        console.print(f"ledger {stats['origin']}: {stats['entries']} entries, {stats['batches']} batches")
        console.print(f"head {head.entry_hash.hex()}  root {head.root_hash.hex()}")
        ck = stats["latest_checkpoint_size"]
        console.print(f"latest checkpoint covers {ck} entries" if ck is not None else "no checkpoint yet")
        console.print(f"waiting for parents: {stats['parked']}")
        rej = Table(title="Rejections by reason", title_justify="left")
        rej.add_column("reason")
        rej.add_column("count", justify="right")
        for reason, n in sorted(stats["rejections"].items()):
            rej.add_row(reason, str(n))
        if not stats["rejections"]:
            rej.add_row("(none)", "0")
        console.print(rej)
        if broker is None:
            console.print("[dim]give --broker for consumer lag[/]")
            return
        settings = Settings(broker=broker, store=store, app_id=app_id, topic_suffix=topic_suffix)
        lag = Table(
            title=f"Consumer lag (consumer {app_id}, offsets stored in the ledger)", title_justify="left"
        )
        for col in ("topic", "partition", "end offset", "stored offset", "lag"):
            lag.add_column(col, justify="right" if col != "topic" else "left")
        for topic, partition, end, stored in consumer_lag(settings, ledger):
            lag.add_row(topic, str(partition), str(end), str(stored), str(max(end - stored, 0)))
        console.print(lag)


# ------------------------------------------------------------------------------------------------ topics


@topics_app.command("create")
def topics_create(
    broker: BrokerOpt = DEFAULT_BROKER,
    partitions: PartitionsOpt = 2,
    topic_suffix: SuffixOpt = "",
) -> None:
    """Create the ledger's topics (idempotent; refuses an existing topic with another partition count)."""
    from streams.localbroker import cluster_size, create_topics
    from streams.topics import ALL_TOPICS, replication_for

    with _one_line_errors():
        settings = Settings(broker=broker, partitions=partitions, topic_suffix=topic_suffix)
        specs = [s.renamed(settings.topic(s.name)) for s in ALL_TOPICS(partitions)]
        bootstrap = bootstrap_of(settings.broker)
        replication = replication_for(cluster_size(bootstrap))
        console.print(f"cluster of {replication.describe()} (new topics; existing ones keep theirs)")
        created = create_topics(bootstrap, specs, replication=replication)
        for spec in specs:
            state = "created" if spec.name in created else "exists"
            console.print(
                f"{state:8} {spec.name} ({spec.partitions} partition{'s' if spec.partitions > 1 else ''})"
            )


# ------------------------------------------------------------------------------------------------ demo


def demo(
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where the demo's ledger, keys and logs go (emptied first).")
    ] = Path("demo-out"),
    partitions: Annotated[
        int, typer.Option("--partitions", min=1, help="Partitions of material-events.")
    ] = 2,
) -> None:
    """Start Kafka and a worker, publish a multi-tier supply chain and bad events, print provenance, stop."""
    from batteryledger.demo import run_demo

    with _one_line_errors():
        result = run_demo(out_dir, partitions=partitions, console=console)
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the Kafka-side commands to the root `batteryledger` app."""
    app.command("worker")(worker)
    app.command("publish")(publish)
    app.command("status")(status)
    app.command("demo")(demo)
    app.add_typer(topics_app, name="topics")
