"""`batteryledger` command line.

Every error a user can cause prints one line (`error: ...`) and exits non-zero; no tracebacks unless
BATTERYLEDGER_DEBUG=1. The store is `--store URL` or $BATTERYLEDGER_STORE (default ./batteryledger.db).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from batteryledger.keyfiles import load_key, passphrase_from_env
from batteryledger.views import fta_countries
from ledger.core import Incoming, Ledger, verify_ledger
from ledger.store import StoreError, describe, one_line
from ledger.verify import unverified_note
from schemas.events import SPEC, Kind
from schemas.reasons import EventError
from schemas.signing import (
    KeyFileError,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    public_key_b64,
    save_private_key,
    sign_object,
)

DEFAULT_STORE = "batteryledger.db"
APPEND_BATCH = 1000

# Plain help (rich_markup_mode=None): flags read as flags (`--json`, `--up / --down`), not `<bool>`.
PLAIN: Any = {"no_args_is_help": True, "rich_markup_mode": None}
app = typer.Typer(
    name="batteryledger",
    help="Battery supply-chain traceability ledger: signed events, hash chain, provenance, audits.",
    add_completion=False,
    pretty_exceptions_enable=False,
    **PLAIN,
)
keys_app = typer.Typer(help="Ed25519 keys for facilities and the ledger operator.", **PLAIN)
facility_app = typer.Typer(help="The facility registry (signed by the operator key).", **PLAIN)
schema_app = typer.Typer(help="The wire contract as JSON Schema.", **PLAIN)
batches_app = typer.Typer(help="Find batches in the ledger.", **PLAIN)
app.add_typer(keys_app, name="keys")
app.add_typer(facility_app, name="facility")
app.add_typer(schema_app, name="schema")
app.add_typer(batches_app, name="batches")


def _columns() -> int | None:
    """$COLUMNS when set; else the terminal's width, or 160 when output is not a terminal (logs)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        return None


def _console(stderr: bool = False) -> Console:
    tty = (sys.stderr if stderr else sys.stdout).isatty()
    width = _columns() or (None if tty else 160)
    return Console(stderr=stderr, width=width)


console = _console()
err_console = _console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("batteryledger")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        typer.echo(f"batteryledger {v}")
        raise typer.Exit(0)


@app.callback()
def _main(
    _version_flag: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True),
    ] = False,
) -> None:
    """Battery supply-chain traceability ledger: signed events, hash chain, provenance, audits."""


def table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
    """A table whose cells wrap (never cut) when the terminal is narrow."""
    t = Table(title=title)
    for c in columns:
        t.add_column(c, overflow="fold", justify="right" if c in right else "left")
    return t


StoreOpt = Annotated[
    str, typer.Option("--store", envvar="BATTERYLEDGER_STORE", help="Store URL or SQLite file path.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


class CliError(Exception):
    """A user-facing error: printed as one line."""

    def diagnostics(self) -> str:
        return str(self)


def fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message) from None


def open_ledger(store: str, operator_key: Path | None = None, passphrase_env: str | None = None) -> Ledger:
    """The ledger at `store`; a store that cannot be opened is one line naming it."""
    from sqlalchemy.exc import SQLAlchemyError

    key = load_key(operator_key, passphrase_env)
    try:
        return Ledger(store, operator_key=key)
    except SQLAlchemyError as exc:
        raise CliError(f"cannot open the store {_redact(store)}: {_db_reason(exc)}") from None


def _redact(url: str) -> str:
    """A store URL without its password."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _db_reason(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    if "file is not a database" in text:
        return "the file is not a SQLite database"
    first = text.splitlines()[0] if text else type(exc).__name__
    if "connection" in first.lower() or "connect" in first.lower():
        return f"cannot connect ({first.rstrip('.')}); is the server running and reachable?"
    return first


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-empty lines of a JSON-lines file ('-' = stdin), with line numbers."""
    fh = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    try:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if line:
                yield n, line
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


# -- init & keys ---------------------------------------------------------------------------------
@app.command()
def init(
    store: StoreOpt = DEFAULT_STORE,
    origin: Annotated[
        str, typer.Option(help="Log origin name (checkpoints carry it), e.g. ledger.example.com/na")
    ] = ("batteryledger.local/ledger"),
    operator_key: Annotated[
        Path, typer.Option(help="Operator (registry authority) private key; created if missing.")
    ] = Path("keys/operator.key"),
    passphrase_env: Annotated[str | None, typer.Option(help="Env var holding the key passphrase.")] = None,
    legal_entity: Annotated[str, typer.Option(help="The operator's legal entity.")] = "Ledger operator",
) -> None:
    """Create a ledger: schema, operator key, and entry 0 (the registry authority)."""
    if operator_key.exists():
        key = load_private_key(operator_key, passphrase_from_env(passphrase_env))
    else:
        key = generate_key()
        save_private_key(key, operator_key, passphrase_from_env(passphrase_env))
        console.print(f"operator key written to {operator_key} (0600) and {operator_key}.pub")
    led = Ledger.init(store, operator_key=key, origin=origin, legal_entity=legal_entity)
    console.print(
        f"ledger {origin!r} created at {led.url}: {led.size} entry, operator key {key_id(key.public_key())}"
    )
    console.print(f"operator verifier key: {led.operator_vkey}")


@keys_app.command("new")
def keys_new(
    path: Annotated[Path, typer.Argument(help="Private key file to create (PKCS#8 PEM, mode 0600).")],
    passphrase_env: Annotated[
        str | None, typer.Option(help="Encrypt with the passphrase in this env var.")
    ] = None,
) -> None:
    """Generate an Ed25519 key pair."""
    key = generate_key()
    pub = save_private_key(key, path, passphrase_from_env(passphrase_env))
    console.print(f"key id {key_id(key.public_key())}  public {public_key_b64(key.public_key())}")
    console.print(f"private key {path} (0600), public key {pub}")


@keys_app.command("worker")
def keys_worker(
    path: Annotated[Path, typer.Argument(help="Worker key file to create (64 hex characters, mode 0600).")],
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Keep an existing key file instead of refusing.")
    ] = False,
) -> None:
    """Generate the worker key that authenticates the verified hop (give every worker BATTERYLEDGER_WORKER_KEY)."""
    from ledger.intake import HopKey, HopKeyError

    try:
        if if_missing and path.exists():
            console.print(f"worker key {path} kept (key id {HopKey.load(path).kid})")
            return
        key = HopKey.generate()
        key.save(path)
    except (HopKeyError, OSError) as exc:
        fail(exc.diagnostics() if isinstance(exc, HopKeyError) else f"cannot write {path}: {exc.strerror}", 2)
    console.print(
        f"worker key {path} (0600), key id {key.kid}: set BATTERYLEDGER_WORKER_KEY={path} on every worker"
    )


@keys_app.command("show")
def keys_show(
    path: Annotated[Path, typer.Argument(help="A private (.key) or public (.pub) key file.")],
) -> None:
    """Print a key's id (fingerprint) and public key."""
    try:
        pub = load_public_key(path)
    except (KeyFileError, ValueError):
        pub = load_private_key(path).public_key()
    console.print(f"key id {key_id(pub)}  public {public_key_b64(pub)}")


# -- registry ------------------------------------------------------------------------------------
@facility_app.command("register")
def facility_register(
    facility_id: Annotated[str, typer.Argument(help="Facility id, e.g. ref-us-kings-mountain")],
    legal_entity: Annotated[str, typer.Option(help="Legal entity operating the facility.")],
    country: Annotated[str, typer.Option(help="ISO 3166-1 alpha-2 country code.")],
    role: Annotated[list[str], typer.Option(help="Event kind the facility may sign (repeat).")],
    key: Annotated[Path, typer.Option(help="The facility's public key file (.pub) or private key.")],
    operator_key: Annotated[Path, typer.Option(help="Operator private key.")] = Path("keys/operator.key"),
    feoc: Annotated[bool, typer.Option(help="Attested foreign entity of concern.")] = False,
    pfe: Annotated[bool, typer.Option(help="Attested prohibited foreign entity (45X MACR).")] = False,
    valid_from: Annotated[
        str, typer.Option(help="Key and attestation valid from (RFC 3339).")
    ] = "2024-01-01T00:00:00Z",
    evidence: Annotated[str | None, typer.Option(help="Reference to the attestation evidence.")] = None,
    store: StoreOpt = DEFAULT_STORE,
    passphrase_env: Annotated[
        str | None, typer.Option(help="Env var holding the operator key passphrase.")
    ] = None,
) -> None:
    """Register a facility and its key (a signed registry event appended to the ledger)."""
    kinds = []
    for r in role:
        try:
            kinds.append(Kind(r).value)
        except ValueError:
            fail(f"unknown role {r!r}: roles are event kinds ({', '.join(k.value for k in Kind)})")
    try:
        pub = load_public_key(key)
    except (KeyFileError, ValueError):
        pub = load_private_key(key).public_key()
    led = open_ledger(store, operator_key, passphrase_env)
    assert led.operator_key is not None
    obj: dict[str, Any] = {
        "spec": SPEC,
        "kind": Kind.FACILITY_REGISTERED.value,
        "facility_id": "registry",
        "time": _now(),
        "subject_facility_id": facility_id,
        "legal_entity": legal_entity,
        "country": country.upper(),
        "roles": sorted(set(kinds)),
        "attestation": {"feoc": feoc, "prohibited_foreign_entity": pfe, "as_of": valid_from},
        "key": {"key_id": key_id(pub), "public_key": public_key_b64(pub), "valid_from": valid_from},
    }
    if evidence:
        obj["attestation"]["evidence"] = evidence
    raw, _ = sign_object(obj, led.operator_key)
    [res] = led.append([raw])
    if res.status != "appended":
        fail(f"registration rejected ({res.reason}): {res.detail}")
    console.print(f"registered {facility_id} ({country.upper()}) at entry {res.seq}, key {key_id(pub)}")


@facility_app.command("list")
def facility_list(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """List registered facilities."""
    led = open_ledger(store)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {
            "facility_id": f.facility_id,
            "legal_entity": f.legal_entity,
            "country": f.country,
            "feoc": f.feoc_at(now),
            "prohibited_foreign_entity": f.pfe_at(now),
            "roles": sorted(r.value for r in f.roles),
        }
        for f in sorted(led.registry.facilities.values(), key=lambda f: f.facility_id)
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = table("facility", "legal entity", "country", "FEOC", "PFE", "roles")
    for r in rows:
        t.add_row(
            r["facility_id"],
            r["legal_entity"],
            r["country"],
            "yes" if r["feoc"] else "",
            "yes" if r["prohibited_foreign_entity"] else "",
            ", ".join(r["roles"]),
        )
    console.print(t)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- sign & append -------------------------------------------------------------------------------
@app.command()
def sign(
    file: Annotated[Path, typer.Argument(help="JSON lines of unsigned events ('-' for stdin).")],
    key: Annotated[Path, typer.Option(help="The facility's private key.")],
    facility: Annotated[str | None, typer.Option(help="Fill facility_id where an event lacks it.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write signed lines here (default stdout).")
    ] = None,
    passphrase_env: Annotated[str | None, typer.Option(help="Env var holding the key passphrase.")] = None,
) -> None:
    """Sign JSON-lines events with a facility key (RFC 8785 canonical bytes, Ed25519)."""
    from pydantic import ValidationError

    from schemas.events import parse_event

    priv = load_private_key(key, passphrase_from_env(passphrase_env))
    out = output.open("wb") if output else sys.stdout.buffer
    count = 0
    try:
        for n, line in read_lines(file):
            try:
                obj = json.loads(line, parse_float=str)  # numbers keep their exact decimal text
            except ValueError as exc:
                fail(f"{file}:{n}: not JSON: {exc}")
            if not isinstance(obj, dict):
                fail(f"{file}:{n}: expected a JSON object")
            obj.setdefault("spec", SPEC)
            if facility:
                obj.setdefault("facility_id", facility)
            try:
                parse_event(obj)
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                fail(f"{file}:{n}: {loc}: {first['msg']}")
            raw, _ = sign_object(obj, priv)
            out.write(raw + b"\n")
            count += 1
    finally:
        if output:
            out.close()
    err_console.print(f"signed {count} event(s) with key {key_id(priv.public_key())}")


@app.command()
def append(
    file: Annotated[Path, typer.Argument(help="JSON lines of signed events ('-' for stdin).")],
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Append signed events directly (no Kafka): bulk import and tests."""
    led = open_ledger(store)
    lines = list(read_lines(file))
    results: dict[str, tuple[int | None, Any]] = {}  # event id (or line) -> (line, latest result)
    order: list[str] = []
    with progress_bar() as bar:
        task = bar.add_task("appending", total=len(lines))
        for i in range(0, len(lines), APPEND_BATCH):
            part = lines[i : i + APPEND_BATCH]
            res = led.append([Incoming(raw=line, source=f"{file}:{n}") for n, line in part], park=True)
            # one result per line, then one per parked event a later parent released
            for (n, _), r in zip(part, res[: len(part)], strict=True):
                key = r.event_id or f"line:{n}"
                if key not in results:
                    order.append(key)
                    results[key] = (n, r)
                elif results[key][1].status == "parked":
                    results[key] = (results[key][0], r)
            for r in res[len(part) :]:
                if r.event_id in results:
                    results[r.event_id] = (results[r.event_id][0], r)
            bar.advance(task, len(part))
    for r in led.expire_parked(max_age=_zero()):
        if r.event_id in results:
            results[r.event_id] = (results[r.event_id][0], r)
    counts: dict[str, int] = {}
    rows = []
    for key in order:
        line, r = results[key]
        label = r.status if r.status != "rejected" else f"rejected:{r.reason}"
        counts[label] = counts.get(label, 0) + 1
        rows.append(
            {
                "line": line,
                "event_id": r.event_id,
                "status": r.status,
                "seq": r.seq,
                "reason": r.reason,
                "detail": r.detail,
            }
        )
    if as_json:
        print(json.dumps({"results": rows, "counts": counts}, indent=2))
    else:
        for row in rows:
            if row["status"] == "rejected":
                err_console.print(f"{file}:{row['line']}: rejected ({row['reason']}): {row['detail']}")
        console.print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to append")
        console.print(f"ledger size {led.size}, head {led.head_hash.hex()[:16]}..")
    if any(r["status"] == "rejected" for r in rows):
        raise typer.Exit(3)


def _zero() -> Any:
    from datetime import timedelta

    return timedelta(0)


# -- queries -------------------------------------------------------------------------------------
SHARE_ROWS = [
    ("us_extracted", "mined in the US"),
    ("us_processed", "processed in the US"),
    ("fta_or_us_extracted", "mined in US or FTA country"),
    ("fta_or_us_processed", "processed in US/FTA country"),
    ("north_america_processed", "processed in North America"),
    ("recycled", "recycled"),
    ("recycled_pre_consumer", "  pre-consumer"),
    ("recycled_post_consumer", "  post-consumer"),
    ("feoc_touched", "FEOC-touched"),
    ("unknown", "unknown"),
]
ELEMENT_HEADS = {"li": "Li", "ni": "Ni", "co": "Co", "mn": "Mn", "graphite": "graphite"}


def provenance_table(summary: dict[str, Any]) -> Table:
    """Shares as rows, elements as columns: fits 80 columns whatever the batch."""
    els = list(summary["elements"])
    t = Table(
        title=f"provenance of {summary['batch_id']} ({summary['custody_model']}, "
        f"{summary['ancestors']} ancestor batches)"
    )
    t.add_column("share of contained mass", overflow="fold")
    for el in els:
        t.add_column(ELEMENT_HEADS.get(el, el), justify="right", overflow="fold")
    t.add_row(
        "contained kg", *[f"{summary['elements'][el]['contained_kg']:,.1f}" for el in els], end_section=True
    )
    for key, label in SHARE_ROWS:
        t.add_row(label, *[f"{summary['elements'][el]['shares'][key] * 100:.1f}%" for el in els])
    return t


@app.command()
def provenance(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Where a batch's Li, Ni, Co, Mn and graphite came from: shares by country, recycled, FEOC, unknown."""
    led = open_ledger(store)
    summary = led.provenance(batch).summary(fta=fta_countries())
    note = unverified_note(led, batch)  # on stderr: stdout stays the API's JSON
    if note:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    console.print(provenance_table(summary))
    from batteryledger.views import origin_label

    for el, data in summary["elements"].items():
        for o in data["origins"]:
            share = o["kg"] / data["contained_kg"] * 100 if data["contained_kg"] else 0.0
            console.print(f"{ELEMENT_HEADS.get(el, el)}: {share:5.1f}%  {origin_label(o)}", highlight=False)
    if summary["missing_parents"]:
        console.print(
            f"[yellow]parents not in the ledger (counted as unknown): {', '.join(summary['missing_parents'])}"
        )
    if summary["value"]:
        console.print(
            f"value USD {summary['value']['value_usd']:,.2f}; rests on {len(summary['events'])} events"
        )


@app.command()
def lineage(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    up: Annotated[
        bool, typer.Option("--up/--down", help="Ancestors (--up, default) or descendants (--down).")
    ] = True,
    depth: Annotated[int, typer.Option(min=1, max=10_000, help="How many hops.")] = 50,
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """The batches a batch came from (--up) or went into (--down)."""
    led = open_ledger(store)
    rows = led.lineage(batch, direction="up" if up else "down", depth=depth)
    note = unverified_note(led, batch, down=not up)  # on stderr: stdout stays the API's JSON
    if note:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps({"batch_id": batch, "direction": "up" if up else "down", "edges": rows}, indent=2))
        return
    t = table(
        "depth", "parent", "material", "facility", "→ child", "kg", title=f"lineage of {batch}", right=("kg",)
    )
    for r in rows:
        t.add_row(
            str(r["depth"]),
            r["parent"],
            r["parent_material"] or "?",
            f"{r['parent_facility']} ({r['parent_country']})",
            r["child"],
            r["kg"],
        )
    console.print(t)


@app.command()
def verify(
    store: StoreOpt = DEFAULT_STORE,
    signatures: Annotated[
        bool, typer.Option("--signatures/--no-signatures", help="Re-check every signature.")
    ] = True,
    as_json: JsonOpt = False,
    full: Annotated[
        bool, typer.Option("--full", help="Ignore the verified mark: re-check everything.")
    ] = False,
) -> None:
    """Re-derive every chain link, Merkle root, checkpoint, signature and derived table; name mismatches."""
    led = open_ledger(store)
    with progress_bar() as bar:
        task = bar.add_task("verifying", total=led.size)
        report = verify_ledger(led, signatures=signatures, progress=lambda n: bar.advance(task, n), full=full)
    for note in report.notes:
        err_console.print(f"note: {note}", markup=False, highlight=False)
    for msg in getattr(led, "load_errors", []):
        report.add(None, msg)
    if as_json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "entries": report.entries,
                    "checkpoints": report.checkpoints,
                    "signatures_checked": report.signatures_checked,
                    "signatures_from": report.signatures_from,
                    "root_hash": report.root_hash.hex(),
                    "errors": [{"entry": s, "message": m} for s, m in report.errors],
                },
                indent=2,
            )
        )
    elif report.ok:
        console.print(
            f"ok: {report.entries} entries, {report.checkpoints} checkpoints, "
            f"{report.signatures_checked} signatures"
            + (
                f" (entries below {report.signatures_from} vouched for by the verified mark)"
                if report.signatures_from
                else ""
            )
            + f", derived tables recomputed; root {report.root_hash.hex()}"
        )
    else:
        for _, msg in report.errors[:20]:
            err_console.print(f"error: {msg}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def stats(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False) -> None:
    """Ledger size, head, batches, facilities, rejections by reason (no broker needed)."""
    led = open_ledger(store)
    data = led.stats()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console.print(f"ledger {data['origin']}: {data['entries']} entries, head {data['head'][:16]}..")
    console.print(
        f"{data['batches']} batches, {data['facilities']} facilities, {data['parked']} parked, "
        f"latest checkpoint at size {data['latest_checkpoint_size']}"
    )
    if data["rejections"]:
        t = table("rejected (reason)", "events", right=("events",))
        for reason, n in sorted(data["rejections"].items(), key=lambda kv: (-kv[1], kv[0])):
            t.add_row(reason, str(n))
        console.print(t)
    else:
        console.print("no rejected events")


@batches_app.command("list")
def batches_list(
    prefix: Annotated[str | None, typer.Argument(help="Batch ids starting with this (optional).")] = None,
    facility: Annotated[str | None, typer.Option(help="Made by this facility.")] = None,
    material: Annotated[str | None, typer.Option(help="Material, e.g. lithium_hydroxide.")] = None,
    kind: Annotated[str | None, typer.Option(help="Event kind that made it, e.g. packs.assembled.")] = None,
    country: Annotated[
        str | None, typer.Option(help="Country of the facility that made it (ISO code).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Made at or after (RFC 3339 or YYYY-MM-DD).")] = None,
    until: Annotated[str | None, typer.Option(help="Made before (RFC 3339 or YYYY-MM-DD).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many.")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="Continue after a previous page (its next_cursor).")
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Find batches by id prefix, facility, material, kind, country and time (the API's GET /v1/batches)."""
    from ledger import queries

    if kind is not None and kind not in {k.value for k in Kind}:
        fail(f"--kind {kind!r} is not an event kind; use one of: {', '.join(k.value for k in Kind)}")
    filt = queries.BatchFilter(
        facility, material, kind, country, _time_opt(since, "--since"), _time_opt(until, "--until"), prefix
    )
    led = open_ledger(store)
    try:
        page = queries.search_batches(led.engine, filt, cursor=cursor, limit=limit)
    except queries.QueryError as exc:
        fail(str(exc))
    if as_json:
        print(
            json.dumps(
                {"batches": page.batches, "total": page.total, "next_cursor": page.next_cursor},
                indent=2,
                default=str,
            )
        )
        return
    t = table("batch", "material", "made by", "made on", "kg", right=("kg",))
    for b in page.batches:
        t.add_row(
            b["batch_id"],
            b["material"],
            f"{b['facility_id']} ({b['country']})" + (" FEOC" if b["feoc"] else ""),
            b["time"].date().isoformat(),
            f"{float(b['kg']):,.0f}",
        )
    console.print(t)
    more = f"; next page: --cursor {page.next_cursor}" if page.next_cursor else ""
    console.print(f"{len(page.batches)} of {page.total} matching batches{more}")


def _time_opt(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{flag} {text!r} is not a date or time: use YYYY-MM-DD or RFC 3339 (2025-01-31T00:00:00Z)")
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@app.command()
def passport(
    batch: Annotated[str, typer.Argument(help="A cell, module or pack batch id.")],
    store: StoreOpt = DEFAULT_STORE,
    as_json: JsonOpt = False,
) -> None:
    """Battery passport of a cell, module or pack: EU 2023/1542 Annex XIII fields the ledger derives."""
    from batteryledger.views import NotAPassportBatch
    from batteryledger.views import passport as make_passport

    led = open_ledger(store)
    try:
        p = make_passport(led, batch, fta=fta_countries())
    except LookupError:
        fail(f"batch {batch!r} is not in the ledger")
    except NotAPassportBatch as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(p, indent=2, default=str))
        return
    g, m, perf = p["generalProductInformation"], p["materialComposition"], p["performance"]

    def val(f: dict[str, Any]) -> str:
        v = f["value"]
        if v is None:
            return "not recorded"
        if isinstance(v, dict):
            v = ", ".join(f"{k} {x}" for k, x in v.items())
        elif isinstance(v, list):
            v = "; ".join(" ".join(str(x) for x in d.values()) for d in v)
        entries = ", ".join(f"#{e}" for e in f["entries"][:5])
        return f"{v}{' ' + f['unit'] if f.get('unit') else ''} (entries {entries})"

    t = table("field (Battery Pass name)", "value (ledger entries)", title=f"battery passport of {batch}")
    t.add_row("batteryPassportIdentifier", p["batteryPassportIdentifier"])
    for name in (
        "manufacturerIdentification",
        "manufacturingPlace",
        "manufacturingDate",
        "batteryMass",
        "units",
    ):
        t.add_row(name, val(g[name]))
    t.add_row("batteryChemistry", val(m["batteryChemistry"]))
    t.add_row("criticalRawMaterials", val(m["criticalRawMaterials"]))
    for name in ("ratedEnergy", "originalPowerCapability"):
        t.add_row(name, val(perf[name]))
    for r in p["circularity"]["recycledContent"]:
        pre, post = r["preConsumerShare"]["value"], r["postConsumerShare"]["value"]
        shown = "not tracked" if pre is None else f"pre-consumer {pre:.1f}%, post-consumer {post:.1f}%"
        t.add_row(f"recycledContent {r['recycledMaterial']}", shown)
    console.print(t)
    console.print("not derivable from the ledger: " + ", ".join(p["notDerivable"]))


@schema_app.command("export")
def schema_export(
    directory: Annotated[
        Path, typer.Argument(help="Folder to write one JSON Schema per event kind into.")
    ] = Path("schemas/jsonschema/v1"),
) -> None:
    """Write the JSON Schema of every event kind (the repo keeps them under schemas/jsonschema/v1)."""
    from schemas.jsonschema_export import export

    written = export(directory)
    console.print(f"wrote {len(written)} schemas to {directory}")


def _mount_optional() -> None:
    """Sub-apps of the other faces (broker, streams, credits, proofs, audit)."""
    from batteryledger import cli_broker, cli_credits

    app.add_typer(
        cli_broker.broker_app, name="broker", help="The local Apache Kafka broker (KRaft, loopback)."
    )
    app.add_typer(cli_credits.credits_app, name="credits", help="What-if tax-credit calculator.")
    from batteryledger import cli_api, cli_audit, cli_proofs

    cli_api.register(app)
    cli_proofs.register(app)
    cli_audit.register(app)
    __import__("batteryledger.cli_epcis", fromlist=["register"]).register(app)  # EPCIS 2.0 (issue 13)
    from batteryledger import cli_auth

    app.add_typer(cli_auth.auth_app, name="auth")
    __import__("batteryledger.cli_mirror", fromlist=["register"]).register(app)  # mirror, backup
    try:
        from batteryledger import cli_streams
    except ImportError:
        return
    cli_streams.register(app)


_mount_optional()


def _click_exceptions() -> Any:
    """The click exceptions typer raises (typer >= 0.16 carries its own copy of click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def usage_line(exc: Any) -> str:
    """A usage error in one line: what is wrong and where to read more; no exception class names."""
    msg = exc.format_message().strip().rstrip(".")
    msg = msg.replace("\n", " ")
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "batteryledger"
    return f"error: {msg[:1].lower() + msg[1:]} (see `{where} --help`)"


def main() -> None:
    """Exit codes: 0 ok, 1 a failure the command reports, 2 usage or input error, 130 interrupted."""
    debug = os.environ.get("BATTERYLEDGER_DEBUG") == "1"
    click_exc = _click_exceptions()
    try:
        # standalone_mode=False: click returns the exit code of typer.Exit / ctx.exit instead of raising
        code = app(standalone_mode=False, prog_name="batteryledger")
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise SystemExit(130) from None
    except click_exc.NoArgsIsHelpError as exc:
        # `batteryledger` (or `batteryledger keys`) alone: the help, and success
        typer.echo(exc.ctx.get_help())
        raise SystemExit(0) from None
    except click_exc.UsageError as exc:
        if debug:
            raise
        typer.echo(usage_line(exc), err=True)
        raise SystemExit(2) from None
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, click_exc.ClickException):
            typer.echo(f"error: {exc.format_message()}", err=True)
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, typer.Abort):
            raise SystemExit(1) from None
        diag = getattr(exc, "diagnostics", None)  # one line, whatever raised (ledger.store.one_line)
        user = isinstance(exc, CliError | KeyFileError | EventError | StoreError | ValueError)
        if callable(diag):
            message = diag()
        elif user:
            message = str(exc)
        else:
            message = f"unexpected failure: {describe(exc)} (BATTERYLEDGER_DEBUG=1 shows where)"
        err_console.print(f"error: {one_line(message)}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2 if user else 1) from None


__all__ = ["StoreError", "app", "main"]
