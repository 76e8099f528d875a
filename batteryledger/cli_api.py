"""`batteryledger serve`: the read-only HTTP API and web page (batteryledger.api) under uvicorn.

`batteryledger.cli` calls `register(app)`. FastAPI and uvicorn are imported only when the command runs,
so the rest of the CLI starts as fast as before.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_STORE = "batteryledger.db"  # batteryledger.cli.DEFAULT_STORE (a test keeps them equal)
DEFAULT_HOST = "127.0.0.1"  # loopback unless the operator says otherwise
DEFAULT_PORT = 8000
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

# Declared here, not imported from batteryledger.cli: cli imports this module while it is being built.
StoreOpt = Annotated[
    str, typer.Option("--store", envvar="BATTERYLEDGER_STORE", help="Store URL or SQLite file path.")
]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add the `serve` command to `app` (the batteryledger CLI)."""

    @app.command()
    def serve(
        store: StoreOpt = DEFAULT_STORE,
        host: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_HOST,
        port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = DEFAULT_PORT,
        log_level: Annotated[
            str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug.")
        ] = "info",
        auth_file: Annotated[
            Path | None,
            typer.Option(
                "--auth",
                envvar="BATTERYLEDGER_AUTH",
                help="Auth file (batteryledger auth init): roles and credentials; required off loopback.",
            ),
        ] = None,
    ) -> None:
        """Serve the read-only HTTP API (/v1, OpenAPI at /v1/openapi.json) and the web page (/)."""
        if log_level.lower() not in LOG_LEVELS:
            raise typer.BadParameter(f"use one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
        import uvicorn

        from batteryledger.api import create_app

        if not _is_loopback(host) and auth_file is None:
            typer.echo(
                f"error: refusing to serve on {host} without --auth: anyone who reaches it would read every "
                "plant's volumes and suppliers; create credentials with `batteryledger auth init` or bind "
                "127.0.0.1",
                err=True,
            )
            raise typer.Exit(2)
        from batteryledger.auth import AuthConfig, AuthError

        try:
            cfg = AuthConfig.load(auth_file) if auth_file is not None else None
        except AuthError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        api = create_app(
            store, auth_config=cfg
        )  # fails here, with one line, if there is no ledger at --store
        if cfg is None:
            typer.echo("note: no --auth: every request is the local operator (loopback only)", err=True)
        typer.echo(f"serving {store} at http://{host}:{port}/ (API docs: /v1/docs)", err=True)
        uvicorn.run(api, host=host, port=port, log_level=log_level.lower())


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_STORE", "register"]
