"""The gemini adapter against the simulator over real HTTP (in-process server, real sockets)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import orjson
import pytest

from nanogate.core.catalog import load_catalog
from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import UpstreamError
from nanogate.core.payload import Payload
from nanogate.core.types import Call, Method
from nanogate.dialects.gemini import parse_call
from nanogate.upstreams.gemini import GeminiUpstream
from tests.simulator import Fault, SimState, start

KEY = "upstream-key-for-tests"
CATALOG = load_catalog()


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimState, str]]:
    state = SimState(api_key=KEY)
    runner, port = await start(state=state)
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


_OPEN: list[GeminiUpstream] = []


@pytest.fixture(autouse=True)
async def close_adapters() -> AsyncIterator[None]:
    yield
    while _OPEN:
        await _OPEN.pop().close()


def adapter(url: str, **overrides: object) -> GeminiUpstream:
    """An adapter on the simulator; its session is closed when the test ends."""
    config = UpstreamConfig.model_validate(
        {"name": "sim", "kind": "gemini", "base_url": url, "api_key": KEY, **overrides}
    )
    _OPEN.append(GeminiUpstream(config))
    return _OPEN[-1]


def call(model: str = "gemini-2.5-flash", method: Method = "generateContent") -> Call:
    body = orjson.dumps({"contents": [{"parts": [{"text": "hello"}]}]})
    return parse_call("t", method, CATALOG.resolve(model), body)


async def test_generate_returns_raw_bytes_and_usage(sim: tuple[SimState, str]) -> None:
    state, url = sim
    up = adapter(url)
    reply = await up.generate(call("gemini-2.5-flash-image"))
    # The bytes as they came, in the pieces they were read in.
    assert isinstance(reply.body, Payload)
    doc = orjson.loads(reply.body.join())
    assert doc["x_simulator"] == {"version": 1}
    assert reply.usage.output_image == 1290 and reply.usage.images == 1
    assert state.requests[-1]["body"] == call().body.decode()


@pytest.mark.parametrize(
    "fault, status, retryable",
    [
        (Fault(status=503), 503, True),
        (Fault(status=500), 500, True),
        (Fault(status=429, retry_after="3"), 429, True),
        (Fault(status=400), 400, False),
        (Fault(status=404), 404, False),
        (Fault(reset=True), 0, True),
        (Fault(malformed=True), 502, True),
    ],
)
async def test_faults_become_upstream_errors(
    sim: tuple[SimState, str], fault: Fault, status: int, retryable: bool
) -> None:
    state, url = sim
    state.faults.append(fault)
    up = adapter(url)
    with pytest.raises(UpstreamError) as info:
        await up.generate(call())
    assert info.value.status == status and info.value.retryable is retryable
    assert KEY not in str(info.value)
    if status == 429:
        assert info.value.retry_after == 3


async def test_deadline(sim: tuple[SimState, str]) -> None:
    state, url = sim
    state.faults.append(Fault(delay=2.0))
    up = adapter(url, timeout_s=0.3)
    with pytest.raises(UpstreamError) as info:
        await up.generate(call())
    assert info.value.timeout and info.value.retryable


async def test_connection_refused(sim: tuple[SimState, str]) -> None:
    up = adapter("http://127.0.0.1:9", connect_timeout_s=1)
    with pytest.raises(UpstreamError) as info:
        await up.generate(call())
    assert info.value.status == 0 and info.value.retryable


async def test_stream_of_multi_megabyte_events(sim: tuple[SimState, str]) -> None:
    # One SSE line carries a whole 3 MB base64 image: it must not hit a line-length limit.
    state, url = sim
    state.image_bytes = 3 * 1024 * 1024
    up = adapter(url)
    chunks = [c async for c in up.stream(call("gemini-2.5-flash-image", "streamGenerateContent"))]
    assert len(chunks) == 3
    image_chunk = orjson.loads(chunks[1].body)
    data = image_chunk["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]
    assert len(base64.b64decode(data)) == 3 * 1024 * 1024
    assert state.requests[-1]["query"].get("alt") == "sse"


async def test_stream_status_error_before_first_chunk(sim: tuple[SimState, str]) -> None:
    state, url = sim
    state.faults.append(Fault(status=503))
    up = adapter(url)
    with pytest.raises(UpstreamError) as info:
        async for _ in up.stream(call(method="streamGenerateContent")):
            pass
    assert info.value.status == 503


async def test_stream_break_midway(sim: tuple[SimState, str]) -> None:
    state, url = sim
    state.faults.append(Fault(stream_break=True))
    up = adapter(url)
    got = []
    with pytest.raises(UpstreamError):
        async for chunk in up.stream(call(method="streamGenerateContent")):
            got.append(chunk)
    assert len(got) == 1


async def test_slow_stream_read_deadline(sim: tuple[SimState, str]) -> None:
    state, url = sim
    state.faults.append(Fault(slow_stream=1.0))
    up = adapter(url, timeout_s=0.3)
    with pytest.raises(UpstreamError) as info:
        async for _ in up.stream(call(method="streamGenerateContent")):
            pass
    assert info.value.timeout


async def test_bad_upstream_key_is_a_credential_failure(sim: tuple[SimState, str]) -> None:
    _, url = sim
    up = adapter(url, api_key="wrong")
    with pytest.raises(UpstreamError) as info:
        await up.generate(call())
    assert info.value.status == 401 and info.value.retryable
    assert "credentials" in info.value.to_gateway_error().message


async def test_health(sim: tuple[SimState, str]) -> None:
    _, url = sim
    up = adapter(url)
    down = adapter("http://127.0.0.1:9", connect_timeout_s=1)
    assert await up.health() is True
    assert await down.health() is False


async def test_list_models_reads_every_page(sim: tuple[SimState, str]) -> None:
    state, url = sim
    first = {"models": [{"name": "models/page-one"}], "nextPageToken": "t/2"}
    state.faults.append(Fault(body=first, has_body=True, path="/v1beta/models"))
    models = await adapter(url).list_models()
    names = [m["name"] for m in models]
    assert names[0] == "models/page-one" and "models/gemini-3-pro-image" in names
    asked = [r for r in state.requests if r["path"] == "/v1beta/models"]
    assert [r["query"].get("pageToken") for r in asked] == [None, "t/2"]
    assert all(r["query"]["pageSize"] == "1000" for r in asked)


async def test_list_models_failures_are_upstream_errors(sim: tuple[SimState, str]) -> None:
    state, url = sim
    state.faults.append(Fault(status=403, path="/v1beta/models"))
    with pytest.raises(UpstreamError) as info:
        await adapter(url).list_models()
    assert info.value.status == 403
    state.faults.append(Fault(body={"nope": 1}, has_body=True, path="/v1beta/models"))
    with pytest.raises(UpstreamError, match="no 'models' array"):
        await adapter(url).list_models()


async def test_a_preview_ids_model_map_applies_to_its_ga_id(sim: tuple[SimState, str]) -> None:
    state, url = sim
    up = adapter(url, model_map={"gemini-3-pro-image-preview": "vendor-pro"})
    body = orjson.dumps({"contents": [{"parts": [{"text": "a fox"}]}]})
    ga = CATALOG.resolve("gemini-3-pro-image")
    await up.generate(parse_call("t", "generateContent", ga, body))
    assert state.requests[-1]["path"] == "/v1beta/models/vendor-pro:generateContent"
