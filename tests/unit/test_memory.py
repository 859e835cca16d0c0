"""nanogate.core.memory: the allocator keeps freed memory, unless the operator chose."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nanogate.core import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_settings_apply_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert memory.keep_freed_memory()


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"])
def test_the_operators_own_setting_wins(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "131072")
    assert not memory.keep_freed_memory()


# What a single node serves without: each is several MiB of resident memory per process.
CLUSTER_AND_MIGRATION_ONLY = ("alembic", "redis", "asyncpg")

SERVING = textwrap.dedent(
    """
    import json, sqlite3, sys
    from nanogate.cli.main import _migrate_apart
    from nanogate.core.config import Settings
    from nanogate.web.app import create_app

    settings = Settings(data_dir=sys.argv[1])
    _migrate_apart(settings)
    create_app(settings)
    db = sqlite3.connect(settings.data_dir / "nanogate.db")
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    print(json.dumps({"tables": tables, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
    """
)


def test_a_single_node_migrates_apart_and_never_loads_what_it_does_not_use(
    tmp_path: Path,
) -> None:
    """What `serve` does before it listens, in a fresh interpreter: the migration runs (in a
    forked child) and the app is built, and none of Alembic, redis-py or asyncpg is loaded."""
    done = subprocess.run(
        [sys.executable, "-c", SERVING, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert {"accounts", "holds", "ledger", "alembic_version"} <= set(seen["tables"])
    assert set(seen["modules"]).isdisjoint(CLUSTER_AND_MIGRATION_ONLY), seen["modules"]
