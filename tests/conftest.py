"""Store URLs for tests: a file-backed SQLite ledger path and a throwaway PostgreSQL server.

* ``sqlite_url`` (function): ``sqlite:///<tmp_path>/ledger.db`` (the file does not exist yet).
* ``pg_server`` (session): a running :class:`~tests.support.pg.ThrowawayPostgres`, started once.
* ``pg_url`` (session): the URL of the database created with that server (shared by the session).
* ``fresh_pg_url`` (function): a new, empty database on the session server for each test, dropped after
  it, so PostgreSQL tests are as isolated as SQLite ones in ``tmp_path``.

PostgreSQL tests never skip: missing server binaries or a server that does not start FAIL the tests that
need it, with what to do (scripts/install-system-deps.sh) or the server's log tail.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pg import PostgresError, PostgresUnavailable, ThrowawayPostgres

#: The session server's TimeZone. Deliberately not UTC (and not a whole-hour offset): code that writes
#: aware datetimes into `timestamp without time zone` columns and reads them back as UTC is wrong on
#: any server configured for local time, and must fail here, not at a customer.
PG_TEST_TIMEZONE = "America/St_Johns"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ThrowawayPostgres]:
    problem = ""
    try:
        server = ThrowawayPostgres(timezone=PG_TEST_TIMEZONE)
        server.start()
    except PostgresUnavailable as exc:
        where = "in CI (CI=true) " if os.environ.get("CI", "").lower() == "true" else ""
        problem = f"PostgreSQL tests cannot run {where}without the server binaries: {exc.diagnostics()}"
    except PostgresError as exc:
        problem = f"the throwaway PostgreSQL server did not start:\n{exc.diagnostics()}"
    if problem:
        pytest.fail(problem, pytrace=False)  # never skip: a missing database must not pass CI quietly
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server: ThrowawayPostgres) -> str:
    return pg_server.url


@pytest.fixture
def fresh_pg_url(pg_server: ThrowawayPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"t_{slug}_{uuid.uuid4().hex[:8]}"
    url = pg_server.create_database(name)
    try:
        yield url
    finally:
        pg_server.drop_database(name)
