"""``batteryledger mirror`` and ``batteryledger backup export|import``: verified copies of a ledger.

Exit codes: 0 done; 1 the source, the file or the store cannot be used (one line says why); 3 a fork:
what the source or the file holds contradicts what was verified (a rewritten entry, a forked checkpoint),
nothing past it was taken.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from batteryledger.backup import ReplicaError, export_backup, import_backup, read_path

__all__ = ["backup_app", "register"]

backup_app = typer.Typer(
    help="Export a ledger as signed JSON lines; import one into an empty store, verifying everything.",
    no_args_is_help=True,
    add_completion=False,
)

StoreOpt = Annotated[
    str, typer.Option("--store", envvar="BATTERYLEDGER_STORE", help="Ledger store URL or SQLite file path.")
]


def _fail(exc: ReplicaError | str, code: int = 1) -> NoReturn:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(exc.exit_code if isinstance(exc, ReplicaError) else code)


def mirror(
    source: Annotated[
        str, typer.Option("--from", help="The source ledger's HTTP API, e.g. http://host:8000.")
    ],
    store: StoreOpt,
    operator_vkey: Annotated[
        Path | None,
        typer.Option(
            "--operator-vkey",
            help="File with the operator's verifier key (C2SP vkey), obtained out of band; without it the "
            "key the source serves is trusted on first use and pinned in the store.",
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--once", help="Keep following, or pull once and exit.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between polls when idle.")
    ] = 2.0,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="BATTERYLEDGER_TOKEN", help="Bearer token for the source's API."),
    ] = None,
) -> None:
    """Copy a ledger over its HTTP API, checking every entry, signature, root and signed checkpoint."""
    from batteryledger.mirror import run_mirror

    vkey = None
    if operator_vkey is not None:
        try:
            vkey = operator_vkey.read_text().strip()
        except OSError as exc:
            _fail(f"cannot read {operator_vkey}: {exc.strerror}")

    def say(s: object) -> None:
        typer.echo(
            f"mirrored {getattr(s, 'entries', 0)} entries, {getattr(s, 'checkpoints', 0)} checkpoints; size {getattr(s, 'size', 0)}"
        )

    try:
        total = run_mirror(
            source,
            store,
            follow=follow,
            interval=interval,
            operator_vkey=vkey,
            token=token,
            report=say if follow else None,
        )
    except ReplicaError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    typer.echo(
        f"mirror at {total.size} entries (source {total.source_size}); {total.entries} entries and "
        f"{total.checkpoints} checkpoints verified and added"
    )


@backup_app.command("export")
def backup_export(
    store: StoreOpt,
    out: Annotated[Path, typer.Option("--out", help="Backup file to write ('-': standard output).")],
) -> None:
    """Write every entry (signed bytes and hashes) and every signed checkpoint as JSON lines."""
    from ledger.store import StoreError

    try:
        if str(out) == "-":
            n, c = export_backup(store, sys.stdout)
        else:
            tmp = out.with_name(out.name + ".partial")
            with tmp.open("w", encoding="utf-8") as fh:
                n, c = export_backup(store, fh)
            tmp.replace(out)
    except (StoreError, OSError) as exc:
        _fail(str(exc) if isinstance(exc, StoreError) else f"cannot write {out}: {exc.strerror}")
    typer.echo(f"exported {n} entries and {c} checkpoints to {out}", err=str(out) == "-")


@backup_app.command("import")
def backup_import(
    store: StoreOpt,
    source: Annotated[Path, typer.Option("--in", help="Backup file written by `backup export`.")],
) -> None:
    """Rebuild a ledger in an EMPTY store from a backup, re-verifying every entry and checkpoint."""
    try:
        n, c = import_backup(read_path(source), store)
    except ReplicaError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(f"cannot read {source}: {exc.strerror}")
    typer.echo(f"imported and verified {n} entries and {c} checkpoints into {store}")


def register(app: typer.Typer) -> None:
    app.command("mirror")(mirror)
    app.add_typer(backup_app, name="backup")
