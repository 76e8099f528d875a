"""Credentials, roles and limits (batteryledger.auth), on a small app with the real middleware.

The full role x endpoint matrix against the real API is in test_api_auth.py.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from batteryledger.auth import (
    MAX_REQUEST_BYTES,
    AuthConfig,
    Authenticator,
    AuthError,
    Denied,
    Policy,
    RateLimiter,
    Role,
    authorizer,
    create_api_key,
    denied_handler,
    install,
    issue_token,
    public_key_text,
)


@pytest.fixture()
def token_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def cfg(token_key: Ed25519PrivateKey) -> AuthConfig:
    return AuthConfig(token_public_keys=[public_key_text(token_key)])


def test_token_round_trip_gives_role_subject_and_facility(token_key, cfg) -> None:
    t = issue_token(token_key, role=Role.FACILITY, subject="scada", facility_id="ref-1")
    p = Authenticator(cfg).principal(f"Bearer {t}", None)
    assert (p.role, p.subject, p.facility_id, p.credential) == (Role.FACILITY, "scada", "ref-1", "jwt")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: (
            t.split(".")[0]
            + "."
            + base64.urlsafe_b64encode(b'{"batteryledger_role":"operator"}').decode().rstrip("=")
            + "."
            + t.split(".")[2]
        ),
    ],
)
def test_tampered_token_is_refused(token_key, cfg, mutate) -> None:
    t = issue_token(token_key, role=Role.AUDITOR, subject="cpa")
    with pytest.raises(AuthError, match="refused"):
        Authenticator(cfg).principal(f"Bearer {mutate(t)}", None)


def test_token_from_another_key_expired_or_for_another_audience_is_refused(token_key, cfg) -> None:
    other = issue_token(Ed25519PrivateKey.generate(), role=Role.OPERATOR, subject="mallory")
    with pytest.raises(AuthError, match="Signature verification failed"):
        Authenticator(cfg).principal(f"Bearer {other}", None)
    old = issue_token(
        token_key,
        role=Role.AUDITOR,
        subject="cpa",
        ttl=timedelta(hours=1),
        now=datetime.now(UTC) - timedelta(days=1),
    )
    with pytest.raises(AuthError, match="expired"):
        Authenticator(cfg).principal(f"Bearer {old}", None)
    now = datetime.now(UTC)
    wrong_aud = jwt.encode(
        {
            "iss": "batteryledger",
            "aud": "elsewhere",
            "sub": "x",
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(hours=1)).timestamp()),
            "batteryledger_role": "operator",
        },
        token_key,
        algorithm="EdDSA",
    )
    with pytest.raises(AuthError, match=r"(?i)audience"):
        Authenticator(cfg).principal(f"Bearer {wrong_aud}", None)


def test_alg_none_token_is_refused(cfg) -> None:
    now = datetime.now(UTC)
    t = jwt.encode(
        {
            "iss": "batteryledger",
            "aud": "batteryledger-api",
            "sub": "x",
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(hours=1)).timestamp()),
            "batteryledger_role": "operator",
        },
        None,
        algorithm="none",
    )
    with pytest.raises(AuthError):
        Authenticator(cfg).principal(f"Bearer {t}", None)


def test_issue_refuses_inconsistent_requests(token_key) -> None:
    with pytest.raises(AuthError, match="--facility"):
        issue_token(token_key, role=Role.FACILITY, subject="x")
    with pytest.raises(AuthError, match="facility tokens only"):
        issue_token(token_key, role=Role.AUDITOR, subject="x", facility_id="f")
    with pytest.raises(AuthError, match="lifetime"):
        issue_token(token_key, role=Role.AUDITOR, subject="x", ttl=timedelta(days=5000))


def test_api_keys_are_stored_hashed_and_can_be_revoked(cfg, tmp_path: Path) -> None:
    secret, _entry = create_api_key(cfg, name="scada", role=Role.FACILITY, facility_id="cell-1")
    path = tmp_path / "auth.json"
    cfg.save(path)
    assert secret not in path.read_text()
    loaded = AuthConfig.load(path)
    p = Authenticator(loaded).principal(None, secret)
    assert (p.role, p.facility_id, p.credential) == (Role.FACILITY, "cell-1", "apikey")
    assert Authenticator(loaded).principal(f"Bearer {secret}", None).role is Role.FACILITY
    with pytest.raises(AuthError, match="unknown API key"):
        Authenticator(loaded).principal(None, secret[:-1] + ("x" if secret[-1] != "x" else "y"))
    loaded.api_keys[0].revoked = True
    with pytest.raises(AuthError, match="revoked"):
        Authenticator(loaded).principal(None, secret)


def test_auth_file_errors_are_one_line(tmp_path: Path) -> None:
    for content, match in [
        (None, "does not exist"),
        ("{", "not readable JSON"),
        ('{"version": 9}', "not a batteryledger"),
    ]:
        p = tmp_path / "a.json"
        if content is not None:
            p.write_text(content)
        with pytest.raises(AuthError, match=match) as exc:
            AuthConfig.load(p)
        assert "\n" not in str(exc.value)
        p.unlink(missing_ok=True)


def test_oidc_provider_tokens_via_jwks(cfg) -> None:
    idp = Ed25519PrivateKey.generate()
    x = (
        base64.urlsafe_b64encode(idp.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        .decode()
        .rstrip("=")
    )
    cfg.oidc = {
        "issuer": "https://idp.example",
        "audience": "ledger",
        "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]},
    }
    now = datetime.now(UTC)
    claims = {
        "iss": "https://idp.example",
        "aud": "ledger",
        "sub": "alice@cpa",
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=1)).timestamp()),
        "batteryledger_role": "auditor",
    }
    t = jwt.encode(claims, idp, algorithm="EdDSA", headers={"kid": "k1"})
    p = Authenticator(cfg).principal(f"Bearer {t}", None)
    assert (p.role, p.subject) == (Role.AUDITOR, "alice@cpa")
    bad = jwt.encode({**claims, "iss": "https://evil.example"}, idp, algorithm="EdDSA", headers={"kid": "k1"})
    with pytest.raises(AuthError, match=r"(?i)issuer"):
        Authenticator(cfg).principal(f"Bearer {bad}", None)


def test_rate_limiter_refills_at_its_rate() -> None:
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [rl.allow("a")[0] for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b")[0]  # per subject
    now[0] += 0.5
    assert rl.allow("a")[0] and not rl.allow("a")[0]


# --- the middleware on a small app ------------------------------------------------------------------

POLICIES = {
    "/pub": Policy(Role.PUBLIC),
    "/batches/{batch_id}": Policy(Role.FACILITY, "batch"),
    "/list": Policy(Role.FACILITY, "facility_param"),
    "/audit": Policy(Role.AUDITOR),
}


@pytest.fixture()
def client(token_key, cfg) -> TestClient:
    owned = {("B1", "fac-a")}
    app = _app(POLICIES, lambda b, f: (b, f) in owned)

    @app.get("/pub")
    @app.get("/batches/{batch_id}")
    @app.get("/list")
    @app.get("/audit")
    @app.get("/admin")
    def any_route(request: Request) -> dict[str, str]:
        p = request.state.principal
        return {"role": p.role.label}

    @app.post("/audit")
    def post(request: Request) -> dict[str, str]:
        return {"ok": "yes"}

    install(app, Authenticator(cfg), RateLimiter(rate=1000, burst=1000))
    return TestClient(app)


def _bearer(token_key, role: Role, facility: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(token_key, role=role, subject='t', facility_id=facility)}"}


def test_each_role_against_each_route(client, token_key) -> None:
    anon: dict[str, str] = {}
    fac = _bearer(token_key, Role.FACILITY, "fac-a")
    aud = _bearer(token_key, Role.AUDITOR)
    op = _bearer(token_key, Role.OPERATOR)
    expect = {
        ("/pub", "anon"): 200,
        ("/pub", "fac"): 200,
        ("/pub", "aud"): 200,
        ("/pub", "op"): 200,
        ("/batches/B1", "anon"): 401,
        ("/batches/B1", "fac"): 200,
        ("/batches/B1", "aud"): 200,
        ("/batches/B2", "fac"): 403,
        ("/batches/B2", "aud"): 200,
        ("/list", "fac"): 403,
        ("/list?facility=fac-b", "fac"): 403,
        ("/list?facility=fac-a", "fac"): 200,
        ("/list", "aud"): 200,
        ("/audit", "anon"): 401,
        ("/audit", "fac"): 403,
        ("/audit", "aud"): 200,
        ("/admin", "aud"): 403,
        ("/admin", "op"): 200,  # not in the table: operator only
    }
    who = {"anon": anon, "fac": fac, "aud": aud, "op": op}
    got = {(path, w): client.get(path, headers=who[w]).status_code for path, w in expect}
    assert got == expect
    r = client.get("/batches/B2", headers=fac)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "fac-a" in r.json()["detail"]


def test_bad_credentials_are_401_with_a_reason(client) -> None:
    r = client.get("/pub", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    r = client.get("/pub", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_size_and_page_limits(client, token_key) -> None:
    aud = _bearer(token_key, Role.AUDITOR)
    r = client.post("/audit", headers={**aud, "Content-Length": str(MAX_REQUEST_BYTES + 1)}, content=b"x")
    assert r.status_code == 413
    assert client.post("/audit", headers=aud, content=b"{}").status_code == 200
    assert client.get("/list?limit=1000000", headers=aud).status_code == 422


def _app(policies, reader) -> FastAPI:
    app = FastAPI(dependencies=[Depends(authorizer(policies, reader))])
    app.add_exception_handler(Denied, denied_handler)
    return app


def test_rate_limit_answers_429_with_retry_after(token_key, cfg) -> None:
    app = _app({"/pub": Policy(Role.PUBLIC)}, lambda b, f: False)

    @app.get("/pub")
    def pub() -> dict[str, str]:
        return {}

    install(app, Authenticator(cfg), RateLimiter(rate=0.01, burst=2))
    c = TestClient(app)
    codes = [c.get("/pub").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert int(c.get("/pub").headers["retry-after"]) >= 1


def test_without_an_auth_file_every_request_is_the_local_operator() -> None:
    app = _app({}, lambda b, f: False)

    @app.get("/admin")
    def admin(request: Request) -> dict[str, str]:
        return {"role": request.state.principal.role.label}

    install(app, Authenticator(None))
    assert TestClient(app).get("/admin").json() == {"role": "operator"}


def test_cli_issues_tokens_and_keys_the_api_accepts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from batteryledger.cli import app

    run = CliRunner().invoke
    f, k = tmp_path / "auth.json", tmp_path / "tok.key"
    assert run(app, ["auth", "init", "--file", str(f), "--key", str(k)]).exit_code == 0
    assert run(app, ["auth", "init", "--file", str(f), "--key", str(k)]).exit_code == 2  # no overwrite
    res = run(app, ["auth", "token", "--role", "auditor", "--subject", "cpa", "--key", str(k), "--ttl", "2h"])
    assert res.exit_code == 0, res.output
    token = res.stdout.strip()
    res = run(
        app,
        [
            "auth",
            "apikey",
            "create",
            "--role",
            "facility",
            "--facility",
            "f-1",
            "--name",
            "scada",
            "--file",
            str(f),
        ],
    )
    assert res.exit_code == 0, res.output
    secret = res.stdout.strip().splitlines()[0]
    a = Authenticator(AuthConfig.load(f))
    assert a.principal(f"Bearer {token}", None).role is Role.AUDITOR
    assert a.principal(None, secret).facility_id == "f-1"
    listed = json.loads(run(app, ["auth", "apikey", "list", "--file", str(f), "--json"]).stdout)
    assert secret not in json.dumps(listed) and listed[0]["role"] == "facility"
    assert run(app, ["auth", "apikey", "revoke", listed[0]["id"], "--file", str(f)]).exit_code == 0
    with pytest.raises(AuthError, match="revoked"):
        Authenticator(AuthConfig.load(f)).principal(None, secret)
    bad = run(app, ["auth", "token", "--role", "king", "--subject", "x", "--key", str(k)])
    assert bad.exit_code == 2 and "unknown role" in bad.output
    bad = run(
        app, ["auth", "token", "--role", "auditor", "--subject", "x", "--key", str(k), "--ttl", "forever"]
    )
    assert bad.exit_code == 2 and "--ttl" in bad.output
