"""Reading usage off raw response bytes, small and large."""

from __future__ import annotations

import base64
import os

import orjson
import pytest

from nanogate.core.canonical import (
    FULL_PARSE_LIMIT,
    MalformedResponse,
    finishes,
    usage_from_metadata,
    usage_from_response,
)
from nanogate.core.payload import Payload
from nanogate.core.types import Usage

META = {
    "promptTokenCount": 17,
    "candidatesTokenCount": 1306,
    "totalTokenCount": 1323,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 17}],
    "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
}


def response(image_bytes: int) -> bytes:
    data = base64.b64encode(os.urandom(image_bytes)).decode()
    return orjson.dumps(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": 'a "inlineData" mention in text'},
                            {"inlineData": {"mimeType": "image/png", "data": data}},
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": META,
        }
    )


@pytest.mark.parametrize("size", [100, FULL_PARSE_LIMIT * 2])
def test_usage_small_and_large_agree(size: int) -> None:
    usage = usage_from_response(response(size))
    assert usage.images == 1
    assert (usage.input_text, usage.output_image, usage.output_text) == (17, 1290, 16)
    assert usage.total == 1323


def in_pieces(body: bytes, size: int) -> Payload:
    return Payload([body[at : at + size] for at in range(0, len(body), size)])


@pytest.mark.parametrize("size", [13, 4096, 262_144])
def test_usage_of_a_large_answer_in_pieces_reads_as_its_bytes(size: int) -> None:
    body = response(FULL_PARSE_LIMIT * 2)
    assert usage_from_response(in_pieces(body, size)) == usage_from_response(body)
    assert usage_from_response(in_pieces(body, size)).images == 1
    cut = body[: body.rfind(b'"usageMetadata"') + 40] + b"}"
    with pytest.raises(MalformedResponse):
        usage_from_response(in_pieces(cut, size))
    with pytest.raises(MalformedResponse, match="not a JSON object"):
        usage_from_response(in_pieces(b" [" + body + b"]\n", size))


def test_a_chunk_finishes_when_it_carries_a_finish_reason() -> None:
    assert finishes(response(FULL_PARSE_LIMIT * 2))
    assert not finishes(response(FULL_PARSE_LIMIT * 2).replace(b'"finishReason"', b'"other"'))


def test_seed_001_thoughts() -> None:
    body = orjson.dumps(
        {
            "candidates": [{"content": {"parts": [{"text": "[]"}], "role": "model"}}],
            "usageMetadata": {
                "promptTokenCount": 15,
                "candidatesTokenCount": 390,
                "totalTokenCount": 970,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 15}],
                "thoughtsTokenCount": 565,
            },
        }
    )
    usage = usage_from_response(body)
    assert (usage.input_text, usage.output_text, usage.thoughts, usage.total) == (15, 390, 565, 970)


@pytest.mark.parametrize("body", [b"", b"not json", b'{"candidates": [', b"[1,2]", b'{"a": }'])
def test_malformed(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        usage_from_response(body)


def test_large_truncated_is_malformed() -> None:
    body = response(FULL_PARSE_LIMIT * 2)
    cut = body[: body.rfind(b'"usageMetadata"') + 40] + b"}"
    with pytest.raises(MalformedResponse):
        usage_from_response(cut)


def test_usage_reads_the_same_in_either_spelling() -> None:
    camel = {
        "promptTokenCount": 300,
        "candidatesTokenCount": 1400,
        "thoughtsTokenCount": 50,
        "cachedContentTokenCount": 20,
        "totalTokenCount": 1750,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 42},
            {"modality": "IMAGE", "tokenCount": 258},
        ],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
    }
    snake = {
        "prompt_token_count": 300,
        "candidates_token_count": 1400,
        "thoughts_token_count": 50,
        "cached_content_token_count": 20,
        "total_token_count": 1750,
        "prompt_tokens_details": [
            {"modality": "TEXT", "token_count": 42},
            {"modality": "IMAGE", "token_count": 258},
        ],
        "candidates_tokens_details": [{"modality": "IMAGE", "token_count": 1290}],
    }
    expected = Usage(
        input_text=42,
        input_image=258,
        output_text=110,  # the 1,400 candidates less the 1,290 the details give the image
        output_image=1290,
        thoughts=50,
        cached=20,
        total=1750,
    )
    assert usage_from_metadata(camel) == expected
    assert usage_from_metadata(snake) == expected


def test_prompt_tokens_the_details_leave_out_are_text() -> None:
    meta = {
        "promptTokenCount": 500,
        "promptTokensDetails": [{"modality": "IMAGE", "tokenCount": 258}],
    }
    usage = usage_from_metadata(meta)
    assert (usage.input_text, usage.input_image) == (242, 258)
