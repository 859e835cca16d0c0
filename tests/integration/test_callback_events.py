"""Callbacks as events: a receiver process that verifies them with the `standardwebhooks`
library (and refuses a replay), and a SIGTERM drill: the gateway (or a worker) stopped while a
slow receiver is still answering sends the same event again after its restart, as attempt 2,
and /admin/callbacks lists both attempts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from queue import Queue
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from nanogate.tasks.callbacks import INTERRUPTED, sign
from tests.simulator.processes import pump_stdout, stop, wait_for_line

from .conftest import Gateway, start_gateway
from .test_credits import ledger_matches_balances, new_key, query
from .test_credits_under_load import restart
from .test_task_durability import start_worker
from .test_tasks import SECRET, TASK_ENV, create, task_id, wait_final

DEMO = {"upstreams": [{"name": "demo", "kind": "demo", "latency_ms": 50}]}


@dataclass
class StandardReceiver:
    """tests/integration/standard_receiver.py, running."""

    url: str
    proc: subprocess.Popen[str]
    lines: Queue[str | None]

    def next(self, timeout: float = 30) -> dict[str, Any]:
        """The next request it got: its verdict, headers and body."""
        line = wait_for_line(self.lines, re.compile(r"^\{"), timeout)[-1]
        request: dict[str, Any] = json.loads(line)
        return request


def start_receiver(secret: str, slow_s: float = 0) -> StandardReceiver:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.standard_receiver"],
        env={**os.environ, "WEBHOOK_SECRET": secret, "PORT": "0", "SLOW_SECONDS": str(slow_s)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = pump_stdout(proc)
    try:
        url = wait_for_line(lines, re.compile(r"^listening on "), 30)[-1].split()[-1]
    except RuntimeError:
        stop(proc)
        raise
    return StandardReceiver(url, proc, lines)


@pytest.fixture
def standard_secret(tmp_path: Path) -> str:
    """The whsec_ form of the test gateways' key, as `nanogate callbacks secret` prints it."""
    shown = subprocess.run(
        [sys.executable, "-m", "nanogate", "callbacks", "secret", "--standard-webhooks"],
        env={**os.environ, "NANOGATE_DATA_DIR": str(tmp_path / "cli"), **TASK_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.strip()


def callbacks_log(gw: Gateway, task: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{gw.url}/admin/callbacks?task_id={task}", headers={"x-api-key": gw.admin_key}
    )
    assert answer.status_code == 200, answer.text
    log: dict[str, Any] = answer.json()
    return log


def test_a_standard_webhooks_receiver_verifies_a_callback_and_refuses_a_replay(
    tmp_path: Path, standard_secret: str
) -> None:
    gw = start_gateway(tmp_path, DEMO, **TASK_ENV)
    receiver = start_receiver(standard_secret)
    try:
        key = new_key(gw, 10_000_000)
        for form in ("message", "msg"):
            task = task_id(
                create(gw, key, form, "google/nano-banana", {"prompt": "x"}, receiver.url), form
            )
            got = receiver.next()
            assert got["verdict"] == "verified", got
            headers, body = got["headers"], got["body"].encode()
            assert headers["x-nanogate-task-id"] == task
            assert headers["x-nanogate-attempt"] == "1"
            event = headers["webhook-id"]
            assert re.fullmatch(r"evt_[0-9a-f]{32}", event)
            assert headers["x-nanogate-event-id"] == event
            assert headers["webhook-timestamp"] == headers["x-nanogate-timestamp"]
            # nanogate's own signature still comes along, for receivers written before.
            stamp = headers["x-nanogate-timestamp"]
            assert headers["x-nanogate-signature"] == sign(SECRET.encode(), stamp, body)
            log = callbacks_log(gw, task)
            assert log["event_id"] == event and log["state"] == "delivered"
            assert [(a["attempt"], a["status_code"]) for a in log["attempts"]] == [(1, 204)]

        # The request as captured, sent again: verified, and dropped by its event id.
        assert httpx.post(receiver.url, content=body, headers=headers).status_code == 204
        assert receiver.next()["verdict"] == "duplicate"
        # A replay later on carries an old timestamp: refused however well signed.
        old = datetime.now(UTC) - timedelta(minutes=10)
        replay = {
            "webhook-id": event,
            "webhook-timestamp": str(int(old.timestamp())),
            "webhook-signature": Webhook(standard_secret).sign(event, old, body),
        }
        assert httpx.post(receiver.url, content=body, headers=replay).status_code == 401
        refused = receiver.next()
        assert (refused["verdict"], refused["reason"]) == ("refused", "Message timestamp too old")
        # A fresh timestamp on the old signature does not verify either.
        moved = headers | {"webhook-timestamp": str(int(datetime.now(UTC).timestamp()) + 1)}
        assert httpx.post(receiver.url, content=body, headers=moved).status_code == 401
        assert receiver.next()["reason"] == "No matching signature found"
    finally:
        stop(receiver.proc)
        stop(gw.proc)


@pytest.fixture
def slow_receiver(standard_secret: str) -> Iterator[StandardReceiver]:
    """Takes 60 s to answer an event's first delivery: it is still in flight when the drill
    stops the gateway."""
    receiver = start_receiver(standard_secret, slow_s=60)
    yield receiver
    stop(receiver.proc)


def sigterm(proc: subprocess.Popen[str]) -> None:
    """A graceful stop, as an orchestrator makes it (uvicorn re-raises the signal once it has
    shut down, so `serve` ends as killed by it)."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) in (0, -signal.SIGTERM)


def assert_resent_as_attempt_2(
    gw: Gateway, receiver: StandardReceiver, task: str, first: dict[str, Any]
) -> None:
    """After the restart: the same event again, as attempt 2, dropped by the receiver; and the
    log shows the interrupted attempt and the delivered one."""
    second = receiver.next()
    assert second["verdict"] == "duplicate", second
    assert second["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    assert second["headers"]["x-nanogate-event-id"] == first["headers"]["webhook-id"]
    assert [r["headers"]["x-nanogate-attempt"] for r in (first, second)] == ["1", "2"]
    assert second["body"] == first["body"]
    log = callbacks_log(gw, task)
    assert log["event_id"] == first["headers"]["webhook-id"]
    assert log["state"] == "delivered"
    attempts = [(a["attempt"], a["status_code"], a["error"]) for a in log["attempts"]]
    assert attempts == [(1, None, INTERRUPTED), (2, 204, None)]
    assert all(a["duration_ms"] is not None for a in log["attempts"])
    # The stop cost nothing else: the books sum, no hold is left, the task ended (and was
    # charged) once.
    ledger_matches_balances(gw)
    ended = query(
        gw,
        "SELECT t.state, (SELECT COUNT(*) FROM ledger l WHERE l.request_id = t.request_id "
        f"AND l.kind = 'settle') FROM tasks t WHERE t.id = '{task}'",
    )
    assert ended == [("succeeded", 1)], ended


def test_sigterm_mid_delivery_resends_the_same_event_as_attempt_2(
    tmp_path: Path, database_env: dict[str, str], slow_receiver: StandardReceiver
) -> None:
    gw = start_gateway(
        tmp_path, DEMO, NANOGATE_CALLBACK_TIMEOUT_SECONDS="90", **TASK_ENV, **database_env
    )
    proc = gw.proc
    try:
        key = new_key(gw, 10_000_000)
        task = task_id(
            create(gw, key, "message", "google/nano-banana", {"prompt": "x"}, slow_receiver.url),
            "message",
        )
        first = slow_receiver.next()
        assert first["verdict"] == "verified"
        # Listed while in flight: started, no outcome yet.
        (flying,) = callbacks_log(gw, task)["attempts"]
        assert (flying["attempt"], flying["status_code"], flying["duration_ms"]) == (1, None, None)
        sigterm(proc)
        proc = restart(gw)
        assert_resent_as_attempt_2(gw, slow_receiver, task, first)
    finally:
        stop(proc)


def test_sigterm_to_a_worker_mid_delivery_resends_the_same_event_as_attempt_2(
    tmp_path: Path, postgres_url: str, slow_receiver: StandardReceiver
) -> None:
    # The server only takes tasks; the worker runs them. Either may send the callback: both
    # are stopped while it is in flight, then both are started again.
    gw = start_gateway(
        tmp_path,
        DEMO,
        NANOGATE_DATABASE_URL=postgres_url,
        NANOGATE_TASK_WORKERS="0",
        NANOGATE_CALLBACK_TIMEOUT_SECONDS="90",
        **TASK_ENV,
    )
    worker = start_worker(gw, "w1", tmp_path / "worker.log")
    try:
        key = new_key(gw, 10_000_000)
        prompt = {"prompt": f"x {uuid.uuid4().hex}"}
        task = task_id(
            create(gw, key, "message", "google/nano-banana", prompt, slow_receiver.url), "message"
        )
        first = slow_receiver.next(timeout=60)
        assert first["verdict"] == "verified"
        sigterm(worker)
        sigterm(gw.proc)
        gw.proc = restart(gw)
        worker = start_worker(gw, "w1", tmp_path / "worker2.log")
        assert_resent_as_attempt_2(gw, slow_receiver, task, first)
        assert wait_final(gw, key, "message", task)["status"] == "succeeded"
    finally:
        stop(worker)
        stop(gw.proc)
