"""/docs in a real browser: Swagger UI draws every operation of /openapi.json from files this
gateway serves itself, under a CSP that leaves no room for anything else."""

from __future__ import annotations

import httpx
from playwright.sync_api import sync_playwright

from .conftest import Gateway
from .test_console import CHROMIUM, CHROMIUM_ARGS


def test_docs_load_nothing_from_elsewhere_and_draw_every_operation(demo_gateway: Gateway) -> None:
    page_answer = httpx.get(f"{demo_gateway.url}/docs")
    policy = page_answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy
    assert "unsafe-inline" not in policy and "http" not in page_answer.text.replace("/docs", "")
    document = httpx.get(f"{demo_gateway.url}/openapi.json").json()
    operations = sum(len(item) for item in document["paths"].values())
    requested: list[str] = []
    complaints: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on(
                "console",
                lambda message: (
                    complaints.append(message.text) if message.type == "error" else None
                ),
            )
            page.goto(f"{demo_gateway.url}/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            drawn = page.locator(".opblock").count()
        finally:
            browser.close()
    assert drawn == operations
    assert all(url.startswith(demo_gateway.url) or url.startswith("data:") for url in requested)
    assert not complaints, complaints
