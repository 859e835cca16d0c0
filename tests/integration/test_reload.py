"""Config reloads with no restart: the upstreams and the models' catalog re-read from the config
file, asked of one node (admin API or CLI) and followed by every node within a second, or of
one process by SIGHUP. Two `nanogate serve` processes on one database and one config file."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.simulator.processes import stop

from .conftest import (
    Gateway,
    Simulator,
    simulator_upstream,
    start_simulator,
    two_nodes,
    within,
)

MODEL = "gemini-2.5-flash"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}


@pytest.fixture
def second() -> Iterator[Simulator]:
    sim = start_simulator()
    yield sim
    stop(sim.proc)


@pytest.fixture
def nodes(
    tmp_path: Path, simulator: Simulator, database_env: dict[str, str]
) -> Iterator[tuple[Gateway, Gateway]]:
    config = {"upstreams": [simulator_upstream(simulator, name="first")]}
    with two_nodes(tmp_path, config, database_env) as both:
        yield both


def admin(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.admin_key}"}


def write_config(gw: Gateway, config: dict[str, Any] | str) -> None:
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    Path(gw.env["NANOGATE_CONFIG"]).write_text(text)


def upstreams(gw: Gateway) -> list[str]:
    listed = httpx.get(f"{gw.url}/admin/upstreams", headers=admin(gw), timeout=10)
    assert listed.status_code == 200, listed.text
    return [row["name"] for row in listed.json()]


def display_name(gw: Gateway) -> str:
    found = httpx.get(
        f"{gw.url}/v1beta/models/{MODEL}", headers={"x-goog-api-key": gw.client_key}, timeout=10
    )
    assert found.status_code == 200, found.text
    return str(found.json()["displayName"])


def call(gw: Gateway) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1beta/models/{MODEL}:generateContent",
        headers={"x-goog-api-key": gw.client_key},
        json=BODY,
        timeout=30,
    )


def test_a_reload_on_one_node_reaches_every_node_within_a_second(
    nodes: tuple[Gateway, Gateway], simulator: Simulator, second: Simulator
) -> None:
    a, b = nodes
    assert upstreams(a) == upstreams(b) == ["first"]
    shipped = display_name(b)
    write_config(
        a,
        {
            "upstreams": [simulator_upstream(second, name="second")],
            "models": {MODEL: {"display_name": "Flash, renamed by the operator"}},
        },
    )
    reloaded = httpx.post(f"{a.url}/admin/reload", headers=admin(a), timeout=10)
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["upstreams"] == ["second"]
    assert reloaded.json()["restart_needed"] == []
    assert reloaded.json()["models"] > 1
    assert upstreams(a) == ["second"]  # the node asked: at once
    within(1.0, lambda: upstreams(b) == ["second"])
    assert display_name(a) == display_name(b) == "Flash, renamed by the operator" != shipped
    # Calls go to the new upstream, from both nodes; the old one hears nothing more.
    simulator.clear()
    second.clear()
    assert call(a).status_code == 200 and call(b).status_code == 200
    assert len(second.requests()) == 2 and simulator.requests() == []


def test_a_config_that_does_not_load_changes_nothing(
    nodes: tuple[Gateway, Gateway], simulator: Simulator
) -> None:
    a, b = nodes
    for broken, says in (
        ("upstreams: [\n", "not valid YAML"),
        (yaml.safe_dump({"upstreams": [{"name": "x", "kind": "carrier-pigeon"}]}), "upstreams"),
        (yaml.safe_dump({"models": {MODEL: {"output_token_limit": -1}}}), "invalid"),
    ):
        write_config(a, broken)
        refused = httpx.post(f"{a.url}/admin/reload", headers=admin(a), timeout=10)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert error["message"].startswith("The config did not reload: "), error
        assert says in error["message"] and "Nothing changed" in error["message"]
        assert "Traceback" not in error["message"]
    # The CLI checks the file before it asks any node.
    cli = a.cli("reload")
    assert cli.returncode != 0 and "invalid" in cli.stderr + cli.stdout, cli.stderr
    assert "Traceback" not in cli.stderr
    assert upstreams(a) == upstreams(b) == ["first"]
    simulator.clear()
    assert call(a).status_code == 200 and len(simulator.requests()) == 1


def test_settings_a_reload_cannot_apply_are_named(
    nodes: tuple[Gateway, Gateway], simulator: Simulator
) -> None:
    a, _ = nodes
    write_config(
        a,
        {
            "upstreams": [simulator_upstream(simulator, name="first")],
            "result_ttl_hours": 5,
            "max_attempts": 2,
        },
    )
    reloaded = httpx.post(f"{a.url}/admin/reload", headers=admin(a), timeout=10)
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["restart_needed"] == ["result_ttl_hours"]
    assert reloaded.json()["upstreams"] == ["first"]


def test_sighup_reloads_one_process_and_the_cli_every_node(
    nodes: tuple[Gateway, Gateway], second: Simulator
) -> None:
    a, b = nodes
    write_config(a, {"upstreams": [simulator_upstream(second, name="second")]})
    b.proc.send_signal(signal.SIGHUP)
    within(1.0, lambda: upstreams(b) == ["second"])
    assert upstreams(a) == ["first"]  # a signal is for its process alone
    assert "config reloaded" in b.logs()
    done = a.cli("reload")
    assert done.returncode == 0, done.stderr
    assert "Asked every node to reload" in done.stdout
    within(1.5, lambda: upstreams(a) == ["second"])
    assert call(a).status_code == 200 and len(second.requests()) >= 1
