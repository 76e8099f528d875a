"""Who may read what: authentication and roles for the HTTP API.

Four roles, each seeing at least what the one before it sees (design.md, "Trust at the edges"):

| role | sees |
|---|---|
| public | passports' public fields, checkpoints, inclusion and consistency proofs, the web page's assets |
| facility | also its own batches and the batches it consumed or holds, and its own rejections |
| auditor | every read: provenance, lineage, events, rejections, audits, evidence bundles |
| operator | everything, including administration |

Credentials, both sent as `Authorization: Bearer <credential>` (or `X-API-Key: <key>` for API keys):
- **JWT bearer tokens**, verified with PyJWT. The operator issues them with `batteryledger auth token`,
  signed with the API token key (Ed25519, `EdDSA`); an organisation with its own identity provider may
  instead list the provider's JWKS (OIDC) in the auth file, and its tokens' `batteryledger_role` and
  `batteryledger_facility` claims give the role. Tokens carry `iss`, `aud`, `sub`, `exp`, `iat`, `jti`.
- **API keys** for machines: `blk_<id>_<secret>`, issued once by `batteryledger auth apikey create`; the
  auth file keeps only their SHA-256, so a leaked auth file does not leak keys.

Without an auth file the API is the operator's own local tool: `serve` binds loopback and every request
is the operator. With one, a request without credentials is `public`, and `serve` may bind other
addresses. Every route must appear in the policy table of the API (`ROUTE_POLICIES`): a route that does
not is refused to all but the operator, and a test holds the table to the routes.

Limits against abuse are named constants below, each with its reason.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from starlette.requests import Request

# --- limits against abuse -------------------------------------------------------------------------
# A claim posted for audit is a few KB; 1 MiB leaves room for a large user pack and refuses floods.
MAX_REQUEST_BYTES = 1 << 20
# One page of a listing; the largest the web page asks for is 200. Bounds memory per request.
MAX_PAGE_SIZE = 1_000
# Lineage hops one request may ask for: the deepest real chain is well under 100 hops, and each hop is
# a query; 10,000 bounds the work of one request without cutting any real chain.
MAX_LINEAGE_DEPTH = 10_000
# Requests per second per credential (and per client address for anonymous requests), with a burst:
# a page view makes about 10 requests; a machine polling every second stays far below.
RATE_PER_SECOND = 20.0
RATE_BURST = 60
# Token lifetime bounds: a token that never expires cannot be taken back except by rotating the key.
DEFAULT_TOKEN_TTL = timedelta(days=30)
MAX_TOKEN_TTL = timedelta(days=366)

ISSUER = "batteryledger"
AUDIENCE = "batteryledger-api"
API_KEY_PREFIX = "blk_"
AUTH_FILE_VERSION = 1
ROLE_CLAIM = "batteryledger_role"
FACILITY_CLAIM = "batteryledger_facility"


class Role(enum.IntEnum):
    """Ordered: each role sees at least what the roles below it see."""

    PUBLIC = 0
    FACILITY = 1
    AUDITOR = 2
    OPERATOR = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise AuthError(f"unknown role {name!r}: use public, facility, auditor or operator") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class AuthError(Exception):
    """A credential or auth file that cannot be used; the message says which and why, in one line."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: the role, a subject for logs and rate limits, and a facility for facility tokens."""

    role: Role
    subject: str
    facility_id: str | None = None
    credential: str = "none"  # "none", "jwt", "apikey", "local"

    def at_least(self, role: Role) -> bool:
        return self.role >= role


LOCAL_OPERATOR = Principal(Role.OPERATOR, "local-operator", None, "local")
ANONYMOUS = Principal(Role.PUBLIC, "anonymous", None, "none")


@dataclass
class ApiKey:
    key_id: str
    name: str
    role: Role
    facility_id: str | None
    sha256: str
    created: str
    revoked: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.key_id,
            "name": self.name,
            "role": self.role.label,
            "facility_id": self.facility_id,
            "sha256": self.sha256,
            "created": self.created,
            "revoked": self.revoked,
        }


@dataclass
class AuthConfig:
    """The operator's auth file (JSON): token verification keys, an optional OIDC provider, API keys."""

    token_public_keys: list[str] = field(default_factory=list)  # raw Ed25519 public keys, base64url
    oidc: dict[str, Any] | None = None  # {"issuer", "audience", "jwks": {...}}
    api_keys: list[ApiKey] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> AuthConfig:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AuthError(
                f"auth file {path} does not exist: create it with `batteryledger auth init`"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AuthError(f"auth file {path} is not readable JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != AUTH_FILE_VERSION:
            raise AuthError(
                f"auth file {path} is not a batteryledger auth file (version {AUTH_FILE_VERSION})"
            )
        try:
            keys = [
                ApiKey(
                    key_id=str(k["id"]),
                    name=str(k.get("name", "")),
                    role=Role.parse(str(k["role"])),
                    facility_id=k.get("facility_id"),
                    sha256=str(k["sha256"]),
                    created=str(k.get("created", "")),
                    revoked=bool(k.get("revoked", False)),
                )
                for k in doc.get("api_keys", [])
            ]
            cfg = cls(
                token_public_keys=[str(k) for k in doc.get("token_public_keys", [])],
                oidc=doc.get("oidc"),
                api_keys=keys,
            )
        except (KeyError, TypeError) as exc:
            raise AuthError(f"auth file {path} has a malformed entry: {exc}") from None
        for k in cfg.api_keys:
            if k.role is Role.FACILITY and not k.facility_id:
                raise AuthError(f"auth file {path}: API key {k.key_id} has role facility but no facility_id")
        cfg.public_keys()  # refuse a bad key now, not on the first request
        return cfg

    def save(self, path: Path) -> None:
        doc: dict[str, Any] = {
            "version": AUTH_FILE_VERSION,
            "token_public_keys": self.token_public_keys,
            "api_keys": [k.as_json() for k in self.api_keys],
        }
        if self.oidc is not None:
            doc["oidc"] = self.oidc
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    def public_keys(self) -> list[Ed25519PublicKey]:
        out = []
        for k in self.token_public_keys:
            try:
                out.append(Ed25519PublicKey.from_public_bytes(_b64url_decode(k)))
            except ValueError as exc:
                raise AuthError(f"token public key {k[:16]}... is not a raw Ed25519 key: {exc}") from None
        return out


def _b64url_decode(s: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _b64url(b: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def public_key_text(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return _b64url(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


# --- issuing (operator side, CLI) -----------------------------------------------------------------


def issue_token(
    key: Ed25519PrivateKey,
    *,
    role: Role,
    subject: str,
    facility_id: str | None = None,
    ttl: timedelta = DEFAULT_TOKEN_TTL,
    now: datetime | None = None,
) -> str:
    """A JWT signed with the API token key (EdDSA)."""
    if not subject.strip():
        raise AuthError("a token needs a subject (who it is for): pass --subject")
    if role is Role.FACILITY and not facility_id:
        raise AuthError("a facility token needs --facility FACILITY_ID")
    if role is not Role.FACILITY and facility_id:
        raise AuthError(f"--facility applies to facility tokens only, not to role {role.label}")
    if ttl <= timedelta(0) or ttl > MAX_TOKEN_TTL:
        raise AuthError(f"token lifetime must be between 1 second and {MAX_TOKEN_TTL.days} days")
    t = now or datetime.now(UTC)
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": int(t.timestamp()),
        "nbf": int(t.timestamp()),
        "exp": int((t + ttl).timestamp()),
        "jti": uuid.uuid4().hex,
        ROLE_CLAIM: role.label,
    }
    if facility_id:
        claims[FACILITY_CLAIM] = facility_id
    return str(jwt.encode(claims, key, algorithm="EdDSA"))


def create_api_key(
    cfg: AuthConfig, *, name: str, role: Role, facility_id: str | None = None, now: datetime | None = None
) -> tuple[str, ApiKey]:
    """A new API key: returns the secret (shown once) and the entry to store (its SHA-256 only)."""
    if role is Role.FACILITY and not facility_id:
        raise AuthError("a facility API key needs --facility FACILITY_ID")
    if role is not Role.FACILITY and facility_id:
        raise AuthError(f"--facility applies to facility keys only, not to role {role.label}")
    key_id = secrets.token_hex(6)
    secret = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    entry = ApiKey(
        key_id=key_id,
        name=name,
        role=role,
        facility_id=facility_id,
        sha256=hashlib.sha256(secret.encode()).hexdigest(),
        created=(now or datetime.now(UTC)).isoformat(timespec="seconds"),
    )
    cfg.api_keys.append(entry)
    return secret, entry


# --- verifying (API side) --------------------------------------------------------------------------


class Authenticator:
    """Turns a request's credential into a Principal, or raises AuthError (answered as 401)."""

    def __init__(self, cfg: AuthConfig | None) -> None:
        self.cfg = cfg
        self._keys = cfg.public_keys() if cfg else []
        self._api_keys = {k.key_id: k for k in cfg.api_keys} if cfg else {}
        self._oidc_keys: dict[str, Any] = {}
        if cfg and cfg.oidc:
            try:
                jwks = jwt.PyJWKSet.from_dict(cfg.oidc["jwks"])
                self._oidc_keys = {k.key_id: k for k in jwks.keys if k.key_id}
            except (KeyError, jwt.PyJWKSetError, jwt.InvalidKeyError) as exc:
                raise AuthError(f"auth file's oidc.jwks is not a usable JWKS: {exc}") from None

    @property
    def enabled(self) -> bool:
        return self.cfg is not None

    def principal(self, authorization: str | None, api_key: str | None) -> Principal:
        if not self.enabled:
            return LOCAL_OPERATOR
        credential = api_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthError("Authorization header must be 'Bearer <token or API key>'")
            credential = value.strip()
        if not credential:
            return ANONYMOUS
        if credential.startswith(API_KEY_PREFIX):
            return self._from_api_key(credential)
        return self._from_jwt(credential)

    def _from_api_key(self, secret: str) -> Principal:
        key_id = secret[len(API_KEY_PREFIX) :].split("_", 1)[0]
        entry = self._api_keys.get(key_id)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            raise AuthError("unknown API key")
        if entry.revoked:
            raise AuthError(f"API key {key_id} was revoked")
        return Principal(entry.role, f"apikey:{key_id}", entry.facility_id, "apikey")

    def _from_jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthError("bearer token is neither a JWT nor an API key") from None
        options: Any = {"require": ["exp", "iat", "sub", "aud", "iss"]}
        claims: dict[str, Any] | None = None
        if header.get("alg") == "EdDSA" and "kid" not in header:
            last: Exception | None = None
            for key in self._keys:
                try:
                    claims = jwt.decode(
                        token, key, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER, options=options
                    )
                    break
                except jwt.InvalidSignatureError as exc:
                    last = exc
                except jwt.PyJWTError as exc:
                    raise AuthError(f"bearer token refused: {exc}") from None
            if claims is None:
                raise AuthError(f"bearer token refused: {last or 'no token key configured'}")
        else:
            oidc = (self.cfg.oidc if self.cfg else None) or {}
            jwk = self._oidc_keys.get(str(header.get("kid")))
            if jwk is None:
                raise AuthError("bearer token signed by a key this API does not know")
            try:
                claims = jwt.decode(
                    token,
                    jwk.key,
                    algorithms=[jwk.algorithm_name] if jwk.algorithm_name else ["RS256", "ES256", "EdDSA"],
                    audience=oidc.get("audience", AUDIENCE),
                    issuer=oidc.get("issuer"),
                    options=options,
                )
            except jwt.PyJWTError as exc:
                raise AuthError(f"bearer token refused: {exc}") from None
        role = Role.parse(str(claims.get(ROLE_CLAIM, "public")))
        facility = claims.get(FACILITY_CLAIM)
        if role is Role.FACILITY and not facility:
            raise AuthError(f"a facility token needs the {FACILITY_CLAIM} claim")
        return Principal(role, str(claims["sub"]), str(facility) if facility else None, "jwt")


# --- rate limiting ---------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per subject: RATE_PER_SECOND sustained, RATE_BURST at once."""

    def __init__(self, rate: float = RATE_PER_SECOND, burst: int = RATE_BURST, clock: Any = time.monotonic):
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, subject: str) -> tuple[bool, float]:
        """(allowed, seconds until the next request would be allowed)."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(subject, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[subject] = (tokens - 1.0, now)
                return True, 0.0
            self._buckets[subject] = (tokens, now)
            if len(self._buckets) > 100_000:  # bound memory: forget the idle
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
            return False, (1.0 - tokens) / self.rate


# --- policies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The least role a route needs; for facility principals, how the route is scoped to their own data.

    scope: "none" (the role is enough), "batch" (the path's batch_id must be the facility's own, held or
    consumed by it), "facility_param" (a `facility` query parameter equal to the principal's facility is
    required: listings), "facility_path" (the path's facility_id must be theirs).
    """

    role: Role
    scope: str = "none"


def routes_policy(policies: Mapping[str, Policy], path_template: str) -> Policy:
    """The route's policy; a route missing from the table is the operator's only (deny by default)."""
    return policies.get(path_template, Policy(Role.OPERATOR))


# --- the HTTP side --------------------------------------------------------------------------------

PROBLEM_JSON = "application/problem+json"


def batch_access(conn: Any, batch_id: str, facility_id: str) -> bool:
    """May `facility_id` read `batch_id`: it made it, holds or ships it, or consumed some of it."""
    from sqlalchemy import select

    from ledger.store import BATCHES, EDGES

    row = conn.execute(
        select(BATCHES.c.facility_id, BATCHES.c.custody).where(BATCHES.c.batch_id == batch_id)
    ).first()
    if row is None:
        return True  # unknown batch: let the route answer its own 404, which reveals nothing
    if row[0] == facility_id:
        return True
    try:
        custody = json.loads(row[1] or "{}")
    except json.JSONDecodeError:
        custody = {}
    if facility_id in custody.get("holders", {}) or facility_id in custody.get("in_transit", {}):
        return True
    child = BATCHES.alias("child")
    hit = conn.execute(
        select(EDGES.c.child)
        .select_from(EDGES.join(child, child.c.batch_id == EDGES.c.child))
        .where(EDGES.c.parent == batch_id, child.c.facility_id == facility_id)
        .limit(1)
    ).first()
    return hit is not None


def _problem(status: int, title: str, detail: str, headers: Mapping[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


def install(app: Any, authenticator: Authenticator, limiter: RateLimiter | None = None) -> None:
    """Authenticate every request of `app` and apply the size, page and rate limits (a middleware).

    It sets `request.state.principal`; the route policies are checked after routing by the dependency
    that `authorizer` makes (the app is created with it), because only then is the route known.
    """
    limiter = limiter or RateLimiter()

    @app.middleware("http")  # type: ignore[untyped-decorator]
    async def authenticate(request: Any, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_REQUEST_BYTES):
            return _problem(413, "Request too large", f"requests are limited to {MAX_REQUEST_BYTES} bytes")
        if request.method in ("POST", "PUT", "PATCH") and length is None:
            return _problem(
                411, "Length required", "send a Content-Length header (chunked bodies are refused)"
            )
        try:
            principal = authenticator.principal(
                request.headers.get("authorization"), request.headers.get("x-api-key")
            )
        except AuthError as exc:
            return _problem(
                401, "Unauthorized", str(exc), {"WWW-Authenticate": 'Bearer realm="batteryledger"'}
            )
        if authenticator.enabled:
            client = request.client.host if request.client else "unknown"
            who = principal.subject if principal.credential != "none" else f"ip:{client}"
            ok, wait = limiter.allow(who)
            if not ok:
                return _problem(
                    429,
                    "Too many requests",
                    f"at most {RATE_PER_SECOND:g} requests per second per credential",
                    {"Retry-After": str(max(1, round(wait)))},
                )
        for name, bound in (("limit", MAX_PAGE_SIZE), ("depth", MAX_LINEAGE_DEPTH)):
            value = request.query_params.get(name)
            if value is not None and value.isdigit() and int(value) > bound:
                return _problem(422, "Unprocessable Content", f"{name} is at most {bound}")
        request.state.principal = principal
        return await call_next(request)


class Denied(Exception):
    """A request its principal may not make: answered 401 (no credential) or 403, as a problem document."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail

    def response(self) -> Any:
        headers = {"WWW-Authenticate": 'Bearer realm="batteryledger"'} if self.status == 401 else {}
        title = "Unauthorized" if self.status == 401 else "Forbidden"
        return _problem(self.status, title, self.detail, headers)


def authorizer(policies: Mapping[str, Policy], batch_reader: Any) -> Any:
    """A FastAPI dependency that checks the matched route's policy against `request.state.principal`.

    `batch_reader(batch_id, facility_id) -> bool` answers facility scoping (usually `batch_access` over the
    app's store). Give it to the app as `FastAPI(dependencies=[Depends(authorizer(...))])`, so that every
    route, in every router, is checked; register `Denied` with `denied_handler`.
    """

    def authorize(request: Request) -> None:
        principal: Principal = getattr(request.state, "principal", LOCAL_OPERATOR)
        route = request.scope.get("route")
        template = getattr(route, "path", request.url.path)
        policy = routes_policy(policies, template)
        path = request.url.path
        if not principal.at_least(policy.role):
            if principal.credential == "none":
                raise Denied(
                    401,
                    f"{path} needs a {policy.role.label} credential: send Authorization: Bearer <token or "
                    "API key> (on the web page: Credential)",
                )
            raise Denied(
                403, f"{path} needs role {policy.role.label}; this credential is {principal.role.label}"
            )
        if principal.role is Role.FACILITY and policy.role is Role.FACILITY:
            fac = principal.facility_id or ""
            params = request.path_params
            if policy.scope == "batch":
                batch_id = str(params.get("batch_id", ""))
                if not batch_reader(batch_id, fac):
                    raise Denied(
                        403,
                        f"batch {batch_id} is not {fac}'s: a facility reads the batches it made, holds or consumed",
                    )
            elif policy.scope == "facility_param":
                if request.query_params.get("facility") != fac:
                    raise Denied(403, f"a facility credential lists its own data only: add facility={fac}")
            elif policy.scope == "facility_path" and str(params.get("facility_id", "")) != fac:
                raise Denied(403, f"a facility credential reads facility {fac} only")

    return authorize


async def denied_handler(request: Any, exc: Denied) -> Any:
    return exc.response()
