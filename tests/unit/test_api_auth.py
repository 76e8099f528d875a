"""Who may read what, on the real API over the demo ledger: each role against each endpoint.

Roles and credentials are batteryledger.auth; the table of routes is batteryledger.api.ROUTE_POLICIES.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from batteryledger.api import ROUTE_POLICIES, create_app
from batteryledger.auth import AuthConfig, Role, create_api_key, issue_token, public_key_text
from batteryledger.cli import app as cli_app
from ledger.store import BATCHES, EDGES
from tests.unit.test_api import PACK, Demo, build_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return build_demo(tmp_path_factory.mktemp("api-auth") / "ledger.db")


@pytest.fixture(scope="module")
def token_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def facts(demo: Demo) -> dict[str, str]:
    """The pack's maker, a batch it consumed, and a batch far upstream that it neither made nor used."""
    eng = create_engine(demo.url)
    with eng.connect() as conn:
        maker = conn.execute(select(BATCHES.c.facility_id).where(BATCHES.c.batch_id == PACK)).scalar_one()
        parent = conn.execute(select(EDGES.c.parent).where(EDGES.c.child == PACK)).scalars().first()
        mine = (
            conn.execute(
                select(BATCHES.c.batch_id).where(
                    BATCHES.c.kind == "batch.extracted", BATCHES.c.facility_id != maker
                )
            )
            .scalars()
            .first()
        )
    eng.dispose()
    assert parent and mine
    return {"maker": maker, "parent": parent, "mine": mine}


@pytest.fixture(scope="module")
def api_key_secret() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def client(
    demo: Demo, token_key: Ed25519PrivateKey, facts: dict[str, str], api_key_secret: dict[str, str]
) -> Iterator[TestClient]:
    cfg = AuthConfig(token_public_keys=[public_key_text(token_key)])
    secret, _ = create_api_key(cfg, name="pack line", role=Role.FACILITY, facility_id=facts["maker"])
    api_key_secret["facility"] = secret
    with TestClient(create_app(demo.url, auth_config=cfg)) as c:
        yield c


def bearer(key: Ed25519PrivateKey, role: Role, facility: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(key, role=role, subject='test', facility_id=facility)}"}


def test_every_route_has_a_policy(client: TestClient) -> None:
    """A new route must be placed in ROUTE_POLICIES on purpose (else only the operator may call it)."""
    declared = {re.sub(r":\w+}", "}", p) for p in ROUTE_POLICIES}
    served = set(client.get("/v1/openapi.json").json()["paths"])
    assert served - declared == set()
    assert declared - served <= {"/", "/healthz", "/v1/docs", "/v1/docs/init.js", "/v1/docs/assets/{name}"}


def test_each_role_against_each_endpoint(
    client: TestClient, token_key: Ed25519PrivateKey, facts: dict[str, str]
) -> None:
    maker, parent, mine = facts["maker"], facts["parent"], facts["mine"]
    size = client.get("/v1/status").json()["entries"]
    who: dict[str, dict[str, str]] = {
        "anon": {},
        "fac": bearer(token_key, Role.FACILITY, maker),
        "aud": bearer(token_key, Role.AUDITOR),
        "op": bearer(token_key, Role.OPERATOR),
    }
    B = "/v1/batches/"
    # path -> expected status for anon, facility (the pack's maker), auditor, operator
    expect: dict[str, tuple[int, int, int, int]] = {
        "/v1/status": (200, 200, 200, 200),
        "/v1/checkpoint": (200, 200, 200, 200),
        f"/v1/proofs/consistency?old=1&new={size}": (200, 200, 200, 200),
        f"{B}{PACK}/passport": (200, 200, 200, 200),
        "/healthz": (200, 200, 200, 200),
        "/": (200, 200, 200, 200),
        f"{B}{PACK}": (401, 200, 200, 200),
        f"{B}{PACK}/provenance": (401, 200, 200, 200),
        f"{B}{PACK}/lineage?direction=up": (401, 200, 200, 200),
        f"{B}{PACK}/events": (401, 200, 200, 200),
        f"{B}{parent}": (401, 200, 200, 200),  # consumed by the maker
        f"{B}{mine}": (401, 403, 200, 200),  # neither made, held nor consumed by the maker
        f"{B}{mine}/provenance": (401, 403, 200, 200),
        "/v1/batches": (401, 403, 200, 200),  # a facility lists its own only
        f"/v1/batches?facility={maker}": (401, 200, 200, 200),
        "/v1/batches?facility=someone-else": (401, 403, 200, 200),
        "/v1/facilities": (401, 200, 200, 200),
        "/v1/entries/1": (401, 403, 200, 200),
        f"{B}{PACK}/bundle": (401, 403, 200, 200),
        "/v1/rejections": (401, 403, 200, 200),
        "/v1/audits/examples": (401, 403, 200, 200),
    }
    got = {
        path: tuple(client.get(path, headers=who[w]).status_code for w in ("anon", "fac", "aud", "op"))
        for path in expect
    }
    assert got == expect


def test_refusals_say_why_as_problem_documents(
    client: TestClient, token_key: Ed25519PrivateKey, facts: dict[str, str]
) -> None:
    r = client.get(f"/v1/batches/{facts['mine']}", headers=bearer(token_key, Role.FACILITY, facts["maker"]))
    assert r.headers["content-type"].startswith("application/problem+json")
    assert facts["maker"] in r.json()["detail"]
    r = client.get("/v1/rejections")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = client.get("/v1/status", headers={"Authorization": "Bearer forged.token.here"})
    assert r.status_code == 401
    r = client.get("/v1/rejections", headers=bearer(Ed25519PrivateKey.generate(), Role.OPERATOR))
    assert r.status_code == 401  # a token signed by another key


def test_audit_post_needs_an_auditor(client: TestClient, token_key: Ed25519PrivateKey) -> None:
    claim = client.get("/v1/audits/examples", headers=bearer(token_key, Role.AUDITOR)).json()
    assert claim  # the examples are there for auditors
    body = b"credit: 45x\n"
    assert client.post("/v1/audits", content=body).status_code == 401
    fac = bearer(token_key, Role.FACILITY, "x")
    assert client.post("/v1/audits", content=body, headers=fac).status_code == 403


def test_machine_api_key(client: TestClient, api_key_secret: dict[str, str], facts: dict[str, str]) -> None:
    key = {"X-API-Key": api_key_secret["facility"]}
    assert client.get(f"/v1/batches/{PACK}", headers=key).status_code == 200
    assert client.get(f"/v1/batches/{facts['mine']}", headers=key).status_code == 403
    assert client.get("/v1/status", headers={"X-API-Key": "blk_nope_nope"}).status_code == 401


def test_without_auth_the_local_api_is_open(demo: Demo) -> None:
    with TestClient(create_app(demo.url)) as c:
        assert c.get("/v1/rejections").status_code == 200


def test_serve_refuses_a_public_bind_without_auth(tmp_path: Path, demo: Demo) -> None:
    res = CliRunner().invoke(cli_app, ["serve", "--store", demo.url, "--host", "0.0.0.0"])
    assert res.exit_code == 2
    assert "without --auth" in res.output
    bad = tmp_path / "auth.json"
    bad.write_text("{}")
    res = CliRunner().invoke(cli_app, ["serve", "--store", demo.url, "--auth", str(bad)])
    assert res.exit_code == 2 and "not a batteryledger auth file" in res.output
