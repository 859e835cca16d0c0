"""`python -m tests.simulator`: serve until SIGINT/SIGTERM.

Prints exactly one line, `SIMULATOR LISTENING http://<host>:<port>`, once the socket is bound,
so a parent process can start it on port 0 and read the real port from stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from tests.simulator.server import SimState, start
from tests.simulator.state import CHAT_IMAGES


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.simulator",
        description=(
            "Local simulator of Google's Gemini REST API (generateContent and friends), of a "
            "reseller's task API (both forms) and of its OpenAI chat and images endpoints."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 binds a free port (default)")
    parser.add_argument("--api-key", default=None, help="require this key on API calls")
    parser.add_argument(
        "--image-bytes",
        type=int,
        default=None,
        help="answer image models with an image of exactly N bytes (default: a small PNG)",
    )
    parser.add_argument(
        "--image-tokens", type=int, default=1290, help="IMAGE tokens reported per image"
    )
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="don't keep received requests (for benchmarks with big bodies)",
    )
    parser.add_argument("--record-limit", type=int, default=10_000)
    parser.add_argument(
        "--task-seconds",
        type=float,
        default=0.3,
        help="seconds a task takes from create to its final state (default 0.3)",
    )
    parser.add_argument(
        "--public-url",
        default=None,
        help="base URL result links point at (default: the address the request came in on)",
    )
    parser.add_argument(
        "--credits", type=int, default=1_000_000, help="task API balance; 402 once spent"
    )
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated ids GET /v1beta/models lists (default: Google's current image and "
        "text ids, and the seeds' older ones)",
    )
    parser.add_argument(
        "--chat-images",
        choices=CHAT_IMAGES,
        default="images",
        help="OpenAI chat: image in message.images[] (default) or markdown in content",
    )
    args = parser.parse_args(argv)
    if args.image_bytes is not None and args.image_bytes < 0:
        parser.error("--image-bytes must be >= 0")
    if args.task_seconds < 0:
        parser.error("--task-seconds must be >= 0")
    return args


def _url_host(host: str) -> str:
    # A wildcard bind isn't an address a client can dial; loopback is reachable on both.
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def _serve(args: argparse.Namespace) -> None:
    state = SimState(
        api_key=args.api_key,
        image_bytes=args.image_bytes,
        image_tokens=args.image_tokens,
        record=not args.no_record,
        record_limit=args.record_limit,
        task_seconds=args.task_seconds,
        public_url=args.public_url,
        credits=args.credits,
        chat_images=args.chat_images,
    )
    if args.models is not None:
        state.models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    runner, port = await start(args.host, args.port, state=state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not available on Windows
            loop.add_signal_handler(sig, stop.set)
    print(f"SIMULATOR LISTENING http://{_url_host(args.host)}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    # uvloop when present (the gateway runs on it too, so the benchmark compares like with like).
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    coro: Coroutine[Any, Any, None] = _serve(args)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(coro)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
