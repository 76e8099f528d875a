"""Private keys as the CLI commands load them: a key file, optionally encrypted, its passphrase in an env var."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.signing import KeyFileError, load_private_key


def passphrase_from_env(env: str | None) -> bytes | None:
    """The passphrase held in environment variable `env` (never on the command line, where `ps` shows it)."""
    if not env:
        return None
    value = os.environ.get(env)
    if value is None:
        raise KeyFileError(f"environment variable {env} (the key passphrase) is not set")
    return value.encode()


def load_key(path: Path | None, passphrase_env: str | None = None) -> Ed25519PrivateKey | None:
    """The private key in `path`, or None when no path is given."""
    return None if path is None else load_private_key(path, passphrase_from_env(passphrase_env))
