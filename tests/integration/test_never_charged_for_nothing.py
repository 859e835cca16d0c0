"""Drills with real processes (issue 17): a call is settled only once the answer its client
will get exists, so a full disk answers 503 with nothing charged, and a gateway killed right
after a settle leaves the answer and its usage record behind; an Idempotency-Key whose call
ended without an answer is free again at once.

After each drill: the ledger sums to every balance, no hold is pending, and every settled call
either answered 200 or left its answer stored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors

from tests.simulator.processes import free_port, stop

from .conftest import Gateway, Simulator, simulator_upstream, start_gateway, start_simulator
from .test_credits import balance, ledger_matches_balances, new_key, query
from .test_credits_under_load import restart

IMAGE_MODEL = "gemini-2.5-flash-image"
CREDITS = 10_000_000


# -- storage full ------------------------------------------------------------------------------


class Disk:
    """A real, tiny filesystem (tmpfs) for the gateway's result storage, filled to the last
    byte on demand: writes to it then fail with ENOSPC, as on a full disk."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.filler = mountpoint / "filler"

    def fill(self) -> None:
        chunk = b"\0" * 65536
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        return
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Disk]:
    mountpoint = tmp_path_factory.mktemp("tiny-disk")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)],
        check=True,
        capture_output=True,
    )
    try:
        yield Disk(mountpoint)
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)


@pytest.fixture(scope="module")
def full_gw(tmp_path_factory: pytest.TempPathFactory, disk: Disk) -> Iterator[Gateway]:
    config = {"upstreams": [{"name": "demo", "kind": "demo", "latency_ms": 50}]}
    gateway = start_gateway(
        tmp_path_factory.mktemp("full"), config, NANOGATE_STORAGE_DIR=str(disk.mountpoint)
    )
    yield gateway
    stop(gateway.proc)


def openai_client(gw: Gateway, key: str) -> openai.OpenAI:
    # No SDK retries: each call here is one request, and the drill says which comes when.
    return openai.OpenAI(api_key=key, base_url=f"{gw.url}/v1", max_retries=0)


def storage_errors(gw: Gateway) -> float:
    metrics = httpx.get(f"{gw.url}/metrics").text
    found = re.findall(r"^nanogate_storage_errors_total(?:\{[^}]*\})? (\S+)$", metrics, re.M)
    return sum(float(value) for value in found)


def settled_without_answer(gw: Gateway, answered: set[str]) -> list[str]:
    """Settled calls whose client got no 200 and whose answer is not stored."""
    settled = query(
        gw,
        "SELECT DISTINCT l.request_id FROM ledger l WHERE l.kind = 'settle' AND NOT EXISTS "
        "(SELECT 1 FROM results r WHERE r.request_id = l.request_id)",
    )
    return [str(request_id) for (request_id,) in settled if request_id not in answered]


def after_drill(gw: Gateway, answered: set[str]) -> None:
    ledger_matches_balances(gw)
    assert settled_without_answer(gw, answered) == []


def test_a_full_disk_is_a_503_naming_storage_and_charges_nothing(
    full_gw: Gateway, disk: Disk
) -> None:
    gw = full_gw
    key = new_key(gw, CREDITS)
    sdk = openai_client(gw, key)
    answered: set[str] = set()
    before = storage_errors(gw)

    def images(headers: dict[str, str]) -> Any:
        return sdk.images.with_raw_response.generate(
            model=IMAGE_MODEL, prompt="a kite", response_format="url", extra_headers=headers
        )

    def chat(headers: dict[str, str]) -> Any:
        return sdk.chat.completions.with_raw_response.create(
            model=IMAGE_MODEL,
            messages=[{"role": "user", "content": "draw a kite"}],
            extra_body={"image_output": "url"},
            extra_headers=headers,
        )

    calls: dict[str, Callable[[dict[str, str]], Any]] = {"images": images, "chat": chat}
    for name, call in calls.items():
        idem = {"Idempotency-Key": f"{name}-{uuid.uuid4()}"}
        disk.fill()
        try:
            with pytest.raises(openai.APIStatusError) as caught:
                call(idem)
        finally:
            disk.free()
        error = caught.value
        assert error.status_code == 503, (name, error.status_code, error.message)
        body = error.body
        assert isinstance(body, dict) and body["code"] == "service_unavailable", body
        assert "storage" in body["message"] and "Internal error" not in body["message"]
        assert "No space left on device" in body["message"]
        assert str(disk.mountpoint) not in body["message"]
        # Nothing charged, nothing left held.
        assert balance(gw, key) == CREDITS, name
        ledger_matches_balances(gw)
        # The same Idempotency-Key runs again at once (not 409, not a wait), now with room.
        started = time.monotonic()
        retry = call(idem)
        assert retry.http_response.status_code == 200, name
        assert time.monotonic() - started < 10
        answered.add(retry.headers["x-request-id"])
        cost = int(retry.headers["x-nanogate-cost"])
        assert cost > 0 and balance(gw, key) == CREDITS - cost
        # And once more: the stored first answer, not a second charge.
        again = call(idem)
        assert again.headers["x-nanogate-idempotent-replay"] == "true"
        assert again.http_response.content == retry.http_response.content
        assert balance(gw, key) == CREDITS - cost
        key = new_key(gw, CREDITS)
        sdk = openai_client(gw, key)
    # Google's envelope, on a native call whose Idempotency-Key makes its answer kept.
    idem = {"Idempotency-Key": f"gemini-{uuid.uuid4()}"}
    gemini = genai.Client(api_key=key, http_options={"base_url": gw.url, "headers": idem})
    disk.fill()
    try:
        with pytest.raises(genai_errors.ServerError) as refused:
            gemini.models.generate_content(model=IMAGE_MODEL, contents="a kite")
    finally:
        disk.free()
    assert refused.value.code == 503 and refused.value.status == "UNAVAILABLE"
    assert "result storage is failing (No space left on device)" in (refused.value.message or "")
    assert balance(gw, key) == CREDITS
    kept = gemini.models.generate_content(model=IMAGE_MODEL, contents="a kite")
    assert kept.candidates and balance(gw, key) < CREDITS
    # Streamed chat with URL images: stored before the charge too, so the refusal comes as a
    # status before any event, and nothing is charged.
    key = new_key(gw, CREDITS)
    sdk = openai_client(gw, key)

    def streamed() -> list[Any]:
        return list(
            sdk.chat.completions.create(
                model=IMAGE_MODEL,
                # A prompt of its own: storage names an image by its hash, and one stored
                # already would need no room.
                messages=[{"role": "user", "content": "draw a kite, streamed"}],
                stream=True,
                extra_body={"image_output": "url"},
            )
        )

    disk.fill()
    try:
        with pytest.raises(openai.APIStatusError) as stream_refused:
            streamed()
    finally:
        disk.free()
    assert stream_refused.value.status_code == 503
    assert "storage" in stream_refused.value.message
    assert balance(gw, key) == CREDITS
    events = streamed()
    urls = [
        image["image_url"]["url"]
        for event in events
        for choice in event.choices
        for image in (choice.delta.model_extra or {}).get("images") or []
    ]
    assert len(urls) == 1 and httpx.get(urls[0]).status_code == 200
    answered.add(events[0].id.removeprefix("chatcmpl-"))
    assert balance(gw, key) < CREDITS
    assert storage_errors(gw) >= before + 4
    log = gw.logs()
    assert "result storage failed" in log and "No space left on device" in log
    assert str(disk.mountpoint) not in log
    after_drill(gw, answered)


# -- kill -9 right after the settle ------------------------------------------------------------


def db_path(gw: Gateway) -> Path:
    return gw.data_dir / "nanogate.db"


def wait_settled(gw: Gateway, request_id: str, timeout: float) -> None:
    """Poll the gateway's database (as a reader beside it) until the call's hold is settled."""
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(f"file:{db_path(gw)}?mode=ro", uri=True, timeout=5)
    try:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT state FROM holds WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row and row[0] == "settled":
                return
            time.sleep(0.001)
    finally:
        conn.close()
    raise AssertionError(f"hold of {request_id} not settled in {timeout} s")


def send_without_reading(
    gw: Gateway, path: str, headers: dict[str, str], body: object
) -> socket.socket:
    """POST over a raw socket and read nothing back: the answer stays unsent in the gateway."""
    data = orjson.dumps(body)
    port = int(gw.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n{head}\r\n".encode()
        + data
    )
    return sock


@pytest.fixture(scope="module")
def big_simulator() -> Iterator[Simulator]:
    # An image answer of ~11 MB: storing it takes long enough to be caught in the act.
    sim = start_simulator("--image-bytes", str(8 << 20), "--no-record")
    yield sim
    stop(sim.proc)


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotency-key", "own-request-id"])
def test_a_gateway_killed_right_after_a_settle_leaves_the_answer_and_its_record(
    tmp_path: Path, big_simulator: Simulator, idempotent: bool
) -> None:
    """With an Idempotency-Key, or with only the client's own x-request-id: either way the
    client can name the call, so its answer is kept with the charge."""
    config = {"upstreams": [simulator_upstream(big_simulator, timeout_s=30)]}
    env = {"NANOGATE_NODE_ID": "drill-node", "NANOGATE_IDEMPOTENCY_WAIT_SECONDS": "5"}
    gw = start_gateway(tmp_path, config, **env)
    try:
        key = new_key(gw, CREDITS)
        request_id = f"killed-{uuid.uuid4().hex[:12]}"
        idem = f"kill-{uuid.uuid4()}"
        path = f"/v1beta/models/{IMAGE_MODEL}:generateContent"
        headers = {"x-goog-api-key": key, "x-request-id": request_id}
        if idempotent:
            headers["Idempotency-Key"] = idem
        prompt = {"contents": [{"role": "user", "parts": [{"text": "a kite"}]}]}
        sock = send_without_reading(gw, path, headers, prompt)
        try:
            wait_settled(gw, request_id, 30)
            os.kill(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait(10)
        finally:
            sock.close()
        # The same node comes back: it closes what it left open, and serves the answer.
        gw.proc = restart(gw)
        charged = CREDITS - balance(gw, key)
        assert charged > 0
        found = httpx.get(
            f"{gw.url}/v1/results/{request_id}", headers={"x-goog-api-key": key}, timeout=30
        )
        assert found.status_code == 200, found.text[:500]
        parts = orjson.loads(found.content)["candidates"][0]["content"]["parts"]
        assert any("inlineData" in part for part in parts)
        records = query(
            gw, f"SELECT status, cost FROM usage_records WHERE request_id = '{request_id}'"
        )
        assert records == [(200, charged)]
        if not idempotent:
            after_drill(gw, set())
            return
        # The retry with the same Idempotency-Key gets the same answer, and no second charge.
        retry = httpx.post(
            f"{gw.url}{path}",
            headers={"x-goog-api-key": key, "Idempotency-Key": idem},
            json=prompt,
            timeout=30,
        )
        assert retry.status_code == 200, retry.text[:500]
        assert retry.headers["x-nanogate-idempotent-replay"] == "true"
        assert retry.content == found.content
        assert balance(gw, key) == CREDITS - charged
        after_drill(gw, set())
    finally:
        with contextlib.suppress(Exception):
            stop(gw.proc)


def kill_mid_call(
    gw: Gateway,
    path: str,
    headers: dict[str, str],
    body: dict[str, Any],
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Send a call and SIGKILL its gateway once the call holds credits (after `meanwhile`)."""
    sock = send_without_reading(gw, path, headers, body)
    try:
        deadline = time.monotonic() + 20
        while query(gw, "SELECT COUNT(*) FROM holds WHERE state = 'pending'") == [(0,)]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        if meanwhile is not None:
            meanwhile()
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
    finally:
        sock.close()


def test_a_key_whose_node_is_gone_for_good_is_free_after_its_lease(
    tmp_path: Path, simulator: Simulator
) -> None:
    """Killed while the upstream was still working, and not started again: another node on the
    same database runs the retry once the dead node's lease on the key has run out, rather
    than answering 409 for the hour its reservation lives."""
    config = {"upstreams": [simulator_upstream(simulator, timeout_s=30)]}
    env = {"NANOGATE_IDEMPOTENCY_WAIT_SECONDS": "20", "NANOGATE_IDEMPOTENCY_LEASE_SECONDS": "3"}
    gone = start_gateway(tmp_path, config, NANOGATE_NODE_ID="node-a", **env)
    port = free_port()
    # Another node on the same database (a second process on the same SQLite file).
    other = dataclasses.replace(
        gone,
        url=f"http://127.0.0.1:{port}",
        env={**gone.env, "NANOGATE_PORT": str(port), "NANOGATE_NODE_ID": "node-b"},
    )
    other.proc = restart(other)
    try:
        key = new_key(gone, CREDITS)
        headers = {"x-goog-api-key": key, "Idempotency-Key": f"gone-{uuid.uuid4()}"}
        path = f"/v1beta/models/{IMAGE_MODEL}:generateContent"
        slow = {"contents": [{"role": "user", "parts": [{"text": "[[sim:delay=8]] a kite"}]}]}

        def renewed() -> None:
            # Renewed while it runs: still held well past one lease.
            time.sleep(4)
            held = query(gone, "SELECT node FROM idempotency_keys")
            assert held == [("node-a",)], held

        kill_mid_call(gone, path, headers, slow, renewed)
        started = time.monotonic()
        retry = httpx.post(f"{other.url}{path}", headers=headers, json=slow, timeout=60)
        assert retry.status_code == 200, retry.text[:500]
        assert "x-nanogate-idempotent-replay" not in retry.headers
        # At most a lease of waiting, then the upstream's 8 s.
        assert time.monotonic() - started < 3 + 8 + 4
        cost = int(retry.headers["x-nanogate-cost"])
        # The dead node's hold is refunded when its reservation expires, or when it comes back.
        stop(other.proc)
        gone.proc = restart(gone)
        assert cost > 0 and balance(gone, key) == CREDITS - cost
        after_drill(gone, {retry.headers["x-request-id"]})
    finally:
        for proc in (gone.proc, other.proc):
            with contextlib.suppress(Exception):
                stop(proc)


def test_a_key_whose_call_died_with_its_gateway_is_free_after_restart(
    tmp_path: Path, simulator: Simulator
) -> None:
    """Killed while the upstream was still working: refunded at restart, and its
    Idempotency-Key runs the call afresh rather than waiting for an answer that never comes."""
    config = {"upstreams": [simulator_upstream(simulator, timeout_s=30)]}
    env = {"NANOGATE_NODE_ID": f"drill-{free_port()}", "NANOGATE_IDEMPOTENCY_WAIT_SECONDS": "5"}
    gw = start_gateway(tmp_path, config, **env)
    try:
        key = new_key(gw, CREDITS)
        headers = {"x-goog-api-key": key, "Idempotency-Key": f"dead-{uuid.uuid4()}"}
        path = f"/v1beta/models/{IMAGE_MODEL}:generateContent"
        slow = {"contents": [{"role": "user", "parts": [{"text": "[[sim:delay=2]] a kite"}]}]}
        kill_mid_call(gw, path, headers, slow)
        gw.proc = restart(gw)
        assert balance(gw, key) == CREDITS
        ledger_matches_balances(gw)
        started = time.monotonic()
        retry = httpx.post(f"{gw.url}{path}", headers=headers, json=slow, timeout=60)
        # It ran (about the upstream's 2 s), rather than waiting out the 5 s for a 409.
        assert retry.status_code == 200, retry.text[:500]
        assert "x-nanogate-idempotent-replay" not in retry.headers
        assert time.monotonic() - started < 5
        cost = int(retry.headers["x-nanogate-cost"])
        assert cost > 0 and balance(gw, key) == CREDITS - cost
        after_drill(gw, {retry.headers["x-request-id"]})
    finally:
        with contextlib.suppress(Exception):
            stop(gw.proc)
