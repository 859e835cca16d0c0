"""The admin API over real HTTP: admin key only, keys created and revoked, usage listed."""

from __future__ import annotations

import time

import httpx

from .conftest import Gateway, sdk_client


def admin(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.admin_key}"}


def test_admin_routes_need_the_admin_key(demo_gateway: Gateway) -> None:
    assert httpx.get(f"{demo_gateway.url}/admin/keys").status_code == 401
    client = httpx.get(
        f"{demo_gateway.url}/admin/keys", headers={"x-api-key": demo_gateway.client_key}
    )
    assert client.status_code == 403
    assert client.json()["error"]["status"] == "PERMISSION_DENIED"


def test_create_use_list_revoke(demo_gateway: Gateway) -> None:
    created = httpx.post(
        f"{demo_gateway.url}/admin/keys",
        headers=admin(demo_gateway),
        json={
            "name": "app-1",
            "credits": 5000,
            "allowed_models": ["nano-banana-pro"],
            "rpm_limit": 60,
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    key, prefix = body["key"], body["prefix"]
    assert key.startswith(prefix + "_") and body["status"] == "active" and body["balance"] == 5000
    assert body["allowed_models"] == ["gemini-3-pro-image"]  # the alias, resolved (a GA id)

    listed = httpx.get(f"{demo_gateway.url}/admin/keys", headers=admin(demo_gateway)).json()
    assert prefix in {k["prefix"] for k in listed}
    assert key not in created.request.content.decode() + str(listed)

    assert (
        sdk_client(demo_gateway, key)
        .models.count_tokens(model="gemini-3-pro-image-preview", contents="hi")
        .total_tokens
    )
    revoked = httpx.post(
        f"{demo_gateway.url}/admin/keys/{prefix}/revoke", headers=admin(demo_gateway)
    )
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    again = httpx.post(
        f"{demo_gateway.url}/admin/keys/{prefix}/revoke", headers=admin(demo_gateway)
    )
    assert again.status_code == 404


def test_validation_errors_are_clear(demo_gateway: Gateway) -> None:
    bad = httpx.post(
        f"{demo_gateway.url}/admin/keys", headers=admin(demo_gateway), json={"credits": -5}
    )
    assert bad.status_code == 400
    assert "credits" in bad.json()["error"]["message"]
    unknown = httpx.post(
        f"{demo_gateway.url}/admin/keys",
        headers=admin(demo_gateway),
        json={"allowed_models": ["gemini-9"]},
    )
    assert unknown.status_code == 404


def test_image_output_on_create_patch_and_list(demo_gateway: Gateway) -> None:
    url, headers = f"{demo_gateway.url}/admin/keys", admin(demo_gateway)
    plain = httpx.post(url, headers=headers, json={"name": "plain"})
    assert plain.status_code == 201 and plain.json()["image_output"] is None
    created = httpx.post(url, headers=headers, json={"name": "urls", "image_output": "url"})
    assert created.status_code == 201, created.text
    prefix = created.json()["prefix"]
    assert created.json()["image_output"] == "url"

    def shown() -> object:
        listed = httpx.get(url, headers=headers).json()
        return next(k["image_output"] for k in listed if k["prefix"] == prefix)

    assert shown() == "url"
    account = created.json()["account_id"]
    detail = httpx.get(f"{demo_gateway.url}/admin/accounts/{account}", headers=headers).json()
    assert [k["image_output"] for k in detail["api_keys"]] == ["url"]

    patched = httpx.patch(f"{url}/{prefix}", headers=headers, json={"image_output": "data"})
    assert patched.status_code == 200 and patched.json()["image_output"] == "data"
    assert shown() == "data"
    # Another field alone leaves it; null clears it (back to the default, "data").
    renamed = httpx.patch(f"{url}/{prefix}", headers=headers, json={"name": "renamed"})
    assert renamed.json()["image_output"] == "data"
    cleared = httpx.patch(f"{url}/{prefix}", headers=headers, json={"image_output": None})
    assert cleared.status_code == 200 and cleared.json()["image_output"] is None
    assert shown() is None

    for bad in ("b64_json", "URL", 1):
        refused = httpx.patch(f"{url}/{prefix}", headers=headers, json={"image_output": bad})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT" and "image_output" in error["message"]
        again = httpx.post(url, headers=headers, json={"name": "bad", "image_output": bad})
        assert again.status_code == 400 and "image_output" in again.json()["error"]["message"]
    assert shown() is None
    assert "bad" not in {k["name"] for k in httpx.get(url, headers=headers).json()}


def test_usage_listing(demo_gateway: Gateway) -> None:
    sdk_client(demo_gateway).models.count_tokens(model="gemini-2.5-flash", contents="hello")
    prefix = "_".join(demo_gateway.client_key.split("_")[:2])
    deadline = time.monotonic() + 5
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline and not rows:
        rows = httpx.get(
            f"{demo_gateway.url}/admin/usage",
            params={"key": prefix, "limit": 5},
            headers=admin(demo_gateway),
        ).json()
        time.sleep(0.1)
    assert rows and rows[0]["key_prefix"] == prefix and rows[0]["dialect"] == "gemini"
