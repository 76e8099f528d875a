"""The ledger store: sqlmodel tables, one schema for SQLite (embedded default) and PostgreSQL (scale).

Tables are declared with sqlmodel; the hot paths (batched append, chain scan) use SQLAlchemy Core on the
same tables, one transaction per append batch. Decimal quantities are stored as exact decimal strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, Index, LargeBinary, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, SQLModel, create_engine

SCHEMA_VERSION = "1"


class StoreError(Exception):
    def diagnostics(self) -> str:
        return str(self)


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str


class EntryRow(SQLModel, table=True):
    """One ledger entry: entry_hash = SHA-256(previous entry_hash || leaf_hash)."""

    __tablename__ = "entries"
    seq: int = Field(primary_key=True)
    event_id: str = Field(max_length=64, unique=True)
    kind: str = Field(max_length=32, index=True)
    facility_id: str = Field(max_length=128, index=True)
    time: datetime = Field(sa_type=DateTime(timezone=True))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    entry_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    appended_at: datetime = Field(sa_type=DateTime(timezone=True))


class MerkleNodeRow(SQLModel, table=True):
    __tablename__ = "merkle_nodes"
    level: int = Field(primary_key=True)
    idx: int = Field(primary_key=True)
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class CheckpointRow(SQLModel, table=True):
    __tablename__ = "checkpoints"
    size: int = Field(primary_key=True)
    root_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str
    created_at: datetime = Field(sa_type=DateTime(timezone=True))


class BatchRow(SQLModel, table=True):
    __tablename__ = "batches"
    batch_id: str = Field(primary_key=True, max_length=128)
    seq: int = Field(index=True)
    event_id: str = Field(max_length=64, index=True)
    kind: str = Field(max_length=32)
    facility_id: str = Field(max_length=128, index=True)
    country: str = Field(max_length=2)
    feoc: bool
    pfe: bool
    time: datetime = Field(sa_type=DateTime(timezone=True))
    material: str = Field(max_length=64)
    kg: str
    consumed_kg: str
    li: str
    ni: str
    co: str
    mn: str
    graphite: str
    value_usd: str | None = None
    custody: str
    extra: str
    origins: str  # the provenance index: ledger.provenance.encode_origins of this batch


class EdgeRow(SQLModel, table=True):
    __tablename__ = "edges"
    __table_args__ = (Index("ix_edges_child", "child"),)
    parent: str = Field(primary_key=True, max_length=128)
    child: str = Field(primary_key=True, max_length=128)
    kg: str
    seq: int


class FacilityRow(SQLModel, table=True):
    """Registry view (derived from registry entries, for queries; the entries are the truth)."""

    __tablename__ = "facilities"
    facility_id: str = Field(primary_key=True, max_length=128)
    legal_entity: str
    country: str = Field(max_length=2)
    roles: str
    feoc: bool
    pfe: bool
    keys: str
    seq: int


class RejectionRow(SQLModel, table=True):
    __tablename__ = "rejections"
    id: int | None = Field(default=None, primary_key=True)
    event_id: str | None = Field(default=None, max_length=64, index=True)
    reason: str = Field(max_length=48, index=True)
    detail: str
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    source: str = Field(index=True)
    created_at: datetime = Field(sa_type=DateTime(timezone=True))


class ParkedRow(SQLModel, table=True):
    """Events waiting for parent batches that have not arrived yet (children before parents)."""

    __tablename__ = "parked"
    # one row per copy received: a second message with the same event id (another signature) never
    # displaces a waiting one; park_id = SHA-256(source || 0x00 || canonical signed bytes), hex
    park_id: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(max_length=64, index=True)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # canonical signed event
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # as received, kept if it is rejected
    missing: str  # JSON list of the batch ids whose arrival (or custody change) it waits for
    reason: str = Field(max_length=48)  # why it could not be appended yet
    detail: str
    source: str
    parked_at: datetime = Field(sa_type=DateTime(timezone=True))


class OffsetRow(SQLModel, table=True):
    """Tracking record: the next Kafka offset to consume, written in the append transaction."""

    __tablename__ = "offsets"
    consumer: str = Field(primary_key=True, max_length=128)
    topic: str = Field(primary_key=True, max_length=255)
    partition: int = Field(primary_key=True)
    next_offset: int


class ProvenanceCacheRow(SQLModel, table=True):
    __tablename__ = "provenance_cache"
    batch_id: str = Field(primary_key=True, max_length=128)
    result: str


T = SQLModel.metadata.tables
ENTRIES = T["entries"]
NODES = T["merkle_nodes"]
CHECKPOINTS = T["checkpoints"]
BATCHES = T["batches"]
EDGES = T["edges"]
FACILITIES = T["facilities"]
REJECTIONS = T["rejections"]
PARKED = T["parked"]
OFFSETS = T["offsets"]
META = T["meta"]
PROVENANCE = T["provenance_cache"]


def now() -> datetime:
    return datetime.now(UTC)


def normalise_url(url: str) -> str:
    """Accept a bare file path for SQLite and `postgresql://` for psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        # a file database keeps its connections (pool_size 5): reopening the file, re-running the
        # pragmas and checkpointing the WAL on every append batch cost ~15% of the append path
        engine = (
            create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
            if memory
            else create_engine(url, connect_args={"check_same_thread": False}, pool_size=5, max_overflow=10)
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    raise StoreError(
        f"unsupported store URL {url!r}: use a SQLite path or sqlite:///FILE, or postgresql://..."
    )


def create_schema(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine)


def get_meta(conn: Connection, key: str) -> str | None:
    row = conn.execute(META.select().where(META.c.key == key)).first()
    return None if row is None else str(row.value)


def set_meta(conn: Connection, items: Mapping[str, str]) -> None:
    for k, v in items.items():
        if get_meta(conn, k) is None:
            conn.execute(META.insert().values(key=k, value=v))
        else:
            conn.execute(META.update().where(META.c.key == k).values(value=v))


def fetch_nodes(conn: Connection, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """Merkle nodes by (level, idx), one query per level."""
    by_level: dict[int, list[int]] = {}
    for level, idx in keys:
        by_level.setdefault(level, []).append(idx)
    found: dict[tuple[int, int], bytes] = {}
    for level, idxs in by_level.items():
        for chunk in chunks(sorted(set(idxs))):
            rows = conn.execute(
                NODES.select().where(NODES.c.level == level).where(NODES.c.idx.in_(chunk))
            ).fetchall()
            for r in rows:
                found[(r.level, r.idx)] = bytes(r.hash)
    return found


def chunks(items: Sequence[Any], n: int = 500) -> Iterator[Sequence[Any]]:
    """Slices of at most `n` items: IN lists stay under every driver's parameter limit."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def placeholder(conn: Connection) -> str:
    """The driver's parameter marker for SQL written by hand (sqlite3: ?, psycopg: %s)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def db_time(conn: Connection, t: datetime) -> Any:
    """A UTC time as the driver wants it for our naive-UTC DateTime columns (see `bulk_insert`)."""
    naive = (t if t.tzinfo is UTC else t.astimezone(UTC)).replace(tzinfo=None)
    if conn.dialect.name == "sqlite":
        return naive.isoformat(" ", "microseconds")  # SQLAlchemy's own SQLite DateTime storage format
    return naive.replace(tzinfo=UTC)  # timestamptz: an aware value, never read in the session's TimeZone


def bulk_insert(conn: Connection, table: Any, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """executemany straight through the driver: the append hot path.

    SQLAlchemy Core's executemany builds a parameter dict per row and processes every bind; for the
    ledger's fixed, already-typed rows that costs more than the database itself. Values must be in the
    driver's form: str, int, bool, bytes, and `db_time(...)` for DateTime columns.
    """
    if not rows:
        return
    mark = placeholder(conn)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
    conn.exec_driver_sql(sql, list(rows))


def bulk_update(
    conn: Connection, table: Any, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """UPDATE ... SET columns WHERE key = ?, executemany through the driver; each row is (*values, key)."""
    if not rows:
        return
    mark = placeholder(conn)
    sets = ", ".join(f"{c} = {mark}" for c in columns)
    conn.exec_driver_sql(f"UPDATE {table.name} SET {sets} WHERE {key} = {mark}", list(rows))
