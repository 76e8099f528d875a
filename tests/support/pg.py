"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb, start, hand out URLs, stop, delete.

    >>> with ThrowawayPostgres() as pg:
    ...     url = pg.url                         # postgresql+psycopg://postgres@127.0.0.1:PORT/ledger
    ...     other = pg.create_database("t_1")    # a fresh, empty database on the same server

The server binaries come from env PG_BIN, else the newest /usr/lib/postgresql/*/bin (Debian/Ubuntu),
else PATH. PostgreSQL refuses to run as root, so when the caller is root (CI) the cluster belongs to an
unprivileged OS user (env PG_OS_USER, else `postgres`, else `nobody`) and initdb/pg_ctl run as that
user; otherwise they run as the caller. The server listens on 127.0.0.1 on a free port, with its unix
socket inside the cluster's temp folder, and trusts every local connection (nothing outside this
machine's loopback can reach it, and it lives only as long as the test session).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

PG_BIN_ENV = "PG_BIN"
PG_OS_USER_ENV = "PG_OS_USER"
DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"
NEEDED = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = (
    "run `sudo bash scripts/install-system-deps.sh` (installs Debian's postgresql), "
    f"or point {PG_BIN_ENV} at a directory holding initdb, pg_ctl and postgres"
)

#: Seconds the server may take to accept connections (about 1 s here; generous for a loaded CI box).
START_TIMEOUT_S = 60.0
#: Seconds for initdb, pg_ctl stop and other one-shot commands.
COMMAND_TIMEOUT_S = 120.0
#: How often a free port is tried again when another process took it between probe and bind.
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 40
SUPERUSER = "postgres"
DEFAULT_DATABASE = "ledger"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Settings for a cluster whose data is worthless after the run. fsync, synchronous_commit and
# full_page_writes are OFF for speed: they only protect against an OS crash or power loss, and a
# throwaway test cluster is deleted anyway. Never copy these into a real deployment.
SERVER_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


class PostgresError(Exception):
    """The throwaway cluster is unavailable; `diagnostics()` says what to do."""

    def diagnostics(self) -> str:
        return str(self)


class PostgresUnavailable(PostgresError):
    """The server binaries are not installed (or PG_BIN is wrong)."""


class PostgresStartError(PostgresError):
    """initdb or the server failed; the message carries the command output or the server log tail."""


@dataclass(frozen=True, slots=True)
class PgBinaries:
    bin_dir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.bin_dir / name)

    def version(self) -> str:
        out = subprocess.run([self["postgres"], "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip()


def _has_all(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / n, os.X_OK) for n in NEEDED)


def _version_key(path: Path) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin -> (15,); non-numeric parts sort first."""
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (-1,)


def find_binaries(env: Mapping[str, str] | None = None) -> PgBinaries:
    """PG_BIN, else the newest Debian-style install, else PATH; raises PostgresUnavailable."""
    env = os.environ if env is None else env
    explicit = env.get(PG_BIN_ENV)
    if explicit:
        if _has_all(Path(explicit)):
            return PgBinaries(Path(explicit))
        raise PostgresUnavailable(
            f"{PG_BIN_ENV}={explicit} does not hold executable {', '.join(NEEDED)}: {INSTALL_HINT}"
        )
    candidates = sorted((Path(p) for p in _glob(DEBIAN_GLOB)), key=_version_key, reverse=True)
    for c in candidates:
        if _has_all(c):
            return PgBinaries(c)
    found = [shutil.which(n, path=env.get("PATH")) for n in NEEDED]
    if all(found):
        dirs = {Path(str(f)).resolve().parent for f in found}
        if len(dirs) == 1:
            return PgBinaries(dirs.pop())
        return PgBinaries(Path(str(found[0])).resolve().parent)
    raise PostgresUnavailable(
        f"PostgreSQL server binaries ({', '.join(NEEDED)}) not found in ${PG_BIN_ENV}, "
        f"{DEBIAN_GLOB} or PATH: {INSTALL_HINT}"
    )


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class _RunAs:
    """Who initdb and the server run as: the caller, or an unprivileged user when the caller is root."""

    uid: int
    gid: int
    name: str

    @property
    def is_caller(self) -> bool:
        return self.uid == os.geteuid()


def _run_as(env: Mapping[str, str]) -> _RunAs:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return _RunAs(me.pw_uid, os.getegid(), me.pw_name)
    names = [env[PG_OS_USER_ENV]] if env.get(PG_OS_USER_ENV) else ["postgres", "nobody"]
    for name in names:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid == 0:
            raise PostgresStartError(f"{PG_OS_USER_ENV}={name} is root; PostgreSQL refuses to run as root")
        return _RunAs(pw.pw_uid, pw.pw_gid, name)
    raise PostgresStartError(
        f"running as root and no unprivileged OS user ({', '.join(names)}) exists to own the cluster: "
        f"create one (useradd --system postgres) or set {PG_OS_USER_ENV}"
    )


def _traversable(path: Path, who: _RunAs) -> bool:
    """Can `who` reach into `path` (execute permission on it and every parent)?"""
    for p in [path, *path.parents]:
        st = p.stat()
        if st.st_uid == who.uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == who.gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return False
    return True


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no server log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class ThrowawayPostgres:
    """One PostgreSQL cluster in a temp folder, alive between `start()` and `stop()`.

    `timezone` is the server's TimeZone setting (and thus every session's): None keeps what initdb
    picked from the environment. Tests pass a non-UTC zone on purpose, so code that stores or reads
    naive timestamps as if they were UTC fails here rather than on a customer's server.
    """

    def __init__(
        self,
        *,
        binaries: PgBinaries | None = None,
        database: str = DEFAULT_DATABASE,
        timezone: str | None = None,
        start_timeout: float = START_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._env = dict(os.environ if env is None else env)
        self.binaries = binaries or find_binaries(self._env)
        self.database = _check_db_name(database)
        self.timezone = timezone
        self.start_timeout = start_timeout
        self.run_as = _run_as(self._env)
        self.root: Path | None = None
        self.port: int | None = None
        self._started = False

    # -- paths -----------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self._root() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._root() / "sock"

    @property
    def log_file(self) -> Path:
        return self._root() / "server.log"

    def _root(self) -> Path:
        if self.root is None:
            raise PostgresError("the throwaway cluster was not started")
        return self.root

    # -- URLs ------------------------------------------------------------------------------------
    def url_for(self, database: str) -> str:
        if self.port is None:
            raise PostgresError("the throwaway cluster was not started")
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{_check_db_name(database)}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database created at start."""
        return self.url_for(self.database)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> str:
        """initdb, start, wait until it accepts connections, create the database; returns its URL."""
        if self._started:
            return self.url
        self._make_root()
        try:
            self._initdb()
            last: PostgresStartError | None = None
            for _ in range(PORT_ATTEMPTS):
                self.port = free_port()
                try:
                    self._pg_ctl_start()
                    break
                except PostgresStartError as exc:
                    last = exc
                    if "could not bind" not in str(exc) and "already in use" not in str(exc):
                        raise
            else:
                assert last is not None
                raise last
            self._started = True
            atexit.register(self.stop)
            self._wait_ready()
            self.create_database(self.database)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Stop the server (if it runs) and delete the cluster's folder. Safe to call twice."""
        root, self.root = self.root, None
        if root is None:
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._started:
            self._started = False
            data = root / "data"
            try:
                self._run(
                    [self.binaries["pg_ctl"], "stop", "-D", str(data), "-m", "immediate", "-w", "-t", "30"],
                    cwd=root,
                )
            except PostgresError:
                self._kill_postmaster(data)
        shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------------
    def connect_admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection to the `postgres` maintenance database (for CREATE/DROP DATABASE)."""
        if self.port is None:
            raise PostgresError("the throwaway cluster was not started")
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        )

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name` (empty, UTF8) and return its URL."""
        with self.connect_admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(_check_db_name(name))))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE, closing any connection a test left open (PostgreSQL 13+: WITH (FORCE))."""
        with self.connect_admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(_check_db_name(name))
                )
            )

    # -- internals -------------------------------------------------------------------------------
    def _make_root(self) -> None:
        base = Path(tempfile.gettempdir())
        if not self.run_as.is_caller and not _traversable(base, self.run_as):
            base = Path("/tmp")  # TMPDIR is private to root; the cluster's owner could not reach it
        self.root = Path(tempfile.mkdtemp(prefix="batteryledger-pg-", dir=base))
        (self.root / "sock").mkdir()
        if not self.run_as.is_caller:
            for p in (self.root, self.root / "sock"):
                os.chown(p, self.run_as.uid, self.run_as.gid)

    def _subprocess_env(self) -> dict[str, str]:
        # libpq/server variables of the caller (PGDATA, PGPORT, PGHOST, ...) must not leak in
        env = {k: v for k, v in self._env.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if not self.run_as.is_caller:
            env["HOME"] = str(self._root())
            env["USER"] = env["LOGNAME"] = self.run_as.name
        return env

    def _run(self, cmd: list[str], *, cwd: Path) -> str:
        drop = not self.run_as.is_caller  # root: become the cluster's owner (setuid/setgid, no groups)
        try:
            proc = subprocess.run(
                cmd,
                cwd=cwd,
                env=self._subprocess_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
                user=self.run_as.uid if drop else None,
                group=self.run_as.gid if drop else None,
                extra_groups=[] if drop else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresStartError(
                f"{Path(cmd[0]).name} did not finish within {COMMAND_TIMEOUT_S:g} s"
            ) from exc
        if proc.returncode != 0:
            raise PostgresStartError(
                f"`{' '.join(cmd)}` failed (exit {proc.returncode}) as OS user {self.run_as.name}:\n"
                f"{(proc.stdout + proc.stderr).strip()}"
            )
        return str(proc.stdout)

    def _initdb(self) -> None:
        root = self._root()
        self._run(
            [
                self.binaries["initdb"],
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # the cluster is thrown away: no need to fsync what initdb wrote
            ],
            cwd=root,
        )
        settings = dict(SERVER_SETTINGS)
        settings["unix_socket_directories"] = f"'{self.socket_dir}'"
        if self.timezone is not None:
            settings["timezone"] = f"'{self.timezone}'"
        conf = self.data_dir / "postgresql.conf"
        extra = "".join(f"{k} = {v}\n" for k, v in settings.items())
        # the last setting in postgresql.conf wins; the file is the cluster owner's, but root may write it
        with conf.open("a") as fh:
            fh.write("\n# batteryledger throwaway test cluster\n" + extra)

    def _pg_ctl_start(self) -> None:
        root = self._root()
        try:
            self._run(
                [
                    self.binaries["pg_ctl"],
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    f"-p {self.port}",
                    "-w",
                    "-t",
                    str(int(self.start_timeout)),
                ],
                cwd=root,
            )
        except PostgresStartError as exc:
            self._kill_postmaster(self.data_dir)
            raise PostgresStartError(
                f"{exc}\n--- server log tail ({self.log_file}) ---\n{_tail(self.log_file)}"
            ) from None

    def _wait_ready(self) -> None:
        """pg_ctl -w waited for the socket; wait (bounded) until TCP on 127.0.0.1 answers a query too."""
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with self.connect_admin() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise PostgresStartError(
            f"PostgreSQL on 127.0.0.1:{self.port} did not accept connections within "
            f"{self.start_timeout:g} s ({last})\n--- server log tail ({self.log_file}) ---\n{_tail(self.log_file)}"
        )

    @staticmethod
    def _kill_postmaster(data: Path) -> None:
        """Last resort: SIGKILL the postmaster we started (its pid is the first line of postmaster.pid)."""
        try:
            pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _check_db_name(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"database name {name!r}: use 1-63 of a-z, 0-9 and _, not starting with a digit")
    return name
