"""Runtime switches across nodes: maintenance mode and features switched off, set through one
node's admin API or the CLI, followed by every node within a second (two `nanogate serve`
processes on one database, SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Gateway, two_nodes, within
from .test_tasks import create

GEMINI = "/v1beta/models/gemini-2.5-flash-image:generateContent"
BODY = {"contents": [{"parts": [{"text": "a kite"}]}]}


@pytest.fixture
def nodes(tmp_path: Path, database_env: dict[str, str]) -> Iterator[tuple[Gateway, Gateway]]:
    with two_nodes(tmp_path, None, database_env) as both:
        yield both


def admin(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.admin_key}"}


def gemini_status(gw: Gateway) -> int:
    response = httpx.post(
        f"{gw.url}{GEMINI}", headers={"x-goog-api-key": gw.client_key}, json=BODY, timeout=30
    )
    if response.status_code == 503:
        assert response.json()["error"]["status"] == "UNAVAILABLE"
        assert "maintenance" in response.json()["error"]["message"]
    return response.status_code


def test_maintenance_set_on_one_node_reaches_the_other_within_a_second(
    nodes: tuple[Gateway, Gateway],
) -> None:
    a, b = nodes
    assert httpx.get(f"{b.url}/admin/switches", headers=admin(b)).json() == {
        "maintenance": False,
        "disabled_features": [],
    }
    assert gemini_status(b) == 200

    response = httpx.patch(f"{a.url}/admin/switches", headers=admin(a), json={"maintenance": True})
    assert response.status_code == 200, response.text
    assert response.json() == {"maintenance": True, "disabled_features": []}
    assert gemini_status(a) == 503  # the node that was asked: at once
    within(1.0, lambda: gemini_status(b) == 503)
    task = create(b, b.client_key, "message", "google/nano-banana", {"prompt": "x"})
    assert task.status_code == 455 and task.json()["code"] == 455
    chat = httpx.post(
        f"{b.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {b.client_key}"},
        json={"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 503 and chat.json()["error"]["type"] == "api_error", chat.text
    # Admin, health and the console stay up.
    assert httpx.get(f"{b.url}/healthz").status_code == 200
    assert httpx.get(f"{b.url}/admin/switches", headers=admin(b)).json()["maintenance"] is True
    assert httpx.get(f"{b.url}/console", follow_redirects=True).status_code == 200

    # Lifted from the CLI, which works on the shared database: both nodes follow.
    done = a.cli("switches", "set", "--maintenance", "off")
    assert done.returncode == 0, done.stderr
    assert "maintenance: off" in done.stdout
    within(1.0, lambda: gemini_status(a) == 200 and gemini_status(b) == 200)
    shown = b.cli("switches", "show")
    assert shown.returncode == 0 and "maintenance: off" in shown.stdout, shown.stderr


def test_features_switched_off_at_run_time(nodes: tuple[Gateway, Gateway]) -> None:
    a, b = nodes
    response = httpx.patch(
        f"{b.url}/admin/switches", headers=admin(b), json={"disabled_features": ["tasks"]}
    )
    assert response.json() == {"maintenance": False, "disabled_features": ["tasks"]}

    def refused() -> bool:
        made = create(a, a.client_key, "msg", "google/nano-banana", {"prompt": "x"})
        return made.status_code == 505

    within(1.0, refused)
    done = b.cli("switches", "set", "--disable", "")
    assert done.returncode == 0 and "disabled_features: none" in done.stdout, done.stderr
    within(1.0, lambda: not refused())


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"maintenance": "yes"}, "maintenance"),
        ({"disabled_features": ["teleport"]}, "disabled_features"),
        ({"disabled_features": "tasks"}, "disabled_features"),
        ({"maintainance": True}, "maintainance"),
    ],
)
def test_a_wrong_switch_is_a_400_that_changes_nothing(
    nodes: tuple[Gateway, Gateway], body: dict[str, object], words: str
) -> None:
    a, _ = nodes
    response = httpx.patch(f"{a.url}/admin/switches", headers=admin(a), json=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]
    assert httpx.get(f"{a.url}/admin/switches", headers=admin(a)).json() == {
        "maintenance": False,
        "disabled_features": [],
    }
    client = httpx.patch(
        f"{a.url}/admin/switches", headers={"Authorization": f"Bearer {a.client_key}"}, json={}
    )
    assert client.status_code in (401, 403)
    wrong = a.cli("switches", "set", "--disable", "teleport")
    assert wrong.returncode == 1 and "unknown feature teleport" in wrong.stderr
