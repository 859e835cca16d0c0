"""Long base64 strings in JSON, handled by reference instead of by copy.

An image answer is a few hundred bytes of JSON around megabytes of base64. Parsing it whole makes
a Python str of the base64, and writing a new document around it copies it again: a 16 MB image
would cost three or four times its size while it passes. `loads` cuts long base64 strings out
before parsing and hands them back as `Blob`s (offsets into the source bytes); `dumps` splices
them into the output, so the base64 is copied once, into the bytes that go to the client.

A base64 run is recognised by a regular expression at C speed. Its opening quote must not follow
a backslash: an unescaped quote followed by base64 characters can only open a string (one that
closes a string is followed by `,` `:` `}` `]` or space), so a match is always a whole string
value. Anything unusual (escaped slashes, a string of other characters) is simply parsed.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson

from nanogate.core.media import decode_base64

# Shorter strings are parsed as usual: cutting them out would save nothing.
MIN_BLOB = 8192
# Bodies smaller than this are parsed whole; a multi-megabyte image body is not.
SMALL_BODY = 256 * 1024

_RUN = re.compile(
    rb'(?<!\\)"((?:data:[A-Za-z0-9/+.-]{1,100};base64,)?[A-Za-z0-9+/=_-]{%d,})"' % MIN_BLOB
)


class Blob:
    """A base64 string inside `source[start:end]`, written after `prefix` when dumped.

    Not a dataclass on purpose: orjson would serialise a dataclass as an object instead of
    asking `dumps` how to write it.
    """

    __slots__ = ("end", "prefix", "source", "start")

    def __init__(self, source: bytes, start: int, end: int, prefix: bytes = b"") -> None:
        self.source = source
        self.start = start
        self.end = end
        self.prefix = prefix

    def __len__(self) -> int:
        return len(self.prefix) + self.end - self.start

    def __repr__(self) -> str:  # never the data itself: reprs end up in logs
        return f"<Blob {len(self)} chars>"

    def view(self) -> memoryview:
        return memoryview(self.source)[self.start : self.end]

    def head(self, size: int) -> bytes:
        """The first `size` characters (prefix included), e.g. to read a data URL's header."""
        return (self.prefix + bytes(self.view()[:size]))[:size]

    def after(self, offset: int) -> Blob:
        """The same string without its first `offset` source characters (and no prefix)."""
        return Blob(self.source, self.start + offset, self.end)

    def with_prefix(self, prefix: bytes) -> Blob:
        return Blob(self.source, self.start, self.end, prefix)

    def decode(self) -> bytes | None:
        """The bytes the base64 encodes (the prefix is not part of it), or None if invalid."""
        return decode_base64(self.view())


Text = str | Blob


def loads(body: bytes) -> Any:
    """orjson.loads, with long base64 strings (and base64 data URLs) returned as Blobs."""
    if len(body) < SMALL_BODY:
        return orjson.loads(body)
    runs = list(_RUN.finditer(body))
    if not runs:
        return orjson.loads(body)
    token = "\x00" + secrets.token_hex(6) + ":"
    pieces: list[bytes | memoryview] = []
    blobs: dict[str, Blob] = {}
    view = memoryview(body)
    at = 0
    for index, match in enumerate(runs):
        name = f"{token}{index}"
        blobs[name] = Blob(body, match.start(1), match.end(1))
        pieces += (view[at : match.start()], orjson.dumps(name))
        at = match.end()
    pieces.append(view[at:])
    return _restore(orjson.loads(b"".join(pieces)), blobs)


def _restore(node: Any, blobs: dict[str, Blob]) -> Any:
    if isinstance(node, str):
        return blobs.get(node, node)
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list) or (isinstance(value, str) and value in blobs):
                node[key] = _restore(value, blobs)
        if not blobs.keys().isdisjoint(node):  # a long base64 key: keys can only be strs
            return {text_of(blobs[key]) if key in blobs else key: v for key, v in node.items()}
        return node
    if isinstance(node, list):
        return [_restore(item, blobs) for item in node]
    return node


def dumps(doc: Any) -> bytes:
    """orjson.dumps, writing each Blob's prefix and base64 where it stands."""
    found: list[Blob] = []
    token = "\x00" + secrets.token_hex(6) + ":"

    def mark(value: Any) -> str:
        if not isinstance(value, Blob):
            raise TypeError(f"cannot serialise {type(value).__name__}")
        found.append(value)
        return f"{token}{len(found) - 1}"

    skeleton = orjson.dumps(doc, default=mark)
    if not found:
        return skeleton
    pieces: list[bytes | memoryview] = []
    at = 0
    for index, blob in enumerate(found):
        marker = orjson.dumps(f"{token}{index}")
        where = skeleton.index(marker, at)
        pieces += (skeleton[at:where], b'"', blob.prefix, blob.view(), b'"')
        at = where + len(marker)
    pieces.append(skeleton[at:])
    return b"".join(pieces)


def text_of(value: Text) -> str:
    """A Blob as a str (a copy: for small values, or where a str is unavoidable)."""
    return value if isinstance(value, str) else (value.prefix + bytes(value.view())).decode()


def decode(value: Text) -> bytes | None:
    """The bytes a base64 value encodes, whichever form it is in."""
    return value.decode() if isinstance(value, Blob) else decode_base64(value)
