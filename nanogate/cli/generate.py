"""`nanogate generate`: images from this gateway, or from any Gemini-native endpoint.

One prompt (single mode), or a file of prompts run N at a time (batch mode, resumable: an item
whose output file exists is skipped). Both POST `{url}/v1beta/models/{model}:generateContent`.
The pure helpers (validation, request bodies, batch files, output names, reading answers) come
first; the HTTP calls and the terminal output follow.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import re
import sys
import time
import unicodedata
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from nanogate.core.images import ImageRejected, inspect_image
from nanogate.core.media import decode_base64

DEFAULT_MODEL = "gemini-2.5-flash-image"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CONCURRENCY = 4
KEY_ENV = "NANOGATE_KEY"
URL_ENV = "NANOGATE_URL"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130

# The gateway's answer headers: what the call cost (nanogate/web/replay.py COST_HEADER; a unit
# test keeps the two equal) and the request's id.
COST_HEADER = "x-nanogate-cost"
REQUEST_ID_HEADER = "x-request-id"

IMAGE_SIZES = ("512", "1K", "2K", "4K")
EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/gif": ".gif",
}
OTHER_EXTENSION = ".bin"
# A resumed batch counts an item as done when its file exists under any of these.
OUTPUT_SUFFIXES = (*EXTENSIONS.values(), OTHER_EXTENSION)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSONL_FIELDS = ("prompt", "model", "aspect", "size", "images", "name")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 402, 403})
RETRIES = 2
BACKOFF_S = 1.0  # the first wait without a Retry-After; doubled each time
MAX_WAIT_S = 30.0  # a longer Retry-After is cut to this
REQUEST_TIMEOUT_S = 600.0  # a 4K image on a busy upstream takes minutes
CONNECT_TIMEOUT_S = 30.0
# The gateway applies its own pixel limit to inputs; the client only checks they are images.
NO_PIXEL_LIMIT = sys.maxsize
SLUG_LENGTH = 40
PROMPT_SHOWN = 60

T = TypeVar("T")
V = TypeVar("V")


class GenerateError(Exception):
    """Ends the command: `message` on one line of stderr, and exit with `code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(GenerateError):
    """A mistake in the command or its files, found before any call is made."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class CallFailed(Exception):
    """A call that brought no image back: why, and what the gateway said about it."""

    def __init__(
        self,
        reason: str,
        status: int | None = None,
        request_id: str | None = None,
        cost: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.request_id = request_id
        self.cost = cost

    @property
    def is_auth(self) -> bool:
        """A refused key, model or balance: every further call would be refused too."""
        return self.status in AUTH_STATUSES


# --- validation -------------------------------------------------------------------------------

_ASPECT = re.compile(r"[1-9]\d{0,3}:[1-9]\d{0,3}")


def check_aspect(value: str) -> str:
    aspect = value.strip()
    if not _ASPECT.fullmatch(aspect):
        raise ValueError(f"{value!r} does not look like W:H (e.g. 16:9)")
    return aspect


def check_size(value: str) -> str:
    size = value.strip().upper()
    if size not in IMAGE_SIZES:
        raise ValueError(f"{value!r} is not one of {', '.join(IMAGE_SIZES)}")
    return size


def check_model(value: str) -> str:
    model = value.strip().removeprefix("models/")
    if not model or any(c.isspace() or c in "?#" for c in model):
        raise ValueError(f"{value!r} is not a model name")
    return model


def check_url(value: str) -> str:
    """The base URL without its trailing slash; http(s), with a host, no query."""
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError(f"{value!r} is not an http(s) base URL (e.g. {DEFAULT_URL})")
    return url


def check_name(value: str) -> str:
    """A batch item's output file stem: a plain name, never a path."""
    if (
        not value.strip()
        or value != value.strip()
        or value.startswith(".")
        or any(c in value for c in "/\\\0")
        or len(value) > 200
    ):
        raise ValueError(f"{value!r} is not a plain file name (no folders, no leading '.')")
    return value


@dataclass(frozen=True, slots=True)
class Reference:
    """An input image, checked: its path and the type its bytes announce."""

    path: Path
    mime: str


def check_image(path: Path) -> Reference:
    """The file must be a PNG, JPEG, WebP, HEIC or HEIF image that its header can be read of."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not an image") from None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or 'cannot be read'}") from None
    try:
        mime, _, _ = inspect_image(data, max_pixels=NO_PIXEL_LIMIT)
    except ImageRejected as exc:
        raise ValueError(f"{path}: {exc}") from None
    return Reference(path, mime)


# --- requests -----------------------------------------------------------------------------------


def build_body(
    prompt: str,
    images: Sequence[tuple[str, bytes]] = (),
    aspect: str | None = None,
    size: str | None = None,
) -> dict[str, Any]:
    """A Gemini-native generateContent body: the prompt, then each (mime, bytes) image."""
    parts: list[dict[str, Any]] = [{"text": prompt}]
    for mime, data in images:
        encoded = base64.b64encode(data).decode("ascii")
        parts.append({"inlineData": {"mimeType": mime, "data": encoded}})
    config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
    image_config = {k: v for k, v in (("aspectRatio", aspect), ("imageSize", size)) if v}
    if image_config:
        config["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}


def endpoint(base_url: str, model: str) -> str:
    return f"{base_url.rstrip('/')}/v1beta/models/{model}:generateContent"


def auth_headers(base_url: str, key: str) -> dict[str, str]:
    """Google's own API takes `x-goog-api-key`; gateways and resellers take a Bearer token."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host == "googleapis.com" or host.endswith(".googleapis.com"):
        return {"x-goog-api-key": key}
    return {"Authorization": f"Bearer {key}"}


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (delta-seconds or an HTTP date) as seconds from now."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return seconds if seconds > 0 else 0.0


def backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number `attempt + 1`: the server's word, else doubling."""
    wait = retry_after if retry_after is not None else BACKOFF_S * 2**attempt
    return min(wait, MAX_WAIT_S)


# --- answers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Image:
    mime: str
    data: bytes


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def read_answer(data: Any) -> tuple[list[Image], str, str | None]:
    """A GenerateContentResponse's images and text, and why there is no image when there is
    none (a blocked prompt, a finishReason other than STOP, or just text)."""
    if not isinstance(data, dict):
        return [], "", "the answer is not a GenerateContentResponse"
    images: list[Image] = []
    texts: list[str] = []
    finishes: list[str] = []
    for candidate in _dicts(data.get("candidates")):
        finish = candidate.get("finishReason")
        if isinstance(finish, str) and finish != "STOP":
            message = candidate.get("finishMessage")
            finishes.append(f"{finish} ({message})" if isinstance(message, str) else finish)
        content = candidate.get("content")
        for part in _dicts(content.get("parts") if isinstance(content, dict) else None):
            # Thought parts are the model's drafts (Gemini 3 thinks in images too), not its answer.
            if part.get("thought"):
                continue
            blob = part.get("inlineData")
            if isinstance(blob, dict) and isinstance(blob.get("data"), str):
                raw = decode_base64(blob["data"])
                mime = str(blob.get("mimeType") or "application/octet-stream").lower()
                if raw and mime.startswith("image/"):
                    images.append(Image(mime, raw))
            text = part.get("text")
            if isinstance(text, str) and text.strip():
                texts.append(text.strip())
    text = "\n".join(texts)
    if images:
        return images, text, None
    feedback = data.get("promptFeedback")
    block = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if isinstance(block, str):
        message = feedback.get("blockReasonMessage") if isinstance(feedback, dict) else None
        reason = f"prompt blocked: {block}" + (f" ({message})" if isinstance(message, str) else "")
    elif finishes:
        reason = f"no image: finishReason {finishes[0]}"
    else:
        reason = "no image in the answer"
    if text:
        reason += f"; the model said: {text}"
    return [], text, _one_line(reason)


def error_message(status: int, raw: bytes) -> str:
    """`HTTP 402: <message>`, the message from the `{"error": {"message": ...}}` envelope (or
    the start of whatever else came back)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
    elif isinstance(error, str):
        message = error
    else:
        message = raw.decode("utf-8", "replace")
    return _one_line(f"HTTP {status}: {message}" if message.strip() else f"HTTP {status}")


def _cost(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# --- batch files and output names ---------------------------------------------------------------


def slug(prompt: str, limit: int = SLUG_LENGTH) -> str:
    """A short file-name stem from a prompt: lower-case ASCII words joined by dashes."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    out = ""
    for word in words:
        longer = f"{out}-{word}" if out else word
        if len(longer) > limit:
            break
        out = longer
    return out or (words[0][:limit] if words else "image")


def extension(mime: str) -> str:
    return EXTENSIONS.get(mime.lower(), OTHER_EXTENSION)


def numbered(path: Path, index: int) -> Path:
    """The `index`-th image's file: out.png, out-2.png, out-3.png..."""
    return path if index == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


@dataclass(frozen=True, slots=True)
class Item:
    """One prompt to run, with its settings; `number` counts from 1 in a batch."""

    number: int
    prompt: str
    model: str
    aspect: str | None = None
    size: str | None = None
    images: tuple[Reference, ...] = ()
    name: str | None = None

    @property
    def stem(self) -> str:
        """The batch output file's name without extension; the same on every run."""
        return self.name or f"{self.number:04d}-{slug(self.prompt)}"


@dataclass(frozen=True, slots=True)
class Defaults:
    """What the command line sets for batch items that do not set it themselves."""

    model: str = DEFAULT_MODEL
    aspect: str | None = None
    size: str | None = None


def _optional_text(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string")
    return value


def _checked(check: Callable[[V], T], value: V, label: str) -> T:
    """`check(value)`, its ValueError's message led by what was checked (an option, a field)."""
    try:
        return check(value)
    except ValueError as exc:
        raise ValueError(f"{label} {exc}") from None


def _jsonl_item(
    line: str, number: int, defaults: Defaults, folder: Path, seen: dict[Path, Reference]
) -> Item:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object with a 'prompt'")
    unknown = sorted(set(obj) - set(JSONL_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(JSONL_FIELDS)})")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    model = _optional_text(obj, "model")
    aspect = _optional_text(obj, "aspect")
    size = _optional_text(obj, "size")
    name = _optional_text(obj, "name")
    paths = obj.get("images")
    if paths is None:
        paths = []
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError("'images' must be a list of file paths")
    references = []
    for entry in paths:
        # Relative paths are read from the batch file's folder, wherever the command runs.
        path = folder / Path(entry).expanduser()
        if path not in seen:
            seen[path] = _checked(check_image, path, "images:")
        references.append(seen[path])
    return Item(
        number,
        prompt.strip(),
        _checked(check_model, model, "model:") if model is not None else defaults.model,
        _checked(check_aspect, aspect, "aspect:") if aspect is not None else defaults.aspect,
        _checked(check_size, size, "size:") if size is not None else defaults.size,
        tuple(references),
        _checked(check_name, name, "name:") if name is not None else None,
    )


def parse_batch(path: Path, defaults: Defaults) -> list[Item]:
    """A batch file's items. `.jsonl` (or `.ndjson`): one JSON object a line; any other file:
    one prompt a line, `#` starting a comment line. Blank lines are skipped. A bad line is a
    UsageError naming `file:line`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--batch {path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"--batch {path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"--batch {path}: {exc.strerror or 'cannot be read'}") from None
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    items: list[Item] = []
    stems: dict[str, int] = {}
    seen: dict[Path, Reference] = {}
    for line_number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or (not jsonl and stripped.startswith("#")):
            continue
        number = len(items) + 1
        if jsonl:
            try:
                item = _jsonl_item(stripped, number, defaults, path.parent, seen)
            except ValueError as exc:
                raise UsageError(f"{path}:{line_number}: {exc}") from None
        else:
            item = Item(number, stripped, defaults.model, defaults.aspect, defaults.size)
        # Case-folded: two names that differ only in case are one file on macOS and Windows.
        key = item.stem.casefold()
        if key in stems:
            raise UsageError(
                f"{path}:{line_number}: output name {item.stem!r} is already used on line "
                f"{stems[key]}"
            )
        stems[key] = line_number
        items.append(item)
    if not items:
        raise UsageError(f"--batch {path}: no prompts in it")
    return items


def finished_output(folder: Path, stem: str) -> Path | None:
    """The output file a previous run left for this stem, if any."""
    for suffix in OUTPUT_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def batch_paths(folder: Path, stem: str, mimes: Sequence[str]) -> list[Path]:
    return [numbered(folder / f"{stem}{extension(m)}", i) for i, m in enumerate(mimes, 1)]


def single_paths(
    output: Path | None, prompt: str, mimes: Sequence[str], folder: Path
) -> list[Path]:
    """Where single mode saves its images. `-o` names the first file (its extension added when
    it has none) and is overwritten; the default name, from the prompt, never overwrites: a
    name already taken gets the next free number."""
    if output is not None:
        return [
            numbered(output if output.suffix else output.with_suffix(extension(mime)), index)
            for index, mime in enumerate(mimes, 1)
        ]
    stem = slug(prompt)
    chosen: list[Path] = []
    for mime in mimes:
        index = 1
        while (path := numbered(folder / f"{stem}{extension(mime)}", index)) in chosen or (
            path.exists()
        ):
            index += 1
        chosen.append(path)
    return chosen


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a hidden temporary file in the same folder, then rename: a run killed
    mid-write leaves no half file under the real name (which a resumed batch would skip)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with temporary.open("xb") as file:
            file.write(data)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def pixel_size(data: bytes) -> str:
    try:
        _, width, height = inspect_image(data, max_pixels=NO_PIXEL_LIMIT)
    except ImageRejected:
        return "size unknown"
    return f"{width}x{height}"


# --- calling ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where calls go, and the key they carry."""

    url: str
    key: str


@dataclass(frozen=True, slots=True)
class Answer:
    images: list[Image]
    text: str
    seconds: float
    cost: int | None
    request_id: str | None


def _read_references(references: Sequence[Reference]) -> list[tuple[str, bytes]]:
    out = []
    for ref in references:
        try:
            out.append((ref.mime, ref.path.read_bytes()))
        except OSError as exc:
            raise CallFailed(f"cannot read {ref.path}: {exc.strerror or exc}") from None
    return out


async def call(
    session: aiohttp.ClientSession,
    target: Target,
    item: Item,
    notify: Callable[[str], None] | None = None,
) -> Answer:
    """One generateContent call, retried on 429/5xx and on connection errors. Raises CallFailed
    when no image comes back."""
    inputs = await asyncio.to_thread(_read_references, item.images)
    body = orjson.dumps(build_body(item.prompt, inputs, item.aspect, item.size))
    headers = {
        **auth_headers(target.url, target.key),
        "Content-Type": "application/json",
        # A retry after a dropped connection may repeat a call the gateway ran and billed; with
        # the same Idempotency-Key nanogate answers it from the first call, free. Others ignore it.
        "Idempotency-Key": uuid.uuid4().hex,
    }
    url = endpoint(target.url, item.model)
    for attempt in range(RETRIES + 1):
        last = attempt == RETRIES
        retry_after = None
        started = time.monotonic()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                raw = await response.read()
        except aiohttp.ConnectionTimeoutError:
            failure = f"connection failed: no connection within {CONNECT_TIMEOUT_S:g} s"
        except TimeoutError:
            # Not retried: the call may still be running upstream, and be billed.
            raise CallFailed(f"no answer within {REQUEST_TIMEOUT_S:g} s") from None
        except aiohttp.ClientError as exc:
            failure = _one_line(f"connection failed: {exc or type(exc).__name__}")
        else:
            if response.status not in RETRY_STATUSES or last:
                return _answer(response, raw, time.monotonic() - started)
            failure = f"HTTP {response.status}"
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if last:
            raise CallFailed(failure)
        wait = backoff(attempt, retry_after)
        if notify is not None:
            notify(f"{failure}; retrying in {wait:g} s")
        await asyncio.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _answer(response: aiohttp.ClientResponse, raw: bytes, seconds: float) -> Answer:
    """The images of a final HTTP answer; CallFailed for an error or an answer without one."""
    status = response.status
    request_id = response.headers.get(REQUEST_ID_HEADER)
    cost = _cost(response.headers.get(COST_HEADER))
    if status != 200:
        raise CallFailed(error_message(status, raw), status, request_id, cost)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CallFailed("the answer is not JSON", status, request_id, cost) from None
    images, text, reason = read_answer(data)
    if reason is not None:
        raise CallFailed(reason, status, request_id, cost)
    return Answer(images, text, seconds, cost, request_id)


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S),
    )


class _Seconds(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.elapsed or 0:.0f} s", style="progress.elapsed")


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.speed
        if not speed:
            return Text("-/min", style="progress.data.speed")
        shown = f"{speed:.1f}/s" if speed >= 1 else f"{speed * 60:.1f}/min"
        return Text(shown, style="progress.data.speed")


# --- the two modes ------------------------------------------------------------------------------


@dataclass(slots=True)
class Options:
    """The command line as given (CLI defaults applied, environment variables read)."""

    prompt: str | None = None
    model: str = DEFAULT_MODEL
    aspect: str | None = None
    size: str | None = None
    images: list[Path] = field(default_factory=list)
    output: Path | None = None
    url: str = DEFAULT_URL
    key: str | None = None
    batch: Path | None = None
    out_dir: Path | None = None
    concurrency: int | None = None


def run(options: Options, out: Console, err: Console) -> int:
    """Check everything, then run single or batch mode and return the exit code. What ends the
    command with one error line is raised as GenerateError (a UsageError before any call)."""
    try:
        target, defaults = _check_options(options)
        if options.batch is None:
            assert options.prompt is not None
            references = tuple(_checked(check_image, path, "-i") for path in options.images)
            if options.output is not None and options.output.is_dir():
                raise ValueError(f"-o {options.output}: is a folder; give a file name")
            prompt = options.prompt.strip()
            item = Item(1, prompt, defaults.model, defaults.aspect, defaults.size, references)
            return _run_single(item, options.output, target, out, err)
        items = parse_batch(options.batch, defaults)
        folder = options.out_dir or Path()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--out {folder}: {exc.strerror or exc}") from None
        concurrency = options.concurrency or DEFAULT_CONCURRENCY
        return _run_batch(items, folder, concurrency, target, out, err)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:
        raise GenerateError("interrupted", EXIT_INTERRUPTED) from None


def _check_options(options: Options) -> tuple[Target, Defaults]:
    """The options' combination and values; a ValueError names the first wrong one."""
    if options.batch is not None:
        if options.prompt is not None:
            raise ValueError("give a prompt or --batch FILE, not both")
        if options.images:
            raise ValueError("-i is for a single prompt; a JSONL batch line lists its 'images'")
        if options.output is not None:
            raise ValueError("-o names a single image; give a batch its folder with --out DIR")
        if options.concurrency is not None and options.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
    else:
        if options.prompt is None or not options.prompt.strip():
            raise ValueError("give a prompt, or --batch FILE (see nanogate generate --help)")
        if options.out_dir is not None:
            raise ValueError("--out DIR is for --batch; name a single image with -o FILE")
        if options.concurrency is not None:
            raise ValueError("--concurrency is for --batch")
    url = _checked(check_url, options.url, "--url")
    if not options.key or not options.key.strip():
        raise ValueError(f"no API key: give --key or set {KEY_ENV}")
    defaults = Defaults(
        _checked(check_model, options.model, "--model"),
        _checked(check_aspect, options.aspect, "--aspect") if options.aspect is not None else None,
        _checked(check_size, options.size, "--size") if options.size is not None else None,
    )
    return Target(url, options.key.strip()), defaults


def _say(console: Console, line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _run_single(item: Item, output: Path | None, target: Target, out: Console, err: Console) -> int:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        _Seconds(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task(f"{item.model}: generating", total=None)

        def notify(message: str) -> None:
            progress.update(task, description=f"{item.model}: {message}")

        async def go() -> Answer:
            async with _session(1) as session:
                return await call(session, target, item, notify)

        try:
            answer = asyncio.run(go())
        except CallFailed as exc:
            where = f" (request id {exc.request_id})" if exc.request_id else ""
            code = EXIT_AUTH if exc.is_auth else EXIT_FAILED
            raise GenerateError(f"{exc.reason}{where}", code) from None
    paths = single_paths(output, item.prompt, [i.mime for i in answer.images], Path())
    for path, image in zip(paths, answer.images, strict=True):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, image.data)
        except OSError as exc:
            raise GenerateError(
                f"cannot write {path}: {exc.strerror or exc}", EXIT_FAILED
            ) from None
        _say(out, f"saved {path} ({pixel_size(image.data)}, {image.mime})")
    if answer.text:
        _say(out, f"model text: {_one_line(answer.text, 1000)}")
    facts = [f"latency {answer.seconds:.2f} s"]
    if answer.cost is not None:
        facts.append(f"cost {answer.cost} credits")
    if answer.request_id:
        facts.append(f"request id {answer.request_id}")
    _say(out, ", ".join(facts))
    return EXIT_OK


@dataclass(slots=True)
class Tally:
    """A batch's outcome so far."""

    done: int = 0
    skipped: int = 0
    failures: list[tuple[Item, str]] = field(default_factory=list)
    credits: int | None = None  # None: no answer said what it cost
    stopped: str | None = None  # the auth or credit refusal that stopped the batch

    def charge(self, cost: int | None) -> None:
        if cost is not None:
            self.credits = (self.credits or 0) + cost


def _save_item(folder: Path, item: Item, images: Sequence[Image]) -> None:
    paths = batch_paths(folder, item.stem, [image.mime for image in images])
    # The first file is the one a resumed run looks for, so it is written last.
    for path, image in reversed(list(zip(paths, images, strict=True))):
        write_atomic(path, image.data)


async def run_batch(
    items: Sequence[Item],
    folder: Path,
    concurrency: int,
    target: Target,
    progress: Progress,
) -> Tally:
    """Run every item whose output is not in `folder` yet, `concurrency` at a time; stop
    starting new ones after an auth or credit refusal."""
    tally = Tally()
    queue: deque[Item] = deque()
    for item in items:
        if finished_output(folder, item.stem) is None:
            queue.append(item)
        else:
            tally.skipped += 1
    task = progress.add_task("generating", total=len(items), completed=tally.skipped)

    def failed(item: Item, reason: str) -> None:
        tally.failures.append((item, reason))
        progress.console.print(Text(f"item {item.number} failed: {reason}"))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue and tally.stopped is None:
            item = queue.popleft()
            try:
                answer = await call(session, target, item)
                tally.charge(answer.cost)
                await asyncio.to_thread(_save_item, folder, item, answer.images)
                tally.done += 1
            except CallFailed as exc:
                tally.charge(exc.cost)
                failed(item, exc.reason)
                if exc.is_auth and tally.stopped is None:
                    tally.stopped = exc.reason
            except OSError as exc:
                failed(item, f"cannot write its file: {exc.strerror or exc}")
            progress.advance(task)

    async with _session(concurrency) as session:
        await asyncio.gather(*(worker(session) for _ in range(min(concurrency, len(queue)))))
    return tally


def _run_batch(
    items: Sequence[Item],
    folder: Path,
    concurrency: int,
    target: Target,
    out: Console,
    err: Console,
) -> int:
    started = time.monotonic()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        # Logs and pipes get the summary only, not a bar redrawn into them.
        disable=not err.is_terminal,
    )
    with progress:
        tally = asyncio.run(run_batch(items, folder, concurrency, target, progress))
    elapsed = time.monotonic() - started
    not_started = len(items) - tally.done - tally.skipped - len(tally.failures)
    summary = Table("done", "skipped", "failed", "not started", "credits spent", "elapsed")
    summary.add_row(
        str(tally.done),
        str(tally.skipped),
        str(len(tally.failures)),
        str(not_started),
        "-" if tally.credits is None else str(tally.credits),
        f"{elapsed:.1f} s",
    )
    out.print(summary)
    if tally.failures:
        failures = Table("item", "prompt", "reason", title="failures")
        for item, reason in sorted(tally.failures, key=lambda failure: failure[0].number):
            failures.add_row(
                str(item.number), Text(_one_line(item.prompt, PROMPT_SHOWN)), Text(reason)
            )
        out.print(failures)
    if tally.stopped is not None:
        _say(err, f"error: stopped after an auth or credit refusal: {tally.stopped}")
        return EXIT_AUTH
    return EXIT_FAILED if tally.failures else EXIT_OK
