"""An answer's bytes kept in the pieces they were read in, searched where they lie.

A 16 MB image answer comes off the socket in a hundred or so reads. Joining them costs a fresh
22 MB allocation (its page faults) and a copy, and `bytes.count` of a long key crawls through
base64 at a byte a step (every base64 character passes its skip filter). Here the pieces stay
as read, are sent on as they are (each dropped once written, web/streaming.py), and a key is
looked for only in the stretches that hold its first byte: `find` of one byte runs at memchr
speed, and megabytes of base64 hold no quote.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate

# What is sent: bytes, or a view of some (a slice of an answer's piece).
Piece = bytes | memoryview
# Stretches of a long piece searched one at a time (see `count`).
_STRETCH = 256 * 1024


class Payload:
    """Bytes in pieces, addressed by offsets into their whole; `len` is their total. Joined
    only by `join`."""

    __slots__ = ("_starts", "pieces", "size")

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self._starts = [0, *accumulate(map(len, pieces))]
        self.size = self._starts[-1]

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:  # never the data: reprs end up in logs
        return f"<Payload {self.size} bytes in {len(self.pieces)} pieces>"

    def join(self) -> bytes:
        """The bytes in one piece: a copy, unless there is only one."""
        return self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)

    def head(self, size: int) -> bytes:
        return self.slice(0, size)

    def tail(self, size: int) -> bytes:
        return self.slice(self.size - size, self.size)

    def slice(self, start: int, end: int) -> bytes:
        """Bytes [start, end) (clipped), copied into one: for small windows."""
        return b"".join(piece[low:high] for _, piece, low, high in self.spans(start, end))

    def views(self, start: int, end: int) -> list[memoryview]:
        """Bytes [start, end) (clipped) as views of the pieces that hold them: no copy."""
        return [memoryview(piece)[low:high] for _, piece, low, high in self.spans(start, end)]

    def spans(self, start: int, end: int) -> Iterator[tuple[int, bytes, int, int]]:
        """(offset, piece, low, high) for each piece holding some of bytes [start, end)
        (clipped): the piece's own offset, and the bounds of those bytes within it."""
        start, end = max(start, 0), min(end, self.size)
        index = bisect_right(self._starts, start) - 1
        while start < end:
            at = self._starts[index]
            piece = self.pieces[index]
            yield at, piece, start - at, min(end - at, len(piece))
            start = at + len(piece)
            index += 1

    def find(self, char: bytes, start: int, end: int | None = None) -> int:
        """The offset of the first `char` (one byte) in [start, end), or -1: memchr speed."""
        for at, piece, low, high in self.spans(start, self.size if end is None else end):
            found = piece.find(char, low, high)
            if found >= 0:
                return at + found
        return -1

    def rfind(self, char: bytes, start: int, end: int) -> int:
        """The offset of the last `char` (one byte) in [start, end), or -1."""
        for at, piece, low, high in reversed(list(self.spans(start, end))):
            found = piece.rfind(char, low, high)
            if found >= 0:
                return at + found
        return -1


def as_payload(body: bytes | Payload) -> Payload:
    return body if isinstance(body, Payload) else Payload([body])


def joined(body: bytes | Payload) -> bytes:
    """The body as bytes (a copy only for a Payload of several pieces)."""
    return body.join() if isinstance(body, Payload) else body


def count(body: bytes | Payload, key: bytes) -> int:
    """Occurrences of `key` (one that cannot overlap itself, like a quoted JSON key) in `body`;
    stretches without its first byte are passed over at memory speed."""
    first = key[:1]
    keep = len(key) - 1
    total = 0
    carry = b""  # the last `keep` bytes before the current piece
    for piece in as_payload(body).pieces:
        for low in range(0, len(piece), _STRETCH):
            high = min(low + _STRETCH, len(piece))
            # Counted by where they start: one starting in [low, high) ends before high + keep.
            if piece.find(first, low, high) >= 0:
                total += piece.count(key, low, high + keep)
        if carry:
            total += (carry + piece[:keep]).count(key)  # only those across the seam fit
        carry = (carry + piece[-keep:])[-keep:] if keep else b""
    return total


def last(body: bytes | Payload, key: bytes) -> int:
    """The offset of the last occurrence of `key` in `body`, or -1, passing over stretches
    without its first byte like `count`. Looks from the end, where an answer keeps its usage."""
    payload = as_payload(body)
    first = key[:1]
    keep = len(key) - 1
    end = payload.size
    after = b""  # the first `keep` bytes after the current piece
    for piece in reversed(payload.pieces):
        start = end - len(piece)
        # One across the seam with what follows comes after any inside this piece.
        edge = piece[-keep:] if keep else b""
        found = (edge + after).rfind(key) if after else -1
        if found >= 0:
            return end - len(edge) + found
        high = len(piece)
        while high > 0:
            low = max(0, high - _STRETCH)
            if piece.rfind(first, low, high) >= 0:
                found = piece.rfind(key, low, min(high + keep, len(piece)))
                if found >= 0:
                    return start + found
            high = low
        after = (piece[:keep] + after)[:keep] if keep else b""
        end = start
    return -1
