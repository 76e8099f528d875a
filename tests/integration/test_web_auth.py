"""The web page against an API served with --auth: refused without a credential, usable with one.

Same set-up as test_web_page.py (uvicorn on a free loopback port, Debian's Chromium via playwright).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.sync_api import Browser, Page, expect

from batteryledger.api import create_app
from batteryledger.auth import AuthConfig, Role, issue_token, public_key_text
from batteryledger.sample import demo_chain
from ledger.bundle_verify import verify_bundle
from ledger.core import Ledger
from tests.integration import test_web_page as web
from tests.integration.test_web_page import STEP_TIMEOUT_MS, serving, snap

pytestmark = pytest.mark.integration
browser, shots = web.browser, web.shots  # the same fixtures as the page tests


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
    with serving(create_app(url, auth_config=cfg)) as base:
        yield base, vkey, token_key


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
    expect(page.get_by_label("Claim (YAML or JSON)")).to_have_value(re.compile("kind: 45x"))
    page.get_by_role("button", name="Run the audit").click()
    expect(page.locator("#audit-status")).to_have_text(re.compile(r"US-CELL-001.*PASS"))
    with page.expect_download() as dl:
        page.locator("#audit-bundles a.bundle-link").click()
    target = tmp_path / "bundle.json"
    dl.value.save_as(target)
    assert verify_bundle(target.read_bytes(), vkey).batch_id == "US-CELL-001"
