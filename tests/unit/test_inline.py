"""nanogate.inline: long base64 strings cut out of JSON as Blobs and spliced back by dumps."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogate.core import inline
from nanogate.core.inline import MIN_BLOB, SMALL_BODY, Blob
from nanogate.core.payload import Payload

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes: base64 of it is well over MIN_BLOB
B64 = base64.b64encode(PAYLOAD).decode()


def big(doc: dict[str, Any]) -> bytes:
    """`doc` serialised, padded past SMALL_BODY with a plain (non-base64) string."""
    body = orjson.dumps({**doc, "padding": "plain text " * (SMALL_BODY // 10)})
    assert len(body) > SMALL_BODY
    return body


def test_constants_are_consistent() -> None:
    assert len(B64) > MIN_BLOB
    assert SMALL_BODY > MIN_BLOB


def test_small_body_parses_as_orjson_without_blobs() -> None:
    body = orjson.dumps({"data": B64, "n": [1, 2.5, None, True], "s": "é"})
    assert len(body) < SMALL_BODY
    doc = inline.loads(body)
    assert doc == orjson.loads(body)
    assert isinstance(doc["data"], str)


def test_large_body_without_runs_parses_as_orjson() -> None:
    body = big({"a": ["x", {"b": 1}]})
    doc = inline.loads(body)
    assert doc == orjson.loads(body)


def test_large_body_cuts_long_base64_out_as_blobs() -> None:
    body = big({"data": B64, "list": [B64, "short"], "nested": {"inner": {"data": B64}}})
    doc = inline.loads(body)
    assert isinstance(doc["data"], Blob)
    assert isinstance(doc["list"][0], Blob)
    assert doc["list"][1] == "short"
    assert isinstance(doc["nested"]["inner"]["data"], Blob)
    assert len(doc["data"]) == len(B64)
    assert bytes(doc["data"].view()) == B64.encode()
    # Short base64-looking strings stay strs.
    assert isinstance(doc["padding"], str)


def test_strings_just_under_min_blob_stay_strs() -> None:
    body = big({"a": "A" * (MIN_BLOB - 1), "b": "A" * MIN_BLOB})
    doc = inline.loads(body)
    assert isinstance(doc["a"], str)
    assert isinstance(doc["b"], Blob)


def test_large_body_round_trips() -> None:
    source = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "edit this"},
                    {"inlineData": {"mimeType": "image/png", "data": B64}},
                    {"inlineData": {"mimeType": "image/png", "data": B64.rstrip("=") + "_-"}},
                ],
            }
        ],
        "url": "data:image/png;base64," + B64,
        "top": [B64, [B64, {"k": B64}]],
        "numbers": [1, -2, 3.5, None, False],
        "unicode": '日本語 "quoted" \\ back',
    }
    body = big(source)
    doc = inline.loads(body)
    assert orjson.loads(inline.dumps(doc)) == orjson.loads(body)


def test_top_level_blob_string_round_trips() -> None:
    body = orjson.dumps("A" * (SMALL_BODY + 10))
    doc = inline.loads(body)
    assert isinstance(doc, Blob)
    assert inline.dumps(doc) == body


def test_top_level_list_round_trips() -> None:
    body = orjson.dumps([B64] * 40)
    assert len(body) > SMALL_BODY
    doc = inline.loads(body)
    assert all(isinstance(item, Blob) for item in doc)
    assert inline.dumps(doc) == body


def test_long_base64_key_comes_back_as_a_str() -> None:
    body = big({B64: 1, "data": B64})
    doc = inline.loads(body)
    assert B64 in doc
    assert doc[B64] == 1
    assert all(isinstance(key, str) and "\x00" not in key for key in doc)
    assert orjson.loads(inline.dumps(doc)) == orjson.loads(body)


def test_data_url_becomes_a_blob_with_its_header() -> None:
    url = "data:image/png;base64," + B64
    doc = inline.loads(big({"image_url": {"url": url}}))
    blob = doc["image_url"]["url"]
    assert isinstance(blob, Blob)
    assert blob.head(22) == b"data:image/png;base64,"
    assert blob.head(5) == b"data:"
    assert len(blob) == len(url)
    comma = blob.head(200).find(b",")
    assert blob.after(comma + 1).decode() == PAYLOAD
    assert inline.text_of(blob) == url


def test_data_url_with_a_non_base64_header_is_not_cut() -> None:
    url = "data:image/png;charset=utf 8;base64," + B64  # a space: not a header the run allows
    doc = inline.loads(big({"url": url}))
    assert doc["url"] == url


def test_escaped_quote_before_a_base64_run_is_not_cut() -> None:
    text = 'he said "' + B64 + '" and left'
    body = big({"text": text, "after": B64})
    assert b'\\"' + B64[:10].encode() in body
    doc = inline.loads(body)
    assert isinstance(doc["text"], str)
    assert doc["text"] == text
    # Runs after it are still found.
    assert isinstance(doc["after"], Blob)
    assert orjson.loads(inline.dumps(doc)) == orjson.loads(body)


def test_escaped_quote_closing_a_string_of_base64() -> None:
    text = '"' + B64 + '"'  # a value that is base64 wrapped in quotes
    doc = inline.loads(big({"text": text}))
    assert doc["text"] == text


def test_escaped_backslash_before_a_closing_quote_then_a_run() -> None:
    body = big({"path": "C:\\dir\\", "data": B64})
    assert b'\\\\"' in body
    doc = inline.loads(body)
    assert doc["path"] == "C:\\dir\\"
    assert isinstance(doc["data"], Blob)
    assert bytes(doc["data"].view()) == B64.encode()


def test_strings_with_escaped_slashes_are_parsed_normally() -> None:
    value = B64.replace("/", "\\/")
    assert "\\/" in value
    raw = b'{"data": "' + value.encode() + b'", "other": "' + B64.encode() + b'", "pad": "'
    body = raw + b"x " * SMALL_BODY + b'"}'
    doc = inline.loads(body)
    assert isinstance(doc["data"], str)
    assert doc["data"] == B64  # the JSON escapes are undone, as by any parser
    assert isinstance(doc["other"], Blob)
    assert orjson.loads(inline.dumps(doc)) == orjson.loads(body)


def test_whitespace_around_runs_is_fine() -> None:
    raw = b'{ "a" :\n  "' + B64.encode() + b'" ,\n "b": [ "' + B64.encode() + b'" ] , "pad": "'
    body = raw + b"x " * SMALL_BODY + b'"}'
    doc = inline.loads(body)
    assert isinstance(doc["a"], Blob)
    assert isinstance(doc["b"][0], Blob)
    assert orjson.loads(inline.dumps(doc)) == orjson.loads(body)


def test_invalid_json_still_raises() -> None:
    body = big({"a": B64})[:-2]
    with pytest.raises(orjson.JSONDecodeError):
        inline.loads(body)


def test_blob_decode() -> None:
    source = b'xx"' + B64.encode() + b'"yy'
    blob = Blob(source, 3, 3 + len(B64))
    assert blob.decode() == PAYLOAD
    assert inline.decode(blob) == PAYLOAD
    assert inline.decode(B64) == PAYLOAD
    assert Blob(b"not base64 !!", 0, 13).decode() is None


def test_blob_decode_ignores_the_prefix() -> None:
    blob = Blob(B64.encode(), 0, len(B64)).with_prefix(b"data:image/png;base64,")
    assert blob.decode() == PAYLOAD


def test_blob_decode_url_safe_unpadded() -> None:
    data = base64.urlsafe_b64encode(b"\xff\xfe\xfd" * 5000).decode().rstrip("=")
    blob = Blob(data.encode(), 0, len(data))
    assert blob.decode() == b"\xff\xfe\xfd" * 5000


def test_with_prefix_and_head() -> None:
    blob = Blob(b"__ABCDEFGH__", 2, 10)
    assert len(blob) == 8
    assert blob.head(3) == b"ABC"
    assert blob.head(100) == b"ABCDEFGH"
    prefixed = blob.with_prefix(b"data:image/png;base64,")
    assert len(prefixed) == 22 + 8
    assert prefixed.head(25) == b"data:image/png;base64,ABC"
    assert inline.text_of(prefixed) == "data:image/png;base64,ABCDEFGH"
    # The original is unchanged.
    assert blob.prefix == b""
    assert inline.text_of(blob) == "ABCDEFGH"


def test_after_drops_leading_characters_and_the_prefix() -> None:
    blob = Blob(b"__ABCDEFGH__", 2, 10).with_prefix(b"P:")
    rest = blob.after(3)
    assert rest.prefix == b""
    assert bytes(rest.view()) == b"DEFGH"
    assert len(rest) == 5
    assert rest.source is blob.source  # a view, not a copy


def test_repr_never_shows_the_data() -> None:
    blob = Blob(B64.encode(), 0, len(B64))
    assert repr(blob) == f"<Blob {len(B64)} chars>"
    assert B64[:20] not in repr(blob)


def test_dumps_without_blobs_is_orjson() -> None:
    doc = {"a": [1, "two", None], "b": {"c": 3.5}}
    assert inline.dumps(doc) == orjson.dumps(doc)


def test_dumps_mixing_blobs_and_strs() -> None:
    one = Blob(b"..AAAA..", 2, 6)
    two = Blob(b"BBBBBB", 0, 6).with_prefix(b"data:image/png;base64,")
    doc = {
        "first": one,
        "text": "hello",
        "items": [two, "plain", {"deep": one}],
        "number": 7,
    }
    out = inline.dumps(doc)
    assert orjson.loads(out) == {
        "first": "AAAA",
        "text": "hello",
        "items": ["data:image/png;base64,BBBBBB", "plain", {"deep": "AAAA"}],
        "number": 7,
    }


def test_dumps_many_blobs_keeps_their_order() -> None:
    # Eleven or more markers: "…:1" must not be confused with "…:10".
    blobs = [Blob(f"V{index:02d}".encode(), 0, 3) for index in range(12)]
    out = inline.dumps({"values": blobs})
    assert orjson.loads(out) == {"values": [f"V{index:02d}" for index in range(12)]}


def test_dumps_rejects_other_objects() -> None:
    with pytest.raises(TypeError):
        inline.dumps({"x": object()})


def test_placeholder_looking_strings_are_not_confused() -> None:
    # The markers are "\x00" + random hex + ":" + index: a client cannot guess them.
    crafted = [f"\x00{'0' * 12}:0", "\x00000000000000:1", "\x00:0", "\x00abc:0"]
    body = big({"crafted": crafted, "data": B64, "more": "\x00deadbeef0000:0"})
    doc = inline.loads(body)
    assert doc["crafted"] == crafted
    assert doc["more"] == "\x00deadbeef0000:0"
    assert isinstance(doc["data"], Blob)
    out = inline.dumps({"crafted": crafted, "blob": doc["data"]})
    assert orjson.loads(out) == {"crafted": crafted, "blob": B64}


def test_markers_are_random_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens: list[str] = []
    real = inline.secrets.token_hex

    def spy(size: int) -> str:
        tokens.append(real(size))
        return tokens[-1]

    monkeypatch.setattr(inline.secrets, "token_hex", spy)
    body = big({"data": B64})
    inline.loads(body)
    inline.loads(body)
    inline.dumps({"b": Blob(b"AAAA", 0, 4)})
    assert len(tokens) == 3
    assert len(set(tokens)) == 3
    assert all(len(token) >= 12 for token in tokens)


def test_a_run_needs_an_unescaped_opening_quote() -> None:
    run = b"A" * MIN_BLOB
    assert list(inline._runs(Payload([b'"' + run + b'"']))) == [(1, 1 + MIN_BLOB)]
    assert not list(inline._runs(Payload([b'\\"' + run + b'"'])))


# The pattern that defined a run before runs were found with one-byte searches: the oracle.
_RUN = re.compile(
    rb'(?<!\\)"((?:data:[A-Za-z0-9/+.-]{1,100};base64,)?[A-Za-z0-9+/=_-]{%d,})"' % MIN_BLOB
)
_ALPHABET = b"AZaz09+/=_-"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([b'"', b'\\"', b"\\", b'":', b", ", b"data:image/png;base64,"]),
            st.builds(
                lambda char, size: char * size,
                st.sampled_from([bytes([c]) for c in _ALPHABET] + [b" ", b"\xc3\xa9"]),
                st.sampled_from([1, 5, MIN_BLOB - 1, MIN_BLOB, MIN_BLOB + 3]),
            ),
        ),
        max_size=12,
    ),
    st.lists(st.integers(min_value=1, max_value=5 * MIN_BLOB), max_size=6),
)
def test_runs_are_the_matches_of_the_pattern_that_defined_them(
    parts: list[bytes], cuts: list[int]
) -> None:
    text = b"".join(parts)
    expected = [(m.start(1), m.end(1)) for m in _RUN.finditer(text)]
    assert list(inline._runs(Payload([text]))) == expected
    # Wherever the pieces it was read in are cut.
    at, pieces = 0, []
    for cut in sorted({c for c in cuts if c < len(text)}):
        pieces.append(text[at:cut])
        at = cut
    pieces.append(text[at:])
    assert list(inline._runs(Payload([p for p in pieces if p]))) == expected


def in_pieces(body: bytes, size: int) -> Payload:
    return Payload([body[at : at + size] for at in range(0, len(body), size)])


@pytest.mark.parametrize("size", [1000, 4096, MIN_BLOB + 7, 65536])
def test_an_answer_in_pieces_reads_as_the_same_bytes_would(size: int) -> None:
    source = {
        "candidates": [
            {"content": {"parts": [{"text": "here"}, {"inlineData": {"data": B64 * 40}}]}},
            {"content": {"parts": [{"thoughtSignature": B64}, {"text": '"q" \\ é'}]}},
        ],
        "url": "data:image/png;base64," + B64,
    }
    body = big(source)
    whole, pieces = inline.loads(body), inline.loads(in_pieces(body, size))
    image = pieces["candidates"][0]["content"]["parts"][1]["inlineData"]["data"]
    assert isinstance(image, Blob)
    assert len(image.views()) > 1  # it spans pieces, and is not joined to be read
    assert inline.text_of(image) == inline.text_of(
        whole["candidates"][0]["content"]["parts"][1]["inlineData"]["data"]
    )
    assert inline.dumps(pieces) == inline.dumps(whole)
    assert orjson.loads(inline.dumps(pieces)) == orjson.loads(body)
    assert pieces["url"].head(22) == b"data:image/png;base64,"


def test_dump_pieces_sends_a_blob_as_views_of_its_source() -> None:
    body = in_pieces(big({"data": B64 * 40}), 65536)
    doc = inline.loads(body)
    out = inline.dump_pieces({"image": doc["data"], "n": 1})
    assert b"".join(out) == orjson.dumps({"image": B64 * 40, "n": 1})
    views = [piece for piece in out if isinstance(piece, memoryview)]
    assert sum(map(len, views)) == len(B64) * 40
    assert {id(view.obj) for view in views} <= {id(piece) for piece in body.pieces}


@pytest.mark.parametrize(
    ("where", "char", "cut"),
    [
        (10, " ", False),  # its ends are checked character by character
        (-10, "!", False),
        (inline.CHECKED * 2, "\n", False),  # an escape anywhere: parsed
        (inline.CHECKED * 2, "é", False),  # not ASCII anywhere: parsed
        (inline.CHECKED * 2, " ", True),  # its middle only as plain ASCII: passed on as it came
    ],
)
def test_a_long_run_is_checked_at_its_ends_and_plain_between(
    where: int, char: str, cut: bool
) -> None:
    run = B64 * (inline.CHECKED * 5 // len(B64))
    value = run[:where] + char + run[where:]
    body = big({"data": value})
    doc = inline.loads(body)
    assert isinstance(doc["data"], Blob) == cut
    assert orjson.loads(inline.dumps(doc)) == orjson.loads(body)
