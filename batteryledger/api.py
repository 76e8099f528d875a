"""HTTP API over a ledger store: read-only queries for analysts, buyers and auditors, and the web page.

    >>> app = create_app("sqlite:///batteryledger.db")    # uvicorn.run(app) or `batteryledger serve`

Faust's own web views answer 500 until partitions are assigned, so queries are served here, straight
from the store, by a separate process. Each app opens one Ledger without an operator key, and its
database connections are read-only (SQLite `query_only`, PostgreSQL read-only sessions): the sequencer
stays the single writer, and the API may run while it appends. Before a request that depends on the
ledger's size or registry, the app reads the head (one indexed row); only when the head has moved does
it fold the new registry entries into its in-memory registry.

Endpoints sit in routers by audience (public: batches, provenance, passport, registry; auditor: entries,
proofs, audits, bundles; operator: rejections; ops: health, docs, the page) so that a per-router
dependency (authentication, roles) can be attached later; `create_app(url, routers=[...])` is the one
entry point and includes further routers (EPCIS export, mirror feed) after these. The views come from
the read models in `batteryledger.views` and `ledger.queries`, which the CLI uses too.

Errors are RFC 9457 problem documents (`application/problem+json`): 404 names the unknown batch, entry
or rejection, 422 names the bad parameter; nothing answers with a stack trace.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import re
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from batteryledger import api_feed, auth, views
from batteryledger.views import BREAKDOWN_CATEGORIES, provenance_breakdown
from ledger import chain, queries, tree
from ledger.core import Ledger
from ledger.merkle import ProofError
from ledger.store import CHECKPOINTS, ENTRIES, REJECTIONS, StoreError, fetch_nodes, normalise_url
from ledger.verify import VERIFIED_HEADER, header_value, verified
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
MAX_CLAIM_BYTES = 64 * 1024
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples" / "claims"
DEFAULT_REJECTIONS_LIMIT = 50
MAX_REJECTIONS_LIMIT = 1_000


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
    external_feed: list[dict[str, Any]] = Field(
        description="Recycling only: feed from outside the ledger (end-of-life packs, scrap bought in), "
        "as the recycler declared it (description, consumer pre/post, kg, contained_kg, origin_country)."
    )
    external_feed_share: float | None = Field(
        description="Recycling only: outside feed kg / (outside feed kg + ledger inputs kg)."
    )
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


class OriginRow(BaseModel):
    source: str = Field(description="mined, recycled or unknown.")
    consumer: str | None = Field(description="Recycled feed: pre or post (consumer).")
    mined_in: str | None = Field(description="Country of extraction (mined mass).")
    recycled_in: str | None = Field(description="Country of the recycler (recycled mass).")
    processed_in: str | None = Field(description="Country of the last processing (refining) step.")
    feoc_touched: bool
    source_facilities: list[str] = Field(description="Mines or recyclers of that country in the ancestry.")
    processing_facilities: list[str] = Field(description="Refiners of that country in the ancestry.")
    kg: float
    share: float
    category: str
    label: str = Field(
        description='In words, e.g. "Mined in Australia (AU), processed in United States (US)".'
    )
    origin_text: str = Field(description='The first half of the label, e.g. "Mined in Australia (AU)".')
    processing_text: str = Field(description='e.g. "Processed in United States (US)", "not processed since".')


class ElementBreakdown(BaseModel):
    name: str
    contained_kg: float
    segments: list[Segment]
    origins: list[OriginRow]
    shares: dict[str, float] = Field(description="The summary's named (overlapping) shares.")


class BatchSummary(BaseModel):
    batch_id: str
    kind: str
    material: str
    facility_id: str
    country: str
    feoc: bool
    time: datetime
    kg: str
    consumed_kg: str
    seq: int


class BatchSearchPage(BaseModel):
    batches: list[BatchSummary]
    total: int = Field(description="How many batches match the filters (all pages).")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")


class TimelineEvent(BaseModel):
    seq: int
    event_id: str
    kind: str
    role: str = Field(description="made, shipped, received, certified, consumed or corrected.")
    facility_id: str
    time: datetime
    appended_at: datetime
    event: dict[str, Any] = Field(description="The signed event, parsed (signature left out).")
    entry_url: str
    inclusion_proof_url: str


class BatchEvents(BaseModel):
    batch_id: str
    events: list[TimelineEvent]


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
    raw_text: str | None = Field(description="The bytes as UTF-8 text, when they are UTF-8.")
    raw_json: Any = Field(description="The bytes parsed as JSON, when they are JSON.")


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


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _examples() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.yaml")) if EXAMPLES_DIR.is_dir() else []


def _claim_title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("title:"):
            return line.split(":", 1)[1].strip()
    return path.stem


def _safe_name(batch_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", batch_id)


def _permalink(request: Request, batch_id: str) -> str:
    from urllib.parse import quote

    return f"{str(request.base_url).rstrip('/')}/?batch={quote(batch_id, safe='')}&view=passport"


def _check_batch_id(batch_id: str) -> None:
    if len(batch_id) > MAX_ID_LEN or not _BATCH_ID.fullmatch(batch_id):
        raise bad_parameter(
            f"{batch_id[:MAX_ID_LEN]!r} is not a batch id: ids are 1 to {MAX_ID_LEN} letters, digits "
            "and . _ : / -, starting with a letter or digit"
        )


# Who may call each route (batteryledger.auth): the least role, and for facility credentials how the route
# is scoped to their own data. A route missing here is the operator's only; a test holds the table to the
# app's routes, so a new route must be placed here on purpose.
_PUBLIC, _FACILITY, _AUDITOR = auth.Role.PUBLIC, auth.Role.FACILITY, auth.Role.AUDITOR
_P = f"{API_PREFIX}/batches/{{batch_id:path}}"
ROUTE_POLICIES: dict[str, auth.Policy] = {
    # the page, its docs and health: anyone
    "/": auth.Policy(_PUBLIC),
    "/healthz": auth.Policy(_PUBLIC),
    f"{API_PREFIX}/docs": auth.Policy(_PUBLIC),
    f"{API_PREFIX}/docs/init.js": auth.Policy(_PUBLIC),
    f"{API_PREFIX}/docs/assets/{{name}}": auth.Policy(_PUBLIC),
    # what anyone may check: the signed head, proofs, the ledger's size, passports' public fields
    f"{API_PREFIX}/status": auth.Policy(_PUBLIC),
    f"{API_PREFIX}/checkpoint": auth.Policy(_PUBLIC),
    f"{API_PREFIX}/proofs/inclusion": auth.Policy(_PUBLIC),
    f"{API_PREFIX}/proofs/consistency": auth.Policy(_PUBLIC),
    f"{_P}/passport": auth.Policy(_PUBLIC),
    f"{_P}/passport/qr.svg": auth.Policy(_PUBLIC),
    # a facility: its own batches, the batches it holds and those it consumed; the registry of its peers
    f"{API_PREFIX}/batches": auth.Policy(_FACILITY, "facility_param"),
    _P: auth.Policy(_FACILITY, "batch"),
    f"{_P}/provenance": auth.Policy(_FACILITY, "batch"),
    f"{_P}/provenance/breakdown": auth.Policy(_FACILITY, "batch"),
    f"{_P}/lineage": auth.Policy(_FACILITY, "batch"),
    f"{_P}/graph": auth.Policy(_FACILITY, "batch"),
    f"{_P}/events": auth.Policy(_FACILITY, "batch"),
    f"{_P}/epcis": auth.Policy(_FACILITY, "batch"),
    f"{API_PREFIX}/facilities": auth.Policy(_FACILITY),
    # mirrors: the signed checkpoints and the origin are public; the entries themselves are evidence
    f"{API_PREFIX}/checkpoints": auth.Policy(_PUBLIC),
    f"{API_PREFIX}/origin": auth.Policy(_PUBLIC),
    f"{API_PREFIX}/entries": auth.Policy(_AUDITOR),
    # an auditor: every entry, evidence, audits, rejections (forensics)
    f"{API_PREFIX}/entries/{{seq}}": auth.Policy(_AUDITOR),
    f"{_P}/bundle": auth.Policy(_AUDITOR),
    f"{API_PREFIX}/audits": auth.Policy(_AUDITOR),
    f"{API_PREFIX}/audits/examples": auth.Policy(_AUDITOR),
    f"{API_PREFIX}/audits/examples/{{name}}": auth.Policy(_AUDITOR),
    f"{API_PREFIX}/rejections": auth.Policy(_AUDITOR),
    f"{API_PREFIX}/rejections/{{rejection_id}}": auth.Policy(_AUDITOR),
}


def create_app(
    store_url: str, *, routers: Iterable[APIRouter] = (), auth_config: auth.AuthConfig | None = None
) -> FastAPI:
    """The API and web page over the ledger at `store_url` (raises StoreError if there is none).

    Without `auth_config` every request is the local operator (serve binds loopback only); with it, a
    request is authenticated (batteryledger.auth) and each route checked against ROUTE_POLICIES.
    """
    reader = LedgerReader(store_url)

    def facility_reads(batch_id: str, facility_id: str) -> bool:
        with reader.engine.connect() as conn:
            return auth.batch_access(conn, batch_id, facility_id)

    fta = views.fta_countries()
    # Routers by audience: a later per-router dependency (authentication, roles) attaches here.
    public = APIRouter()  # batches, provenance, passport, registry, status: anyone may read
    auditor = APIRouter()  # entries, proofs, audits: what an auditor verifies
    operator = APIRouter()  # rejections: the ledger operator's and facilities' forensics
    ops = APIRouter()  # health and the web page
    bundles = APIRouter()  # evidence bundles (auditor audience; routed before the batch catch-all)

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
        docs_url=None,  # served by _add_docs from bundled Swagger UI assets (works offline)
        redoc_url=None,
        dependencies=[Depends(auth.authorizer(ROUTE_POLICIES, facility_reads))],
    )
    auth.install(app, auth.Authenticator(auth_config))
    app.add_exception_handler(auth.Denied, auth.denied_handler)  # type: ignore[arg-type]
    app.state.reader = reader
    app.state.auth_enabled = auth_config is not None
    app.router.add_event_handler("shutdown", reader.close)
    _install_error_handlers(app)
    app.include_router(__import__("batteryledger.api_epcis", fromlist=["router"]).router)  # EPCIS, issue 13

    @app.middleware("http")  # every answer says how much of the ledger `verify` has vouched for
    async def verified_through(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        with contextlib.suppress(Exception):  # a broken store answers its own error, not this header
            response.headers[VERIFIED_HEADER] = header_value(verified(reader.ledger))
        return response

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
    @public.get(f"{API_PREFIX}/status", response_model=Status, tags=["ledger"])
    def status() -> dict[str, Any]:
        """Ledger size and head, counts of batches, parked events, facilities, rejections by reason."""
        return reader.stats()

    @public.get(
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

    @auditor.get(f"{API_PREFIX}/entries/{{seq}}", response_model=Entry, tags=["ledger"], responses=PROBLEMS)
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
    @auditor.get(
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

    @auditor.get(
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
    @public.get(f"{API_PREFIX}/batches", response_model=BatchSearchPage, tags=["batches"], responses=PROBLEMS)
    def batches(
        prefix: Annotated[
            str | None, Query(max_length=MAX_ID_LEN, description="Batch id starts with.")
        ] = None,
        facility: Annotated[
            str | None, Query(max_length=MAX_ID_LEN, description="Made by this facility.")
        ] = None,
        material: Annotated[str | None, Query(max_length=64, description="e.g. lithium_hydroxide.")] = None,
        kind: Annotated[
            str | None, Query(description="Event kind that made it, e.g. packs.assembled.")
        ] = None,
        country: Annotated[
            str | None, Query(pattern="^[A-Za-z]{2}$", description="Country of the facility that made it.")
        ] = None,
        since: Annotated[datetime | None, Query(description="Made at or after (RFC 3339).")] = None,
        until: Annotated[datetime | None, Query(description="Made before (RFC 3339).")] = None,
        cursor: Annotated[
            str | None, Query(max_length=400, description="`next_cursor` of the previous page.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = queries.DEFAULT_PAGE,
    ) -> dict[str, Any]:
        """Find batches: filters combine (AND); id order; a page at a time with the total that matches."""
        if kind is not None and kind not in {k.value for k in Kind}:
            raise bad_parameter(
                f"kind={kind!r} is not an event kind; use one of: {', '.join(k.value for k in Kind)}"
            )
        filt = queries.BatchFilter(facility, material, kind, country, since, until, prefix)
        try:
            page = queries.search_batches(reader.engine, filt, cursor=cursor, limit=limit)
        except queries.QueryError as exc:
            raise bad_parameter(str(exc)) from None
        return {"batches": page.batches, "total": page.total, "next_cursor": page.next_cursor}

    @public.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}/events",
        response_model=BatchEvents,
        tags=["batches"],
        responses=PROBLEMS,
    )
    def batch_timeline(batch_id: BatchIdParam) -> dict[str, Any]:
        """Custody timeline: made, shipped, received, certified, consumed, corrected; each with its entry."""
        known_batch(batch_id)
        rows = queries.batch_events(reader.engine, batch_id)
        for r in rows:
            r["entry_url"] = f"{API_PREFIX}/entries/{r['seq']}"
            r["inclusion_proof_url"] = f"{API_PREFIX}/proofs/inclusion?seq={r['seq']}"
        return {"batch_id": batch_id, "events": rows}

    @public.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}/graph",
        tags=["batches"],
        responses={
            200: {
                "description": "JSON (nodes with a left-to-right layout, edges with kg), or Graphviz DOT "
                "with format=dot.",
                "content": {"application/json": {}, "text/vnd.graphviz": {}},
            },
            **PROBLEMS,
        },
    )
    def graph(
        batch_id: BatchIdParam,
        direction: Annotated[str, Query(pattern="^(up|down)$")] = "up",
        depth: Annotated[int, Query(ge=1, le=MAX_LINEAGE_DEPTH)] = DEFAULT_LINEAGE_DEPTH,
        format: Annotated[str, Query(pattern="^(json|dot)$")] = "json",
    ) -> Response:
        """Lineage as a flow graph: batches and outside recycling feeds as nodes, mass on the edges."""
        known_batch(batch_id)
        g = views.flow_graph(reader.ledger, batch_id, direction=direction, depth=depth)
        if len(g["edges"]) > MAX_LINEAGE_EDGES:
            raise bad_parameter(f"the graph has {len(g['edges'])} edges; ask for a smaller depth")
        if format == "dot":
            return Response(
                views.flow_graph_dot(g),
                media_type="text/vnd.graphviz; charset=utf-8",
                headers={"Content-Disposition": f'attachment; filename="{_safe_name(batch_id)}-lineage.dot"'},
            )
        return JSONResponse(g)

    @public.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}/passport/qr.svg",
        tags=["batches"],
        response_class=Response,
        responses={200: {"content": {"image/svg+xml": {}}}, **PROBLEMS},
    )
    def passport_qr(request: Request, batch_id: BatchIdParam) -> Response:
        """A QR code (SVG) of the passport's permalink on this server."""
        known_batch(batch_id)
        import segno

        buf = io.BytesIO()
        segno.make(_permalink(request, batch_id), error="m").save(buf, kind="svg", scale=4, border=2)
        return Response(buf.getvalue(), media_type="image/svg+xml")

    @public.get(f"{API_PREFIX}/batches/{{batch_id:path}}/passport", tags=["batches"], responses=PROBLEMS)
    def passport(request: Request, batch_id: BatchIdParam) -> dict[str, Any]:
        """Battery passport of a cell, module or pack: EU 2023/1542 Annex XIII fields, Battery Pass names."""
        known_batch(batch_id)
        try:
            return views.passport(reader.ledger, batch_id, fta=fta, permalink=_permalink(request, batch_id))
        except views.NotAPassportBatch as exc:
            raise bad_parameter(str(exc)) from None

    @public.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}/provenance/breakdown",
        response_model=Breakdown,
        tags=["batches"],
        responses=PROBLEMS,
    )
    def breakdown(batch_id: BatchIdParam) -> dict[str, Any]:
        """Each element's mass split into non-overlapping categories (the web page's stacked bars)."""
        known_batch(batch_id)
        return views.provenance_view(reader.ledger, batch_id, fta)

    @public.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}/provenance",
        tags=["batches"],
        responses={200: {"description": "As `batteryledger provenance --json` prints it."}, **PROBLEMS},
    )
    def provenance(batch_id: BatchIdParam) -> JSONResponse:
        """Where the batch's Li, Ni, Co, Mn and graphite came from: shares, origins, value, events."""
        known_batch(batch_id)
        return JSONResponse(reader.ledger.provenance(batch_id).summary(fta=fta))

    @public.get(
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

    @public.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}",
        response_model=BatchFacts,
        tags=["batches"],
        responses=PROBLEMS,
    )
    def batch(batch_id: BatchIdParam) -> BatchFacts:
        """What the ledger holds about a batch: who made it, where, how much, what is left, who holds it."""
        b = known_batch(batch_id)
        kind = Kind(b.kind)
        feeds = json.loads(b.extra.get("external_feed", "[]"))
        feed_share = None
        if feeds:
            outside = sum(float(f["kg"]) for f in feeds)
            inputs = sum(float(e["kg"]) for e in reader.ledger.lineage(batch_id, direction="up", depth=1))
            feed_share = round(outside / (outside + inputs), 9) if outside + inputs > 0 else None
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
            external_feed=feeds,
            external_feed_share=feed_share,
            extra={str(k): str(v) for k, v in b.extra.items()},
        )

    # -- registry and rejections -------------------------------------------------------------------
    @public.get(f"{API_PREFIX}/facilities", response_model=Facilities, tags=["registry"])
    def facilities() -> Facilities:
        """Registered facilities, their attested FEOC status and their keys (from registry entries)."""
        return Facilities(facilities=reader.facilities())

    @operator.get(
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

    @operator.get(
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
            raw_text=_utf8(raw),
            raw_json=_json_or_none(raw),
        )

    # -- audits and evidence -----------------------------------------------------------------------
    @auditor.get(f"{API_PREFIX}/audits/examples", tags=["audits"])
    def audit_examples() -> dict[str, Any]:
        """Example claim files (examples/claims) that this server can audit."""
        return {"examples": [{"name": p.name, "title": _claim_title(p)} for p in _examples()]}

    @auditor.get(
        f"{API_PREFIX}/audits/examples/{{name}}",
        tags=["audits"],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/yaml": {}}}, 404: PROBLEMS[404]},
    )
    def audit_example(name: str) -> PlainTextResponse:
        """One example claim, as text (YAML)."""
        found = {p.name: p for p in _examples()}.get(name)
        if found is None:
            raise not_found(f"no example claim {name!r}; see {API_PREFIX}/audits/examples")
        return PlainTextResponse(found.read_text(encoding="utf-8"), media_type="text/yaml; charset=utf-8")

    @auditor.post(
        f"{API_PREFIX}/audits",
        tags=["audits"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"text/yaml": {"schema": {"type": "string"}}, "application/json": {}},
            }
        },
        responses={
            200: {"description": "The finding (JSON), or the HTML report with format=html."},
            **PROBLEMS,
        },
    )
    async def run_audit(
        request: Request, format: Annotated[str, Query(pattern="^(json|html)$")] = "json"
    ) -> Response:
        """Audit a claim (the request body: a claim file, YAML or JSON) against the ledger; nothing is stored."""
        body = await request.body()
        if len(body) > MAX_CLAIM_BYTES:
            raise bad_parameter(f"the claim is {len(body)} bytes; at most {MAX_CLAIM_BYTES}")
        try:
            claim = body.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_parameter("the claim is not UTF-8 text") from None
        if not claim.strip():
            raise bad_parameter("send the claim file (YAML or JSON) as the request body")
        return await run_in_threadpool(_audit, claim, format)

    def _audit(claim: str, format: str) -> Response:
        from batteryledger.cli_audit import event_facts, render_html
        from ledger.audit import AuditError, audit, load_claim
        from ledger.taxrules.errors import TaxRuleError
        from ledger.taxrules.findings import dumps_json

        reader.sync()
        with tempfile.TemporaryDirectory(prefix="batteryledger-claim-") as tmp:
            path = Path(tmp) / "claim.yaml"
            path.write_text(claim, encoding="utf-8")
            try:
                parsed = load_claim(path)
                with reader._lock:
                    result = audit(reader.ledger, parsed)
            except (AuditError, TaxRuleError) as exc:
                diag = getattr(exc, "diagnostics", None)
                text = diag() if callable(diag) else str(exc)
                raise bad_parameter(text.replace(str(path), "claim")) from None
        if format == "html":
            links = [f"{API_PREFIX}/batches/{b}/bundle" for b in result.subject_batches]
            with reader._lock:
                facts = event_facts(reader.ledger, [e.event_id for e in result.events])
            page = render_html(result, links, events=facts, operator_vkey=reader.ledger.operator_vkey)
            return Response(page, media_type="text/html; charset=utf-8")
        data = result.to_json_obj()
        data["bundle_urls"] = [f"{API_PREFIX}/batches/{b}/bundle" for b in result.subject_batches]
        return Response(dumps_json(data), media_type="application/json")

    @bundles.get(
        f"{API_PREFIX}/batches/{{batch_id:path}}/bundle",
        tags=["audits"],
        responses={
            200: {"description": "Evidence bundle (batteryledger verify-bundle checks it)."},
            **PROBLEMS,
        },
    )
    def bundle(batch_id: BatchIdParam) -> Response:
        """The evidence bundle of a batch: its events, registry events, inclusion proofs, provenance."""
        known_batch(batch_id)
        from ledger.bundle_verify import dumps_bundle
        from ledger.proofs import ProofsError, make_bundle

        reader.sync()
        try:
            with reader._lock:
                data = make_bundle(reader.ledger, batch_id)
        except ProofsError as exc:
            raise ApiProblem(409, "Conflict", exc.diagnostics()) from None
        return Response(
            dumps_bundle(data),
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{_safe_name(batch_id)}-bundle.json"'},
        )

    # -- health and the web page -------------------------------------------------------------------
    @ops.get("/healthz", response_model=Health, tags=["ledger"])
    def healthz() -> Health:
        """The store answers and the head can be read."""
        return Health(status="ok", entries=reader.sync().size)

    @ops.get("/", include_in_schema=False)
    def index() -> Response:
        resp = FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    app.include_router(api_feed.feed_router(store_url))  # entries and checkpoints for mirrors
    _add_docs(ops)
    for router in (bundles, public, auditor, operator, ops, *routers):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _latest_checkpoint_size(engine: Engine) -> int | None:
    with engine.connect() as conn:
        size = conn.execute(select(func.max(CHECKPOINTS.c.size))).scalar()
    return None if size is None else int(size)


__all__ = ["BREAKDOWN_CATEGORIES", "LedgerReader", "create_app", "provenance_breakdown"]


def _add_docs(router: APIRouter) -> None:
    """Swagger UI 5 at /v1/docs from the files the fastapi-offline package ships: no CDN, works offline."""
    import fastapi_offline

    assets = Path(fastapi_offline.__file__).resolve().parent / "static"

    @router.get(f"{API_PREFIX}/docs", include_in_schema=False)
    def docs() -> Response:
        html = (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>batteryledger API</title>"
            f"<link rel='stylesheet' href='{API_PREFIX}/docs/assets/swagger-ui.css'></head><body>"
            "<div id='swagger-ui'></div>"
            f"<script src='{API_PREFIX}/docs/assets/swagger-ui-bundle.js'></script>"
            f"<script src='{API_PREFIX}/docs/init.js'></script></body></html>"
        )
        return Response(html, media_type="text/html; charset=utf-8")

    @router.get(f"{API_PREFIX}/docs/init.js", include_in_schema=False)
    def docs_init() -> Response:
        js = (
            f"window.ui = SwaggerUIBundle({{url: '{API_PREFIX}/openapi.json', dom_id: '#swagger-ui', "
            "deepLinking: true});"
        )
        return Response(js, media_type="text/javascript")

    @router.get(f"{API_PREFIX}/docs/assets/{{name}}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        if name not in {"swagger-ui.css", "swagger-ui-bundle.js"}:
            raise not_found(f"no such asset: {name}")
        media = "text/css" if name.endswith(".css") else "text/javascript"
        return FileResponse(assets / name, media_type=media)
