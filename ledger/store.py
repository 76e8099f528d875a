"""The ledger store: sqlmodel tables, one schema for SQLite (embedded default) and PostgreSQL (scale).

Tables are declared with sqlmodel; the hot paths (batched append, chain scan) use SQLAlchemy Core on the
same tables, one transaction per append batch. Decimal quantities are stored as exact decimal strings.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, Index, LargeBinary, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, SQLModel, create_engine

SCHEMA_VERSION = "1"


class StoreError(Exception):
    def diagnostics(self) -> str:
        return one_line(str(self))


MAX_MESSAGE = 400  # characters of one error line: a driver's message, never its SQL or parameters


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """A message as one line: whitespace runs collapse; a long tail is cut (and says so)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 14] + " ... (cut)"


def describe(exc: BaseException) -> str:
    """What went wrong, without SQLAlchemy's statement/parameter dump: the driver's first line."""
    orig = getattr(exc, "orig", None)
    if isinstance(exc, SQLAlchemyError) and orig is not None:
        first = str(orig).strip().splitlines()
        return one_line(first[0] if first else type(orig).__name__)
    first = str(exc).strip().splitlines()
    return one_line(f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__)


def as_store_error(url: str, exc: BaseException) -> StoreError | None:
    """A database failure as one actionable line naming the store; None if `exc` is not one."""
    if isinstance(exc, StoreError) or not isinstance(exc, DBAPIError | sqlite3.Error):
        return None
    store = sqlite_path(url) or redact(url).replace("postgresql+psycopg://", "postgresql://")
    why = describe(exc)
    low = why.lower()
    if "disk is full" in low or "disk full" in low or "no space left" in low:
        return StoreError(
            f"store {store} is full ({why}): the append was refused and nothing was written; "
            "free space and retry"
        )
    if "readonly database" in low or "read-only" in low:
        return StoreError(f"store {store} is read-only ({why}): writing commands need a writable store")
    if "not a database" in low:
        return StoreError(f"store {store} is not a SQLite database ({why}): check --store")
    if "connection" in low and (isinstance(exc, OperationalError) or "connect" in low):
        return StoreError(f"store {store} is unreachable ({why}): check the URL and that the server runs")
    return StoreError(f"store {store}: {why}")


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
    # not indexed: nothing looks a batch up by its event (entries.event_id does that), and event ids are
    # SHA-256, so each append's inserts into such an index land on as many pages as it has events: that
    # index cost the append path about 9 us of CPU per event on a 50k ledger, half of it in the kernel
    # writing those pages to the WAL and back (issue 11, eighth pass)
    event_id: str = Field(max_length=64)
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


#: Prepared statements each SQLite connection keeps (the sqlite3 module's default is 128). The append
#: path's look-ups have a different text for each number of keys (IN lists, OR terms), and a prepared
#: statement with hundreds of terms is large: with 128 cached on each of a writer's pooled connections,
#: a 200k-event soak's store process grew 93 -> 127-148 MiB; with 8, 97 -> 111 MiB (the statements a
#: batch uses again are prepared again, a few microseconds each).
SQLITE_CACHED_STATEMENTS = 8


def make_engine(url: str) -> Engine:
    """An engine for the store. Opening never writes: a SQLite file is put in WAL mode only by
    `create_schema` (init), and a file this process cannot write is opened read-only."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        path = sqlite_path(url)
        asked_ro = "mode=ro" in url.partition("?")[2].split("&")  # sqlite:///FILE?mode=ro: read only
        if path is not None and not memory and (asked_ro or (os.path.exists(path) and not _writable(path))):
            return _read_only_sqlite(path)
        # a file database keeps its connections (pool_size 5): reopening the file, re-running the
        # pragmas and checkpointing the WAL on every append batch cost ~15% of the append path
        args = {"check_same_thread": False, "cached_statements": SQLITE_CACHED_STATEMENTS}
        engine = (
            create_engine(url, connect_args=args, poolclass=StaticPool)
            if memory
            else create_engine(url, connect_args=args, pool_size=5, max_overflow=10)
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql"):
        app = f"batteryledger {os.path.basename(sys.argv[0]) if sys.argv else ''} pid {os.getpid()}"[:63]
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            connect_args={"application_name": app, "connect_timeout": 10},
        )
    raise StoreError(
        f"unsupported store URL {redact(url)!r}: use a SQLite path or sqlite:///FILE, or postgresql://..."
    )


def _sqlite_pragmas(dbapi_conn: Any, _rec: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _writable(path: str) -> bool:
    """Can this process write the SQLite file and create its -wal/-shm files beside it?"""
    return os.access(path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)


def _read_only_sqlite(path: str) -> Engine:
    """A read-only file (or folder): `mode=ro`; if its WAL index cannot be made there, `immutable=1`
    (nobody can be writing a file this process cannot write beside)."""
    quoted = urllib.parse.quote(os.path.abspath(path))

    def connect() -> sqlite3.Connection:
        try:
            con = sqlite3.connect(f"file:{quoted}?mode=ro", uri=True, check_same_thread=False)
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return con
        except sqlite3.OperationalError:
            return sqlite3.connect(f"file:{quoted}?mode=ro&immutable=1", uri=True, check_same_thread=False)

    engine = create_engine("sqlite://", creator=connect, poolclass=StaticPool)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# -- one writer per store -----------------------------------------------------------------------
WRITER_WAIT_S = 10.0  # how long a second writer waits for the first one's transaction before refusing
PG_WRITER_LOCK = 0x626C_7772  # "blwr": the PostgreSQL advisory lock key of the store's writer
_LOCK_POLL_S = 0.02


def holder_text() -> str:
    """Who this process is, as a second writer's refusal names it."""
    cmd = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"pid {os.getpid()} on {socket.gethostname()} ({cmd}), since {now().isoformat(timespec='seconds')}"


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite store URL; None for memory and other backends."""
    url = normalise_url(url)
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return url[len("sqlite:///") :].split("?", 1)[0]


@contextmanager
def write_transaction(engine: Engine, url: str, wait_s: float = WRITER_WAIT_S) -> Iterator[Connection]:
    """A write transaction holding the store's single-writer lock from before it begins to after it ends.

    SQLite: an exclusive `flock` on `<file>.writer` (which holds the holder's name); PostgreSQL: the
    transaction-level advisory lock PG_WRITER_LOCK. A second writer waits up to `wait_s`, then refuses
    with one line naming the holder; nothing it meant to write is written.
    """
    path = sqlite_path(url)
    with _file_lock(path, wait_s) if path is not None else nullcontext(), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            _pg_lock(conn, url, wait_s)
        yield conn


def _refusal(store: str, who: str, wait_s: float) -> StoreError:
    return StoreError(
        f"store {store} has another writer: {who} holds the write lock (waited {wait_s:g} s): "
        "run one sequencer per store, or retry when it is done"
    )


def _pg_lock(conn: Connection, url: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": PG_WRITER_LOCK}).scalar():
        if time.monotonic() >= deadline:
            row = conn.execute(
                text(
                    "SELECT a.pid, a.application_name, a.client_addr, a.xact_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.granted AND l.classid = 0 AND l.objid = :k"
                ),
                {"k": PG_WRITER_LOCK},
            ).first()
            who = (
                "an unknown session"
                if row is None
                else f"backend pid {row.pid} ({row.application_name or 'no application name'}, "
                f"{row.client_addr or 'local socket'}, in a transaction since {row.xact_start})"
            )
            raise _refusal(redact(url), who, wait_s)
        time.sleep(_LOCK_POLL_S)


@contextmanager
def _file_lock(path: str, wait_s: float) -> Iterator[None]:
    lock_path = path + ".writer"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(
            f"store {path} is read-only here: cannot open its write lock {lock_path} ({exc.strerror}); "
            "writing commands need a writable store and folder"
        ) from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    who = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
                    raise _refusal(path, who, wait_s) from None
                time.sleep(_LOCK_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_text().encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def redact(url: str) -> str:
    """A store URL fit for a message: no password."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def create_schema(engine: Engine) -> None:
    """Create the tables (init only: reading a store never creates anything)."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # persistent: set once, in the file
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


#: Node keys per query of :func:`fetch_nodes` (two parameters each: far under every driver's limit).
NODE_KEYS_PER_QUERY = 250


def fetch_nodes(conn: Connection, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """Merkle nodes by (level, idx): one query for up to NODE_KEYS_PER_QUERY keys, each term an equality
    on the primary key (SQLite and PostgreSQL both answer it from the index). An append reads the right
    edge of the tree (one node per 1 bit of its size) and a proof a path: one query either way, where one
    query per level cost an append about 4 ms (issue 11)."""
    pairs = sorted(set(keys))
    found: dict[tuple[int, int], bytes] = {}
    mark = placeholder(conn)
    for chunk in chunks(pairs, NODE_KEYS_PER_QUERY):
        where = " OR ".join([f"(level = {mark} AND idx = {mark})"] * len(chunk))
        params = tuple(v for pair in chunk for v in pair)
        rows = conn.exec_driver_sql(f"SELECT level, idx, hash FROM merkle_nodes WHERE {where}", params)
        for level, idx, digest in rows:
            found[(int(level), int(idx))] = bytes(digest)
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
    return db_time_of(conn)(t)


def _sqlite_time(t: datetime) -> str:
    if t.tzinfo is UTC:  # the usual case: cut "+00:00" rather than make a naive copy first
        return t.isoformat(" ", "microseconds")[:-6]
    naive = t.astimezone(UTC).replace(tzinfo=None)
    return naive.isoformat(" ", "microseconds")  # SQLAlchemy's own SQLite DateTime storage format


def _server_time(t: datetime) -> datetime:
    # timestamptz: an aware value, never read in the session's TimeZone
    return t if t.tzinfo is UTC else t.astimezone(UTC)


def db_time_of(conn: Connection) -> Callable[[datetime], Any]:
    """`db_time` for this connection's driver, as one function (the append path calls it per row)."""
    return _sqlite_time if conn.dialect.name == "sqlite" else _server_time


def select_in(conn: Connection, sql: str, values: Sequence[Any], params: Sequence[Any] = ()) -> list[Any]:
    """Rows of `sql` ending in "IN", for `values` in chunks, straight through the driver.

    SQLAlchemy's expanding IN renders and names one bind per value on every execution: for the
    append path's prefetch of a thousand ids that costs more than the queries. Rows come as the
    driver returns them (no result type processing: see the callers).
    """
    mark = placeholder(conn)
    rows: list[Any] = []
    for part in chunks(values):
        q = f"{sql} ({', '.join([mark] * len(part))})"
        rows.extend(conn.exec_driver_sql(q, (*params, *part)).fetchall())
    return rows


def bulk_insert(conn: Connection, table: Any, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Many rows straight through the driver: the append hot path (SQLite: executemany; PostgreSQL: COPY).

    SQLAlchemy Core's executemany builds a parameter dict per row and processes every bind; for the
    ledger's fixed, already-typed rows that costs more than the database itself. Values must be in the
    driver's form: str, int, bool, bytes, and `db_time(...)` for DateTime columns.
    """
    if not rows:
        return
    if conn.dialect.name == "sqlite":  # sqlite3's executemany loops in C: one statement, many rows
        marks = ", ".join([placeholder(conn)] * len(columns))
        conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})", list(rows))
        return
    # psycopg's executemany (pipeline mode) spends tens of microseconds of Python per row: COPY the rows
    # instead (psycopg formats them in C); same values through the same column input functions
    dbapi_conn: Any = conn.connection.dbapi_connection
    copy_sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    try:
        with dbapi_conn.cursor() as cur:
            # engine listeners (logging, tracing, tests' fault injection) see the COPY as they see the
            # statements SQLAlchemy runs itself (no execution context: it is not one of SQLAlchemy's)
            for fn in conn.dispatch.before_cursor_execute:
                fn(conn, cur, copy_sql, rows, None, True)
            with cur.copy(copy_sql) as copy:
                for row in rows:
                    copy.write_row(row)
            for fn in conn.dispatch.after_cursor_execute:
                fn(conn, cur, copy_sql, rows, None, True)
    except conn.dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy would raise it (IntegrityError, ...)
        raise DBAPIError.instance(
            copy_sql, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
        ) from exc


def insert_nodes(conn: Connection, nodes: Sequence[Sequence[Any]]) -> None:
    """Insert new Merkle nodes; a node already stored where a new one goes means the store was edited.

    Append refuses (the transaction rolls back, nothing is lost) rather than overwrite it: the planted
    node is evidence, and `verify` names it. Remove it (or restore the store) to append again.
    """
    try:
        with conn.begin_nested():
            bulk_insert(conn, NODES, ("level", "idx", "hash"), nodes)
    except IntegrityError:
        keys = [(int(level), int(idx)) for level, idx, _ in nodes]
        found = sorted(fetch_nodes(conn, keys))
        where = f"(level {found[0][0]}, index {found[0][1]})" if found else "(unknown)"
        raise StoreError(
            f"append refused: a stored Merkle node {where} already sits where the next entry's node goes; "
            "the store was edited: run `batteryledger verify`, remove the node or restore the store"
        ) from None


def bulk_update(
    conn: Connection, table: Any, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """UPDATE ... SET columns WHERE key = ?, executemany through the driver; each row is (*values, key)."""
    if not rows:
        return
    mark = placeholder(conn)
    sets = ", ".join(f"{c} = {mark}" for c in columns)
    conn.exec_driver_sql(f"UPDATE {table.name} SET {sets} WHERE {key} = {mark}", list(rows))
