"""`batteryledger audit CLAIM`: check a claim file against the ledger and report the finding.

    batteryledger audit examples/claims/45x-cell.yaml --store ledger.db
    batteryledger audit claim.yaml --json                  # one JSON object on one line
    batteryledger audit claim.yaml --html report.html      # a self-contained page for people
    batteryledger audit claim.yaml --bundle evidence.json --operator-key keys/operator.key

The claim format is described in examples/claims/README.md. Output: each requirement with its
computed number, threshold and year, the amounts, the custody model, the parameters (citation and
confidence) and the events relied on. `--bundle` writes the evidence bundle of the subject batch
(`batteryledger verify-bundle` checks it offline); with several subject batches, one file per batch
named FILE-STEM-<batch>.json. A bundle needs a signed checkpoint covering the events: the latest
one, or a new one signed with `--operator-key`.

Exit codes:
  0  the claim passes
  1  the claim fails (a requirement, or an asserted amount above what the ledger supports)
  2  bad input: unreadable or invalid claim, unknown batch, missing ledger figures, store, pack or
     key problems; one line `error: ...` on stderr, nothing on stdout
  3  not applicable: the rule is not in force for the claim's dates (nothing passed or failed)
"""

from __future__ import annotations

import html
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from sqlalchemy.exc import SQLAlchemyError

from batteryledger.keyfiles import load_key
from ledger.audit import (
    AUDIT_PARAMETERS,
    SHARE_LABELS,
    AuditError,
    AuditResult,
    ClaimError,
    audit,
    load_claim,
)
from ledger.core import Ledger
from ledger.store import StoreError
from ledger.taxrules.errors import TaxRuleError
from ledger.taxrules.findings import JsonValue, Requirement, dumps_json
from ledger.taxrules.pack import load_pack
from schemas.signing import KeyFileError

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_APPLICABLE = 3

EXIT_OF_STATUS = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "not_applicable": EXIT_NOT_APPLICABLE}

DEFAULT_STORE = "batteryledger.db"


class _Bad(Exception):
    """A user-facing problem outside the audit itself (files, keys, bundles): one line."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=EXIT_BAD_INPUT)


@contextmanager
def _one_line_errors(claim: Path) -> Iterator[None]:
    try:
        yield
    except ClaimError as exc:
        _fail(exc.diagnostics())
    except AuditError as exc:
        _fail(f"{claim}: {exc.diagnostics()}")
    except (TaxRuleError, StoreError, KeyFileError) as exc:
        diag = getattr(exc, "diagnostics", None)
        _fail(diag() if callable(diag) else str(exc))
    except _Bad as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(f"the store failed while auditing: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]}")


def _write_atomically(path: Path, data: bytes, what: str) -> None:
    """Write via a temporary file in the same folder, so a failed write leaves no half file."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise _Bad(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp makes the file 0600; a report or bundle gets the mode any new file would (umask)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _Bad(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def _safe(batch_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", batch_id)


def bundle_paths(path: Path, batches: Sequence[str]) -> list[Path]:
    """Where `--bundle PATH` writes: PATH for one batch, PATH-STEM-<batch>.json for several."""
    if len(batches) == 1:
        return [path]
    suffix = path.suffix or ".json"
    return [path.with_name(f"{path.stem}-{_safe(b)}{suffix}") for b in batches]


def write_bundles(led: Ledger, result: AuditResult, path: Path) -> list[Path]:
    """The evidence bundle of each subject batch (ledger.proofs, imported only when asked for)."""
    try:
        from ledger.bundle_verify import dumps_bundle
        from ledger.proofs import ProofsError, make_bundle
    except ImportError:  # pragma: no cover - the proofs module ships with the ledger
        raise _Bad("--bundle needs ledger.proofs (evidence bundles), which this installation lacks") from None
    written: list[Path] = []
    for batch, target in zip(result.subject_batches, bundle_paths(path, result.subject_batches), strict=True):
        try:
            bundle = make_bundle(led, batch)
        except ProofsError as exc:
            raise _Bad(f"--bundle: {exc.diagnostics()}") from None
        _write_atomically(target, dumps_bundle(bundle), "evidence bundle")
        written.append(target)
    return written


def audit_cmd(
    claim: Annotated[Path, typer.Argument(help="Claim file (YAML or JSON); see examples/claims/README.md.")],
    store: Annotated[
        str, typer.Option("--store", envvar="BATTERYLEDGER_STORE", help="Store URL or SQLite file path.")
    ] = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (one line).")] = False,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report here.", dir_okay=False)
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle", help="Write the evidence bundle(s) of the subject batches here.", dir_okay=False
        ),
    ] = None,
    pack: Annotated[
        Path | None,
        typer.Option("--pack", help="Rule pack JSON file (default: the shipped pack).", dir_okay=False),
    ] = None,
    operator_key: Annotated[
        Path | None,
        typer.Option(help="Operator private key: signs a checkpoint for --bundle if none covers the events."),
    ] = None,
    passphrase_env: Annotated[
        str | None, typer.Option(help="Env var holding the operator key passphrase.")
    ] = None,
) -> None:
    """Audit a tax-credit or recycled-content claim against the ledger (exit 0 pass, 1 fail, 2 bad input, 3 n/a)."""
    with _one_line_errors(claim):
        parsed = load_claim(claim)
        rules = load_pack(pack) if pack is not None else None
        key = load_key(operator_key, passphrase_env)
        try:
            led = Ledger(store, operator_key=key)
        except SQLAlchemyError as exc:
            raise _Bad(f"cannot open the store {store}: {getattr(exc, 'orig', None) or exc}") from None
        try:
            result = audit(led, parsed, pack=rules)
            bundles = write_bundles(led, result, bundle) if bundle is not None else []
            facts = event_facts(led, [e.event_id for e in result.events]) if html_file is not None else {}
            vkey = led.operator_vkey
        finally:
            led.close()
        if html_file is not None:
            links = [os.path.relpath(p.resolve(), html_file.resolve().parent) for p in bundles]
            page = render_html(result, links, events=facts, operator_vkey=vkey)
            _write_atomically(html_file, page.encode("utf-8"), "HTML report")
    if as_json:
        data = result.to_json_obj()
        if bundles:
            data["bundles"] = [str(p) for p in bundles]
        if html_file is not None:
            data["html"] = str(html_file)
        typer.echo(dumps_json(data))
    else:
        for line in result.summary_lines():
            typer.echo(line)
        for p in bundles:
            typer.echo(
                f"evidence bundle: {p} (check with `batteryledger verify-bundle {p} --operator-vkey ...`)"
            )
        if html_file is not None:
            typer.echo(f"report: {html_file}")
    raise typer.Exit(code=EXIT_OF_STATUS[result.status])


def register(app: typer.Typer) -> None:
    """Add `audit` to `app`."""
    app.command("audit")(audit_cmd)


# -- the HTML report ---------------------------------------------------------------------------------
CHART_COLORS: dict[str, str] = {
    "us": "#1d4ed8",
    "us_or_fta": "#60a5fa",
    "north_america": "#059669",
    "recycled": "#65a30d",
    "feoc_touched": "#dc2626",
    "unknown": "#6b7280",
}
ELEMENT_NAMES = {"li": "lithium", "ni": "nickel", "co": "cobalt", "mn": "manganese", "graphite": "graphite"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111827;margin:2rem auto;max-width:72rem;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:2rem 0 .5rem;border-bottom:1px solid #e5e7eb;padding-bottom:.25rem}
table{border-collapse:collapse;width:100%;margin:.25rem 0}th,td{border:1px solid #e5e7eb;padding:.3rem .45rem;text-align:left;vertical-align:top}
th{background:#f9fafb;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;word-break:break-all}
.badge{display:inline-block;padding:.1rem .6rem;border-radius:1rem;color:#fff;font-weight:700;text-transform:uppercase;font-size:.8rem}
.pass{background:#15803d}.fail{background:#b91c1c}.not_applicable{background:#6b7280}
.ok{color:#15803d;font-weight:600}.ko{color:#b91c1c;font-weight:600}
tr.unconfirmed td,td.unconfirmed{background:#fef3c7}
.conf-q{background:#f59e0b;color:#111;border-radius:.25rem;padding:0 .3rem;font-weight:700}
.muted{color:#6b7280}ul{margin:.25rem 0}
.wide{overflow-x:auto;max-width:100%}svg{max-width:100%;height:auto}
@media print{body{margin:0;max-width:none;font-size:11px}.wide{overflow:visible}}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Decimal | str | int | bool | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return f"{value:,.0f}"
        if abs(value) >= 1000:
            return f"{value:,.2f}"
        return format(value.quantize(Decimal("0.000001")).normalize(), "f")
    return value


def _conf(c: str) -> str:
    return '<span class="conf-q" title="unconfirmed: see parameters">?</span>' if c == "?" else _e(c)


CHART_LABELS: dict[str, str] = {
    "us": "US, any step",
    "us_or_fta": "US/FTA, any step",
    "north_america": "N. America, any step",
    "recycled": "recycled",
    "feoc_touched": "FEOC-touched",
    "unknown": "unknown",
}


def share_chart_svg(shares: dict[str, dict[str, Decimal]]) -> str:
    """Grouped horizontal bars, one group per element, one bar per SHARE_LABELS entry (0-100%)."""
    label_w, bar_w, value_w = 130, 360, 56
    bar_h, gap, group_gap, head_h = 12, 3, 14, 16
    width = label_w + bar_w + value_w
    group_h = head_h + len(SHARE_LABELS) * (bar_h + gap) + group_gap
    height = max(1, len(shares)) * group_h
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="system-ui,sans-serif" font-size="11">',
        "<title>Per-element shares of contained mass (mass balance)</title>",
    ]
    y = 0
    for el, values in shares.items():
        name = ELEMENT_NAMES.get(el, el)
        parts.append(f'<text x="0" y="{y + 12}" font-weight="700" font-size="12">{_e(name)}</text>')
        y += head_h
        for key, label in SHARE_LABELS.items():
            share = max(Decimal(0), min(Decimal(1), values.get(key, Decimal(0))))
            pct = share * 100
            w = (share * bar_w).quantize(Decimal("0.1"))
            parts.append(f'<text x="8" y="{y + bar_h - 2}" fill="#374151">{_e(CHART_LABELS[key])}</text>')
            parts.append(f'<rect x="{label_w}" y="{y}" width="{bar_w}" height="{bar_h}" fill="#f3f4f6"/>')
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" fill="{CHART_COLORS[key]}">'
                f"<title>{_e(name)}: {_e(label)} {pct:.1f}%</title></rect>"
            )
            parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + bar_h - 2}">{pct:.1f}%</text>')
            y += bar_h + gap
        y += group_gap
    parts.append("</svg>")
    return "".join(parts)


def _requirement_rows(r: Requirement, depth: int = 0) -> list[str]:
    result = '<span class="ok">pass</span>' if r.passed else '<span class="ko">fail</span>'
    test = r.comparison.value
    cls = ' class="unconfirmed"' if r.confidence == "?" else ""
    rows = [
        f'<tr{cls}><td style="padding-left:{0.45 + 1.4 * depth:.2f}rem">{_e(r.name)}</td><td>{result}</td>'
        f'<td class="num">{_e(_num(r.value))}</td><td>{_e(test)}</td><td class="num">{_e(_num(r.threshold))}</td>'
        f"<td>{_e(r.threshold_year or '')}</td><td>{_e(r.citation)}</td><td>{_conf(r.confidence)}</td>"
        f"<td>{_e(r.note)}</td></tr>"
    ]
    for child in r.children:
        rows += _requirement_rows(child, depth + 1)
    return rows


@dataclass(frozen=True, slots=True)
class EventFacts:
    """Who signed an event relied on, when, and which batches it names (read from its entry)."""

    facility_id: str
    time: str
    batches: tuple[str, ...]


def event_facts(led: Ledger, event_ids: Sequence[str]) -> dict[str, EventFacts]:
    """The facility, time and batch ids of each event, from the ledger's entries."""
    out: dict[str, EventFacts] = {}
    for event_id, (_seq, data) in led.entry_data(event_ids).items():
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        named = [o.get("batch_id", "") for o in obj.get("outputs", [])]
        named += [obj["batch_id"]] if isinstance(obj.get("batch_id"), str) else []
        named += list(obj.get("batch_ids", []))
        out[event_id] = EventFacts(str(obj.get("facility_id", "")), str(obj.get("time", "")), tuple(named))
    return out


def render_html(
    result: AuditResult,
    bundles: Sequence[Path | str] = (),
    *,
    events: Mapping[str, EventFacts] | None = None,
    operator_vkey: str | None = None,
) -> str:
    """A self-contained report (inline CSS and SVG; no scripts, no external resources).

    `bundles` are links to the evidence bundles (paths relative to the report, or URLs); `events` adds
    the facility, time and batches of each event relied on; `operator_vkey` is printed for
    `verify-bundle`.
    """
    events = events or {}
    f = result.finding
    claim = result.claim
    title = claim.title or f.claim_kind.value
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}: {_e(f.status)}</title><style>{CSS}</style></head><body>",
        f'<h1>{_e(title)} <span class="badge {_e(f.status)}">{_e(f.status.replace("_", " "))}</span></h1>',
        f'<p class="muted">{_e(f.claim_kind.value)} claim'
        + (f" by {_e(claim.claimant)}" if claim.claimant else "")
        + f" · rule pack {_e(f.pack_id)} {_e(f.pack_version)} · custody model "
        f"<b>{_e(result.custody_model.value.replace('_', ' '))}</b> (ISO 22095:2020)</p>",
    ]
    # claim and ledger
    out.append("<h2>Claim and ledger</h2><table>")
    claim_data: JsonValue = result.to_json_obj()["claim"]
    if isinstance(claim_data, dict):
        for k, v in claim_data.items():
            shown = dumps_json(v) if isinstance(v, dict | list) else "–" if v is None else _num(v)
            out.append(f"<tr><th>{_e(k)}</th><td>{_e(shown)}</td></tr>")
    lg = result.ledger
    out.append(
        f"<tr><th>ledger</th><td>{_e(lg.origin)}, {lg.size} entries, head <code>{_e(lg.head)}</code>"
        + (f", latest checkpoint covers {lg.checkpoint_size}" if lg.checkpoint_size is not None else "")
        + "</td></tr></table>"
    )
    # requirements
    out.append(
        '<h2>Requirements</h2><div class="wide"><table><tr><th>requirement</th><th>result</th><th>value</th><th>test</th>'
        "<th>threshold</th><th>year</th><th>citation</th><th>conf.</th><th>note</th></tr>"
    )
    for r in f.requirements:
        out += _requirement_rows(r)
    out.append("</table></div>")
    if f.amounts:
        out.append("<h2>Amounts</h2><table>")
        out += [f'<tr><th>{_e(k)}</th><td class="num">{_e(_num(v))}</td></tr>' for k, v in f.amounts.items()]
        out.append("</table>")
    if f.warnings or f.notes:
        out.append("<h2>Warnings and notes</h2><ul>")
        out += [f"<li><b>warning:</b> {_e(w)}</li>" for w in f.warnings]
        out += [f"<li>{_e(n)}</li>" for n in f.notes]
        out.append("</ul>")
    # shares
    out.append(
        f'<h2>Provenance shares</h2><p class="muted">Share of each element\'s contained mass in the subject '
        f"batches (mass balance); FTA countries as of {_e(result.as_of.isoformat())}. Bars overlap by design: "
        "a kilogram mined in Canada and refined in the US counts in US, North America and US or FTA.</p>"
        "<ul>"
        + "".join(f"<li><b>{_e(CHART_LABELS[k])}</b>: {_e(v)}</li>" for k, v in SHARE_LABELS.items())
        + "</ul>"
    )
    out.append(share_chart_svg(result.shares))
    # ledger facts
    if result.facts:
        out.append(
            "<h2>Ledger facts used</h2><table><tr><th>fact</th><th>value</th><th>unit</th><th>batch</th>"
            "<th>how</th></tr>"
        )
        out += [
            f'<tr><td>{_e(x.name)}</td><td class="num">{_e(_num(x.value))}</td><td>{_e(x.unit)}</td>'
            f"<td>{_e(x.batch or '')}</td><td>{_e(x.how)}</td></tr>"
            for x in result.facts
        ]
        out.append("</table>")
    # parameters
    out.append(
        '<h2>Parameters</h2><p class="muted">Confidence: P read in the primary text; S two or more secondary '
        'sources agree; <span class="conf-q">?</span> not confirmed: the finding depends on it.</p>'
        "<table><tr><th>parameter</th><th>value</th><th>applies to</th><th>citation</th><th>conf.</th>"
        "<th>note</th></tr>"
    )
    for p in f.parameters_used:
        cls = ' class="unconfirmed"' if p.confidence == "?" else ""
        audit_own = " (audit approximation)" if p.name in AUDIT_PARAMETERS else ""
        out.append(
            f"<tr{cls}><td><code>{_e(p.name)}</code>{_e(audit_own)}</td><td>{_e(p.value)}</td>"
            f"<td>{_e(p.applies_to)}</td><td>{_e(p.citation)}</td><td>{_conf(p.confidence)}</td>"
            f"<td>{_e(p.note)}</td></tr>"
        )
    out.append("</table>")
    # batches and events
    out.append(
        "<h2>Subject batches</h2><table><tr><th>batch</th><th>kind</th><th>material</th><th>facility</th>"
        "<th>country</th><th>time</th><th>kg</th><th>value USD</th><th>seq</th></tr>"
    )
    out += [
        f"<tr><td>{_e(b.batch_id)}</td><td>{_e(b.kind)}</td><td>{_e(b.material)}</td><td>{_e(b.facility_id)}"
        + (" (FEOC)" if b.feoc else "")
        + (" (PFE)" if b.pfe else "")
        + f'</td><td>{_e(b.country)}</td><td>{_e(b.time)}</td><td class="num">{_e(_num(b.kg))}</td>'
        f'<td class="num">{_e(_num(b.value_usd))}</td><td class="num">{b.seq}</td></tr>'
        for b in result.batches
    ]
    out.append("</table>")
    out.append(
        f'<h2>Events relied on ({len(result.events)})</h2><p class="muted">Leaf hash = SHA-256(0x00 || '
        "entry bytes) (RFC 9162); entry hash = SHA-256(previous entry hash || leaf hash).</p>"
        '<div class="wide"><table><tr><th>seq</th><th>kind</th><th>facility</th><th>time</th><th>batches</th>'
        "<th>event id</th><th>leaf hash</th><th>entry hash</th></tr>"
    )
    for e in result.events:
        fx = events.get(e.event_id)
        out.append(
            f'<tr><td class="num">{e.seq}</td><td>{_e(e.kind)}</td><td>{_e(fx.facility_id if fx else "")}</td>'
            f"<td>{_e(fx.time if fx else '')}</td><td>{_e(', '.join(fx.batches) if fx else '')}</td>"
            f'<td class="mono">{_e(e.event_id)}</td>'
            f'<td class="mono">{_e(e.leaf_hash)}</td><td class="mono">{_e(e.entry_hash)}</td></tr>'
        )
    out.append("</table></div>")
    if bundles:
        vkey = operator_vkey or "VKEY"
        out.append("<h2>Evidence</h2><ul>")
        out += [
            f'<li><a href="{_e(p)}">{_e(Path(str(p)).name)}</a>: check offline with '
            f"<code>batteryledger verify-bundle {_e(Path(str(p)).name)} --operator-vkey {_e(vkey)}</code></li>"
            for p in bundles
        ]
        out.append("</ul>")
    elif operator_vkey:
        out.append(f'<p class="muted">Operator verifier key: <code>{_e(operator_vkey)}</code></p>')
    out.append("</body></html>\n")
    return "\n".join(out)


__all__ = ["EXIT_OF_STATUS", "bundle_paths", "register", "render_html", "share_chart_svg", "write_bundles"]
