"""`batteryledger epcis convert | publish | export`: GS1 EPCIS 2.0 documents in and out.

The mapping profile is schemas/epcis.py (table in docs/epcis.md). Bad input prints one line per bad event
(`error: event 3: bizStep: ...`) and exits 2; nothing is published from a document with a bad event
unless --skip-bad is given, and then the skipped events are listed.
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

from batteryledger.epcis_io import LOCATIONS_ENV, gs1_validator, read_document, read_registry
from schemas.epcis import DocumentMapping, EpcisError, dumps, map_document

EXIT_BAD_INPUT = 2
EXIT_NOT_ACCEPTED = 3
DEFAULT_STORE = "batteryledger.db"
DEFAULT_BROKER = "127.0.0.1:9092"

epcis_app = typer.Typer(
    help="GS1 EPCIS 2.0: publish EPCIS documents, export a batch's lineage as one.",
    no_args_is_help=True,
    add_completion=False,
)

LocationsOpt = Annotated[
    Path | None,
    typer.Option(
        "--locations",
        envvar=LOCATIONS_ENV,
        help='Location registry (JSON: {"<SGLN or URI>": "<facility id>" or {facility, country, kind}}).',
    ),
]
StoreOpt = Annotated[
    str, typer.Option("--store", envvar="BATTERYLEDGER_STORE", help="Store URL or SQLite file path.")
]
SkipBadOpt = Annotated[
    bool,
    typer.Option("--skip-bad", help="Map the good events of a document with bad ones; list the skipped."),
]


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    _err(f"error: {message}")
    raise typer.Exit(code)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    from ledger.store import StoreError
    from schemas.signing import KeyFileError

    try:
        yield
    except typer.Exit:
        raise
    except (EpcisError, KeyFileError) as exc:
        _fail(exc.diagnostics() if hasattr(exc, "diagnostics") else str(exc))
    except StoreError as exc:
        _fail(str(exc).splitlines()[0], 1)
    except Exception as exc:
        if os.environ.get("BATTERYLEDGER_DEBUG") == "1":
            raise
        _fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 1)


def _mapped(file: Path, locations: Path | None, facility: str | None, skip_bad: bool) -> DocumentMapping:
    """Read, validate (GS1 schema) and map; bad events stop here unless --skip-bad."""
    doc = read_document(file)
    result = map_document(doc, read_registry(locations), facility_id=facility, validator=gs1_validator())
    total = len(result.mapped) + len(result.errors)
    if result.errors:
        if not skip_bad:
            for e in result.errors:
                _err(f"error: {e.diagnostics()}")
            _fail(
                f"{len(result.errors)} of {total} events in {file} are bad: nothing mapped or published "
                f"(fix them, or give --skip-bad to go on with the {len(result.mapped)} good ones)"
            )
        for e in result.errors:
            _err(f"skipped {e.diagnostics()}")
        _err(f"skipped {len(result.errors)} of {total} events (--skip-bad)")
    if not result.mapped:
        _fail(f"{file} holds no event the profile maps")
    return result


def convert(
    file: Annotated[Path, typer.Argument(help="EPCIS 2.0 document (.json or .jsonld).")],
    locations: LocationsOpt = None,
    facility: Annotated[
        str | None, typer.Option("--facility", help="Require every event to be at this facility.")
    ] = None,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Print the mapped, unsigned ledger events (JSON lines) for review; sign them with `sign`."""
    with _one_line_errors():
        result = _mapped(file, locations, facility, skip_bad)
    for m in result.mapped:
        print(json.dumps(m.event, separators=(",", ":"), ensure_ascii=False))


def publish(
    file: Annotated[Path, typer.Argument(help="EPCIS 2.0 document (.json or .jsonld).")],
    key: Annotated[Path, typer.Option("--key", help="The facility's private key: signs the mapped events.")],
    facility: Annotated[str, typer.Option("--facility", help="The facility the key belongs to.")],
    locations: LocationsOpt = None,
    skip_bad: SkipBadOpt = False,
    broker: Annotated[
        str, typer.Option("--broker", envvar="BATTERYLEDGER_BROKER", help="Kafka bootstrap HOST:PORT.")
    ] = DEFAULT_BROKER,
    store: StoreOpt = DEFAULT_STORE,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the ledger's decisions and print them.")
    ] = True,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for decisions.")
    ] = 120.0,
    topic_suffix: Annotated[
        str, typer.Option("--topic-suffix", envvar="BATTERYLEDGER_TOPIC_SUFFIX", help="Topic name suffix.")
    ] = "",
) -> None:
    """Map an EPCIS document, sign each event with the plant's key and publish it through Kafka.

    The EPCIS eventID is kept in each event, so publishing the same document again is a no-op.
    """
    from ledger.core import Ledger
    from schemas.signing import load_private_key
    from streams.publisher import Publisher, PublishError
    from streams.settings import Settings

    with _one_line_errors():
        result = _mapped(file, locations, facility, skip_bad)
        signing_key = load_private_key(key)
        ledger = Ledger(store) if wait else None
        # events already in the ledger (a re-published document): the ledger treats them as no-ops
        known = ledger.entry_data([m.event_id for m in result.mapped]) if ledger is not None else {}
        settings = Settings(broker=broker, topic_suffix=topic_suffix)
        sent: list[tuple[int, str, Any]] = []
        try:
            with Publisher(settings.bootstrap, facility, signing_key, topic=settings.events_topic) as pub:
                for m in result.mapped:
                    raw = pub.sign(m.event)
                    pub.publish_signed(raw)
                    assert pub.last_receipt is not None
                    sent.append((m.index, m.epcis_event_id or "", pub.last_receipt))
        except PublishError as exc:
            _fail(str(exc).splitlines()[0], 1)
        print(
            f"published {len(sent)} event(s) from {file} to {settings.events_topic} at {settings.bootstrap}"
        )
        if ledger is None:
            return
        decided = _wait(ledger, [r for _, _, r in sent], timeout)
    counts: dict[str, int] = {}
    for index, epcis_id, r in sent:
        d = decided.get(r.event_id or "") or decided.get(r.source)
        if d is None:
            status, what = "undecided", f"not decided within {timeout:g} s"
        elif d[0] == "appended":
            status, what = "accepted", f"entry {d[1]}"
            if r.event_id in known:
                status, what = "unchanged", f"already entry {d[1]} (re-published: a no-op)"
        elif d[0] == "parked":
            status, what = "waiting", "for its input batches"
        else:
            status, what = "rejected", f"{d[2]}: {d[3]}"
        counts[status] = counts.get(status, 0) + 1
        print(f"event {index} {epcis_id or '(no eventID)'} -> {(r.event_id or '?')[:16]} {status} {what}")
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if set(counts) - {"accepted", "unchanged"}:
        raise typer.Exit(EXIT_NOT_ACCEPTED)


def _wait(ledger: Any, receipts: list[Any], timeout: float) -> dict[str, Any]:
    ids = [r.event_id for r in receipts if r.event_id]
    sources = [r.source for r in receipts]
    deadline = time.monotonic() + timeout
    while True:
        dec: dict[str, Any] = ledger.decisions(ids, sources)
        if all((r.event_id in dec and dec[r.event_id][0] != "parked") or r.source in dec for r in receipts):
            return dec
        if time.monotonic() > deadline:
            return dec
        time.sleep(0.2)


def export(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Write the EPCISDocument here ('-': stdout).")
    ],
    up: Annotated[bool, typer.Option("--up/--down", help="Ancestors (up, default) or descendants.")] = True,
    depth: Annotated[int, typer.Option("--depth", min=1, max=10_000, help="How many hops.")] = 50,
    store: StoreOpt = DEFAULT_STORE,
    locations: LocationsOpt = None,
    base_url: Annotated[
        str, typer.Option("--base-url", help="API base for the inclusion-proof links (default: relative).")
    ] = "",
) -> None:
    """Write the batch's lineage events as one EPCIS 2.0 document (valid against the GS1 schema)."""
    from batteryledger.epcis_io import export_lineage
    from ledger.core import Ledger

    with _one_line_errors():
        registry = read_registry(locations)
        with Ledger(store) as led:
            doc = export_lineage(
                led,
                batch,
                direction="up" if up else "down",
                depth=depth,
                registry=registry,
                base_url=base_url,
            )
        text = dumps(doc) + "\n"
        if str(output) == "-":
            sys.stdout.write(text)
            return
        output.write_text(text, encoding="utf-8")
    n = len(doc["epcisBody"]["eventList"])
    print(f"wrote {n} EPCIS event(s) of the lineage of {batch} to {output}")


epcis_app.command("convert")(convert)
epcis_app.command("publish")(publish)
epcis_app.command("export")(export)


def register(app: typer.Typer) -> None:
    """Mount `epcis` on the root `batteryledger` app."""
    app.add_typer(epcis_app, name="epcis")


__all__ = ["epcis_app", "register"]
