"""The web page in a real browser: uvicorn on a free loopback port, headless Chromium, the rendered DOM.

Chromium is the Debian package `chromium` (scripts/install-system-deps.sh). Without it this test FAILS
in CI (CI=true) and skips elsewhere, saying what to install. Set BATTERYLEDGER_CHROMIUM to use another
Chromium or Chrome binary.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import uvicorn

from batteryledger.api import create_app
from batteryledger.sample import demo_chain
from ledger.core import Incoming, Ledger

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Virtual time the page gets to fetch and render (the browser waits for network while it counts).
VIRTUAL_TIME_BUDGET_MS = 5000
#: Upper bounds only, so a wedged browser or server fails the test instead of hanging it.
BROWSER_TIMEOUT_S = 120
SERVER_START_TIMEOUT_S = 30
ORIGIN = "web-test.example/ledger"
ELEMENTS = {
    "li": "Lithium (Li)",
    "ni": "Nickel (Ni)",
    "co": "Cobalt (Co)",
    "mn": "Manganese (Mn)",
    "graphite": "Graphite",
}


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser binary, looked up before the server starts."""
    return find_chromium()


def find_chromium() -> str:
    wanted = os.environ.get("BATTERYLEDGER_CHROMIUM")
    for name in (wanted,) if wanted else CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    msg = (
        f"headless Chromium not found ({wanted or ', '.join(CHROMIUM_NAMES)}): "
        "install it with `apt-get install -y chromium` (scripts/install-system-deps.sh) "
        "or point BATTERYLEDGER_CHROMIUM at a Chromium binary"
    )
    # never a silent skip: `make test` installs Chromium (scripts/install-system-deps.sh)
    pytest.fail(f"the web page test needs a browser: {msg}", pytrace=False)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    c = demo_chain()
    url = f"sqlite:///{tmp_path_factory.mktemp('web') / 'ledger.db'}"
    led = Ledger.init(url, operator_key=c.operator_key, origin=ORIGIN)
    assert all(r.status == "appended" for r in led.append([e.raw for e in c.good_events]))
    led.make_checkpoint()
    led.append([Incoming(raw=raw, source=f"web-test:{label}") for label, raw, _ in c.bad_events])
    led.close()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other tests
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(url), log_level="warning", lifespan="on"))
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


def render(browser: str, url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran, as headless Chromium serialises it."""
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        "--dump-dom",
        url,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"headless Chromium did not finish within {BROWSER_TIMEOUT_S} s: {' '.join(cmd)}")
    assert proc.returncode == 0 and "</html>" in proc.stdout, (
        f"Chromium exited {proc.returncode}; stderr tail:\n{proc.stderr[-2000:]}"
    )
    return proc.stdout


# -- a small DOM for the serialised page -----------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and all(
                    (v in c.attrs.get(k.rstrip("_"), "").split()) if k == "class_" else c.attrs.get(k) == v
                    for k, v in attrs.items()
                ):
                    out.append(c)
                out.extend(c.find_all(tag, **attrs))
        return out

    def by_id(self, ident: str) -> Node:
        [node] = self.find_all(id=ident)
        return node


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    b = _Builder()
    b.feed(html)
    b.close()
    return b.root


def width_percent(node: Node) -> float:
    m = re.search(r"width:\s*([0-9.]+)%", node.attrs.get("style", ""))
    assert m, f"segment without a width: {node.attrs}"
    return float(m.group(1))


# -- the tests -------------------------------------------------------------------------------------
def test_search_from_the_query_string_renders_provenance_bars(
    chromium: str, base_url: str, tmp_path: Path
) -> None:
    dom = parse(render(chromium, f"{base_url}/?batch=US-PACK-002", tmp_path / "profile"))

    assert "Showing US-PACK-002" in dom.by_id("message").text()
    section = dom.by_id("provenance-section")
    assert "hidden" not in section.attrs

    rows = {r.attrs["data-element"]: r for r in section.find_all("article", class_="element-row")}
    assert set(rows) == set(ELEMENTS)
    for el, title in ELEMENTS.items():
        row = rows[el]
        assert title in row.text()
        assert "kg contained" in row.text()
        [bar] = row.find_all("div", class_="bar")
        assert bar.attrs["role"] == "img" and bar.attrs["aria-label"].startswith(title)
        segs = bar.find_all("span", class_="seg")
        assert segs, f"no bar segments for {el}"
        assert sum(width_percent(s) for s in segs) == pytest.approx(100.0, abs=0.05)
        assert "US processed" in row.text() and "Unknown" in row.text()
    ni = {s.attrs["data-category"] for s in rows["ni"].find_all("span", class_="seg")}
    assert {"feoc", "recycled_post"} <= ni  # Chinese-refined nickel, recycled black mass
    legend = dom.by_id("legend").text()
    assert "FEOC-touched" in legend and "US" in legend

    facts = dom.by_id("batch-facts").text()
    assert "ev_battery_pack" in facts and "pack-us-michigan" in facts

    lineage = dom.by_id("lineage")
    linked = {a.text() for a in lineage.find_all("a", class_="batch-link")}
    assert {"US-CELL-002", "KR-NMC811-002", "AU-SPOD-001"} <= linked

    assert dom.by_id("checkpoint").text().startswith(ORIGIN + "\n")
    reasons = {
        tr.attrs["data-reason"] for tr in dom.by_id("rejections").find_all("tr") if "data-reason" in tr.attrs
    }
    assert reasons == {"bad_signature", "malformed", "overdrawn", "unknown_facility"}
    assert ORIGIN in dom.by_id("ledger-status").text()


def test_unknown_batch_says_so(chromium: str, base_url: str, tmp_path: Path) -> None:
    dom = parse(render(chromium, f"{base_url}/?batch=NO-SUCH-PACK", tmp_path / "profile"))
    message = dom.by_id("message")
    assert "'NO-SUCH-PACK' is not in the ledger" in message.text()
    assert "error" in message.attrs.get("class", "").split()
    assert "hidden" in dom.by_id("provenance-section").attrs
    assert dom.by_id("checkpoint").text().startswith(ORIGIN + "\n")  # the ledger-wide panels still load
