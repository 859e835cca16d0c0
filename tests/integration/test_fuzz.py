"""Schemathesis against a real gateway (the demo upstream): every operation /openapi.json
declares, with bounded examples, and the stateful phase, checked for server errors and for
answers (status, content type, body) that the document does not declare.

Its own gateway, not the shared one: the fuzzer creates keys and accounts, revokes and caps
them. A fixed seed keeps a failure reproducible; bench/fuzz.py runs longer with fresh seeds.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.simulator.processes import stop

from .conftest import start_gateway
from .fuzzing import CREDITS, schemathesis


def test_every_operation_answers_as_documented(tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, NANOGATE_STARTER_CREDITS=CREDITS)
    try:
        document = httpx.get(f"{gw.url}/openapi.json").json()
        # Less the one the configuration leaves out (PATCH /admin/switches).
        operations = sum(len(item) for item in document["paths"].values()) - 1
        run = schemathesis(
            gw, "--max-examples", "3", "--seed", "17", "--workers", "2", cwd=tmp_path, timeout=300
        )
    finally:
        stop(gw.proc)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-30_000:]
    assert f"Tested: {operations}" in report, report[-5_000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ {phase}", report), report[-5_000:]
