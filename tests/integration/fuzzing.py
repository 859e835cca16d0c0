"""Schemathesis on a live gateway, as the suite (test_fuzz.py) and bench/fuzz.py run it: every
operation of its /openapi.json, then the stateful phase along the document's links."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import Gateway

CONFIG = Path(__file__).with_name("schemathesis.toml")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "content_type_conformance",
)
PHASES = ("examples", "coverage", "fuzzing", "stateful")
# The fuzzer spends: enough that 402 stays one status among others.
CREDITS = str(10**15)


def schemathesis(
    gw: Gateway, *args: str, cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """`st run` against `gw` with its keys (schemathesis.toml reads them from the environment);
    `args` add to the options (--max-examples, --seed, ...)."""
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{gw.url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        ",".join(PHASES),
        *args,
    ]
    env = {**gw.env, "NANOGATE_KEY": gw.client_key, "NANOGATE_ADMIN_KEY": gw.admin_key}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
