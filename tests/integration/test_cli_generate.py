"""`nanogate generate` run as a real process: against the gateway on the demo upstream (exact
pixel sizes), the gateway on the simulator (faults), and the simulator as a Gemini endpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from .conftest import SIM_KEY, Gateway, Simulator

PRO = "gemini-3-pro-image-preview"


def generate(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`nanogate generate ARGS` in `cwd`, with no NANOGATE_* variable but those in `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NANOGATE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "nanogate", "generate", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def on(gw: Gateway, key: str | None = None) -> tuple[str, ...]:
    return ("--url", gw.url, "--key", key or gw.client_key)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def fails(code: int, proc: subprocess.CompletedProcess[str]) -> str:
    """The run failed with `code` and said why in one line on stderr; that line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def pixels(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def picture(path: Path, size: tuple[int, int], fmt: str = "PNG") -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", size, "teal").save(buffer, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def admin(gw: Gateway, method: str, path: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {gw.admin_key}"}
    response = httpx.request(method, f"{gw.url}{path}", json=body, headers=headers)
    response.raise_for_status()
    return response.json()


def new_key(gw: Gateway, **fields: Any) -> tuple[str, str]:
    """(key, prefix) of a new key on an account of its own."""
    created = admin(gw, "POST", "/admin/keys", {"name": "generate-cli", **fields})
    return created["key"], created["prefix"]


def usage_record(gw: Gateway, request_id: str) -> dict[str, Any]:
    """The usage record of a request, once it has been flushed."""
    deadline = time.monotonic() + 5
    while True:
        for record in admin(gw, "GET", "/admin/usage?limit=100"):
            if record["request_id"] == request_id:
                return dict(record)
        assert time.monotonic() < deadline, f"no usage record for {request_id}"
        time.sleep(0.1)


def usage_count(gw: Gateway, prefix: str, expected: int) -> int:
    """The key's usage records, once `expected` have been flushed (or 5 s have passed)."""
    deadline = time.monotonic() + 5
    while True:
        count = len(admin(gw, "GET", f"/admin/usage?key={prefix}&limit=1000"))
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def summary(stdout: str) -> list[str]:
    """The summary table's row: done, skipped, failed, not started, credits, elapsed."""
    rows = [line for line in stdout.splitlines() if line.startswith("│")]
    return [cell.strip() for cell in rows[0].strip("│").split("│")]


def test_single_image_with_env_settings(demo_gateway: Gateway, tmp_path: Path) -> None:
    env = {"NANOGATE_URL": demo_gateway.url, "NANOGATE_KEY": demo_gateway.client_key}
    out = ok(
        generate("A lighthouse at dusk", "--aspect", "16:9", "--size", "1k", cwd=tmp_path, env=env)
    )
    # 16:9 at 1K on gemini-2.5-flash-image, as the catalog's pixel table has it.
    assert pixels(tmp_path / "a-lighthouse-at-dusk.png") == (1344, 768)
    lines = out.splitlines()
    assert lines[0] == "saved a-lighthouse-at-dusk.png (1344x768, image/png)"
    assert lines[1].startswith("model text: Demo render from nanogate's offline demo upstream")
    assert lines[2].startswith("latency ")
    cost = int(lines[2].split("cost ")[1].split()[0])
    request_id = lines[2].split("request id ")[1]
    assert cost > 0
    assert usage_record(demo_gateway, request_id)["cost"] == cost

    # The default name is never overwritten; options win over the environment.
    env["NANOGATE_URL"] = "http://127.0.0.1:1"
    out = ok(generate("A lighthouse at dusk", "--url", demo_gateway.url, cwd=tmp_path, env=env))
    assert out.startswith("saved a-lighthouse-at-dusk-2.png (1024x1024, image/png)")
    env["NANOGATE_KEY"] = "ng_not_a_key"
    assert "HTTP 401" in fails(3, generate("x", "--url", demo_gateway.url, cwd=tmp_path, env=env))


def test_reference_images_and_output_file(demo_gateway: Gateway, tmp_path: Path) -> None:
    picture(tmp_path / "a.png", (300, 200))
    picture(tmp_path / "b.jpg", (200, 300), "JPEG")
    args = ("An otter, restyled", "-i", "a.png", "-i", "b.jpg", "-o", "out/edit.png")
    out = ok(generate(*args, "--aspect", "4:3", *on(demo_gateway), cwd=tmp_path))
    assert pixels(tmp_path / "out" / "edit.png") == (1184, 864)
    assert "an edit of your last input image" in out
    # An explicit -o is overwritten.
    ok(generate(*args, "--aspect", "1:1", *on(demo_gateway), cwd=tmp_path))
    assert pixels(tmp_path / "out" / "edit.png") == (1024, 1024)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["edit.png"]


def test_text_batch_resumes(demo_gateway: Gateway, tmp_path: Path) -> None:
    key, prefix = new_key(demo_gateway, credits=1_000_000)
    (tmp_path / "prompts.txt").write_text(
        "# three prompts\nA red fox in snow\n\nA harbour at night\nA kite over dunes\n"
    )
    args = ("--batch", "prompts.txt", "--out", "images", "--aspect", "1:1", "--concurrency", "2")
    out = ok(generate(*args, *on(demo_gateway, key), cwd=tmp_path))
    done, skipped, failed, not_started, credits, _ = summary(out)
    assert (done, skipped, failed, not_started) == ("3", "0", "0", "0")
    names = [
        "0001-a-red-fox-in-snow.png",
        "0002-a-harbour-at-night.png",
        "0003-a-kite-over-dunes.png",
    ]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == names
    assert all(pixels(tmp_path / "images" / name) == (1024, 1024) for name in names)
    assert usage_count(demo_gateway, prefix, 3) == 3
    [balance] = [
        k["balance"] for k in admin(demo_gateway, "GET", "/admin/keys") if k["prefix"] == prefix
    ]
    spent = 1_000_000 - balance
    assert int(credits) == spent

    # A re-run skips everything and calls nothing; one removed file is made again.
    mtimes = {name: (tmp_path / "images" / name).stat().st_mtime_ns for name in names}
    assert summary(ok(generate(*args, *on(demo_gateway, key), cwd=tmp_path)))[:5] == [
        "0",
        "3",
        "0",
        "0",
        "-",
    ]
    (tmp_path / "images" / names[1]).unlink()
    assert summary(ok(generate(*args, *on(demo_gateway, key), cwd=tmp_path)))[:4] == [
        "1",
        "2",
        "0",
        "0",
    ]
    assert usage_count(demo_gateway, prefix, 4) == 4
    assert (tmp_path / "images" / names[0]).stat().st_mtime_ns == mtimes[names[0]]


def test_jsonl_batch_with_item_settings(demo_gateway: Gateway, tmp_path: Path) -> None:
    picture(tmp_path / "batch" / "refs" / "cat.png", (400, 300))
    items = [
        {"prompt": "Default settings"},
        {"prompt": "Square", "aspect": "1:1"},
        {"prompt": "Pro at 2K", "model": PRO, "size": "2k"},
        {"prompt": "The cat, restyled", "images": ["refs/cat.png"], "aspect": "4:3", "name": "cat"},
    ]
    (tmp_path / "batch" / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    (tmp_path / "elsewhere").mkdir()
    args = ("--batch", "../batch/items.jsonl", "--out", "../results", "--aspect", "16:9")
    out = ok(generate(*args, *on(demo_gateway), cwd=tmp_path / "elsewhere"))
    assert summary(out)[:4] == ["4", "0", "0", "0"]
    results = tmp_path / "results"
    assert pixels(results / "0001-default-settings.png") == (1344, 768)
    assert pixels(results / "0002-square.png") == (1024, 1024)
    assert pixels(results / "0003-pro-at-2k.png") == (2752, 1536)
    assert pixels(results / "cat.png") == (1184, 864)


def test_failures_are_listed(sim_gateway: Gateway, simulator: Simulator, tmp_path: Path) -> None:
    simulator.clear()
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 5},
    }
    # The shut-down preview id reaches the upstream as its GA id (issue 15).
    simulator.faults({"model": "gemini-3-pro-image", "body": blocked})
    items = [
        {"prompt": "A fine picture"},
        {"prompt": "[[sim:status=400]] refused upstream"},
        {"prompt": "Something the filter stops", "model": PRO},
        {"prompt": "No such model", "model": "gemini-0-nothing"},
    ]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    proc = generate("--batch", "items.jsonl", "--out", "out", *on(sim_gateway), cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert summary(proc.stdout)[:4] == ["1", "0", "3", "0"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["0001-a-fine-picture.png"]
    rows = proc.stdout.split("failures", 1)[1].splitlines()
    for number, reason in (
        ("2", "HTTP 400: simulated 400"),
        ("3", "prompt blocked: SAFETY"),
        ("4", "HTTP 404: Model 'gemini-0-nothing' is not served"),
    ):
        assert any(row.startswith(f"│ {number} ") and reason in row for row in rows), rows

    # The same in single mode: exit 1, the reason in one line.
    # The shut-down preview id reaches the upstream as its GA id (issue 15).
    simulator.faults({"model": "gemini-3-pro-image", "body": blocked})
    line = fails(1, generate("Stopped", "-m", PRO, *on(sim_gateway), cwd=tmp_path))
    assert line.startswith("error: prompt blocked: SAFETY (request id ")


def test_usage_errors_come_before_any_call(tmp_path: Path) -> None:
    nowhere = ("--url", "http://127.0.0.1:1", "--key", "k")
    assert fails(2, generate("x", "--aspect", "wide", *nowhere, cwd=tmp_path)) == (
        "error: --aspect 'wide' does not look like W:H (e.g. 16:9)"
    )
    assert fails(2, generate("x", "-i", "gone.png", *nowhere, cwd=tmp_path)) == (
        "error: -i gone.png: no such file"
    )
    (tmp_path / "b.jsonl").write_text('{"prompt": "fine"}\n\n{"prompt": "broken"\n')
    line = fails(2, generate("--batch", "b.jsonl", *nowhere, cwd=tmp_path))
    assert line.startswith("error: b.jsonl:3: not valid JSON")


def test_refused_models_and_credits_exit_3(demo_gateway: Gateway, tmp_path: Path) -> None:
    """(A wrong key's 401: test_single_image_with_env_settings.)"""
    limited, _ = new_key(demo_gateway, credits=1_000_000, allowed_models=["gemini-2.5-flash-image"])
    assert "HTTP 403" in fails(
        3, generate("x", "-m", PRO, *on(demo_gateway, limited), cwd=tmp_path)
    )

    empty, _ = new_key(demo_gateway)  # an account of its own, with no credits
    assert "HTTP 402" in fails(3, generate("x", *on(demo_gateway, empty), cwd=tmp_path))
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    args = ("--batch", "p.txt", "--out", "out", "--concurrency", "1")
    proc = generate(*args, *on(demo_gateway, empty), cwd=tmp_path)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    # The first refusal stops the batch: nothing else is started.
    assert summary(proc.stdout)[:4] == ["0", "0", "1", "2"]
    assert "stopped after an auth or credit refusal: HTTP 402" in proc.stderr
    assert not list((tmp_path / "out").iterdir())


def test_retries_on_a_gemini_endpoint(simulator: Simulator, tmp_path: Path) -> None:
    """The simulator stands in for any Gemini-native endpoint: a 503 is retried."""
    simulator.clear()
    simulator.faults({"status": 503, "retry_after": "0"})
    out = ok(generate("A retried otter", "--url", simulator.url, "--key", SIM_KEY, cwd=tmp_path))
    assert out.startswith("saved a-retried-otter.png")
    calls = [r for r in simulator.requests() if r["path"].endswith(":generateContent")]
    assert len(calls) == 2
    assert calls[0]["headers"]["Authorization"] == f"Bearer {SIM_KEY}"
    assert (
        calls[0]["json"]
        == calls[1]["json"]
        == {
            "contents": [{"role": "user", "parts": [{"text": "A retried otter"}]}],
            "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
        }
    )


def test_a_size_the_model_does_not_render(demo_gateway: Gateway, tmp_path: Path) -> None:
    """2K is spelt right, but gemini-2.5-flash-image renders only 1K: the refusal lists the
    sizes it takes, with no hint about the spelling."""
    proc = generate("An otter", "--size", "2K", *on(demo_gateway), cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    said = proc.stdout + proc.stderr
    assert "imageSize '2K' is not supported by gemini-2.5-flash-image; use one of: 1K." in said
    assert "uppercase" not in said
    assert not list(tmp_path.iterdir())
