"""nanogate.core.payload: bytes in the pieces they were read in, searched as if joined."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogate.core import payload
from nanogate.core.payload import Payload

KEYS = [b'"inlineData"', b'"usageMetadata"', b'"']
STRETCH = payload._STRETCH
FILLER = base64.b64encode(bytes(range(256)) * 1024)  # no quote, like an image's base64


def cut(text: bytes, cuts: list[int]) -> Payload:
    at, pieces = 0, []
    for where in sorted({c for c in cuts if 0 < c < len(text)}):
        pieces.append(text[at:where])
        at = where
    pieces.append(text[at:])
    return Payload([piece for piece in pieces if piece])


# Keys anywhere in up to two stretches of base64, around the seams between stretches too.
texts = st.lists(
    st.tuples(
        st.one_of(
            st.integers(min_value=0, max_value=2 * STRETCH + 40),
            st.integers(min_value=STRETCH - 20, max_value=STRETCH + 5),
        ),
        st.sampled_from([*KEYS, b"{", b'\\"', b":"]),
    ),
    max_size=8,
).map(lambda inserts: _fill(sorted(inserts, key=lambda item: item[0]), FILLER[: 2 * STRETCH + 64]))


def _fill(inserts: list[tuple[int, bytes]], filler: bytes) -> bytes:
    out, at = [], 0
    for where, key in inserts:
        out += (filler[at:where], key)
        at = max(at, where)
    return b"".join([*out, filler[at:]])


@settings(max_examples=200, deadline=None)
@given(texts, st.lists(st.integers(min_value=1, max_value=2 * STRETCH + 100), max_size=6))
def test_searches_in_pieces_find_what_they_find_in_the_joined_bytes(
    text: bytes, cuts: list[int]
) -> None:
    pieces = cut(text, cuts)
    assert len(pieces) == len(text) and pieces.join() == text
    for key in KEYS:
        for body in (text, pieces):
            assert payload.count(body, key) == text.count(key), key
            assert payload.last(body, key) == text.rfind(key), key
        assert pieces.find(key[:1], 0) == text.find(key[:1])
        middle = len(text) // 2
        assert pieces.find(b'"', middle, len(text) - 3) == text.find(b'"', middle, len(text) - 3)
        assert pieces.rfind(b'"', 5, middle) == text.rfind(b'"', 5, middle)


@pytest.mark.parametrize("size", [1, 3, 100])
def test_slices_and_views_cross_pieces(size: int) -> None:
    text = bytes(range(256))
    pieces = Payload([text[at : at + size] for at in range(0, len(text), size)])
    assert pieces.head(10) == text[:10] and pieces.tail(10) == text[-10:]
    assert pieces.slice(7, 200) == text[7:200]
    assert pieces.slice(-5, 9999) == text
    assert b"".join(pieces.views(30, 140)) == text[30:140]
    # Views, not copies: each looks into a piece.
    assert all(view.obj in pieces.pieces for view in pieces.views(0, 256))


def test_an_empty_payload() -> None:
    empty = Payload([])
    assert len(empty) == 0 and empty.join() == b"" and empty.tail(5) == b""
    assert payload.count(empty, b'"a:') == 0 and payload.last(empty, b'"a:') == -1
    assert empty.find(b'"', 0) == -1


def test_repr_never_shows_the_data() -> None:
    assert repr(Payload([b"secret", b"bytes"])) == "<Payload 11 bytes in 2 pieces>"
