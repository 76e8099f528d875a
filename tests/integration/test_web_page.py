"""The web page in a real browser: uvicorn on a free loopback port, Debian's Chromium driven by playwright.

Playwright's Python package drives the Chromium binary the system has (`executable_path`; no browser
download): it types, clicks, follows links and downloads, as a person would. Without Chromium the tests
FAIL, saying what to install (scripts/install-system-deps.sh installs it). Set BATTERYLEDGER_CHROMIUM
to use another Chromium or Chrome binary.

Each page state is also saved as a screenshot (in the test's temporary folder, or in
$BATTERYLEDGER_SCREENSHOTS when set) so a person can look at what the tests saw.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from batteryledger.api import create_app
from batteryledger.sample import demo_chain
from ledger.bundle_verify import verify_bundle
from ledger.core import Incoming, Ledger

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Upper bounds only, so a wedged browser or server fails the test instead of hanging it.
STEP_TIMEOUT_MS = 30_000
SERVER_START_TIMEOUT_S = 30
ORIGIN = "web-test.example/ledger"


def find_chromium() -> str:
    wanted = os.environ.get("BATTERYLEDGER_CHROMIUM")
    for name in (wanted,) if wanted else CHROMIUM_NAMES:
        path = shutil.which(name) if name else None
        if path:
            return path
    # never a silent skip: `make test` installs Chromium (scripts/install-system-deps.sh)
    pytest.fail(
        f"the web page tests need a browser: headless Chromium not found ({wanted or ', '.join(CHROMIUM_NAMES)}): "
        "install it with `apt-get install -y chromium` (scripts/install-system-deps.sh) "
        "or point BATTERYLEDGER_CHROMIUM at a Chromium binary",
        pytrace=False,
    )


# Assertions wait up to a step's bound too (an audit on a loaded 2-core machine can take seconds).
expect.set_options(timeout=STEP_TIMEOUT_MS)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, operator verifier key) of an API server over the demo chain."""
    c = demo_chain()
    url = f"sqlite:///{tmp_path_factory.mktemp('web') / 'ledger.db'}"
    led = Ledger.init(url, operator_key=c.operator_key, origin=ORIGIN)
    assert all(r.status == "appended" for r in led.append([e.raw for e in c.good_events]))
    led.make_checkpoint()
    led.append([Incoming(raw=raw, source=f"web-test:{label}") for label, raw, _ in c.bad_events])
    vkey = led.operator_vkey
    led.close()

    with serving(create_app(url)) as base:
        yield base, vkey


@contextlib.contextmanager
def serving(api: Any) -> Iterator[str]:
    """Run `api` under uvicorn on a free loopback port (held from the start: no race); yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail("the API server did not start (see the log above)", pytrace=False)
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_TIMEOUT_S)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, served: tuple[str, str]) -> Iterator[Page]:
    context = browser.new_context(
        base_url=served[0], viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    context.set_default_timeout(STEP_TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on(
        "console",
        # an answer of 404/422 is the page's business (it says so in words); anything else is a fault
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield pg
    context.close()
    # the page's own script never fails, and the CSP never has to block anything it does
    assert not errors, f"errors in the browser console: {errors}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("BATTERYLEDGER_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def snap(page: Page, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"screenshot {path} is suspiciously small"


# -- the tests -------------------------------------------------------------------------------------
def test_find_by_typing_then_open_the_pack(page: Page, shots: Path) -> None:
    page.goto("/")
    page.get_by_label("Batch id").press_sequentially("US-PA")
    expect(page.locator("#batch-suggestions option[value='US-PACK-002']")).to_have_count(1)
    page.get_by_role("button", name="List matching batches").click()
    expect(page.locator("#results-caption")).to_have_text("2 batches match; showing 2.")
    snap(page, shots, "search")
    page.locator("#results-table").get_by_role("link", name="US-PACK-002").click()

    expect(page.locator("#message")).to_have_text("Showing US-PACK-002.")
    assert page.url.endswith("?batch=US-PACK-002")
    facts = page.locator("#batch-facts")
    expect(facts).to_contain_text("ev_battery_pack")
    expect(facts).to_contain_text("pack-us-michigan")

    # lithium: mined in Australia, refined in the US: said so, never a bare "US" share
    li = page.locator("article[data-element='li']")
    expect(li.locator("table.origins")).to_contain_text("Mined in Australia (AU)")
    expect(li.locator("table.origins")).to_contain_text("Processed in United States (US)")
    expect(li.locator("table.origins")).to_contain_text("mine-au-greenbushes")
    legend = page.locator("#legend li").all_inner_texts()
    assert "US" not in legend and "Mined or processed in the US" in legend
    # nickel: Indonesian ore refined by a FEOC in China, marked as such
    ni = page.locator("article[data-element='ni']")
    expect(ni.locator("table.origins")).to_contain_text("Mined in Indonesia (ID)")
    expect(ni.locator("table.origins")).to_contain_text("FEOC")
    for el in ("li", "ni", "co", "mn", "graphite"):
        widths = [
            float(re.search(r"width:\s*([0-9.]+)%", s).group(1))  # type: ignore[union-attr]
            for s in page.locator(f"article[data-element='{el}'] .bar .seg").evaluate_all(
                "segs => segs.map(s => s.getAttribute('style'))"
            )
        ]
        assert sum(widths) == pytest.approx(100.0, abs=0.05), el

    # the origin table sorts when a person clicks a header
    table = li.locator("table.origins")
    table.get_by_role("button", name="Mass").click()
    masses = table.locator("tbody tr td:nth-child(5)").all_inner_texts()
    assert masses == sorted(masses, key=lambda t: float(t.replace(",", "").split()[0]), reverse=True)

    timeline = page.locator("#timeline tbody tr")
    expect(timeline.first).to_contain_text("Made (packs.assembled)")
    expect(timeline.first.get_by_role("link", name="proof")).to_have_attribute(
        "href", re.compile(r"v1/proofs/inclusion\?seq=\d+$")
    )
    snap(page, shots, "pack-US-PACK-002")


def test_follow_the_flow_graph_and_export_it(page: Page, shots: Path) -> None:
    page.goto("/?batch=US-PACK-002")
    graph = page.locator("#lineage svg.flow")
    expect(graph).to_be_visible()
    expect(graph.locator("g.node.focus[data-batch='US-PACK-002']")).to_have_count(1)
    expect(graph.locator("g.node.feoc[data-batch='CN-NISO4-001']")).to_have_count(1)
    expect(graph.locator("g.node.external")).to_have_count(1)  # the recycler's end-of-life packs
    dot = page.request.get(page.locator("#graph-dot").get_attribute("href") or "")
    assert dot.ok and dot.text().startswith('digraph "lineage of US-PACK-002"')
    assert '"CN-NISO4-001"' in dot.text() and 'color="red"' in dot.text()

    graph.locator("a.node-link:has(g[data-batch='CN-NISO4-001'])").click()
    expect(page.locator("#message")).to_have_text("Showing CN-NISO4-001.")
    expect(page.locator("#batch-facts")).to_contain_text("foreign entity of concern")
    page.go_back()
    expect(page.locator("#message")).to_have_text("Showing US-PACK-002.")


def test_a_recycled_batch_shows_its_outside_feed(page: Page, shots: Path) -> None:
    page.goto("/?batch=CA-BM-001")
    expect(page.locator("#batch-facts")).to_contain_text("9,000.0 kg end-of-life EV packs")
    expect(page.locator("#provenance-meta")).to_contain_text("Recycling resets the origin")
    li = page.locator("article[data-element='li'] table.origins")
    expect(li).to_contain_text("Recycled in Canada (CA)")
    feed = page.locator("#lineage svg.flow g.node.external")
    expect(feed).to_have_count(1)
    expect(feed).to_contain_text("Outside feed")
    snap(page, shots, "recycled-CA-BM-001")


def test_a_mine_lot_shows_where_it_went_and_its_border_crossing(page: Page, shots: Path) -> None:
    page.goto("/?batch=CD-COHYD-001")
    expect(page.locator("article[data-element='co'] table.origins")).to_contain_text("Mined in DR Congo (CD)")
    expect(page.locator("#lineage-form input[value='down']")).to_be_checked()
    expect(page.locator("#lineage svg g[data-batch='CN-COSO4-001']")).to_have_count(1)
    shipped = page.locator("#timeline tr[data-role='shipped']")
    expect(shipped).to_contain_text("crosses CD → CN")
    snap(page, shots, "mine-CD-COHYD-001")


def test_the_passport_with_its_qr_code(page: Page, shots: Path) -> None:
    page.goto("/?batch=US-PACK-002&view=passport")
    section = page.locator("#passport-section")
    expect(section).to_be_visible()
    expect(section.locator("tr[data-field='manufacturingDate']")).to_contain_text("2025-06-12")
    expect(section.locator("tr[data-field='batteryChemistry']")).to_contain_text("nmc811")
    expect(section.locator("tr[data-field='recycledContent-Cobalt']")).to_contain_text("post-consumer")
    expect(section.locator("tr[data-field='recycledContent-Lead']")).to_contain_text("not tracked")
    qr = page.locator("#passport-qr")
    expect(qr).to_have_js_property("complete", True)
    assert qr.evaluate("img => img.naturalWidth") > 50  # a real image, not a broken-image icon
    expect(page.locator("#passport-link")).to_have_attribute(
        "href", re.compile(r"\?batch=US-PACK-002&view=passport$")
    )
    snap(page, shots, "passport-US-PACK-002")
    # a mine lot has no passport
    page.goto("/?batch=AU-SPOD-001")
    expect(page.locator("#message")).to_have_text("Showing AU-SPOD-001.")
    expect(section).to_be_hidden()


def test_run_an_audit_and_verify_the_downloaded_bundle(
    page: Page, shots: Path, served: tuple[str, str], tmp_path: Path
) -> None:
    page.goto("/")
    page.get_by_role("navigation").get_by_role("link", name="Audits").click()
    page.get_by_label("Start from an example").select_option("45x-cell.yaml")
    expect(page.get_by_label("Claim (YAML or JSON)")).to_have_value(re.compile("kind: 45x"))
    page.get_by_role("button", name="Run the audit").click()
    expect(page.locator("#audit-status")).to_have_text(re.compile(r"US-CELL-001.*PASS"))
    expect(page.locator("#audit-requirements tbody tr").first).to_be_visible()
    snap(page, shots, "audit-45x-cell")

    with page.expect_download() as dl:
        page.locator("#audit-bundles a.bundle-link").click()
    target = tmp_path / "bundle.json"
    dl.value.save_as(target)
    report = verify_bundle(target.read_bytes(), served[1])
    assert report.batch_id == "US-CELL-001"

    with page.expect_download() as dl:
        page.get_by_role("link", name="HTML report").click()
    html = tmp_path / "report.html"
    dl.value.save_as(html)
    assert "US-CELL-001" in html.read_text(encoding="utf-8")

    # a claim with a mistake says what is wrong, in one line
    page.get_by_label("Claim (YAML or JSON)").fill("kind: 45z\n")
    page.get_by_role("button", name="Run the audit").click()
    expect(page.locator("#audit-message")).to_have_text(re.compile("'45z' is not a claim kind"))


def test_browse_rejections_and_read_the_original_bytes(page: Page, shots: Path) -> None:
    page.goto("/?screen=rejections")
    counts = page.locator("#rejections tr[data-reason]")
    expect(counts).to_have_count(4)
    expect(page.locator("#checkpoint")).to_have_text(re.compile("^" + re.escape(ORIGIN) + "\n"))
    page.locator("#rejections").get_by_role("link", name="overdrawn").click()
    rows = page.locator("#rejection-list tbody tr")
    expect(rows).to_have_count(1)
    rows.first.get_by_role("link").click()
    expect(page.locator("#rejection-detail-heading")).to_have_text(re.compile("overdrawn"))
    expect(page.locator("#rejection-payload")).to_contain_text('"batch_id": "AU-SPOD-001"')
    snap(page, shots, "rejections")


def test_unknown_batch_says_so(page: Page) -> None:
    page.goto("/?batch=NO-SUCH-PACK")
    message = page.locator("#message")
    expect(message).to_have_text(re.compile("'NO-SUCH-PACK' is not in the ledger"))
    expect(message).to_have_class(re.compile("error"))
    expect(page.locator("#provenance-section")).to_be_hidden()


def test_api_docs_work_offline(page: Page, shots: Path) -> None:
    page.route(re.compile(r"^https?://(?!127\.0\.0\.1).*"), lambda route: route.abort())  # no internet
    page.goto("/v1/docs")
    expect(page.locator(".swagger-ui .opblock-summary-path", has_text="/v1/batches").first).to_be_visible()
    snap(page, shots, "api-docs")
