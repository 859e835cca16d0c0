"""The console's admin API over real HTTP: sessions and CSRF, reports, the gallery's thumbnails.

The browser flows are in test_console.py; this file checks the contract a script relies on.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .conftest import Gateway, start_gateway, stop

MODEL = "gemini-2.5-flash-image"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("console-api"))
    yield gateway
    stop(gateway.proc)


def admin(gw: Gateway) -> dict[str, str]:
    return {"x-api-key": gw.admin_key}


@contextmanager
def login(gw: Gateway) -> Iterator[tuple[httpx.Client, str]]:
    """A client holding a console session cookie, and the session's CSRF token."""
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        resp = client.post("/admin/session", json={"key": gw.admin_key})
        assert resp.status_code == 200, resp.text
        yield client, resp.json()["csrf_token"]


def generate(gw: Gateway, key: str | None = None, prompt: str = "a cat") -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1beta/models/{MODEL}:generateContent",
        headers={"x-goog-api-key": key or gw.client_key},
        json={"contents": [{"parts": [{"text": prompt}]}]},
        timeout=30,
    )


def test_login_sets_a_strict_http_only_cookie(gw: Gateway) -> None:
    resp = httpx.post(f"{gw.url}/admin/session", json={"key": gw.admin_key})
    assert resp.status_code == 200, resp.text
    cookie = resp.headers["set-cookie"].lower()
    assert cookie.startswith("nanogate_session=")
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert "secure" not in cookie, "plain http: a Secure cookie would never come back"
    body = resp.json()
    assert body["key_prefix"] == gw.admin_key[:12] and len(body["csrf_token"]) >= 32
    assert gw.admin_key not in resp.text


def test_login_is_refused_clearly(gw: Gateway) -> None:
    url = f"{gw.url}/admin/session"
    client = httpx.post(url, json={"key": gw.client_key})
    assert client.status_code == 403 and "set-cookie" not in client.headers
    assert "client key cannot log in" in client.json()["error"]["message"]
    wrong = httpx.post(url, json={"key": "nga_00000000_nope"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert wrong.json()["error"]["message"] == "That key is not valid. Log in with an admin key."
    empty = httpx.post(url, json={})
    assert empty.status_code == 400 and "key" in empty.json()["error"]["message"]
    # A form post from another site: not JSON, and from a foreign origin.
    form = httpx.post(url, data={"key": gw.admin_key})
    assert form.status_code == 400 and "set-cookie" not in form.headers
    foreign = httpx.post(url, json={"key": gw.admin_key}, headers={"origin": "https://evil.test"})
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers


def test_a_session_needs_its_csrf_token_to_change_anything(gw: Gateway) -> None:
    with login(gw) as (client, csrf):
        assert client.get("/admin/keys").status_code == 200
        body = {"name": f"csrf-{time.time_ns()}", "credits": 5}
        refused = client.post("/admin/accounts", json=body)
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["error"]["message"]
        wrong = client.post("/admin/accounts", json=body, headers={"x-csrf-token": "x" * 43})
        assert wrong.status_code == 403
        names = [a["name"] for a in client.get("/admin/accounts").json()]
        assert body["name"] not in names, "a refused request changed nothing"
        made = client.post("/admin/accounts", json=body, headers={"x-csrf-token": csrf})
        assert made.status_code == 201, made.text
        assert client.get("/admin/session").json()["csrf_token"] == csrf
    # A script with the admin key needs no CSRF token.
    other = httpx.post(
        f"{gw.url}/admin/accounts", json={"name": f"script-{time.time_ns()}"}, headers=admin(gw)
    )
    assert other.status_code == 201


def test_logout_ends_the_session_everywhere(gw: Gateway) -> None:
    with login(gw) as (client, csrf):
        token = client.cookies["nanogate_session"]
        out = client.delete("/admin/session", headers={"x-csrf-token": csrf})
        assert out.status_code == 204
        assert 'nanogate_session=""' in out.headers["set-cookie"] or "max-age=0" in (
            out.headers["set-cookie"].lower()
        )
    replay = httpx.get(f"{gw.url}/admin/keys", cookies={"nanogate_session": token})
    assert replay.status_code == 401
    assert "session has ended" in replay.json()["error"]["message"]
    page = httpx.get(f"{gw.url}/console/keys", cookies={"nanogate_session": token})
    assert page.status_code == 303 and page.headers["location"] == "/console/login"


def test_revoking_the_admin_key_ends_its_sessions(gw: Gateway) -> None:
    made = httpx.post(
        f"{gw.url}/admin/keys", json={"name": "ops", "is_admin": True}, headers=admin(gw)
    ).json()
    session = httpx.post(f"{gw.url}/admin/session", json={"key": made["key"]})
    token = session.cookies["nanogate_session"]
    assert httpx.get(f"{gw.url}/admin/keys", cookies={"nanogate_session": token}).status_code == 200
    httpx.post(f"{gw.url}/admin/keys/{made['prefix']}/revoke", headers=admin(gw))
    after = httpx.get(f"{gw.url}/admin/keys", cookies={"nanogate_session": token})
    assert after.status_code == 401 and "no longer active" in after.json()["error"]["message"]
    page = httpx.get(f"{gw.url}/console/overview", cookies={"nanogate_session": token})
    assert page.status_code == 303 and page.headers["location"] == "/console/login"


def test_pages_need_a_session_and_carry_its_csrf_token(gw: Gateway) -> None:
    bare = httpx.get(f"{gw.url}/console/usage")
    assert bare.status_code == 303 and bare.headers["location"] == "/console/login"
    assert httpx.get(f"{gw.url}/console/login").status_code == 200
    with login(gw) as (client, csrf):
        for page in ("", "/overview", "/keys", "/usage", "/tasks", "/upstreams", "/playground"):
            resp = client.get(f"/console{page}")
            assert resp.status_code == 200, page
            assert f'<meta name="csrf-token" content="{csrf}">' in resp.text
            assert "script-src 'self'" in resp.headers["content-security-policy"]
            assert resp.headers["x-frame-options"] == "DENY"
        missing = client.get("/console/nope")
        assert missing.status_code == 404 and "No console page" in missing.text
        js = client.get("/console/static/console.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert client.get("/console/static/../app.py").status_code == 404


def test_stats_and_charts_count_the_traffic(gw: Gateway) -> None:
    for _ in range(3):
        assert generate(gw).status_code == 200
    bad = httpx.post(
        f"{gw.url}/v1beta/models/{MODEL}:generateContent",
        headers={"x-goog-api-key": gw.client_key},
        json={"contents": []},
    )
    assert bad.status_code == 400
    deadline = time.monotonic() + 10
    while True:  # usage records are written in batches
        stats = httpx.get(f"{gw.url}/admin/stats?window=hour", headers=admin(gw)).json()
        if stats["totals"]["requests"] >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stats["totals"]["images"] >= 3 and stats["totals"]["credits"] > 0
    assert stats["totals"]["errors"] >= 1 and 0 < stats["totals"]["error_rate"] < 1
    flash = next(s for s in stats["series"] if s["name"] == MODEL)
    assert flash["requests"][-1] >= 4
    by_upstream = httpx.get(
        f"{gw.url}/admin/stats?window=day&by=upstream", headers=admin(gw)
    ).json()
    assert "demo" in [s["name"] for s in by_upstream["series"]]
    chart = httpx.get(
        f"{gw.url}/admin/stats/chart?metric=error_rate&window=hour", headers=admin(gw)
    )
    assert chart.status_code == 200 and chart.headers["content-type"] == "image/svg+xml"
    assert "<polyline" in chart.text or "<circle" in chart.text
    assert chart.headers["content-security-policy"].startswith("default-src 'none'")
    # Credits also read as money (1,000,000 credits = $1 by default).
    spent = httpx.get(f"{gw.url}/admin/stats/chart?metric=credits&window=hour", headers=admin(gw))
    assert re.search(rf"{MODEL}: [\d.]+[kM]? \(\$0\.\d+\)</text>", spent.text), spent.text
    bad_window = httpx.get(f"{gw.url}/admin/stats?window=week", headers=admin(gw))
    assert bad_window.status_code == 400 and "window" in bad_window.json()["error"]["message"]


def test_usage_filters_pages_and_exports_csv(gw: Gateway) -> None:
    made = httpx.post(
        f"{gw.url}/admin/keys", json={"name": "usage", "credits": 10**9}, headers=admin(gw)
    ).json()
    for i in range(5):
        assert generate(gw, made["key"], f"picture {i}").status_code == 200
    prefix = made["prefix"]
    deadline = time.monotonic() + 10
    while True:
        rows = httpx.get(f"{gw.url}/admin/usage?key={prefix}", headers=admin(gw)).json()
        if len(rows) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(rows) == 5 and {r["key_prefix"] for r in rows} == {prefix}
    page = httpx.get(f"{gw.url}/admin/usage?key={prefix}&limit=3", headers=admin(gw))
    assert len(page.json()) == 3
    cursor = page.headers["x-next-before"]
    rest = httpx.get(
        f"{gw.url}/admin/usage?key={prefix}&limit=3&before={cursor}", headers=admin(gw)
    )
    assert len(rest.json()) == 2 and "x-next-before" not in rest.headers
    ids = [r["id"] for r in page.json() + rest.json()]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5
    account = made["account"]
    by_account = httpx.get(f"{gw.url}/admin/usage?account={account}", headers=admin(gw)).json()
    assert len(by_account) == 5
    assert (
        httpx.get(f"{gw.url}/admin/usage?outcome=error&key={prefix}", headers=admin(gw)).json()
        == []
    )
    naive = httpx.get(f"{gw.url}/admin/usage?since=2026-01-01T00:00:00", headers=admin(gw))
    assert naive.status_code == 400 and "time zone" in naive.json()["error"]["message"]
    unknown = httpx.get(f"{gw.url}/admin/usage?account=nobody-{time.time_ns()}", headers=admin(gw))
    assert unknown.status_code == 404
    # From the console: `key` is the filter, never taken for the caller's credential.
    with login(gw) as (client, _):
        assert len(client.get(f"/admin/usage?key={prefix}").json()) == 5
        assert client.get(f"/admin/usage.csv?key={prefix}").text.count(prefix) == 5
    as_credential = httpx.get(f"{gw.url}/admin/keys?key={gw.admin_key}")
    assert as_credential.status_code == 401
    exported = httpx.get(f"{gw.url}/admin/usage.csv?key={prefix}", headers=admin(gw))
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(table) == 5 and {r["key_prefix"] for r in table} == {prefix}
    assert sum(int(r["cost"]) for r in table) == sum(r["cost"] for r in rows)


def test_usage_and_its_csv_tell_a_spend_cap_from_an_empty_balance(gw: Gateway) -> None:
    capped = httpx.post(
        f"{gw.url}/admin/keys",
        json={"name": "capped", "credits": 10**7, "daily_cap": 1000},
        headers=admin(gw),
    ).json()
    broke = httpx.post(
        f"{gw.url}/admin/keys", json={"name": "broke", "credits": 0}, headers=admin(gw)
    ).json()
    told = {}
    for made in (capped, broke):
        refused = generate(gw, made["key"])
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        told[made["prefix"]] = refused.json()["error"]["message"]
    assert "daily spend cap of 1,000 credits" in told[capped["prefix"]]
    assert told[broke["prefix"]].startswith("Insufficient credits")
    deadline = time.monotonic() + 10
    while True:  # usage records are written in batches
        rows = {
            prefix: httpx.get(f"{gw.url}/admin/usage?key={prefix}", headers=admin(gw)).json()
            for prefix in told
        }
        if all(rows.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for prefix, message in told.items():
        (row,) = rows[prefix]
        # The status name is the same; the message the client got tells them apart.
        assert (row["status"], row["error"]) == (402, "RESOURCE_EXHAUSTED")
        assert row["error_message"] == message
    exported = httpx.get(f"{gw.url}/admin/usage.csv?outcome=error", headers=admin(gw))
    table = {r["key_prefix"]: r for r in csv.DictReader(io.StringIO(exported.text))}
    for prefix, message in told.items():
        assert (table[prefix]["status"], table[prefix]["error"]) == ("402", "RESOURCE_EXHAUSTED")
        assert table[prefix]["error_message"] == message
    assert capped["key"] not in exported.text and broke["key"] not in exported.text


def test_the_gallery_lists_tasks_with_cached_thumbnails(gw: Gateway) -> None:
    created = httpx.post(
        f"{gw.url}/api/v1/client/job/CreateTask",
        headers={"x-api-key": gw.client_key},
        json={
            "model": "google/nano-banana",
            "input": {"prompt": "a wide harbour", "aspect_ratio": "16:9"},
        },
    )
    task_id = created.json()["data"]["task_id"]
    deadline = time.monotonic() + 20
    while True:
        cards = httpx.get(f"{gw.url}/admin/tasks?limit=5", headers=admin(gw)).json()
        card = next(c for c in cards if c["id"] == task_id)
        if card["state"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert card["state"] == "succeeded" and card["prompt"] == "a wide harbour"
    assert card["cost"] > 0 and card["run_ms"] is not None and card["callback_state"] == "none"
    (image,) = card["files"]
    full = httpx.get(image["url"])
    assert full.status_code == 200
    width, height = Image.open(io.BytesIO(full.content)).size
    assert width > 1000
    thumb = httpx.get(f"{gw.url}{image['thumbnail']}", headers=admin(gw))
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    small = Image.open(io.BytesIO(thumb.content))
    assert max(small.size) <= 384 and abs(small.size[0] / small.size[1] - width / height) < 0.02
    assert len(thumb.content) < len(full.content) / 4
    # Made once: the second request is the same stored bytes, and storage holds one thumbnail.
    again = httpx.get(f"{gw.url}{image['thumbnail']}", headers=admin(gw))
    assert again.content == thumb.content
    webps = list(Path(gw.data_dir, "storage").rglob("*.webp"))
    assert len([p for p in webps if p.read_bytes() == thumb.content]) == 1
    missing = httpx.get(f"{gw.url}/admin/tasks/{task_id}/thumbnail?index=3", headers=admin(gw))
    assert missing.status_code == 404 and "has no image 3" in missing.json()["error"]["message"]
    unknown = httpx.get(f"{gw.url}/admin/tasks/{'0' * 32}/thumbnail", headers=admin(gw))
    assert unknown.status_code == 404
    done = httpx.get(f"{gw.url}/admin/tasks?state=succeeded", headers=admin(gw)).json()
    assert done and all(c["state"] == "succeeded" for c in done)
    assert httpx.get(f"{gw.url}/admin/tasks?state=lost", headers=admin(gw)).status_code == 400


def test_the_catalog_and_the_console_api_are_documented(gw: Gateway) -> None:
    models = httpx.get(f"{gw.url}/admin/models", headers=admin(gw)).json()
    flash = next(m for m in models if m["name"] == MODEL)
    assert flash["kind"] == "image" and "16:9" in flash["aspect_ratios"]
    assert flash["max_input_images"] >= 1 and flash["image_sizes"]
    paths = httpx.get(f"{gw.url}/openapi.json").json()["paths"]
    for path in (
        "/admin/session",
        "/admin/stats",
        "/admin/stats/chart",
        "/admin/usage",
        "/admin/usage.csv",
        "/admin/tasks",
        "/admin/tasks/{task_id}/thumbnail",
        "/admin/models",
        "/admin/upstreams",
    ):
        assert path in paths, path
    assert not any(p.startswith("/console") for p in paths)
