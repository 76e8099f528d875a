"""The web page against an API served with --auth: refused without a credential, usable with one.

Same set-up as test_web_page.py (uvicorn on a free loopback port, Debian's Chromium via playwright).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Browser, Page, expect, sync_playwright

from batteryledger.api import create_app
from batteryledger.auth import AuthConfig, Role, issue_token, public_key_text
from batteryledger.sample import demo_chain
from ledger.bundle_verify import verify_bundle
from ledger.core import Ledger
from tests.integration.test_web_page import SERVER_START_TIMEOUT_S, STEP_TIMEOUT_MS, find_chromium, snap

pytestmark = pytest.mark.integration


# Assertions wait up to a step's bound too (an audit on a loaded 2-core machine can take seconds).
expect.set_options(timeout=STEP_TIMEOUT_MS)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Ed25519PrivateKey]]:
    c = demo_chain()
    url = f"sqlite:///{tmp_path_factory.mktemp('web-auth') / 'ledger.db'}"
    led = Ledger.init(url, operator_key=c.operator_key, origin="web-auth.example/ledger")
    assert all(r.status == "appended" for r in led.append([e.raw for e in c.good_events]))
    led.make_checkpoint()
    vkey = led.operator_vkey
    led.close()
    token_key = Ed25519PrivateKey.generate()
    cfg = AuthConfig(token_public_keys=[public_key_text(token_key)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(url, auth_config=cfg), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail("the API server did not start (see the log above)", pytrace=False)
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", vkey, token_key
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_TIMEOUT_S)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, served: tuple[str, str, Ed25519PrivateKey]) -> Iterator[Page]:
    context = browser.new_context(
        base_url=served[0], viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    context.set_default_timeout(STEP_TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"errors in the page's script: {errors}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    wanted = os.environ.get("BATTERYLEDGER_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_without_a_credential_the_page_says_so_then_an_auditor_token_opens_it(
    page: Page, served: tuple[str, str, Ed25519PrivateKey], shots: Path, tmp_path: Path
) -> None:
    _, vkey, token_key = served
    page.goto("/?batch=US-PACK-002")
    expect(page.locator("#message")).to_have_text(re.compile("needs a facility credential"))
    snap(page, shots, "auth-refused")

    token = issue_token(token_key, role=Role.AUDITOR, subject="browser test")
    page.locator("#credential summary").click()
    page.get_by_label("Token or API key (kept in this tab only)").fill(token)
    page.get_by_role("button", name="Use").click()
    expect(page.locator("#message")).to_have_text("Showing US-PACK-002.")
    snap(page, shots, "auth-auditor-pack")

    # a download link goes through the credential too: the bundle verifies offline
    page.goto("/")
    page.get_by_role("navigation").get_by_role("link", name="Audits").click()
    page.get_by_label("Start from an example").select_option("45x-cell.yaml")
    page.get_by_role("button", name="Run the audit").click()
    expect(page.locator("#audit-status")).to_have_text(re.compile(r"US-CELL-001.*PASS"))
    with page.expect_download() as dl:
        page.locator("#audit-bundles a.bundle-link").click()
    target = tmp_path / "bundle.json"
    dl.value.save_as(target)
    assert verify_bundle(target.read_bytes(), vkey).batch_id == "US-CELL-001"
