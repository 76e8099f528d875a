"""HTTP API over a ledger store: read-only queries for analysts, buyers and auditors, and the web page.

    >>> app = create_app("sqlite:///batteryledger.db")    # uvicorn.run(app) or `batteryledger serve`

Faust's own web views answer 500 until partitions are assigned, so queries are served here, straight
from the store, by a separate process. Each app opens one Ledger without an operator key, and its
database connections are read-only (SQLite `query_only`, PostgreSQL read-only sessions): the sequencer
stays the single writer, and the API may run while it appends. Before a request that depends on the
ledger's size or registry, the app reads the head (one indexed row); only when the head has moved does
it fold the new registry entries into its in-memory registry.

Errors are RFC 9457 problem documents (`application/problem+json`): 404 names the unknown batch, entry
or rejection, 422 names the bad parameter; nothing answers with a stack trace.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledger import chain, tree
from ledger.core import Ledger
from ledger.merkle import ProofError
from ledger.store import CHECKPOINTS, ENTRIES, REJECTIONS, StoreError, fetch_nodes, normalise_url
from schemas.events import ID_PATTERN, MAX_ID_LEN, REGISTRY_KINDS, STAGE_OF_KIND, Kind
from schemas.reasons import EventError, Reason
from schemas.signing import decode, public_key_b64

log = logging.getLogger("batteryledger.api")

API_PREFIX = "/v1"
WEB_DIR = Path(__file__).resolve().parent / "web"
PROBLEM_JSON = "application/problem+json"

# Lineage: the CLI's bound on hops, and a bound on the edges one response carries (a wide graph can
# have far more edges than hops); a truncated answer says so.
DEFAULT_LINEAGE_DEPTH = 50
MAX_LINEAGE_DEPTH = 10_000
MAX_LINEAGE_EDGES = 10_000
# Rejections are listed newest first, a page at a time (`before` = the last id of the previous page).
DEFAULT_REJECTIONS_LIMIT = 50
MAX_REJECTIONS_LIMIT = 1_000

US = "US"
NORTH_AMERICA = ("US", "CA", "MX")

# The page's stacked bars need a partition of each element's mass (the summary's named shares overlap:
# mass mined in Australia and refined in the US is both "FTA extracted" and "US processed"). Categories
# in display order; `_category` assigns each origin to exactly one, disqualifying facts first.
BREAKDOWN_CATEGORIES: tuple[tuple[str, str, str], ...] = (
    ("us", "US", "mined, extracted or processed in the United States"),
    ("fta", "FTA", "extracted or processed in a US free-trade-agreement country"),
    ("north_america", "North America", "extracted or processed elsewhere in North America"),
    ("recycled_pre", "Recycled, pre-consumer", "recovered from manufacturing scrap"),
    ("recycled_post", "Recycled, post-consumer", "recovered from used batteries"),
    ("recycled", "Recycled, unspecified", "recycled feed without a pre/post-consumer declaration"),
    ("other", "Other", "known origin outside the US, FTA countries and North America"),
    ("feoc", "FEOC-touched", "a foreign entity of concern took part in some step"),
    ("unknown", "Unknown", "origin not shown by the ledger (missing parents, unexplained mass)"),
)


# -- response models (the OpenAPI schema) --------------------------------------------------------------
class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class ValidationProblem(Problem):
    errors: list[dict[str, Any]] = []


class Status(BaseModel):
    model_config = ConfigDict(extra="allow")

    origin: str
    entries: int = Field(description="Ledger size (number of entries).")
    head: str = Field(description="Entry hash of the last entry, hex.")
    batches: int
    parked: int
    facilities: int
    rejections: dict[str, int] = Field(description="Rejected events by reason code.")
    latest_checkpoint_size: int | None


class Custody(BaseModel):
    holders: dict[str, str]
    in_transit: dict[str, str]


class BatchFacts(BaseModel):
    batch_id: str
    seq: int = Field(description="Entry that created the batch.")
    event_id: str
    kind: str
    stage: str
    facility_id: str
    country: str
    feoc: bool
    prohibited_foreign_entity: bool
    time: datetime
    material: str
    kg: str = Field(description="Decimal quantities are exact decimal strings.")
    consumed_kg: str
    available_kg: str
    contained_kg: dict[str, str]
    value_usd: str | None
    custody: Custody
    extra: dict[str, str] = Field(description="Kind-specific facts as the store keeps them.")


class LineageEdge(BaseModel):
    depth: int
    parent: str
    child: str
    kg: str
    parent_material: str | None
    parent_facility: str | None
    parent_country: str | None
    child_material: str | None
    child_facility: str | None
    child_country: str | None


class Lineage(BaseModel):
    batch_id: str
    direction: str
    depth: int
    edges: list[LineageEdge]
    truncated: bool = Field(description=f"More than {MAX_LINEAGE_EDGES} edges: the farthest were left off.")


class Segment(BaseModel):
    category: str
    kg: float
    share: float


class ElementBreakdown(BaseModel):
    contained_kg: float
    segments: list[Segment]
    shares: dict[str, float] = Field(description="The summary's named (overlapping) shares.")


class Category(BaseModel):
    key: str
    label: str
    description: str


class Breakdown(BaseModel):
    batch_id: str
    custody_model: str
    ancestors: int
    missing_parents: list[str]
    fta_countries: list[str]
    categories: list[Category]
    elements: dict[str, ElementBreakdown]


class KeyInfo(BaseModel):
    key_id: str
    public_key: str = Field(description="Ed25519 public key, base64 of the 32 raw bytes.")
    valid_from: datetime
    valid_until: datetime | None
    revoked_at: datetime | None


class Facility(BaseModel):
    facility_id: str
    legal_entity: str
    country: str
    roles: list[str]
    feoc: bool = Field(description="Attested foreign entity of concern, as of now.")
    prohibited_foreign_entity: bool
    keys: list[KeyInfo]


class Facilities(BaseModel):
    facilities: list[Facility]


class Rejection(BaseModel):
    id: int
    reason: str
    detail: str
    source: str
    created_at: datetime
    event_id: str | None


class RejectionPage(BaseModel):
    rejections: list[Rejection]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page.")


class RejectionDetail(Rejection):
    raw_base64: str = Field(description="The original bytes, exactly as received.")
    raw_size: int
    raw_sha256: str


class InclusionProof(BaseModel):
    seq: int
    size: int
    leaf_hash: str = Field(description="RFC 9162 leaf hash of the entry's bytes, hex.")
    root_hash: str = Field(description="Merkle root of the tree of `size` entries, hex.")
    proof: list[str] = Field(description="Audit path, leaf to root, hex.")


class ConsistencyProof(BaseModel):
    old: int
    new: int
    old_root: str
    new_root: str
    proof: list[str]


class Entry(BaseModel):
    seq: int
    event_id: str
    kind: str
    facility_id: str
    time: datetime
    appended_at: datetime
    data_base64: str = Field(description="Canonical signed event bytes: verify signatures over these.")
    event: dict[str, Any] = Field(description="The same bytes parsed, for reading only.")
    leaf_hash: str
    entry_hash: str = Field(description="SHA-256(previous_entry_hash || leaf_hash), hex.")
    previous_entry_hash: str


class Health(BaseModel):
    status: str
    entries: int


PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "Not in the ledger"},
    422: {"model": ValidationProblem, "description": "Bad parameter"},
}


# -- errors ----------------------------------------------------------------------------------------
class ApiProblem(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def not_found(detail: str) -> ApiProblem:
    return ApiProblem(404, "Not Found", detail)


def bad_parameter(detail: str) -> ApiProblem:
    return ApiProblem(422, "Unprocessable Content", detail)


def problem_response(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def _problem(_: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in errors
        )
        return problem_response(422, "Unprocessable Content", detail or "invalid request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "HTTP error")
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such resource: {request.url.path}"
        return problem_response(exc.status_code, title, detail)

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        log.error("store error: %s", exc)
        return problem_response(503, "Service Unavailable", f"the ledger store failed: {exc.diagnostics()}")

    @app.exception_handler(OperationalError)
    async def _db(_: Request, exc: OperationalError) -> JSONResponse:
        # unreachable, locked or busy: worth a retry (other database errors are bugs: 500 below)
        log.error("database unavailable: %s", exc)
        return problem_response(503, "Service Unavailable", "the ledger store is not answering; try again")

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")  # the traceback goes to the server log, never to the client
        return problem_response(500, "Internal Server Error", f"internal error ({type(exc).__name__})")


# -- the reader ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Snapshot:
    size: int
    head_hash: bytes


def _forbid_writes(engine: Engine) -> None:
    """Every new connection of `engine` refuses writes; pooled connections are dropped first."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_ro(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA query_only = ON")
            cur.close()

    elif engine.dialect.name == "postgresql":

        @event.listens_for(engine, "connect")
        def _pg_ro(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.close()
            dbapi_conn.commit()  # a SET inside a rolled-back transaction would be undone

    engine.dispose()


class LedgerReader:
    """One read-only Ledger shared by the request threads, following the sequencer's head."""

    def __init__(self, url: str) -> None:
        full = normalise_url(url)
        if full.startswith("sqlite"):
            path = make_url(full).database
            if path and path != ":memory:" and not Path(path).exists():
                raise StoreError(f"no ledger at {url}: the file does not exist (run `batteryledger init`)")
        self.ledger = Ledger(url)  # no operator key: this process can neither sign nor append
        _forbid_writes(self.ledger.engine)
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self.ledger.engine

    def sync(self) -> Snapshot:
        """Catch up with the head: one indexed read when it has not moved."""
        led = self.ledger
        with self._lock, led.engine.connect() as conn:
            last = conn.execute(
                select(ENTRIES.c.seq, ENTRIES.c.entry_hash).order_by(ENTRIES.c.seq.desc()).limit(1)
            ).first()
            size = 0 if last is None else int(last.seq) + 1
            head = chain.GENESIS if last is None else bytes(last.entry_hash)
            if size == led.size and head == led.head_hash:
                return Snapshot(size, head)
            old = led.size
            if 0 < old <= size:  # the chain must extend what we read before, or we start over
                prev = conn.execute(select(ENTRIES.c.entry_hash).where(ENTRIES.c.seq == old - 1)).first()
                extends = prev is not None and bytes(prev.entry_hash) == led.head_hash
            else:
                extends = old == 0
            if not extends:
                log.warning("ledger head at %d does not extend the one read before: reloading", size)
                led.refresh_registry()
                return Snapshot(led.size, led.head_hash)
            rows = conn.execute(
                select(ENTRIES.c.seq, ENTRIES.c.event_id, ENTRIES.c.data)
                .where(ENTRIES.c.seq >= old, ENTRIES.c.seq < size)
                .where(ENTRIES.c.kind.in_(sorted(k.value for k in REGISTRY_KINDS)))
                .order_by(ENTRIES.c.seq)
            )
            for row in rows:
                try:
                    led.registry.apply(decode(bytes(row.data)).event, row.event_id)
                except (EventError, KeyError) as exc:
                    led.load_errors.append(f"registry entry {row.event_id}: {exc}")
            led.size, led.head_hash = size, head
            return Snapshot(size, head)

    def stats(self) -> dict[str, Any]:
        self.sync()
        with self._lock:
            return self.ledger.stats()

    def facilities(self) -> list[Facility]:
        self.sync()
        now = datetime.now(UTC)
        with self._lock:
            reg = self.ledger.registry
            keys: dict[str, list[KeyInfo]] = {}
            for rec in reg.keys.values():
                keys.setdefault(rec.facility_id, []).append(
                    KeyInfo(
                        key_id=rec.key_id,
                        public_key=public_key_b64(rec.public_key),
                        valid_from=rec.valid_from,
                        valid_until=rec.valid_until,
                        revoked_at=rec.revoked_at,
                    )
                )
            return [
                Facility(
                    facility_id=f.facility_id,
                    legal_entity=f.legal_entity,
                    country=f.country,
                    roles=sorted(r.value for r in f.roles),
                    feoc=f.feoc_at(now),
                    prohibited_foreign_entity=f.pfe_at(now),
                    keys=sorted(keys.get(f.facility_id, []), key=lambda k: k.valid_from),
                )
                for f in sorted(reg.facilities.values(), key=lambda f: f.facility_id)
            ]

    def close(self) -> None:
        self.ledger.close()


# -- pure helpers ----------------------------------------------------------------------------------
def _category(o: Mapping[str, Any], *, us: str, fta: frozenset[str], north_america: frozenset[str]) -> str:
    """The one bar category of a summary origin: unknown, then FEOC, recycled, US, FTA, NA, other."""
    places = {o.get("country") or "", o.get("processing_country") or ""} - {""}
    if o["source"] == "unknown":
        return "unknown"
    if o["feoc_touched"]:
        return "feoc"
    if o["source"] == "recycled":
        return {"pre": "recycled_pre", "post": "recycled_post"}.get(o.get("consumer") or "", "recycled")
    if us in places:
        return "us"
    if places & fta:
        return "fta"
    if places & north_america:
        return "north_america"
    return "other"


def provenance_breakdown(
    summary: Mapping[str, Any],
    *,
    fta: Iterable[str],
    us: str = US,
    north_america: Iterable[str] = NORTH_AMERICA,
) -> dict[str, Any]:
    """Partition each element's mass over BREAKDOWN_CATEGORIES (see there), from the summary's origins."""
    fta_set, na_set = frozenset(fta), frozenset(north_america)
    order = [key for key, _, _ in BREAKDOWN_CATEGORIES]

    elements: dict[str, Any] = {}
    for el, data in summary["elements"].items():
        total = float(data["contained_kg"])
        kg: dict[str, float] = {}
        for o in data["origins"]:
            c = _category(o, us=us, fta=fta_set, north_america=na_set)
            kg[c] = kg.get(c, 0.0) + float(o["kg"])
        elements[el] = {
            "contained_kg": total,
            "segments": [
                {"category": c, "kg": round(kg[c], 6), "share": round(kg[c] / total, 9) if total else 0.0}
                for c in order
                if kg.get(c, 0.0) > 0
            ],
            "shares": dict(data["shares"]),
        }
    return {
        "batch_id": summary["batch_id"],
        "custody_model": summary["custody_model"],
        "ancestors": summary["ancestors"],
        "missing_parents": list(summary["missing_parents"]),
        "fta_countries": sorted(fta_set),
        "categories": [{"key": k, "label": lbl, "description": d} for k, lbl, d in BREAKDOWN_CATEGORIES],
        "elements": elements,
    }


def _hex(items: Iterable[bytes]) -> list[str]:
    return [h.hex() for h in items]


def _proved(prove: Callable[[], list[bytes]]) -> list[bytes]:
    """The proof `prove()` builds; one it cannot build (a ProofError) is a 400 problem."""
    try:
        return prove()
    except ProofError as exc:
        raise bad_parameter(str(exc)) from None


def _decode_custody(text: str) -> Custody:
    data = json.loads(text or "{}")
    return Custody(holders=data.get("holders", {}), in_transit=data.get("in_transit", {}))


# -- the app ---------------------------------------------------------------------------------------
BatchIdParam = Annotated[str, PathParam(description="Batch id (may contain '/', ':' and '.').")]
_BATCH_ID = re.compile(ID_PATTERN)


def _check_batch_id(batch_id: str) -> None:
    if len(batch_id) > MAX_ID_LEN or not _BATCH_ID.fullmatch(batch_id):
        raise bad_parameter(
            f"{batch_id[:MAX_ID_LEN]!r} is not a batch id: ids are 1 to {MAX_ID_LEN} letters, digits "
            "and . _ : / -, starting with a letter or digit"
        )


def create_app(store_url: str) -> FastAPI:
    """The API and web page over the ledger at `store_url` (raises StoreError if there is none)."""
    from batteryledger.cli import fta_countries

    reader = LedgerReader(store_url)
    fta = fta_countries()

    app = FastAPI(
        title="batteryledger",
        version="1",
        summary="Read-only queries over a signed battery supply-chain ledger.",
        description=(
            "Batches, domestic-content provenance, lineage, facilities, rejections, signed checkpoints "
            "and RFC 9162 Merkle proofs. Hashes are hex; event bytes are base64. Errors are RFC 9457 "
            "problem documents."
        ),
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.reader = reader
    app.router.add_event_handler("shutdown", reader.close)
    _install_error_handlers(app)

    def known_batch(batch_id: str) -> Any:
        _check_batch_id(batch_id)
        b = reader.ledger.batch(batch_id)
        if b is None:
            raise not_found(f"batch {batch_id!r} is not in the ledger")
        return b

    def checked_size(size: int | None, snap: Snapshot, what: str) -> int:
        if size is None:
            return snap.size
        if size > snap.size:
            raise bad_parameter(f"{what}={size} is larger than the ledger ({snap.size} entries)")
        return size

    def root_of(size: int) -> bytes:
        with reader.engine.connect() as conn:
            return tree.root_from_nodes(size, partial(fetch_nodes, conn))

    # -- ledger ----------------------------------------------------------------------------------
    @app.get(f"{API_PREFIX}/status", response_model=Status, tags=["ledger"])
    def status() -> dict[str, Any]:
        """Ledger size and head, counts of batches, parked events, facilities, rejections by reason."""
        return reader.stats()

    @app.get(
        f"{API_PREFIX}/checkpoint",
        response_class=PlainTextResponse,
        tags=["ledger"],
        responses={200: {"content": {"text/plain": {}}}, 404: PROBLEMS[404]},
    )
    def checkpoint() -> PlainTextResponse:
        """The latest signed checkpoint (C2SP signed note), byte for byte."""
        note = reader.ledger.latest_checkpoint()
        if note is None:
            raise not_found("no checkpoint has been signed yet")
        return PlainTextResponse(note, media_type="text/plain; charset=utf-8")

    @app.get(f"{API_PREFIX}/entries/{{seq}}", response_model=Entry, tags=["ledger"], responses=PROBLEMS)
    def entry(seq: Annotated[int, PathParam(ge=0, description="Entry number.")]) -> Entry:
        """One entry: the canonical signed bytes and the hashes that chain it."""
        with reader.engine.connect() as conn:
            row = conn.execute(ENTRIES.select().where(ENTRIES.c.seq == seq)).first()
            prev = (
                None
                if row is None or seq == 0
                else conn.execute(select(ENTRIES.c.entry_hash).where(ENTRIES.c.seq == seq - 1)).scalar()
            )
            if row is None:
                size = conn.execute(select(func.count()).select_from(ENTRIES)).scalar_one()
                raise not_found(f"entry {seq} is not in the ledger ({size} entries)")
        data = bytes(row.data)
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = {}
        return Entry(
            seq=row.seq,
            event_id=row.event_id,
            kind=row.kind,
            facility_id=row.facility_id,
            time=row.time,
            appended_at=row.appended_at,
            data_base64=base64.b64encode(data).decode(),
            event=parsed if isinstance(parsed, dict) else {},
            leaf_hash=bytes(row.leaf_hash).hex(),
            entry_hash=bytes(row.entry_hash).hex(),
            previous_entry_hash=(chain.GENESIS if seq == 0 else bytes(prev or b"")).hex(),
        )

    # -- proofs ----------------------------------------------------------------------------------
    @app.get(
        f"{API_PREFIX}/proofs/inclusion", response_model=InclusionProof, tags=["proofs"], responses=PROBLEMS
    )
    def inclusion(
        seq: Annotated[int, Query(ge=0, description="Entry number (leaf index).")],
        size: Annotated[
            int | None,
            Query(ge=1, description="Tree size; default the latest checkpoint's, else the ledger's."),
        ] = None,
    ) -> InclusionProof:
        """RFC 9162 inclusion proof of entry `seq` in the tree of `size` entries."""
        signed = _latest_checkpoint_size(reader.engine) if size is None else None
        snap = reader.sync()  # after the checkpoint read: a checkpoint never covers more than the head
        size = checked_size(size if size is not None else signed or snap.size, snap, "size")
        if seq >= size:
            raise bad_parameter(f"seq={seq} is not in a tree of size {size} (seq must be < size)")
        with reader.engine.connect() as conn:
            get = partial(fetch_nodes, conn)
            proof = _proved(lambda: tree.inclusion_proof_from_nodes(seq, size, get))
            leaf = get([(0, seq)])[(0, seq)]
            root = tree.root_from_nodes(size, get)
        return InclusionProof(
            seq=seq, size=size, leaf_hash=leaf.hex(), root_hash=root.hex(), proof=_hex(proof)
        )

    @app.get(
        f"{API_PREFIX}/proofs/consistency",
        response_model=ConsistencyProof,
        tags=["proofs"],
        responses=PROBLEMS,
    )
    def consistency(
        old: Annotated[int, Query(ge=1, description="The smaller tree size.")],
        new: Annotated[
            int | None, Query(ge=1, description="The larger tree size; default the ledger's size.")
        ] = None,
    ) -> ConsistencyProof:
        """RFC 9162 consistency proof that the tree of `new` entries extends the tree of `old`."""
        snap = reader.sync()
        new = checked_size(new, snap, "new")
        if old > new:
            raise bad_parameter(f"old={old} is larger than new={new}")
        with reader.engine.connect() as conn:
            get = partial(fetch_nodes, conn)
            proof = _proved(lambda: tree.consistency_proof_from_nodes(old, new, get))
            old_root, new_root = tree.root_from_nodes(old, get), tree.root_from_nodes(new, get)
        return ConsistencyProof(
            old=old, new=new, old_root=old_root.hex(), new_root=new_root.hex(), proof=_hex(proof)
        )

    # -- batches (sub-resources first: a batch id may contain '/') ---------------------------------
    @app.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}/provenance/breakdown",
        response_model=Breakdown,
        tags=["batches"],
        responses=PROBLEMS,
    )
    def breakdown(batch_id: BatchIdParam) -> dict[str, Any]:
        """Each element's mass split into non-overlapping categories (the web page's stacked bars)."""
        known_batch(batch_id)
        summary = reader.ledger.provenance(batch_id).summary(fta=fta)
        return provenance_breakdown(summary, fta=fta)

    @app.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}/provenance",
        tags=["batches"],
        responses={200: {"description": "As `batteryledger provenance --json` prints it."}, **PROBLEMS},
    )
    def provenance(batch_id: BatchIdParam) -> JSONResponse:
        """Where the batch's Li, Ni, Co, Mn and graphite came from: shares, origins, value, events."""
        known_batch(batch_id)
        return JSONResponse(reader.ledger.provenance(batch_id).summary(fta=fta))

    @app.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}/lineage",
        response_model=Lineage,
        tags=["batches"],
        responses=PROBLEMS,
    )
    def lineage(
        batch_id: BatchIdParam,
        direction: Annotated[
            str, Query(pattern="^(up|down)$", description="up: ancestors; down: descendants.")
        ] = "up",
        depth: Annotated[int, Query(ge=1, le=MAX_LINEAGE_DEPTH, description="Hops.")] = DEFAULT_LINEAGE_DEPTH,
    ) -> Lineage:
        """Edges to the batches this one came from (up) or went into (down), nearest first."""
        known_batch(batch_id)
        rows = reader.ledger.lineage(batch_id, direction=direction, depth=depth)
        return Lineage(
            batch_id=batch_id,
            direction=direction,
            depth=depth,
            edges=[LineageEdge(**r) for r in rows[:MAX_LINEAGE_EDGES]],
            truncated=len(rows) > MAX_LINEAGE_EDGES,
        )

    @app.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}",
        response_model=BatchFacts,
        tags=["batches"],
        responses=PROBLEMS,
    )
    def batch(batch_id: BatchIdParam) -> BatchFacts:
        """What the ledger holds about a batch: who made it, where, how much, what is left, who holds it."""
        b = known_batch(batch_id)
        kind = Kind(b.kind)
        return BatchFacts(
            batch_id=b.batch_id,
            seq=b.seq,
            event_id=b.event_id,
            kind=kind.value,
            stage=STAGE_OF_KIND[kind].value,
            facility_id=b.facility_id,
            country=b.country,
            feoc=b.feoc,
            prohibited_foreign_entity=b.pfe,
            time=b.time,
            material=b.material,
            kg=str(b.kg),
            consumed_kg=str(b.consumed_kg),
            available_kg=str(b.available_kg),
            contained_kg={el.value: str(v) for el, v in b.contained.items()},
            value_usd=None if b.value_usd is None else str(b.value_usd),
            custody=_decode_custody(b.custody_json()),
            extra={str(k): str(v) for k, v in b.extra.items()},
        )

    # -- registry and rejections -------------------------------------------------------------------
    @app.get(f"{API_PREFIX}/facilities", response_model=Facilities, tags=["registry"])
    def facilities() -> Facilities:
        """Registered facilities, their attested FEOC status and their keys (from registry entries)."""
        return Facilities(facilities=reader.facilities())

    @app.get(
        f"{API_PREFIX}/rejections", response_model=RejectionPage, tags=["rejections"], responses=PROBLEMS
    )
    def rejections(
        reason: Annotated[str | None, Query(description="Only this reason code.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_REJECTIONS_LIMIT)] = DEFAULT_REJECTIONS_LIMIT,
        before: Annotated[int | None, Query(ge=1, description="Only ids below this (paging).")] = None,
    ) -> RejectionPage:
        """Rejected events, newest first; the original bytes are on /v1/rejections/{id}."""
        if reason is not None and reason not in {r.value for r in Reason}:
            raise bad_parameter(
                f"reason={reason!r} is not a reason code; use one of: {', '.join(r.value for r in Reason)}"
            )
        q = select(
            REJECTIONS.c.id,
            REJECTIONS.c.reason,
            REJECTIONS.c.detail,
            REJECTIONS.c.source,
            REJECTIONS.c.created_at,
            REJECTIONS.c.event_id,
        ).order_by(REJECTIONS.c.id.desc())
        if reason is not None:
            q = q.where(REJECTIONS.c.reason == reason)
        if before is not None:
            q = q.where(REJECTIONS.c.id < before)
        with reader.engine.connect() as conn:
            rows = conn.execute(q.limit(limit + 1)).all()
        page = [Rejection.model_validate(r._asdict()) for r in rows[:limit]]
        return RejectionPage(rejections=page, next_before=page[-1].id if len(rows) > limit else None)

    @app.get(
        f"{API_PREFIX}/rejections/{{rejection_id}}",
        response_model=RejectionDetail,
        tags=["rejections"],
        responses=PROBLEMS,
    )
    def rejection(rejection_id: Annotated[int, PathParam(ge=1)]) -> RejectionDetail:
        """One rejection with the original bytes (base64), for replay or forensics."""
        with reader.engine.connect() as conn:
            row = conn.execute(REJECTIONS.select().where(REJECTIONS.c.id == rejection_id)).first()
        if row is None:
            raise not_found(f"rejection {rejection_id} is not in the ledger")
        raw = bytes(row.raw)
        return RejectionDetail(
            id=row.id,
            reason=row.reason,
            detail=row.detail,
            source=row.source,
            created_at=row.created_at,
            event_id=row.event_id,
            raw_base64=base64.b64encode(raw).decode(),
            raw_size=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest(),
        )

    # -- health and the web page -------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["ledger"])
    def healthz() -> Health:
        """The store answers and the head can be read."""
        return Health(status="ok", entries=reader.sync().size)

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        resp = FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    app.include_router(__import__("batteryledger.api_feed", fromlist=["x"]).feed_router(store_url))
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _latest_checkpoint_size(engine: Engine) -> int | None:
    with engine.connect() as conn:
        size = conn.execute(select(func.max(CHECKPOINTS.c.size))).scalar()
    return None if size is None else int(size)


__all__ = ["BREAKDOWN_CATEGORIES", "LedgerReader", "create_app", "provenance_breakdown"]
