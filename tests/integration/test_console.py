"""The operator console in a real browser: Debian's headless Chromium, driven by Playwright's
sync API, against a real gateway process on the demo upstream.

Every test fails on a script error or a console error the page did not expect. Full-page
screenshots of every page, at desktop and phone widths, land in test-artifacts/console/.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from PIL import Image
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    FilePayload,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)

import nanogate
from tests.simulator.processes import stop

from . import test_tasks as task_api
from .conftest import SIM_KEY, Gateway, start_gateway, start_simulator
from .receiver import Receiver

CHROMIUM = "/usr/bin/chromium"
# The machine's network is closed: no background connections, no component updates.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
PAGES = ("overview", "keys", "usage", "tasks", "upstreams", "playground")
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
COOKIE = "nanogate_session"
MODEL = "gemini-2.5-flash-image"


@dataclass
class BrowserConsole:
    """Script errors and console errors of one test's page; `allow` names the expected ones."""

    messages: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.messages.append(f"console.error: {message.text} ({message.location})")

    def on_page_error(self, error: Error) -> None:
        self.messages.append(f"pageerror: {error}")

    def unexpected(self) -> list[str]:
        return [m for m in self.messages if not any(p.search(m) for p in self.allowed)]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of this module's own (demo upstream), so its charts and lists hold only what
    these tests did. It may call the test's receiver on 127.0.0.1 (callbacks, input images)."""
    gw = start_gateway(tmp_path_factory.mktemp("console"), NANOGATE_EGRESS_ALLOWLIST="127.0.0.1")
    yield gw
    stop(gw.proc)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def console() -> BrowserConsole:
    return BrowserConsole()


def new_page(
    browser: Browser, console: BrowserConsole, viewport: ViewportSize, timezone: str | None = None
) -> Page:
    context = browser.new_context(viewport=viewport, timezone_id=timezone)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    return page


@pytest.fixture
def page(browser: Browser, console: BrowserConsole) -> Iterator[Page]:
    """A fresh browser context (no cookies) at desktop width; the test fails on any browser
    console error it did not allow."""
    tab = new_page(browser, console, DESKTOP)
    yield tab
    tab.context.close()
    if unexpected := console.unexpected():
        pytest.fail("browser console errors:\n" + "\n".join(unexpected))


# ---- helpers ---------------------------------------------------------------------------------


def admin(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.admin_key}"}


def log_in(page: Page, gw: Gateway) -> str:
    """A console session opened through the API, its cookie put in the page's context."""
    resp = httpx.post(f"{gw.url}/admin/session", json={"key": gw.admin_key})
    assert resp.status_code == 200, resp.text
    token = resp.cookies[COOKIE]
    page.context.add_cookies([{"name": COOKIE, "value": token, "url": gw.url}])
    return token


def open_page(page: Page, gw: Gateway, name: str) -> None:
    page.goto(f"{gw.url}/console/{name}")
    page.locator(f'body[data-loaded="{name}"]').wait_for(state="attached")


def create_account(gw: Gateway, name: str, credits: int) -> None:
    resp = httpx.post(
        f"{gw.url}/admin/accounts", headers=admin(gw), json={"name": name, "credits": credits}
    )
    assert resp.status_code == 201, resp.text


def generate(gw: Gateway, key: str, prompt: str = "a lighthouse") -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1beta/models/{MODEL}:generateContent",
        headers={"x-goog-api-key": key},
        json={"contents": [{"role": "user", "parts": [{"text": prompt}]}]},
        timeout=30,
    )


def image_size(page: Page, selector: str) -> tuple[int, int]:
    """The natural size of an <img>, once it has loaded (fails if it never does)."""
    image = page.locator(selector).first
    image.wait_for()
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    width, height = image.evaluate("(img) => [img.naturalWidth, img.naturalHeight]")
    return int(width), int(height)


def catalog_pixels(model: str, aspect: str) -> tuple[int, int]:
    """The demo upstream's pixel size for `aspect` at the model's default image size."""
    path = Path(nanogate.__file__).parent / "data" / "catalog.yaml"
    spec: dict[str, Any] = yaml.safe_load(path.read_text())["models"][model]
    width, height = spec["pixels"][spec["default_image_size"]][aspect].split("x")
    return int(width), int(height)


def png(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(out, "PNG")
    return out.getvalue()


# ---- tests -----------------------------------------------------------------------------------


def test_login_refuses_client_keys_and_logout_ends_the_session(
    page: Page, console: BrowserConsole, gateway: Gateway
) -> None:
    console.allow(r"status of 403")  # the refused login's response, logged by Chromium
    page.goto(f"{gateway.url}/console/login")
    page.fill("#admin-key", gateway.client_key)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("client key cannot log in")
    expect(page.locator("#login-error")).to_be_visible()
    assert page.url.endswith("/console/login")
    assert page.context.cookies() == []

    page.fill("#admin-key", gateway.admin_key)
    page.click("#login-form button[type=submit]")
    page.wait_for_url("**/console/overview")
    page.locator('body[data-loaded="overview"]').wait_for(state="attached")
    expect(page.locator("h1")).to_have_text("Overview")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies[COOKIE]["httpOnly"] and cookies[COOKIE]["sameSite"] == "Strict"
    header = {"Cookie": f"{COOKIE}={cookies[COOKIE]['value']}"}
    assert httpx.get(f"{gateway.url}/admin/keys", headers=header).status_code == 200

    page.click("#logout")
    page.wait_for_url("**/console/login")
    expect(page.locator("#admin-key")).to_be_visible()
    assert COOKIE not in {c["name"] for c in page.context.cookies()}
    assert httpx.get(f"{gateway.url}/admin/keys", headers=header).status_code == 401
    page.goto(f"{gateway.url}/console/keys")  # the browser is not let back in either
    assert page.url.endswith("/console/login")


def test_a_new_key_is_shown_once_and_works(page: Page, gateway: Gateway) -> None:
    log_in(page, gateway)
    open_page(page, gateway, "keys")
    page.click("#key-create summary")
    form = page.locator("#key-form")
    form.locator("input[name=name]").fill("made-in-browser")
    form.locator("input[name=credits]").fill("1000000")
    form.get_by_role("button", name="Create key").click()

    dialog = page.locator("#key-shown")
    expect(dialog).to_be_visible()
    key = page.locator("#new-key").inner_text().strip()
    assert re.fullmatch(r"ng_\w+_\S{16,}", key), key
    page.screenshot(path=ARTIFACTS / "keys-new-key-1280.png")
    dialog.get_by_role("button", name="Done").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#new-key")).to_have_text("")  # cleared by the dialog's close event

    open_page(page, gateway, "keys")  # a reload: the key is gone for good
    assert key not in page.content()
    prefixes = page.locator("#keys-table tr[data-key]").evaluate_all(
        "(rows) => rows.map((r) => r.dataset.key)"
    )
    mine = [p for p in prefixes if key.startswith(p + "_")]
    assert len(mine) == 1, prefixes
    row = page.locator(f'#keys-table tr[data-key="{mine[0]}"]')
    expect(row).to_contain_text("made-in-browser")
    expect(row).to_contain_text("1,000,000 credits ($1.00)")

    resp = generate(gateway, key)
    assert resp.status_code == 200, resp.text
    assert any("inlineData" in part for part in resp.json()["candidates"][0]["content"]["parts"])


def test_top_up_an_account(page: Page, gateway: Gateway) -> None:
    create_account(gateway, "topup-target", 1000)
    log_in(page, gateway)
    open_page(page, gateway, "keys")
    row = page.locator('#accounts-table tr[data-account="topup-target"]')
    balance = row.locator("td.num").first
    expect(balance.locator(".credits")).to_have_text("1,000")
    expect(balance.locator(".money")).to_have_text("$0.001")  # 1,000,000 credits = $1
    row.get_by_label("Credits for topup-target").fill("2500")
    row.get_by_label("Reason for topup-target").fill("browser top-up")
    row.get_by_role("button", name="Top up").click()
    expect(page.locator("#status")).to_have_text(
        "topup-target: balance is now 3,500 credits ($0.0035)."
    )
    expect(balance.locator(".credits")).to_have_text("3,500")  # the table re-read
    expect(balance.locator(".money")).to_have_text("$0.0035")
    # The account's write-offs and hold policy have their own cells.
    expect(row.locator("td[data-written-off]")).to_have_attribute("data-written-off", "0")
    expect(row).to_contain_text("fair (default)")
    patched = httpx.patch(
        f"{gateway.url}/admin/accounts/topup-target",
        headers=admin(gateway),
        json={"hold_policy": "worst_case"},
    )
    assert patched.status_code == 200, patched.text
    page.reload()
    expect(row).to_contain_text("worst case")

    accounts = httpx.get(f"{gateway.url}/admin/accounts", headers=admin(gateway)).json()
    assert {a["name"]: a["balance"] for a in accounts}["topup-target"] == 3500
    ledger = httpx.get(
        f"{gateway.url}/admin/ledger", headers=admin(gateway), params={"account": "topup-target"}
    ).json()
    assert any(e["note"] == "browser top-up" and e["amount"] == 2500 for e in ledger), ledger


def test_playground_generates_an_image(page: Page, gateway: Gateway) -> None:
    create_account(gateway, "play-account", 5_000_000)
    log_in(page, gateway)
    open_page(page, gateway, "playground")
    page.select_option("#play-account", "play-account")
    page.click("#play-issue")
    expect(page.locator("#play-key")).to_have_value(re.compile(r"^ng_\w+_"))
    expect(page.locator("#status")).to_contain_text("on account play-account")

    # Before the first run the result panel says what will appear there.
    expect(page.locator("#play-result #play-empty")).to_be_visible()
    expect(page.locator("#play-empty")).to_contain_text("Your image appears here")
    expect(page.locator("#play-result")).not_to_contain_text("Download")

    page.fill("#play-prompt", "A lighthouse at dusk, oil painting")
    # The default is a current GA image model; shut-down ids are not offered.
    expect(page.locator("#play-model")).to_have_value("gemini-3-pro-image")
    offered = page.locator("#play-model option").evaluate_all("(os) => os.map((o) => o.value)")
    assert "gemini-3-pro-image-preview" not in offered and MODEL in offered
    page.select_option("#play-model", MODEL)
    page.select_option("#play-aspect", "16:9")
    reference: FilePayload = {"name": "ref.png", "mimeType": "image/png", "buffer": png()}
    page.set_input_files("#play-files", files=[reference])
    expect(page.locator("#refs img")).to_have_count(1)
    page.click("#play-go")

    assert image_size(page, "#play-result img") == catalog_pixels(MODEL, "16:9")
    expect(page.locator("#play-empty")).to_have_count(0)
    meta = page.locator("#play-meta")
    expect(meta).to_be_visible()
    cost = meta.locator("dt:text-is('Cost') + dd").inner_text()
    latency = meta.locator("dt:text-is('Latency') + dd").inner_text()
    shown = re.fullmatch(r"([\d,]+) credits \(\$(0\.\d+)\)", cost)
    assert shown is not None, cost
    credits = int(shown[1].replace(",", ""))
    assert credits > 0 and abs(float(shown[2]) - credits / 1_000_000) < 0.00005
    assert re.fullmatch(r"\d+\.\d\d s", latency), latency
    expect(page.locator("#status")).to_be_hidden()  # no error was shown
    page.screenshot(path=ARTIFACTS / "playground-result-1280.png", full_page=True)

    # Each result image has a download link that saves the image itself.
    link = page.get_by_role("link", name="Download image 1")
    with page.expect_download() as download:
        link.click()
    request_id = page.locator("#play-meta dt:text-is('Request id') + dd").inner_text()
    assert re.fullmatch(
        rf"nanogate-{re.escape(request_id)}-1\.(png|jpg|webp)", download.value.suggested_filename
    ), download.value.suggested_filename
    saved = Image.open(download.value.path())
    assert saved.size == catalog_pixels(MODEL, "16:9")

    # The call went out with the reference image, and was billed to the chosen account.
    record = httpx.get(
        f"{gateway.url}/admin/usage", headers=admin(gateway), params={"account": "play-account"}
    ).json()[0]
    assert record["status"] == 200 and record["model"] == MODEL
    assert record["cost"] == credits


def test_a_task_shows_in_the_gallery(page: Page, gateway: Gateway) -> None:
    key = {"x-api-key": gateway.client_key}
    created = httpx.post(
        f"{gateway.url}/api/v1/client/job/CreateTask",
        headers=key,
        json={"model": "google/nano-banana", "input": {"prompt": "a red fox in the snow"}},
    )
    assert created.status_code == 200, created.text
    task_id = created.json()["data"]["task_id"]
    deadline = time.monotonic() + 20
    while True:
        info = httpx.get(
            f"{gateway.url}/api/v1/client/job/TaskInfo", headers=key, params={"task_id": task_id}
        ).json()["data"]
        if info["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert info["status"] == "succeeded", info
    full = Image.open(io.BytesIO(httpx.get(info["result"]["urls"][0]).content)).size

    log_in(page, gateway)
    open_page(page, gateway, "tasks")
    card = page.locator(f'#gallery li[data-task="{task_id}"]')
    expect(card.locator(".badge")).to_have_text("succeeded")
    expect(card).to_contain_text("a red fox in the snow")
    width, height = image_size(page, f'#gallery li[data-task="{task_id}"] .thumb img')
    assert 0 < width <= 384 and 0 < height <= 384

    card.get_by_role("button").click()
    dialog = page.locator("#task-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#task-dialog-h")).to_have_text(f"Task {task_id}")
    assert image_size(page, "#task-images img") == full
    record = page.locator("#task-record").inner_text()
    assert f'"id": "{task_id}"' in record or task_id in record
    assert "succeeded" in record
    page.screenshot(path=ARTIFACTS / "tasks-dialog-1280.png")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()


# The element and those of its descendants whose content is wider than their box (scrolled or
# spilling out), each named, so a value that runs off the right edge says which it is.
OVERFLOWING = """(root) => [root, ...root.querySelectorAll("*")]
    .filter((el) => el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)
    .map((el) => `${el.tagName}#${el.id}: ${el.scrollWidth} > ${el.clientWidth}`)"""


def test_a_failed_task_says_why_on_its_card_and_in_a_readable_record(
    browser: Browser, console: BrowserConsole, gateway: Gateway, receiver: Receiver
) -> None:
    # One task that fails (its input image is missing) and whose callback needs two tries, one
    # that succeeds and whose callback is taken at once; the msg form keeps `param` as a string.
    receiver.statuses["/console/failed"].append(500)
    key = gateway.client_key
    prompt = "a harbour at dawn, seed " + "0123456789abcdef" * 16  # one 256-character word
    failing = {"prompt": prompt, "image_urls": [f"{receiver.url}/console/missing.png"]}
    failed_id = task_api.task_id(
        task_api.create(
            gateway, key, "msg", "google/nano-banana", failing, f"{receiver.url}/console/failed"
        ),
        "msg",
    )
    ok_id = task_api.task_id(
        task_api.create(
            gateway,
            key,
            "msg",
            "google/nano-banana",
            {"prompt": "a calm sea"},
            f"{receiver.url}/console/ok",
        ),
        "msg",
    )
    assert task_api.wait_final(gateway, key, "msg", failed_id)["state"] == "fail"
    receiver.wait_for("/console/failed", 2)
    receiver.wait_for("/console/ok", 1)
    deadline = time.monotonic() + 20
    while True:  # the delivery is recorded just after the receiver answered
        cards = {
            c["id"]: c
            for c in httpx.get(f"{gateway.url}/admin/tasks", headers=admin(gateway)).json()
        }
        states = {cards[i]["callback_state"] for i in (failed_id, ok_id)}
        if states == {"delivered"} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert states == {"delivered"}, cards
    failed = cards[failed_id]
    assert failed["error_code"] == 422 and "input.image_urls[0]" in failed["error_message"]

    page = new_page(browser, console, DESKTOP, timezone="Asia/Tokyo")
    try:
        log_in(page, gateway)
        open_page(page, gateway, "tasks")
        card = page.locator(f'#gallery li[data-task="{failed_id}"]')
        expect(card.locator(".badge")).to_have_text("failed")
        reason = card.locator(".failure")
        expect(reason).to_contain_text("input.image_urls[0]")
        assert (
            len(reason.inner_text()) <= 120
            and reason.get_attribute("title") == (failed["error_message"])
        )
        expect(card).to_contain_text("callback delivered (2 tries)")
        ok_card = page.locator(f'#gallery li[data-task="{ok_id}"]')
        expect(ok_card).to_contain_text("callback delivered (1 try)")
        expect(ok_card.locator(".failure")).to_have_count(0)
        assert "tries)" not in ok_card.inner_text()

        card.get_by_role("button").click()
        dialog = page.locator("#task-dialog")
        expect(dialog).to_be_visible()
        # The reason comes first, right under the title.
        failure = page.locator("#task-failure")
        expect(failure).to_be_visible()
        expect(failure).to_have_text(f"Failed (code 422): {failed['error_message']}")
        after_title = page.locator("#task-dialog-h + *")
        expect(after_title).to_have_id("task-failure")
        # Times in the viewer's zone (Tokyo, UTC+9), not epoch milliseconds.
        record = page.locator("#task-record")
        for label, field_name in (("Created", "created_at"), ("Completed", "completed_at")):
            local = datetime.fromisoformat(failed[field_name]).astimezone(ZoneInfo("Asia/Tokyo"))
            expect(record.locator(f"dt:text-is('{label}') + dd")).to_have_text(
                local.strftime("%Y-%m-%d %H:%M:%S")
            )
        expect(page.locator("#task-zone")).to_contain_text("Asia/Tokyo")
        expect(record.locator("dt:text-is('Callback') + dd")).to_contain_text("after 2 tries")
        assert not re.search(r"\b1[6-9]\d{11}\b", dialog.inner_text()), "epoch milliseconds"
        # `param` is an indented object, not a string full of escaped quotes.
        shown = page.locator("#task-param").inner_text()
        assert '\\"' not in shown and '\n  "input": {' in shown, shown
        param = json.loads(shown)
        assert param["input"] == failing and param["model"] == "google/nano-banana"
        # Long values wrap: nothing in the dialog runs off to the right.
        assert dialog.evaluate(OVERFLOWING) == []
        page.screenshot(path=ARTIFACTS / "tasks-dialog-failed-1280.png")
    finally:
        page.context.close()


# True once the four charts' titles all contain the argument.
CHARTS_TITLED = """(words) => {
    const titles = [...document.querySelectorAll(".chart-slot svg > title")];
    return titles.length === 4 && titles.every((t) => t.textContent.includes(words));
}"""


def test_charts_render_with_data(page: Page, gateway: Gateway) -> None:
    for prompt in ("one", "two"):
        assert generate(gateway, gateway.client_key, prompt).status_code == 200
    # Refused before its model was read: a usage record with no model and no upstream.
    assert generate(gateway, "ng_00000000_wrong").status_code == 401
    log_in(page, gateway)
    deadline = time.monotonic() + 10
    while True:  # usage records are flushed in the background, every 0.2 s here
        stats = httpx.get(f"{gateway.url}/admin/stats", headers=admin(gateway)).json()
        names = {s["name"] for s in stats["series"]}
        if "(none)" in names or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    open_page(page, gateway, "overview")
    requests = page.locator('[data-total="requests"]').inner_text().replace(",", "")
    assert requests.isdigit() and int(requests) >= 2, requests

    boxes = page.locator("figure.chart-box")
    expect(boxes).to_have_count(4)
    for metric in ("requests", "images", "credits", "error_rate"):
        box = page.locator(f'figure.chart-box[data-metric="{metric}"]')
        expect(box.locator(".chart-slot svg")).to_have_count(1)
        marks = box.locator(".chart-slot svg g.series polyline, .chart-slot svg g.series circle")
        assert marks.count() >= 1, metric
        # Every legend entry has a name: the refused call is "(none)", never ": 1".
        legend = box.locator('svg text[fill="#222"]').all_text_contents()
        assert legend and all(re.match(r"[^:\s][^:]*: ", entry) for entry in legend), legend
        assert any(entry.startswith("(none): ") for entry in legend), legend
        if metric == "credits":  # credits read as money too
            assert all(re.search(r": [\d.]+[kMG]? \(\$[\d,.]+\)$", e) for e in legend), legend
    spent = page.locator('[data-total="credits"]').inner_text().replace(",", "")
    expect(page.locator('[data-total-money="credits"]')).to_have_text(
        re.compile(rf"^\${int(spent) / 1_000_000:.2f}")
    )

    page.get_by_label("Last hour").check()
    page.wait_for_function(CHARTS_TITLED, arg="per model, last hour")
    page.get_by_label("Upstream", exact=True).check()
    page.wait_for_function(CHARTS_TITLED, arg="per upstream, last hour")
    for box in boxes.all():
        expect(box.locator("g.series").first).to_have_attribute("data-series", "demo")
        expect(box.locator("svg")).to_contain_text("demo:")
        expect(box.locator("svg")).to_contain_text("(none):")
        assert box.locator("g.series polyline, g.series circle").count() >= 1


# The number of lines each matching cell's text takes: the distinct tops of its text's boxes.
CELL_LINES = """(cells) => cells.map((td) => {
    const tops = new Set();
    const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const range = document.createRange();
        range.selectNodeContents(node);
        for (const rect of range.getClientRects()) tops.add(Math.round(rect.top));
    }
    return tops.size;
})"""


def test_usage_tells_a_spend_cap_from_an_empty_balance_and_keeps_rows_on_one_line(
    page: Page, gateway: Gateway
) -> None:
    capped = httpx.post(
        f"{gateway.url}/admin/keys",
        headers=admin(gateway),
        json={"name": "capped", "credits": 10_000_000, "daily_cap": 1000},
    ).json()
    broke = httpx.post(
        f"{gateway.url}/admin/keys", headers=admin(gateway), json={"name": "broke", "credits": 0}
    ).json()
    refused = {}
    for name, made in (("cap", capped), ("balance", broke)):
        resp = generate(gateway, made["key"])
        assert resp.status_code == 402, resp.text
        refused[name] = resp.headers["x-request-id"]
    assert generate(gateway, gateway.client_key, "a long day").status_code == 200

    log_in(page, gateway)
    deadline = time.monotonic() + 10
    while True:  # usage records are flushed in the background
        open_page(page, gateway, "usage")
        rows = page.locator("#usage-table tbody tr[data-request]")
        found = [page.locator(f'tr[data-request="{rid}"]').count() for rid in refused.values()]
        if found == [1, 1] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    # Both are RESOURCE_EXHAUSTED; the message says which limit it was.
    cap_row = page.locator(f'tr[data-request="{refused["cap"]}"]')
    balance_row = page.locator(f'tr[data-request="{refused["balance"]}"]')
    for row in (cap_row, balance_row):
        expect(row.locator(".badge")).to_have_text("402")
        expect(row.locator(".error-cell .reason")).to_have_text("RESOURCE_EXHAUSTED")
    expect(cap_row.locator(".error-cell .message")).to_contain_text("daily spend cap of 1,000")
    expect(balance_row.locator(".error-cell .message")).to_contain_text("Insufficient credits")
    # Costs read as money; times are the viewer's local time, the zone in the header.
    cost = rows.first.locator("td.num").last
    expect(cost.locator(".money")).to_have_text(re.compile(r"^\$\d"))
    expect(page.locator("#usage-time-h")).to_have_text(re.compile(r"^Time \(.+\)$"))

    # Ids, models and times never wrap (a narrower screen scrolls the table sideways instead), and
    # at a laptop's width the whole table, error messages included, fits without scrolling.
    for viewport in (DESKTOP, {"width": 1366, "height": 768}):
        page.set_viewport_size(viewport)
        for column in (1, 2, 4, 5, 10):  # time, key, model, upstream, cost
            lines = rows.locator(f"td:nth-child({column})").evaluate_all(CELL_LINES)
            expected = 2 if column == 10 else 1  # credits, and money beneath
            assert set(lines) == {expected}, (viewport, column, lines)
        wide, room = page.locator("#usage-table").evaluate(
            "(t) => [t.scrollWidth, t.parentElement.clientWidth]"
        )
        assert wide <= room, f"at {viewport['width']} px the table needs {wide} px of {room}"
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=ARTIFACTS / "usage-errors-1280.png", full_page=True)

    open_page(page, gateway, "keys")  # the same on the keys page
    keys = page.locator("#keys-table tbody tr")
    for column in (1, 2, 5):  # prefix, name, expiry
        assert set(keys.locator(f"td:nth-child({column})").evaluate_all(CELL_LINES)) == {1}


def test_credits_show_in_the_operators_currency(
    browser: Browser, console: BrowserConsole, tmp_path: Path
) -> None:
    gw = start_gateway(tmp_path, NANOGATE_CURRENCY="EUR", NANOGATE_CREDITS_PER_UNIT="1000")
    page = new_page(browser, console, DESKTOP)
    try:
        create_account(gw, "reseller", 2_500_000)
        log_in(page, gw)
        open_page(page, gw, "keys")
        expect(page.locator("footer")).to_contain_text("1,000 credits = €1.00")
        balance = page.locator('#accounts-table tr[data-account="reseller"] td.num').first
        expect(balance.locator(".credits")).to_have_text("2,500,000")
        expect(balance.locator(".money")).to_have_text("€2,500.00")
        # Typing credits shows what they are worth.
        field = page.locator("#account-form input[name=credits]")
        field.fill("1234567")
        expect(page.locator("#account-form .money-hint")).to_have_text("= €1,234.57")
    finally:
        page.context.close()
        stop(gw.proc)


def test_keyboard_login_and_navigation(page: Page, gateway: Gateway) -> None:
    page.goto(f"{gateway.url}/console/login")
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    focused = ""
    for _ in range(6):
        page.keyboard.press("Tab")
        focused = page.evaluate("() => document.activeElement.id")
        if focused == "admin-key":
            break
    assert focused == "admin-key"
    page.keyboard.type(gateway.admin_key)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/overview")

    open_page(page, gateway, "keys")
    nav = page.locator("nav[aria-label='Console pages'] a")
    expect(nav).to_have_count(len(PAGES))
    current = page.locator("nav a[aria-current='page']")
    expect(current).to_have_count(1)
    expect(current).to_have_attribute("href", "/console/keys")
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    reached: dict[str, str | None] = {}
    for _ in range(12):
        page.keyboard.press("Tab")
        href, aria, outline = page.evaluate(
            """() => { const el = document.activeElement;
                 return [el.getAttribute('href'), el.getAttribute('aria-current'),
                         getComputedStyle(el).outlineStyle]; }"""
        )
        if href and href.startswith("/console/"):
            reached[href] = aria
            assert outline != "none", f"no visible focus on {href}"
    assert set(reached) >= {f"/console/{name}" for name in PAGES}, reached
    assert {h for h, aria in reached.items() if aria == "page"} == {"/console/keys"}


def test_csrf_token_is_required_from_the_page(
    page: Page, console: BrowserConsole, gateway: Gateway
) -> None:
    console.allow(r"status of 403")
    log_in(page, gateway)
    open_page(page, gateway, "keys")
    script = """async ([name, withToken]) => {
        const headers = { "content-type": "application/json" };
        if (withToken) headers["X-CSRF-Token"] =
            document.querySelector('meta[name="csrf-token"]').content;
        const resp = await fetch("/admin/accounts", {
            method: "POST", headers, body: JSON.stringify({ name, credits: 1 }) });
        return [resp.status, await resp.text()];
    }"""
    status, body = page.evaluate(script, ["csrf-probe", False])
    assert status == 403 and "X-CSRF-Token" in body, body
    accounts = httpx.get(f"{gateway.url}/admin/accounts", headers=admin(gateway)).json()
    assert "csrf-probe" not in {a["name"] for a in accounts}
    status, body = page.evaluate(script, ["csrf-probe", True])  # the same call, with the token
    assert status == 201, body


def test_upstreams_show_which_catalog_models_a_gemini_upstream_lacks(
    page: Page, tmp_path: Path
) -> None:
    sim = start_simulator("--models", "gemini-3-pro-image,gemini-3.8-flash")
    gw = start_gateway(
        tmp_path,
        {"upstreams": [{"name": "sim", "kind": "gemini", "base_url": sim.url, "api_key": SIM_KEY}]},
    )
    try:
        log_in(page, gw)
        open_page(page, gw, "upstreams")
        cell = page.locator('tr[data-upstream="sim"] td.model-check')
        # The first look starts the check; the 5-second refresh shows its answer.
        expect(cell).to_contain_text("missing", timeout=20_000)
        expect(cell).to_contain_text("gemini-3.1-flash-image")
        expect(cell).to_contain_text("checked")
        page.screenshot(path=ARTIFACTS / "upstreams-model-check-1280.png", full_page=True)
    finally:
        stop(gw.proc)
        stop(sim.proc)


def test_the_maintenance_switch_refuses_calls_and_is_lifted_from_the_console(
    page: Page, gateway: Gateway
) -> None:
    log_in(page, gateway)
    open_page(page, gateway, "upstreams")
    call = f"{gateway.url}/v1beta/models/{MODEL}:generateContent"
    body = {"contents": [{"parts": [{"text": "a kite"}]}]}

    def status() -> int:
        headers = {"x-goog-api-key": gateway.client_key}
        return httpx.post(call, headers=headers, json=body, timeout=30).status_code

    switch = page.locator("#switch-maintenance")
    expect(switch).not_to_be_checked()
    try:
        switch.check()
        expect(page.locator("#status")).to_contain_text("Maintenance mode is on")
        state = httpx.get(f"{gateway.url}/admin/switches", headers=admin(gateway)).json()
        assert state == {"maintenance": True, "disabled_features": []}
        assert status() == 503
        # The console keeps working in maintenance mode: the page reloads and shows it.
        page.reload()
        expect(page.locator("#switch-maintenance")).to_be_checked()
        page.locator('[data-feature="callbacks"]').check()
        page.wait_for_function(
            "() => JSON.parse(document.body.dataset.switches || '{}')"
            ".disabled_features?.includes('callbacks')"
        )
        page.locator("#switch-maintenance").uncheck()
        page.locator('[data-feature="callbacks"]').uncheck()
        page.wait_for_function(
            "() => { const s = JSON.parse(document.body.dataset.switches || '{}');"
            " return s.maintenance === false && s.disabled_features.length === 0; }"
        )
        assert status() == 200
    finally:
        httpx.patch(
            f"{gateway.url}/admin/switches",
            headers=admin(gateway),
            json={"maintenance": False, "disabled_features": []},
        )


def test_every_page_fits_a_phone_and_is_screenshotted(
    browser: Browser, console: BrowserConsole, gateway: Gateway
) -> None:
    overflowing = []
    for viewport in (DESKTOP, PHONE):
        page = new_page(browser, console, viewport)
        try:
            for name in ("login", *PAGES):
                if name == "login":
                    page.goto(f"{gateway.url}/console/login")
                    expect(page.locator("#admin-key")).to_be_focused()
                else:
                    open_page(page, gateway, name)
                if name == "tasks":  # the thumbnails the screenshot shows
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('#gallery img')]"
                        ".every((img) => img.complete && img.naturalWidth > 0)"
                    )
                page.screenshot(path=ARTIFACTS / f"{name}-{viewport['width']}.png", full_page=True)
                width, inner = page.evaluate(
                    "() => [document.documentElement.scrollWidth, window.innerWidth]"
                )
                if width > inner + 1:
                    overflowing.append(f"{name} at {viewport['width']} px: {width} > {inner}")
                if name == "upstreams":  # a checkbox sits beside its words, not above them
                    box = page.locator("label:has(#auto-refresh)").bounding_box()
                    assert box is not None and box["height"] < 30, box
                if name == "login":
                    log_in(page, gateway)
        finally:
            page.context.close()
    assert not overflowing
    assert not console.unexpected(), console.unexpected()
    for name in ("login", *PAGES):
        for viewport in (DESKTOP, PHONE):
            assert (ARTIFACTS / f"{name}-{viewport['width']}.png").stat().st_size > 5000
