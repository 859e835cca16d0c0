"""What a newcomer meets first, as real processes: the first-start banner, the gateway's bare
address, CLI commands run from another folder, and `--help` at 80 columns."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.simulator.processes import stop

from .conftest import start_gateway

KEY = r"nga?_[0-9a-f]{8}_[A-Za-z0-9_-]{43}"


def nanogate(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: no NANOGATE_* settings unless given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NANOGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "nanogate", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_first_start_banner_root_redirect_and_the_data_directory(tmp_path: Path) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    gw = start_gateway(tmp_path, cwd=work)
    try:
        data = (work / "nanogate-data").resolve()
        banner = gw.banner
        assert banner[0].startswith("nanogate: first start. These keys are shown once")
        assert any("10,000,000 starter credits" in line for line in banner), banner
        exports = [line for line in banner if line.startswith("export ")]
        assert [line.split("=")[0] for line in exports] == [
            "export NANOGATE_KEY",
            "export NANOGATE_ADMIN_KEY",
        ]
        assert all(re.fullmatch(rf"export NANOGATE_\w+={KEY}", line) for line in exports)
        assert f"Data: {data} " in "\n".join(banner)
        assert banner[-1] == f"Console: {gw.url}/console (log in with the admin key)"

        # The export line pastes into a shell as it is, and the key it sets works.
        shell = subprocess.run(
            ["bash", "-c", f'{exports[0]}\nprintf %s "$NANOGATE_KEY"'],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert shell.stdout == gw.client_key
        bearer = {"authorization": f"Bearer {shell.stdout}"}
        assert httpx.get(f"{gw.url}/v1/models", headers=bearer).status_code == 200

        # The bare address leads to the console, whose login takes the printed admin key.
        root = httpx.get(f"{gw.url}/")
        assert root.status_code == 307 and root.headers["location"] == "/console"
        with httpx.Client(base_url=gw.url, follow_redirects=True) as browser:
            assert browser.get("/").url.path == "/console/login"
            login = browser.post("/admin/session", json={"key": gw.admin_key})
            assert login.status_code == 200, login.text
            page = browser.get("/")
            assert page.url.path == "/console" and "Overview" in page.text

        # Where serve ran, the commands find its data; elsewhere, NANOGATE_DATA_DIR does.
        prefix = gw.client_key[:11]
        listed = nanogate("keys", "list", cwd=work)
        assert listed.returncode == 0 and prefix in listed.stdout, listed.stderr
        pointed = nanogate("keys", "list", cwd=elsewhere, NANOGATE_DATA_DIR=str(data))
        assert pointed.returncode == 0 and prefix in pointed.stdout, pointed.stderr

        # Without it, a command fails naming the file it looked for, and creates nothing.
        missing = elsewhere.resolve() / "nanogate-data" / "nanogate.db"
        for args in (
            ("keys", "list"),
            ("keys", "create", "--credits", "5"),
            ("accounts", "create", "acme"),
            ("usage", "--by", "model"),
        ):
            proc = nanogate(*args, cwd=elsewhere)
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            assert proc.stderr.startswith(f"error: no database at {missing}. "), proc.stderr
            assert "NANOGATE_DATA_DIR" in proc.stderr and "Traceback" not in proc.stderr
            assert list(elsewhere.iterdir()) == [], args
    finally:
        stop(gw.proc)


COMMANDS = [
    (),
    ("serve",),
    ("worker",),
    ("migrate",),
    ("usage",),
    ("generate",),
    ("upstreams", "check"),
    ("keys",),
    *(("keys", c) for c in ("create", "list", "revoke", "topup")),
    ("accounts",),
    *(("accounts", c) for c in ("create", "list", "show", "topup")),
]
WIDTH = 80
SEPARATOR = "-- end of help --"


def ragged(lines: list[str]) -> list[str]:
    """Pairs of help lines where the first was broken early: the next line's first word would
    have fit on it. Checks the prose and, inside the panels, the help column's continuation
    lines; "[default: …]"-style notes start lines of their own on purpose."""
    found = []
    for above, below in itertools.pairwise(lines):
        boxed = above.startswith("│") and below.startswith("│")
        if boxed:
            upper, lower = above[1:-1], below[1:-1]  # inside the borders
        elif not above.startswith(("╭", "│", "╰")) and not below.startswith(("╭", "│", "╰")):
            upper, lower = above, below
        else:
            continue
        text = lower.lstrip()
        column = len(lower) - len(text)
        # A continuation starts in the column where the text of the line above starts.
        if not text or text.startswith("[") or column >= len(upper) or column < 1:
            continue
        if upper[column] == " " or upper[column - 1] != " " or (boxed and column < 10):
            continue
        # What the column holds: up to the right border (or the edge), less one space of
        # padding. A line longer than that means this arithmetic is wrong: reported too.
        room = WIDTH - 2 - column - 1 if boxed else WIDTH - column - 1
        so_far = upper[column:].rstrip()
        broken_early = len(so_far) + 1 + len(text.split()[0]) <= room
        if len(so_far) > room or broken_early:
            found.append(f"{above.rstrip()}\n{below.rstrip()}")
    return found


def test_help_wraps_cleanly_at_80_columns(tmp_path: Path) -> None:
    # Every command's --help, in one process (one import instead of seventeen), as the
    # entry point runs it.
    script = (
        "import sys\n"
        "from nanogate.cli.main import app\n"
        f"for command in {COMMANDS!r}:\n"
        "    try:\n"
        "        app([*command, '--help'], prog_name='nanogate')\n"
        "    except SystemExit as exit:\n"
        "        assert not exit.code, (command, exit.code)\n"
        f"    print({SEPARATOR!r}, flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": str(WIDTH)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    pages = proc.stdout.split(SEPARATOR + "\n")[:-1]
    assert len(pages) == len(COMMANDS)
    for command, page in zip(COMMANDS, pages, strict=True):
        lines = page.splitlines()
        assert f"Usage: nanogate {' '.join(command)}" in page, page
        assert max(len(line) for line in lines) <= WIDTH, command
        assert ragged(lines) == [], command
    assert list(tmp_path.iterdir()) == []
