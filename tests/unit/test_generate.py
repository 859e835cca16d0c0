"""`nanogate generate`'s pure parts (checks, bodies, batch files, names, answers) and its
retries, against a small in-process aiohttp server."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image as PILImage
from rich.console import Console

from nanogate.cli import generate as g
from nanogate.web.replay import COST_HEADER


def png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), "red").save(buffer, "PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (4, 4), "blue").save(buffer, "JPEG")
    return buffer.getvalue()


def test_the_cost_header_is_the_gateways() -> None:
    assert g.COST_HEADER == COST_HEADER


@pytest.mark.parametrize(
    ("value", "expected"), [("16:9", "16:9"), (" 1:1 ", "1:1"), ("21:9", "21:9")]
)
def test_aspect_ratios(value: str, expected: str) -> None:
    assert g.check_aspect(value) == expected


@pytest.mark.parametrize("value", ["16x9", "16:", ":9", "0:1", "1:0", "a:b", "16:9:1", ""])
def test_bad_aspect_ratios(value: str) -> None:
    with pytest.raises(ValueError, match="does not look like W:H"):
        g.check_aspect(value)


@pytest.mark.parametrize(
    ("value", "expected"), [("1k", "1K"), ("2K", "2K"), ("4k", "4K"), ("512", "512")]
)
def test_image_sizes(value: str, expected: str) -> None:
    assert g.check_size(value) == expected


@pytest.mark.parametrize("value", ["3K", "1024", "8K", "1", ""])
def test_bad_image_sizes(value: str) -> None:
    with pytest.raises(ValueError, match="is not one of 512, 1K, 2K, 4K"):
        g.check_size(value)


def test_urls_and_models() -> None:
    assert g.check_url("https://gateway.theturbo.ai/v1/") == "https://gateway.theturbo.ai/v1"
    for bad in ("ftp://x", "127.0.0.1:8000", "http://", "http://h/?key=1"):
        with pytest.raises(ValueError, match="is not an http"):
            g.check_url(bad)
    assert g.check_model("models/gemini-2.5-flash-image") == "gemini-2.5-flash-image"
    assert g.check_model("google/nano-banana") == "google/nano-banana"
    for bad in ("", "a b", "x?y"):
        with pytest.raises(ValueError, match="is not a model name"):
            g.check_model(bad)


def test_endpoint_and_auth_headers() -> None:
    model = "gemini-3-pro-image-preview"
    assert g.endpoint("http://127.0.0.1:8000", model) == (
        "http://127.0.0.1:8000/v1beta/models/gemini-3-pro-image-preview:generateContent"
    )
    # Seed 003's vendor: the base URL ends in /v1, the route is /v1/v1beta/...
    assert g.endpoint("https://gateway.theturbo.ai/v1", model) == (
        "https://gateway.theturbo.ai/v1/v1beta/models/gemini-3-pro-image-preview:generateContent"
    )
    assert g.auth_headers("https://gateway.theturbo.ai/v1", "k") == {"Authorization": "Bearer k"}
    google = "https://generativelanguage.googleapis.com"
    assert g.auth_headers(google, "k") == {"x-goog-api-key": "k"}
    assert g.auth_headers("https://notgoogleapis.com", "k") == {"Authorization": "Bearer k"}


def test_body_building() -> None:
    assert g.build_body("an otter") == {
        "contents": [{"role": "user", "parts": [{"text": "an otter"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
    }
    body = g.build_body("edit", [("image/png", b"\x89PNG"), ("image/jpeg", b"\xff\xd8")], "16:9")
    parts = body["contents"][0]["parts"]
    assert parts[0] == {"text": "edit"}
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw=="}}
    assert parts[2]["inlineData"]["mimeType"] == "image/jpeg"
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9"}
    config = g.build_body("x", size="2K")["generationConfig"]
    assert config["imageConfig"] == {"imageSize": "2K"}


def test_input_images_are_sniffed(tmp_path: Path) -> None:
    (tmp_path / "a.dat").write_bytes(jpeg())
    assert g.check_image(tmp_path / "a.dat").mime == "image/jpeg"
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a" + b"\0" * 20)
    (tmp_path / "cut.png").write_bytes(png()[:40])
    cases = {
        "missing.png": "no such file",
        "notes.png": "not a recognised image",
        "anim.gif": "GIF images are not supported",
        "cut.png": "truncated or corrupt",
        ".": "is a folder",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            g.check_image(tmp_path / name)


def test_slugs() -> None:
    assert g.slug("A cute baby sea otter!") == "a-cute-baby-sea-otter"
    assert g.slug("Café au lait, s'il vous plaît") == "cafe-au-lait-s-il-vous-plait"
    assert g.slug("[[sim:status=400]] boom") == "sim-status-400-boom"
    long = g.slug("one two three four five six seven eight nine ten eleven")
    assert long == "one-two-three-four-five-six-seven-eight"
    assert len(long) <= g.SLUG_LENGTH
    assert g.slug("x" * 100) == "x" * g.SLUG_LENGTH
    assert g.slug("日本の海") == "image"


def test_single_output_names(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    assert g.single_paths(out, "p", ["image/png"] * 3, tmp_path) == [
        out,
        tmp_path / "out-2.png",
        tmp_path / "out-3.png",
    ]
    # No suffix on -o: the image's own.
    assert g.single_paths(tmp_path / "out", "p", ["image/jpeg"], tmp_path) == [tmp_path / "out.jpg"]
    # The default name never overwrites: taken names get the next free number.
    assert g.single_paths(None, "An otter", ["image/png"], tmp_path) == [tmp_path / "an-otter.png"]
    (tmp_path / "an-otter.png").write_bytes(b"x")
    (tmp_path / "an-otter-3.png").write_bytes(b"x")
    assert g.single_paths(None, "An otter", ["image/png", "image/png"], tmp_path) == [
        tmp_path / "an-otter-2.png",
        tmp_path / "an-otter-4.png",
    ]


def test_batch_output_names_and_resume(tmp_path: Path) -> None:
    item = g.Item(7, "A lighthouse at dusk", g.DEFAULT_MODEL)
    assert item.stem == "0007-a-lighthouse-at-dusk"
    assert g.Item(7, "x", g.DEFAULT_MODEL, name="dusk").stem == "dusk"
    assert g.batch_paths(tmp_path, "dusk", ["image/png", "image/webp"]) == [
        tmp_path / "dusk.png",
        tmp_path / "dusk-2.webp",
    ]
    # A temporary file of a killed run does not count as done.
    (tmp_path / ".dusk.png.1a2b3c4d.part").write_bytes(b"half")
    assert g.finished_output(tmp_path, "dusk") is None
    (tmp_path / "dusk.webp").write_bytes(b"x")
    assert g.finished_output(tmp_path, "dusk") == tmp_path / "dusk.webp"


def test_write_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    g.write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["a.png"]


def test_text_batch(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\nA red fox\n\n   \n  A lighthouse  \n#another\n")
    defaults = g.Defaults("gemini-3-pro-image-preview", "16:9", "2K")
    assert g.parse_batch(path, defaults) == [
        g.Item(1, "A red fox", "gemini-3-pro-image-preview", "16:9", "2K"),
        g.Item(2, "A lighthouse", "gemini-3-pro-image-preview", "16:9", "2K"),
    ]


def test_jsonl_batch(tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "cat.png").write_bytes(png())
    (tmp_path / "dog.jpg").write_bytes(jpeg())
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt": "plain"},
        {"prompt": "set", "model": "gemini-3-pro-image-preview", "aspect": "1:1", "size": "4k"},
        {"prompt": "edit", "images": ["refs/cat.png", str(tmp_path / "dog.jpg")], "name": "ed"},
        {"prompt": "nulls", "aspect": None, "images": None},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines[:2]) + "\n\n")
    with path.open("a") as file:
        file.write("\n".join(json.dumps(line) for line in lines[2:]))
    items = g.parse_batch(path, g.Defaults(aspect="3:2"))
    assert [(i.number, i.prompt, i.model, i.aspect, i.size, i.stem) for i in items] == [
        (1, "plain", g.DEFAULT_MODEL, "3:2", None, "0001-plain"),
        (2, "set", "gemini-3-pro-image-preview", "1:1", "4K", "0002-set"),
        (3, "edit", g.DEFAULT_MODEL, "3:2", None, "ed"),
        (4, "nulls", g.DEFAULT_MODEL, "3:2", None, "0004-nulls"),
    ]
    assert items[2].images == (
        g.Reference(tmp_path / "refs" / "cat.png", "image/png"),
        g.Reference(tmp_path / "dog.jpg", "image/jpeg"),
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "must be a JSON object"),
        ('{"model": "x"}', "'prompt' must be a non-empty string"),
        ('{"prompt": "  "}', "'prompt' must be a non-empty string"),
        ('{"prompt": "x", "aspect_ratio": "1:1"}', "unknown field 'aspect_ratio'"),
        ('{"prompt": "x", "aspect": "wide"}', "aspect: 'wide' does not look like W:H"),
        ('{"prompt": "x", "size": "3K"}', "size: '3K' is not one of"),
        ('{"prompt": "x", "size": 2}', "'size' must be a string"),
        ('{"prompt": "x", "model": "a b"}', "model: 'a b' is not a model name"),
        ('{"prompt": "x", "images": "a.png"}', "'images' must be a list"),
        ('{"prompt": "x", "images": ["missing.png"]}', "missing.png: no such file"),
        ('{"prompt": "x", "images": ["notes.txt"]}', "not a recognised image"),
        ('{"prompt": "x", "name": "../up"}', "name: '../up' is not a plain file name"),
        ('{"prompt": "x", "name": ".hidden"}', "is not a plain file name"),
        ('{"prompt": "x", "name": "First"}', "output name 'First' is already used on line 1"),
    ],
)
def test_bad_jsonl_lines_name_their_line(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    path = tmp_path / "b.jsonl"
    path.write_text('{"prompt": "fine", "name": "first"}\n\n' + line + "\n")
    with pytest.raises(g.UsageError) as caught:
        g.parse_batch(path, g.Defaults())
    assert caught.value.code == g.EXIT_USAGE
    assert caught.value.message.startswith(f"{path}:3: ")
    assert message in caught.value.message


def test_unusable_batch_files(tmp_path: Path) -> None:
    cases: dict[str, bytes | None] = {
        "missing.txt": None,
        "empty.txt": b"# only a comment\n\n",
        "latin.txt": "café".encode("latin-1"),
    }
    messages = {"missing.txt": "no such file", "empty.txt": "no prompts", "latin.txt": "UTF-8"}
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(g.UsageError, match=messages[name]):
            g.parse_batch(tmp_path / name, g.Defaults())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_reading_answers() -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "draft", "thought": True},
                        {
                            "inlineData": {"mimeType": "image/png", "data": _b64(b"d")},
                            "thought": True,
                        },
                        {"text": "Here you go."},
                        {"inlineData": {"mimeType": "image/png", "data": _b64(b"one")}},
                        {"inlineData": {"mimeType": "image/jpeg", "data": _b64(b"two")}},
                    ]
                },
                "finishReason": "STOP",
            }
        ]
    }
    images, text, reason = g.read_answer(answer)
    assert images == [g.Image("image/png", b"one"), g.Image("image/jpeg", b"two")]
    assert (text, reason) == ("Here you go.", None)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            {"promptFeedback": {"blockReason": "SAFETY", "blockReasonMessage": "no"}},
            "prompt blocked: SAFETY (no)",
        ),
        ({"candidates": [{"finishReason": "IMAGE_SAFETY"}]}, "no image: finishReason IMAGE_SAFETY"),
        (
            {"candidates": [{"content": {"parts": [{"text": "I can't draw that."}]}}]},
            "no image in the answer; the model said: I can't draw that.",
        ),
        ([], "the answer is not a GenerateContentResponse"),
    ],
)
def test_answers_without_images(answer: Any, reason: str) -> None:
    assert g.read_answer(answer)[2] == reason


def test_error_messages() -> None:
    envelope = b'{"error": {"code": 402, "message": "Insufficient\\ncredits", "status": "X"}}'
    assert g.error_message(402, envelope) == "HTTP 402: Insufficient credits"
    assert g.error_message(502, b"<html>Bad gateway</html>") == "HTTP 502: <html>Bad gateway</html>"
    assert g.error_message(503, b"") == "HTTP 503"
    assert len(g.error_message(500, b"x" * 5000)) == 300


def test_retry_after_and_backoff() -> None:
    assert g.retry_after_seconds("3") == 3.0
    assert g.retry_after_seconds("-1") == 0.0
    assert g.retry_after_seconds("soon") is None
    assert g.retry_after_seconds(None) is None
    in_ten = g.retry_after_seconds(formatdate(time.time() + 10, usegmt=True))
    assert in_ten is not None and 8 < in_ten <= 10
    assert [g.backoff(n, None) for n in range(3)] == [1.0, 2.0, 4.0]
    assert g.backoff(0, 5.0) == 5.0
    assert g.backoff(0, 3600.0) == g.MAX_WAIT_S


def _run(**fields: Any) -> int:
    quiet = Console(file=io.StringIO())
    return g.run(g.Options(**{"key": "k", **fields}), quiet, quiet)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give a prompt, or --batch FILE"),
        ({"prompt": "x", "batch": Path("b.txt")}, "not both"),
        ({"batch": Path("b.txt"), "images": [Path("a.png")]}, "-i is for a single prompt"),
        ({"batch": Path("b.txt"), "output": Path("o.png")}, "-o names a single image"),
        ({"batch": Path("b.txt"), "concurrency": 0}, "--concurrency must be at least 1"),
        ({"prompt": "x", "out_dir": Path("d")}, "--out DIR is for --batch"),
        ({"prompt": "x", "concurrency": 2}, "--concurrency is for --batch"),
        ({"prompt": "x", "key": " "}, "no API key: give --key or set NANOGATE_KEY"),
        ({"prompt": "x", "url": "localhost:8000"}, "--url 'localhost:8000' is not an http"),
        ({"prompt": "x", "aspect": "16/9"}, "--aspect '16/9' does not look like W:H"),
        ({"prompt": "x", "size": "huge"}, "--size 'huge' is not one of"),
        ({"prompt": "x", "images": [Path("/no/such.png")]}, "-i /no/such.png: no such file"),
        ({"prompt": "x", "output": Path("/")}, "-o /: is a folder"),
        ({"batch": Path("/no/such.txt")}, "--batch /no/such.txt: no such file"),
    ],
)
def test_usage_errors_come_before_any_call(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(g.UsageError) as caught:
        _run(**fields)
    assert message in caught.value.message


# --- retries, against a server that answers from a script ---------------------------------------

Script = list[Callable[[], web.StreamResponse]]


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Script, list[dict[str, Any]]]]:
    """A Gemini-shaped server: each request takes the next scripted answer."""
    script: Script = []
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append({"headers": dict(request.headers), "body": await request.json()})
        return script.pop(0)()

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", script, seen
    await runner.cleanup()


def _image_answer() -> web.Response:
    body = {
        "candidates": [
            {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": _b64(png())}}]}}
        ]
    }
    return web.json_response(body, headers={COST_HEADER: "42", "x-request-id": "r1"})


def _error(status: int, headers: dict[str, str] | None = None) -> Callable[[], web.Response]:
    envelope = {"error": {"code": status, "message": f"status {status}"}}
    return lambda: web.json_response(envelope, status=status, headers=headers)


async def _call(url: str, item: g.Item | None = None) -> g.Answer:
    async with aiohttp.ClientSession() as session:
        return await g.call(session, g.Target(url, "k"), item or g.Item(1, "p", "m"))


async def test_retries_honour_retry_after(
    server: tuple[str, Script, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, script, seen = server
    monkeypatch.setattr(g, "BACKOFF_S", 0.01)
    script += [_error(429, {"Retry-After": "0"}), _error(503), _image_answer]
    answer = await _call(url)
    assert (answer.cost, answer.request_id, len(answer.images)) == (42, "r1", 1)
    assert len(seen) == 3
    # The same Idempotency-Key on every attempt: a repeat of a call that ran is not paid twice.
    keys = {request["headers"]["Idempotency-Key"] for request in seen}
    assert len(keys) == 1
    assert seen[0]["headers"]["Authorization"] == "Bearer k"


async def test_retries_are_bounded(
    server: tuple[str, Script, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, script, seen = server
    monkeypatch.setattr(g, "BACKOFF_S", 0.01)
    script += [_error(502)] * (g.RETRIES + 1)
    with pytest.raises(g.CallFailed) as caught:
        await _call(url)
    assert (caught.value.reason, caught.value.status) == ("HTTP 502: status 502", 502)
    assert len(seen) == g.RETRIES + 1


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404])
async def test_client_errors_are_not_retried(
    server: tuple[str, Script, list[dict[str, Any]]], status: int
) -> None:
    url, script, seen = server
    script.append(_error(status))
    with pytest.raises(g.CallFailed) as caught:
        await _call(url)
    assert caught.value.is_auth == (status in (401, 402, 403))
    assert len(seen) == 1


async def test_connection_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(g, "BACKOFF_S", 0.01)
    waits: list[str] = []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(g.CallFailed, match="connection failed"):
            await g.call(
                session, g.Target("http://127.0.0.1:1", "k"), g.Item(1, "p", "m"), waits.append
            )
    assert len(waits) == g.RETRIES
