"""Request plumbing shared by every dialect: key carriers, bounded body reads, request ids."""

from __future__ import annotations

import inspect
import ipaddress
import itertools
import os
import re

from starlette.requests import Request

from nanogate.core.errors import InvalidArgument, PayloadTooLarge
from nanogate.engine import replay

JSON_TYPE = "application/json"

MiB = 1024 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_VALID_KEY = (
    f"a valid key is 1 to {replay.MAX_KEY_CHARS} printable ASCII characters without "
    "spaces, new for each operation (a UUID works)"
)
# A random per-process prefix and a counter: unique across processes, and no syscall per request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def client_address(request: Request) -> str | None:
    """The client's IP address: the peer's, unless the peer is one of `trusted_proxies`; then
    the address the nearest untrusted hop in X-Forwarded-For gives. Each proxy appends the
    address it was reached from, so only the entries our own proxies wrote can be believed: a
    client can put anything on the left of its header."""
    peer = request.client.host if request.client else None
    trusted = request.app.state.settings.trusted_proxies
    if peer is None or not trusted:
        return peer
    hops = [
        hop.strip()
        for header in request.headers.getlist("x-forwarded-for")
        for hop in header.split(",")
    ]
    client = peer
    for hop in reversed([*hops, peer]):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            break  # a malformed entry: no one vouches for it or for what lies left of it
        client = hop
        if not any(address in network for network in trusted):
            break
    return client


def extract_key(request: Request, *, query: bool = True) -> str | None:
    """The client's key from any of the four carriers Gemini clients use (`query=False`: the
    three headers only)."""
    headers = request.headers
    key = headers.get("x-goog-api-key") or headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    query_key = request.query_params.get("key") if query else None
    return query_key.strip() if query_key else None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(_too_large(limit))
    pieces: list[bytes] = []
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise PayloadTooLarge(_too_large(limit))
        pieces.append(piece)
    return b"".join(pieces)


async def client_left(request: Request) -> bool:
    """Whether the client has hung up, without waiting: its body read, a `receive` that
    answers at once says why, and one that would wait means the client is still there.
    Starlette's `is_disconnected` asks the same with an anyio cancel scope, which costs a
    cancellation round through the loop (about 30 µs a call on the reference box); driving the
    server's `receive` coroutine one step by hand costs none. Another server's awaitable
    takes Starlette's way."""
    if not inspect.iscoroutinefunction(request.receive):
        return await request.is_disconnected()
    pending = request.receive()
    try:
        pending.send(None)
    except StopIteration as answered:
        return bool(answered.value.get("type") == "http.disconnect")
    pending.close()  # it waited: a waiter removed, nothing received
    return False


def _too_large(limit: int) -> str:
    size = f"{limit / MiB:g} MiB" if limit >= MiB else f"{limit / 1024:g} KiB"
    return (
        f"The request body exceeds this gateway's limit of {size} ({limit} bytes). "
        "Send smaller or fewer inline images."
    )


def request_id_for(incoming: str | None) -> str:
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def idempotency_key(
    request: Request, body: bytes, *, stream: bool = False
) -> tuple[str, str] | None:
    """The Idempotency-Key header and the request's fingerprint, or None without the header.

    The one place the header is read and checked: every route that honours it calls this once,
    once the body is read and before any work that costs (fetching inputs, calling upstream),
    and hands the result on. An empty or malformed key is a 400, and so is any key on a stream
    (`stream`): a stream cannot be replayed, and ignoring the key would promise a safety it
    does not give.
    """
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key:
        raise InvalidArgument(f"The Idempotency-Key header is empty; {_VALID_KEY}.")
    if len(key) > replay.MAX_KEY_CHARS:
        raise InvalidArgument(
            f"The Idempotency-Key header is {len(key)} characters long; {_VALID_KEY}."
        )
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidArgument(
            f"The Idempotency-Key header holds spaces or characters outside printable ASCII; "
            f"{_VALID_KEY}."
        )
    if stream:
        raise InvalidArgument(
            "Idempotency-Key cannot be used on a stream, which cannot be replayed: send it on "
            "a non-streaming call, or stream without it.",
            param="stream",
        )
    return key, replay.fingerprint(request.method, request.url.path, body)
