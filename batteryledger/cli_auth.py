"""`batteryledger auth ...`: the operator issues API credentials (JWT bearer tokens and API keys).

    batteryledger auth init --file auth.json --key api-token.key      # the token key and the auth file
    batteryledger auth token --role auditor --subject "CPA firm X" --key api-token.key
    batteryledger auth apikey create --role facility --facility ref-us-kings-mountain --name scada
    batteryledger auth apikey list | revoke ID
    batteryledger serve --auth auth.json --host 0.0.0.0

See batteryledger.auth for the roles and what each may read.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from batteryledger.auth import (
    DEFAULT_TOKEN_TTL,
    AuthConfig,
    AuthError,
    Role,
    create_api_key,
    issue_token,
    public_key_text,
)

auth_app = typer.Typer(no_args_is_help=True, help="API credentials: the auth file, tokens, API keys.")
apikey_app = typer.Typer(no_args_is_help=True, help="API keys for machines (stored hashed in the auth file).")
auth_app.add_typer(apikey_app, name="apikey")

AuthFileOpt = Annotated[
    Path, typer.Option("--file", envvar="BATTERYLEDGER_AUTH", help="The auth file that `serve --auth` reads.")
]
KeyOpt = Annotated[Path, typer.Option("--key", help="The API token signing key (Ed25519, PEM).")]
PassEnvOpt = Annotated[
    str | None, typer.Option("--passphrase-env", help="Environment variable holding the key's passphrase.")
]
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _ttl(text: str) -> timedelta:
    t = text.strip().lower()
    if len(t) < 2 or t[-1] not in UNITS or not t[:-1].isdigit():
        raise _fail(f"--ttl {text!r}: use a number and a unit, e.g. 3600s, 90m, 12h, 30d")
    return timedelta(seconds=int(t[:-1]) * UNITS[t[-1]])


def _role(text: str) -> Role:
    try:
        return Role.parse(text)
    except AuthError as exc:
        raise _fail(str(exc)) from None


def _load(path: Path) -> AuthConfig:
    try:
        return AuthConfig.load(path)
    except AuthError as exc:
        raise _fail(str(exc)) from None


@auth_app.command("init")
def init(
    file: AuthFileOpt = Path("auth.json"),
    key: KeyOpt = Path("api-token.key"),
    passphrase_env: PassEnvOpt = None,
    if_missing: Annotated[
        bool, typer.Option("--if-missing", help="Do nothing (exit 0) when both files exist already.")
    ] = False,
) -> None:
    """Create the API token key and an auth file that trusts it (refuses to overwrite either)."""
    from batteryledger.keyfiles import passphrase_from_env
    from schemas.signing import generate_key, save_private_key

    if if_missing and file.exists() and key.exists():
        typer.echo(f"{file} and {key} exist: kept")
        return
    for p in (file, key):
        if p.exists():
            raise _fail(f"{p} exists: refusing to overwrite it")
    k = generate_key()
    save_private_key(k, key, passphrase_from_env(passphrase_env))
    cfg = AuthConfig(token_public_keys=[public_key_text(k)])
    cfg.save(file)
    file.chmod(0o600)
    typer.echo(
        f"wrote {key} (token signing key, 0600) and {file}; serve with: batteryledger serve --auth {file}"
    )


@auth_app.command("token")
def token(
    role: Annotated[str, typer.Option("--role", help="public, facility, auditor or operator.")],
    subject: Annotated[str, typer.Option("--subject", help="Who the token is for (logged, rate-limited).")],
    key: KeyOpt = Path("api-token.key"),
    facility: Annotated[
        str | None, typer.Option("--facility", help="The facility a facility token reads.")
    ] = None,
    ttl: Annotated[
        str, typer.Option("--ttl", help="Lifetime: 3600s, 90m, 12h, 30d.")
    ] = f"{DEFAULT_TOKEN_TTL.days}d",
    passphrase_env: PassEnvOpt = None,
) -> None:
    """Print a signed JWT bearer token (EdDSA) for the API."""
    from batteryledger.keyfiles import load_key
    from schemas.signing import KeyFileError

    try:
        k = load_key(key, passphrase_env)
    except KeyFileError as exc:
        raise _fail(str(exc)) from None
    assert k is not None
    try:
        typer.echo(issue_token(k, role=_role(role), subject=subject, facility_id=facility, ttl=_ttl(ttl)))
    except AuthError as exc:
        raise _fail(str(exc)) from None


@apikey_app.command("create")
def apikey_create(
    role: Annotated[str, typer.Option("--role", help="public, facility, auditor or operator.")],
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. the plant system.")],
    facility: Annotated[str | None, typer.Option("--facility", help="For facility keys.")] = None,
    file: AuthFileOpt = Path("auth.json"),
) -> None:
    """Create an API key; it is printed once and only its SHA-256 is kept. Restart `serve` to use it."""
    cfg = _load(file)
    try:
        secret, entry = create_api_key(cfg, name=name, role=_role(role), facility_id=facility)
    except AuthError as exc:
        raise _fail(str(exc)) from None
    cfg.save(file)
    typer.echo(secret)
    typer.echo(f"key {entry.key_id} ({entry.role.label}) added to {file}; it is shown only now", err=True)


@apikey_app.command("list")
def apikey_list(
    file: AuthFileOpt = Path("auth.json"),
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """List API keys (ids, roles, facilities; never the secrets)."""
    cfg = _load(file)
    rows = [{k: v for k, v in key.as_json().items() if k != "sha256"} for key in cfg.api_keys]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "revoked" if r["revoked"] else "active"
        typer.echo(f"{r['id']}  {r['role']:<8} {state:<7} {r['facility_id'] or '-':<28} {r['name']}")


@apikey_app.command("revoke")
def apikey_revoke(key_id: str, file: AuthFileOpt = Path("auth.json")) -> None:
    """Revoke an API key (kept in the file, marked revoked). Restart `serve` to apply."""
    cfg = _load(file)
    for k in cfg.api_keys:
        if k.key_id == key_id:
            k.revoked = True
            cfg.save(file)
            typer.echo(f"revoked {key_id}")
            return
    raise _fail(f"no API key {key_id} in {file}")
