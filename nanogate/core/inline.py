"""Long base64 strings in JSON, handled by reference instead of by copy.

An image answer is a few hundred bytes of JSON around megabytes of base64. Parsing it whole makes
a Python str of the base64, and writing a new document around it copies it again: a 16 MB image
would cost three or four times its size while it passes. `loads` cuts long base64 strings out
before parsing and hands them back as `Blob`s (offsets into the source: bytes, or the pieces an
answer was read in, core/payload.py); `dump_pieces` writes a document as its skeleton's bytes
around views of each Blob's source, so an answer goes out with its image never copied, and
`dumps` joins those, copying it once.

A long string is found with one-byte searches, at memchr speed: a quote, the next quote, and at
least MIN_BLOB bytes between them, base64 characters (checked by a C-speed `translate` at both
ends, and as plain ASCII between: see `_all_base64`).
Its opening quote must not follow a backslash: an unescaped quote followed by base64 characters
can only open a string (one that closes a string is followed by `,` `:` `}` `]` or space), so
such a run is always a whole string value. Anything unusual (escaped slashes, a string of other
characters) is simply parsed.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import orjson

from nanogate.core.media import decode_base64
from nanogate.core.payload import Payload, Piece, as_payload, joined

# Shorter strings are parsed as usual: cutting them out would save nothing.
MIN_BLOB = 8192
# Bodies smaller than this are parsed whole; a multi-megabyte image body is not.
SMALL_BODY = 256 * 1024
# How much of each end of a long run is checked character by character (see _all_base64).
CHECKED = 64 * 1024

_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-"
# A base64 data URL's header, cut out with its data.
_DATA_URL = re.compile(rb"data:[A-Za-z0-9/+.-]{1,100};base64,")
_DATA_URL_MAX = len(b"data:;base64,") + 100


class Blob:
    """A base64 string at `source[start:end]`, written after `prefix` when dumped.

    Not a dataclass on purpose: orjson would serialise a dataclass as an object instead of
    asking `dumps` how to write it.
    """

    __slots__ = ("end", "prefix", "source", "start")

    def __init__(self, source: bytes | Payload, start: int, end: int, prefix: bytes = b"") -> None:
        self.source = as_payload(source)
        self.start = start
        self.end = end
        self.prefix = prefix

    def __len__(self) -> int:
        return len(self.prefix) + self.end - self.start

    def __repr__(self) -> str:  # never the data itself: reprs end up in logs
        return f"<Blob {len(self)} chars>"

    def views(self) -> list[memoryview]:
        """The base64 as views of the source's pieces: no copy."""
        return self.source.views(self.start, self.end)

    def view(self) -> memoryview:
        """The base64 in one view (a copy only if it spans several pieces of its source)."""
        views = self.views()
        return views[0] if len(views) == 1 else memoryview(b"".join(views))

    def head(self, size: int) -> bytes:
        """The first `size` characters (prefix included), e.g. to read a data URL's header."""
        window = self.source.slice(self.start, min(self.end, self.start + size))
        return (self.prefix + window)[:size]

    def after(self, offset: int) -> Blob:
        """The same string without its first `offset` source characters (and no prefix)."""
        return Blob(self.source, self.start + offset, self.end)

    def with_prefix(self, prefix: bytes) -> Blob:
        return Blob(self.source, self.start, self.end, prefix)

    def decode(self) -> bytes | None:
        """The bytes the base64 encodes (the prefix is not part of it), or None if invalid."""
        return decode_base64(self.view())


Text = str | Blob


def loads(body: bytes | Payload) -> Any:
    """orjson.loads, with long base64 strings (and base64 data URLs) returned as Blobs."""
    if len(body) < SMALL_BODY:
        return orjson.loads(joined(body))
    source = as_payload(body)
    runs = list(_runs(source))
    if not runs:
        return orjson.loads(source.join())
    token = "\x00" + secrets.token_hex(6) + ":"
    pieces: list[Piece] = []
    blobs: dict[str, Blob] = {}
    at = 0
    for index, (start, end) in enumerate(runs):
        name = f"{token}{index}"
        blobs[name] = Blob(source, start, end)
        # The skeleton: everything but the string, quotes included, which its marker replaces.
        pieces += (*source.views(at, start - 1), orjson.dumps(name))
        at = end + 1
    pieces += source.views(at, source.size)
    return _restore(orjson.loads(b"".join(pieces)), blobs)


def _runs(source: Payload) -> Iterator[tuple[int, int]]:
    """(start, end) of the characters of each long base64 string, in order."""
    at = source.find(b'"', 0)
    while at >= 0:
        close = source.find(b'"', at + 1)
        if close < 0:
            return
        if close - at - 1 < MIN_BLOB:
            # No string opening before the last quote within MIN_BLOB of here can be that long.
            at = source.rfind(b'"', close, at + 1 + MIN_BLOB)
        elif source.slice(at - 1, at) != b"\\" and _all_base64(source, at + 1, close):
            yield at + 1, close
            at = source.find(b'"', close + 1)
        else:
            at = close


def _all_base64(source: Payload, start: int, end: int) -> bool:
    """Whether bytes [start, end) are an optional data URL header and then at least MIN_BLOB
    base64 characters. Checked exactly within CHECKED of either end; between them (a run of
    megabytes), only as plain ASCII with no escape, at memory speed: what starts and ends as
    base64 is no text, and is passed on as it came."""
    header = _DATA_URL.match(source.slice(start, start + _DATA_URL_MAX))
    if header is not None:
        start += header.end()
    if end - start < MIN_BLOB:
        return False
    middle = (start + CHECKED, end - CHECKED)
    if middle[0] >= middle[1]:
        return _base64(source, start, end)
    plain = all(
        piece.find(b"\\", low, high) < 0 and piece[low:high].isascii()
        for _, piece, low, high in source.spans(*middle)
    )
    return _base64(source, start, middle[0]) and _base64(source, middle[1], end) and plain


def _base64(source: Payload, start: int, end: int) -> bool:
    # Deleting every base64 character leaves nothing, at C speed.
    return not any(
        piece[low:high].translate(None, _BASE64) for _, piece, low, high in source.spans(start, end)
    )


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


def dump_pieces(doc: Any) -> list[Piece]:
    """orjson.dumps in pieces: the skeleton's bytes around each Blob's prefix and views of its
    source, none of it copied; send them as they are (web/streaming.PiecesResponse)."""
    found: list[Blob] = []
    token = "\x00" + secrets.token_hex(6) + ":"

    def mark(value: Any) -> str:
        if not isinstance(value, Blob):
            raise TypeError(f"cannot serialise {type(value).__name__}")
        found.append(value)
        return f"{token}{len(found) - 1}"

    skeleton = orjson.dumps(doc, default=mark)
    if not found:
        return [skeleton]
    pieces: list[Piece] = []
    at = 0
    closing = b""
    for index, blob in enumerate(found):
        marker = orjson.dumps(f"{token}{index}")
        where = skeleton.index(marker, at)
        pieces += (closing + skeleton[at:where] + b'"' + blob.prefix, *blob.views())
        closing = b'"'
        at = where + len(marker)
    pieces.append(closing + skeleton[at:])
    return pieces


def dumps(doc: Any) -> bytes:
    """orjson.dumps, writing each Blob's prefix and base64 where it stands."""
    return b"".join(dump_pieces(doc))


def text_of(value: Text) -> str:
    """A Blob as a str (a copy: for small values, or where a str is unavoidable)."""
    return value if isinstance(value, str) else (value.prefix + bytes(value.view())).decode()


def decode(value: Text) -> bytes | None:
    """The bytes a base64 value encodes, whichever form it is in."""
    return value.decode() if isinstance(value, Blob) else decode_base64(value)
