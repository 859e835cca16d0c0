"""The repository stands on its own: a fresh clone of the committed HEAD, with nothing beside
it, collects its whole test suite against its own package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"git {' '.join(args)}: {out.stderr}"
    return out.stdout.strip()


def test_a_fresh_clone_collects_its_tests(tmp_path: Path) -> None:
    head = git("rev-parse", "HEAD")
    clone = tmp_path / "nanogate"
    git("clone", "--quiet", str(ROOT), str(clone), cwd=tmp_path)
    git("checkout", "--quiet", "--detach", head, cwd=clone)
    assert git("rev-parse", "HEAD", cwd=clone) == head
    # Nothing beside the clone: no ../shared, no other checkout to lean on.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nanogate"]

    # The clone's own package and tests come first on the path (the editable install of this
    # checkout is found only after PYTHONPATH).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NANOGATE_"))}
    env["PYTHONPATH"] = str(clone)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    where = subprocess.run(
        [sys.executable, "-c", "import nanogate, tests; print(nanogate.__file__, tests.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(clone) for p in where.stdout.split()), where.stdout

    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    count = re.search(r"^(\d+) tests? collected", collected.stdout, re.M)
    assert count is not None, collected.stdout[-3000:]
    assert int(count[1]) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nanogate"]
