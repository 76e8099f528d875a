"""`batteryledger checkpoint | monitor | prove | verify-bundle`: signed tree heads and evidence bundles.

Mounted by the main CLI with `register(app)`. Every failure prints one line (`error: ...`) on stderr,
no traceback (BATTERYLEDGER_DEBUG=1 shows it): exit 1 when a check fails (a bundle or checkpoint that
does not verify, a monitor refusing a head), exit 2 when the command cannot run (a file or key that
cannot be read, a store that is not there).

`verify-bundle` needs nothing but the bundle and the operator's public key: it imports the
stand-alone verifier only, never the store.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from batteryledger.keyfiles import load_key
from ledger.bundle_verify import BundleError, BundleReport, dumps_bundle, verify_bundle
from ledger.checkpoint import Checkpoint, CheckpointError, NoteError, open_note, parse_vkey, vkey
from ledger.merkle import EMPTY_ROOT, ProofError, verify_consistency
from ledger.store import describe, one_line
from schemas.events import REGISTRY_KINDS
from schemas.signing import load_public_key

if TYPE_CHECKING:
    from ledger.core import Ledger

DEFAULT_STORE = "batteryledger.db"

StoreOpt = Annotated[
    str, typer.Option("--store", envvar="BATTERYLEDGER_STORE", help="Store URL or SQLite file path.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]
PassphraseOpt = Annotated[str | None, typer.Option(help="Env var holding the operator key's passphrase.")]
OperatorPubOpt = Annotated[
    Path | None,
    typer.Option(
        "--operator-key",
        help="The operator's public key file (keys/operator.key.pub from `batteryledger init`).",
    ),
]
OperatorVkeyOpt = Annotated[
    str | None,
    typer.Option("--operator-vkey", help="The operator's C2SP verifier key <origin>+<id>+<base64>."),
]


class Refused(Exception):
    """A check failed: the input is not what it claims. Exit 1."""

    def diagnostics(self) -> str:
        return str(self)


class CannotRun(Exception):
    """The command cannot start: unreadable file, missing option, no store. Exit 2."""

    def diagnostics(self) -> str:
        return str(self)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        if os.environ.get("BATTERYLEDGER_DEBUG") == "1":
            raise
        diag = getattr(exc, "diagnostics", None)
        message = one_line(diag() if callable(diag) else describe(exc))  # never a driver's SQL dump
        typer.echo(f"error: {message}", err=True)
        refused = isinstance(exc, Refused | BundleError | NoteError | CheckpointError | ProofError)
        raise typer.Exit(1 if refused else 2) from None


def _open(store: str, operator_key: Path | None = None, passphrase_env: str | None = None) -> Ledger:
    from ledger.core import Ledger

    return Ledger(store, operator_key=load_key(operator_key, passphrase_env))


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a reader sees the old file or the new one, never half of one."""
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CannotRun(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise Refused(f"{what} {path} is not UTF-8 text") from None


def _pinned_key(pub: Path | None, vkey_text: str | None) -> tuple[str | None, Ed25519PublicKey | None]:
    """(origin or None, key or None) from --operator-key PUB / --operator-vkey; at most one of them."""
    if pub is not None and vkey_text is not None:
        raise CannotRun("give --operator-key or --operator-vkey, not both")
    if pub is not None:
        return None, load_public_key(pub)
    if vkey_text is not None:
        try:
            name, key = parse_vkey(vkey_text.strip())
        except NoteError as exc:
            raise CannotRun(f"--operator-vkey: {exc}") from None
        return name, key
    return None, None


def _short(h: bytes) -> str:
    return h.hex()[:16] + ".."


# -- checkpoint --------------------------------------------------------------------------------------
def checkpoint(
    store: StoreOpt = DEFAULT_STORE,
    sign: Annotated[
        bool, typer.Option("--sign", help="Sign a checkpoint of the current head first (needs the key).")
    ] = False,
    operator_key: Annotated[Path | None, typer.Option(help="Operator private key file, for --sign.")] = None,
    passphrase_env: PassphraseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the latest signed checkpoint (C2SP tlog-checkpoint note); --sign makes one of the head first."""
    from ledger.proofs import latest_checkpoint_row

    with _one_line_errors():
        if sign and operator_key is None:
            raise CannotRun("--sign needs --operator-key FILE (the operator's private key)")
        led = _open(store, operator_key if sign else None, passphrase_env)
        try:
            if sign:
                made = led.make_checkpoint()
                typer.echo(
                    f"signed checkpoint at size {led.size}"
                    if made
                    else f"the latest checkpoint already covers all {led.size} entries",
                    err=True,
                )
            row = latest_checkpoint_row(led)
            if row is None:
                raise CannotRun(
                    "no checkpoint signed yet: run `batteryledger checkpoint --sign --operator-key FILE`"
                )
            # What we print must be what a monitor will accept: check it under the store's key first.
            try:
                cp = Checkpoint.parse(open_note(row.note, led.origin, led.operator_public_key))
            except (NoteError, CheckpointError) as exc:
                raise Refused(f"stored checkpoint {row.size} does not verify: {exc}") from None
            if (cp.size, cp.root_hash) != (row.size, row.root_hash):
                raise Refused(
                    f"stored checkpoint {row.size} does not match its row: run `batteryledger verify`"
                )
        finally:
            led.close()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "origin": cp.origin,
                    "size": cp.size,
                    "root_hash": cp.root_hash.hex(),
                    "operator_vkey": led.operator_vkey,
                    "note": row.note,
                }
            )
        )
    else:
        typer.echo(row.note, nl=False)


# -- monitor -----------------------------------------------------------------------------------------
def _trusted_origin(note: str) -> str:
    origin = note.split("\n", 1)[0]
    if not origin:
        raise Refused("the trusted file does not start with a checkpoint origin line")
    return origin


def monitor(
    trusted: Annotated[
        Path,
        typer.Option(
            "--trusted", help="Checkpoint file this monitor trusts (a signed note); updated on success."
        ),
    ],
    store: StoreOpt = DEFAULT_STORE,
    operator_key: OperatorPubOpt = None,
    operator_vkey: OperatorVkeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move the trusted checkpoint forward to the store's newest, only if it provably extends it.

    The newest checkpoint's signature and an RFC 9162 consistency proof from the trusted one are checked;
    an older, forked or unsigned head is refused (exit 1) and the file left as it was. The operator key
    is --operator-key/--operator-vkey, or else the store's, accepted only if it verifies the trusted file.
    A missing trusted file is created from the newest checkpoint (trust on first use) only with a
    pinned key.
    """
    from ledger.proofs import consistency_proof, latest_checkpoint_row

    with _one_line_errors():
        pinned_origin, pinned = _pinned_key(operator_key, operator_vkey)
        first_use = not trusted.exists()
        if first_use and pinned is None:
            raise CannotRun(
                f"{trusted} does not exist: to start trusting a log, give its key "
                "(--operator-key keys/operator.key.pub or --operator-vkey VKEY)"
            )
        led = _open(store)
        try:
            origin = led.origin if first_use else _trusted_origin(_read_text(trusted, "trusted checkpoint"))
            if pinned_origin is not None and pinned_origin != origin:
                raise Refused(f"the verifier key given is for {pinned_origin!r}, the log is {origin!r}")
            if led.origin != origin:
                raise Refused(f"the store is log {led.origin!r}, the trusted checkpoint is from {origin!r}")
            key = pinned or led.operator_public_key
            # 1. The trusted checkpoint, re-checked: a file edited on disk is refused, not built upon.
            old: Checkpoint | None = None
            if not first_use:
                try:
                    old = Checkpoint.parse(open_note(_read_text(trusted, "trusted checkpoint"), origin, key))
                except NoteError as exc:
                    whose = "the key given" if pinned else "the store's operator key"
                    raise Refused(
                        f"the trusted checkpoint {trusted} does not verify under {whose}: {exc}"
                    ) from None
            # 2. The newest checkpoint: signed by the same key under the same origin.
            row = latest_checkpoint_row(led)
            if row is None:
                raise Refused(f"the store at {led.url} has no signed checkpoint")
            try:
                new = Checkpoint.parse(open_note(row.note, origin, key))
            except NoteError as exc:
                raise Refused(
                    f"the newest checkpoint (size {row.size}) is not signed by the trusted key: {exc}"
                ) from None
            if new.origin != origin:
                raise Refused(f"the newest checkpoint is for origin {new.origin!r}, not {origin!r}")
            # 3. Never backwards, never a fork: equal sizes need equal roots, a bigger tree a valid
            #    consistency proof (RFC 9162 section 2.1.4.2) from the trusted root to the new one.
            if old is not None:
                if new.size < old.size:
                    raise Refused(
                        f"the newest checkpoint (size {new.size}) is older than the trusted one (size "
                        f"{old.size}): refusing to move backwards"
                    )
                if new.size == old.size:
                    if new.root_hash != old.root_hash:
                        raise Refused(
                            f"two checkpoints of size {new.size} with different roots "
                            f"({_short(old.root_hash)} trusted, {_short(new.root_hash)} new): the log forked"
                        )
                elif old.size > 0:
                    proof = consistency_proof(led, old.size, new.size)
                    try:
                        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
                    except ProofError as exc:
                        raise Refused(
                            f"the newest checkpoint (size {new.size}) is not consistent with the trusted one "
                            f"(size {old.size}): {exc}: the log's history was rewritten"
                        ) from None
                elif old.root_hash != EMPTY_ROOT:
                    raise Refused("the trusted checkpoint of size 0 names a root other than the empty tree's")
            # 4. Only now replace the trusted file, atomically.
            moved = old is None or new.size != old.size
            if moved:
                _write_atomically(trusted, row.note.encode("utf-8"))
        finally:
            led.close()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": True,
                    "origin": origin,
                    "old_size": None if old is None else old.size,
                    "new_size": new.size,
                    "root_hash": new.root_hash.hex(),
                    "updated": moved,
                }
            )
        )
    elif old is None:
        typer.echo(
            f"ok: trusting {origin} at size {new.size}, root {_short(new.root_hash)} (first use); wrote {trusted}"
        )
    elif moved:
        typer.echo(
            f"ok: {origin} moved from size {old.size} to {new.size} consistently, root {_short(new.root_hash)}; "
            f"updated {trusted}"
        )
    else:
        typer.echo(f"ok: {origin} is up to date at size {new.size}")


# -- prove -------------------------------------------------------------------------------------------
def prove(
    batch: Annotated[str, typer.Argument(help="Batch id whose provenance to prove.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle file to write (JSON).")],
    store: StoreOpt = DEFAULT_STORE,
    operator_key: Annotated[
        Path | None,
        typer.Option(
            help="Operator private key: signs a new checkpoint if the latest does not cover the batch."
        ),
    ] = None,
    passphrase_env: PassphraseOpt = None,
) -> None:
    """Write a self-contained evidence bundle for BATCH: events, registry, proofs, checkpoint, provenance."""
    from ledger.proofs import make_bundle

    with _one_line_errors():
        led = _open(store, operator_key, passphrase_env)
        try:
            bundle = make_bundle(led, batch)  # verified as an auditor would before it is returned
            size = Checkpoint.parse(open_note(bundle["checkpoint"], led.origin, led.operator_public_key)).size
        finally:
            led.close()
        _write_atomically(output, dumps_bundle(bundle))
    n_events = sum(1 for e in bundle["entries"] if e["kind"] not in REGISTRY_KINDS)
    typer.echo(
        f"wrote {output}: {batch}, {n_events} events and {len(bundle['entries']) - n_events} registry entries, "
        f"{len(bundle['entries'])} inclusion proofs against checkpoint size {size}"
    )


# -- verify-bundle -----------------------------------------------------------------------------------
SHOWN_SHARES = [
    ("us_extracted", "US extracted"),
    ("fta_or_us_extracted", "US/FTA extracted"),
    ("fta_or_us_processed", "US/FTA processed"),
    ("recycled", "recycled"),
    ("feoc_touched", "FEOC-touched"),
    ("unknown", "unknown"),
]


def _report_json(r: BundleReport) -> dict[str, Any]:
    return {
        "ok": True,
        "batch_id": r.batch_id,
        "origin": r.origin,
        "checkpoint_size": r.checkpoint.size,
        "root_hash": r.checkpoint.root_hash.hex(),
        "events": r.events,
        "registry_events": r.registry_events,
        "inclusion_proofs": r.proofs,
        "signatures": r.signatures,
        "parameters": r.parameters.to_json(),
        "created_at": r.created_at,
        "provenance": r.summary,
    }


def verify_bundle_cmd(
    file: Annotated[Path, typer.Argument(help="Evidence bundle written by `batteryledger prove`.")],
    operator_key: OperatorPubOpt = None,
    operator_vkey: OperatorVkeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check an evidence bundle offline, trusting only the operator's public key."""
    with _one_line_errors():
        _, key = _pinned_key(operator_key, operator_vkey)
        if key is None:
            raise CannotRun(
                "give the operator's key: --operator-key keys/operator.key.pub or --operator-vkey VKEY"
            )
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise CannotRun(f"cannot read bundle {file}: {exc.strerror or exc}") from None
        # A vkey pins the origin as well as the key; a bare key accepts any origin it signed.
        report = verify_bundle(data, operator_vkey.strip() if operator_vkey else key)
    if as_json:
        typer.echo(json.dumps(_report_json(report)))
        return
    cp = report.checkpoint
    typer.echo(
        f"OK: {report.batch_id} from {report.origin}: {report.events} events and {report.registry_events} "
        f"registry events, {report.proofs} inclusion proofs against checkpoint size {cp.size} "
        f"(root {_short(cp.root_hash)}), {report.signatures} signatures; provenance recomputed and equal"
    )
    summary = report.summary
    for el, data_ in summary.get("elements", {}).items():
        shares = data_["shares"]
        parts = ", ".join(f"{label} {shares[k] * 100:.1f}%" for k, label in SHOWN_SHARES)
        typer.echo(f"  {el} {data_['contained_kg']:,.3f} kg: {parts}")
    if summary.get("missing_parents"):
        typer.echo(f"  parents not in the ledger (unknown share): {', '.join(summary['missing_parents'])}")
    typer.echo(
        f"  operator key {vkey(report.origin, key)}; bundle created_at {report.created_at} (not signed)"
    )


def register(app: typer.Typer) -> None:
    """Add checkpoint, monitor, prove and verify-bundle to `app`."""
    app.command("checkpoint")(checkpoint)
    app.command("monitor")(monitor)
    app.command("prove")(prove)
    app.command("verify-bundle")(verify_bundle_cmd)


__all__ = ["register"]
