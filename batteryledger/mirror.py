"""``batteryledger mirror --from URL --store S``: a read-only copy of a ledger that verifies all it takes.

The mirror pulls entries and signed checkpoints through the source's HTTP API (``/v1/entries``,
``/v1/checkpoints``, ``/v1/proofs/consistency``; see batteryledger/api_feed.py) into its own store with
:class:`batteryledger.backup.Replica`: every entry is appended through the ledger's own checks
(signature, key, role, rules) and its chained hash compared with the source's; every checkpoint's
operator signature is checked, its root compared with the root of the entries verified here, and the
source's consistency proof from the previous checkpoint verified. A difference is a fork: the mirror
stops there, keeps what it verified, and exits with code 3 naming the entry or checkpoint. The mirror's
store is an ordinary ledger store: ``batteryledger serve --store S`` serves it (provenance, proofs,
checkpoints) without trusting the source's machine.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batteryledger.backup import ForkError, Replica, ReplicaError, entry_from_json

__all__ = ["MirrorStats", "fetch_json", "mirror_once", "open_mirror", "run_mirror"]

#: Entries asked for per request (the feed caps a page at 5,000).
PAGE = 1_000
#: Seconds one HTTP request may take before the mirror gives up on this round.
HTTP_TIMEOUT_S = 30.0


@dataclass
class MirrorStats:
    entries: int = 0
    checkpoints: int = 0
    size: int = 0
    source_size: int = 0


def fetch_json(base: str, path: str, params: dict[str, Any] | None = None, token: str | None = None) -> Any:
    url = base.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ReplicaError(
            f"{url} answered HTTP {exc.code}: check --from (a batteryledger API) and --token"
        ) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ReplicaError(f"cannot reach {url} ({reason}): is the source's API running?") from None
    except ValueError:
        raise ReplicaError(f"{url} did not answer JSON: is --from a batteryledger API?") from None


def open_mirror(
    source: str, store: str, *, operator_vkey: str | None = None, token: str | None = None
) -> Replica:
    """The mirror's store, set up for the source's ledger (its key given, or checked against the one given)."""
    info = fetch_json(source, "/v1/origin", token=token)
    origin, served = str(info.get("origin") or ""), str(info.get("operator_vkey") or "")
    if operator_vkey is not None and served != operator_vkey.strip():
        raise ForkError(
            f"{source} serves operator key {served!r}, not the one given (--operator-vkey): refusing to mirror it"
        )
    return Replica(store, origin=origin, operator_vkey=operator_vkey.strip() if operator_vkey else served)


def mirror_once(rep: Replica, source: str, *, token: str | None = None, page: int = PAGE) -> MirrorStats:
    """Pull everything new once: entries up to the source's head, then the checkpoints they cover."""
    stats = MirrorStats()
    while True:
        got = fetch_json(source, "/v1/entries", {"after": rep.size - 1, "limit": page}, token)
        stats.source_size = int(got.get("size", 0))
        batch = [entry_from_json(e) for e in got.get("entries") or []]
        if not batch:
            break
        stats.entries += rep.add_entries(batch)
        if len(batch) < page:
            break
    held = rep.checkpoint_sizes()
    after = held[-1] if held else -1
    prev = after
    cps = fetch_json(source, "/v1/checkpoints", {"after": after}, token).get("checkpoints") or []
    for cp in cps:
        size, note = int(cp["size"]), str(cp["note"])
        proof = None
        if prev > 0 and size <= rep.size:
            got = fetch_json(source, "/v1/proofs/consistency", {"old": prev, "new": size}, token)
            proof = [bytes.fromhex(h) for h in got.get("proof") or []]
        if not rep.add_checkpoint(note, proof):
            break  # covers entries we have not pulled yet: next round
        stats.checkpoints += 1
        prev = size
    stats.size = rep.size
    return stats


def run_mirror(
    source: str,
    store: str,
    *,
    follow: bool,
    interval: float = 2.0,
    operator_vkey: str | None = None,
    token: str | None = None,
    report: Callable[[MirrorStats], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> MirrorStats:
    """Mirror once (``follow=False``) or until ``should_stop``/Ctrl-C; a fork raises ForkError at once."""
    total = MirrorStats()
    with open_mirror(source, store, operator_vkey=operator_vkey, token=token) as rep:
        while True:
            try:
                got = mirror_once(rep, source, token=token)
            except ForkError:
                raise
            except ReplicaError:
                if not follow:
                    raise
                time.sleep(interval)  # the source is away or restarting: try again
                continue
            total.entries += got.entries
            total.checkpoints += got.checkpoints
            total.size, total.source_size = got.size, got.source_size
            if report is not None and (got.entries or got.checkpoints):
                report(got)
            if not follow or should_stop():
                return total
            if got.entries == 0:
                time.sleep(interval)
