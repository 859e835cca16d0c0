"""ResultKeeper (nanogate/engine/replay.py) on the real journal and a local result store:
Idempotency-Key claims, kept answers and their replay, conflicts, waiting for the first call,
release after a failure, calls marked running, and expiry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.billing.runners import EngineRunner, Journal
from nanogate.core.errors import Conflict
from nanogate.db import make_engine
from nanogate.engine.replay import ResultKeeper, fingerprint
from nanogate.storage import Storage
from nanogate.storage.local import LocalStorage
from nanogate.storage.signing import UrlSigner

from .conftest import new_key

ANSWER = b'{"candidates":[{"content":{"parts":[{"text":"kept"}]}}]}'
PATH = "/v1beta/models/gemini-3.8-flash:generateContent"
FIRST = fingerprint("POST", PATH, b'{"contents":"one"}')
OTHER = fingerprint("POST", PATH, b'{"contents":"two"}')
TTL_S = 3600
LEASE_S = 600


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return LocalStorage(tmp_path / "results", "http://testserver", UrlSigner(b"k" * 32))


@pytest.fixture
def keeper(journal: Journal, storage: Storage) -> ResultKeeper:
    return ResultKeeper(journal, storage, ttl_s=TTL_S, node="node-a", lease_s=LEASE_S)


@pytest.fixture
async def key_id(engine: AsyncEngine) -> int:
    return (await new_key(engine, 0)).id


def test_fingerprints_cover_method_path_and_body() -> None:
    assert fingerprint("POST", PATH, b"{}") == fingerprint("POST", PATH, b"{}")
    others = {
        fingerprint("POST", PATH, b"{} "),
        fingerprint("PUT", PATH, b"{}"),
        fingerprint("POST", PATH + "x", b"{}"),
    }
    assert fingerprint("POST", PATH, b"{}") not in others and len(others) == 3


async def test_a_kept_answer_is_replayed(keeper: ResultKeeper, key_id: int) -> None:
    # The first request with the key owns it: it runs, and its answer is kept.
    assert await keeper.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0) is None
    await keeper.keep(key_id, "req-1", ANSWER)
    assert await keeper.fetch(key_id, "req-1") == (200, ANSWER)
    # The same request again, as often as it comes, gets the first answer back.
    for _ in range(2):
        assert await keeper.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=0) == (200, ANSWER)


async def test_another_request_under_the_key_is_409(keeper: ResultKeeper, key_id: int) -> None:
    with keeper.running(key_id, "req-1"):
        await keeper.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
        with pytest.raises(Conflict, match="already used with a different request") as caught:
            await keeper.claim(key_id, ("idem-1", OTHER), "req-2", wait_s=5)
        assert caught.value.status == 409
        await keeper.keep(key_id, "req-1", ANSWER)
    with pytest.raises(Conflict, match="already used with a different request"):
        await keeper.claim(key_id, ("idem-1", OTHER), "req-2", wait_s=0)


async def test_a_repeat_waits_for_the_first_to_finish(keeper: ResultKeeper, key_id: int) -> None:
    with keeper.running(key_id, "req-1"):
        await keeper.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
        repeat = asyncio.create_task(keeper.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=10))
        await asyncio.sleep(0.1)  # past its first look, and into its polling
        assert not repeat.done()
        await keeper.keep(key_id, "req-1", ANSWER)
    assert await asyncio.wait_for(repeat, 2) == (200, ANSWER)


async def test_a_repeat_that_waits_too_long_is_409(keeper: ResultKeeper, key_id: int) -> None:
    with keeper.running(key_id, "req-1"):
        await keeper.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
        started = asyncio.get_running_loop().time()
        with pytest.raises(Conflict, match="is still running; retry later") as caught:
            await keeper.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=0.2)
    assert caught.value.status == 409
    assert asyncio.get_running_loop().time() - started >= 0.2  # it waited its time first


async def test_after_a_release_a_retry_runs_afresh(keeper: ResultKeeper, key_id: int) -> None:
    with keeper.running(key_id, "req-1"):
        await keeper.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
        # Only the owner's release lets go: another request id's does nothing.
        await keeper.release(key_id, "idem-1", "req-9")
        with pytest.raises(Conflict, match="still running"):
            await keeper.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=0)
        await keeper.release(key_id, "idem-1", "req-1")
    # The key is free again, for this request or another; the retry owns it now.
    with keeper.running(key_id, "req-3"):
        assert await keeper.claim(key_id, ("idem-1", OTHER), "req-3", wait_s=0) is None
        with pytest.raises(Conflict, match="different request"):
            await keeper.claim(key_id, ("idem-1", FIRST), "req-4", wait_s=0)


async def test_a_key_whose_call_ended_here_without_an_answer_is_free_at_once(
    keeper: ResultKeeper, key_id: int
) -> None:
    # The call that claimed the key is no longer running on this node, and kept nothing: its
    # process restarted, or its release could not be written. Nothing will come of it.
    with keeper.running(key_id, "req-1"):
        await keeper.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
    started = asyncio.get_running_loop().time()
    assert await keeper.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=5) is None
    assert asyncio.get_running_loop().time() - started < 1  # no waiting for it
    # The retry owns the key now: its answer is the one replayed.
    await keeper.keep(key_id, "req-2", ANSWER)
    assert await keeper.claim(key_id, ("idem-1", FIRST), "req-3", wait_s=0) == (200, ANSWER)


async def test_another_nodes_call_holds_the_key_for_its_lease_only(
    journal: Journal, storage: Storage, key_id: int
) -> None:
    # Running elsewhere: this node cannot tell it from a dead one, so it waits, and the key
    # is held no longer than the call's reservation lives (the lease).
    there = ResultKeeper(journal, storage, ttl_s=TTL_S, node="node-b", lease_s=0.3)
    here = ResultKeeper(journal, storage, ttl_s=TTL_S, node="node-a", lease_s=LEASE_S)
    await there.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
    with pytest.raises(Conflict, match="still running"):
        await here.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=0)
    await asyncio.sleep(0.35)
    assert await here.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=0) is None


async def test_a_running_calls_lease_is_renewed_and_a_dead_nodes_runs_out(
    journal: Journal, storage: Storage, key_id: int
) -> None:
    there = ResultKeeper(journal, storage, ttl_s=TTL_S, node="node-b", lease_s=0.3)
    here = ResultKeeper(journal, storage, ttl_s=TTL_S, node="node-a", lease_s=LEASE_S)
    there.start()
    try:
        with there.running(key_id, "req-1"):
            await there.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
            # Well past one lease, the call still runs there: its node keeps renewing.
            await asyncio.sleep(1.0)
            with pytest.raises(Conflict, match="still running"):
                await here.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=0)
            # Node b dies with the call: nobody renews, and the key is free one lease on.
            await there.stop()
            await asyncio.sleep(0.35)
            assert await here.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=0) is None
    finally:
        await there.stop()


async def test_a_kept_answer_holds_its_key_as_long_as_itself(
    journal: Journal, storage: Storage, key_id: int
) -> None:
    short = ResultKeeper(journal, storage, ttl_s=TTL_S, node="node-a", lease_s=0.3)
    with short.running(key_id, "req-1"):
        await short.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
        await short.keep(key_id, "req-1", ANSWER)
    await asyncio.sleep(0.35)  # past the lease, well within the answer's retention
    assert await short.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=0) == (200, ANSWER)


async def test_keys_and_answers_belong_to_one_api_key(
    keeper: ResultKeeper, key_id: int, engine: AsyncEngine
) -> None:
    other = (await new_key(engine, 0)).id
    await keeper.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
    await keeper.keep(key_id, "req-1", ANSWER)
    assert await keeper.claim(other, ("idem-1", OTHER), "req-2", wait_s=0) is None
    assert await keeper.fetch(other, "req-1") is None


async def test_fetch_gives_the_latest_answer_while_its_object_lasts(
    keeper: ResultKeeper, key_id: int, storage: Storage
) -> None:
    assert await keeper.fetch(key_id, "req-1") is None
    await keeper.keep(key_id, "req-1", ANSWER)
    # A request id used again keeps its latest answer.
    await keeper.keep(key_id, "req-1", b'{"error":{}}', status=500)
    assert await keeper.fetch(key_id, "req-1") == (500, b'{"error":{}}')
    stored = await storage.put(b'{"error":{}}', "application/json")  # the same object
    assert await storage.delete(stored.name)
    assert await keeper.fetch(key_id, "req-1") is None


def test_running_marks_a_call_until_it_ends(storage: Storage) -> None:
    # Marks live in this process alone: a journal that is never started does for one.
    journal = Journal(EngineRunner(make_engine("sqlite+aiosqlite://")))
    keeper = ResultKeeper(journal, storage, ttl_s=1, node="node-a", lease_s=1)
    assert not keeper.is_running(1, "req-1")
    with keeper.running(1, "req-1"):
        assert keeper.is_running(1, "req-1")
        assert not keeper.is_running(2, "req-1") and not keeper.is_running(1, "req-2")
    assert not keeper.is_running(1, "req-1")
    with pytest.raises(RuntimeError), keeper.running(1, "req-1"):
        raise RuntimeError("the call failed")
    assert not keeper.is_running(1, "req-1")


async def test_keys_and_answers_expire(journal: Journal, storage: Storage, key_id: int) -> None:
    keeper = ResultKeeper(journal, storage, ttl_s=0.3, node="node-a", lease_s=0.3)
    await keeper.claim(key_id, ("idem-1", FIRST), "req-1", wait_s=0)
    await keeper.keep(key_id, "req-1", ANSWER)
    assert await keeper.claim(key_id, ("idem-1", FIRST), "req-2", wait_s=0) == (200, ANSWER)
    await asyncio.sleep(0.35)
    assert await keeper.fetch(key_id, "req-1") is None
    # An expired key is a new key: another request may own it.
    assert await keeper.claim(key_id, ("idem-1", OTHER), "req-3", wait_s=0) is None
