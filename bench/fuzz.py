"""The longer fuzzing run: schemathesis against a fresh `nanogate serve` (the demo upstream),
every operation with many examples and a fresh seed, then the stateful phase, with the same four
checks as tests/integration/test_fuzz.py.

    .venv/bin/python bench/fuzz.py [--max-examples 200] [--seed N] [--workers auto]

Exits with schemathesis's status, after printing its report (each failure with a curl line that
reproduces it, and the run's seed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# The gateway starter and the fuzzer's settings live in the tests package (see bench/common.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.conftest import start_gateway
from tests.integration.fuzzing import CREDITS, schemathesis
from tests.simulator.processes import stop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, help="replay a run (its report names its seed)")
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--max-time", type=int, default=1800, help="seconds, for the whole run")
    args = parser.parse_args()
    options = ["--max-examples", str(args.max_examples), "--workers", args.workers]
    options += ["--max-time", str(args.max_time)]
    if args.seed is not None:
        options += ["--seed", str(args.seed)]
    with tempfile.TemporaryDirectory(prefix="nanogate-fuzz-") as tmp:
        gw = start_gateway(Path(tmp), NANOGATE_STARTER_CREDITS=CREDITS)
        print(f"gateway on {gw.url}; schemathesis {' '.join(options)}", flush=True)
        try:
            run = schemathesis(gw, *options, cwd=Path(tmp), timeout=args.max_time + 600)
        finally:
            stop(gw.proc)
    print(run.stdout, run.stderr, sep="\n")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
