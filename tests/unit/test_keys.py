"""API keys: hash-only storage, lookup and its cache, revocation, top-ups, bootstrap."""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.access.keys import KeyRecord, LastAdminKey, new_key
from nanogate.billing.keys import KeyStore, _NewKey, bootstrap
from nanogate.db import accounts, api_keys, ledger, make_engine

# --- tests ---


def _statements(engine: AsyncEngine) -> list[str]:
    """Every SQL statement the engine sends from now on."""
    seen: list[str] = []

    def _on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", _on_execute)
    return seen


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(engine: AsyncEngine) -> KeyStore:
    return KeyStore(engine, cache_seconds=0)


def _other_secret(plain: str) -> str:
    """The same key with its secret's first character changed."""
    head, secret = plain[:-43], plain[-43:]
    return head + ("A" if secret[0] != "A" else "B") + secret[1:]


async def test_create_returns_a_well_formed_key(store: KeyStore) -> None:
    plain, record = await store.create("alice", credits=100)
    assert re.fullmatch(r"ng_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", plain)
    assert plain.startswith(record.prefix + "_")
    assert (record.name, record.is_admin, record.balance) == ("alice", False, 100)
    assert record.status(datetime.now(UTC)) == "active"
    admin_plain, admin = await store.create("ops", is_admin=True)
    assert admin_plain.startswith("nga_") and admin.prefix.startswith("nga_") and admin.is_admin


async def test_only_the_hash_is_stored(engine: AsyncEngine, store: KeyStore) -> None:
    plain, record = await store.create("alice", credits=100)
    secret = plain[len(record.prefix) + 1 :]
    async with engine.connect() as conn:
        rows = [
            row for table in (api_keys, ledger) for row in (await conn.execute(select(table))).all()
        ]
        stored_hash = await conn.scalar(select(api_keys.c.key_hash))
    assert stored_hash == hashlib.sha256(plain.encode()).hexdigest()
    values = " ".join(str(value) for row in rows for value in row)
    assert plain not in values and secret not in values


async def test_authenticate(store: KeyStore) -> None:
    plain, record = await store.create("alice", allowed_models=["gemini-2.5-flash-image"])
    found = await store.authenticate(plain)
    assert found == record
    assert found is not None and found.allowed_models == ("gemini-2.5-flash-image",)


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "ng_",
        "Bearer x",
        "ng_zzzzzzzz_" + "a" * 43,
        "ng_12345678_" + "a" * 42,
        "xx_12345678_" + "a" * 43,
    ],
)
async def test_malformed_keys_are_refused_without_a_query(
    engine: AsyncEngine, store: KeyStore, presented: str
) -> None:
    seen = _statements(engine)
    assert await store.authenticate(presented) is None
    assert seen == []


async def test_right_prefix_wrong_secret_is_refused(store: KeyStore) -> None:
    plain, _ = await store.create("alice")
    assert await store.authenticate(_other_secret(plain)) is None
    assert await store.authenticate(plain) is not None


async def test_unknown_prefix_is_refused(store: KeyStore) -> None:
    await store.create("alice")
    assert await store.authenticate(new_key()[0]) is None


async def test_revoke(store: KeyStore) -> None:
    plain, record = await store.create("alice")
    assert await store.revoke(record.prefix) is True
    assert await store.revoke(record.prefix) is False  # already revoked
    assert await store.revoke("ng_00000000") is False
    # Still returned, so the caller can answer 403 rather than 401.
    found = await store.authenticate(plain)
    assert found is not None and found.status(datetime.now(UTC)) == "revoked"


async def test_the_last_active_admin_key_cannot_be_revoked(store: KeyStore) -> None:
    _, first = await store.create("ops", is_admin=True)
    with pytest.raises(LastAdminKey, match="last active admin key"):
        await store.revoke(first.prefix)
    found = await store.get(first.prefix)
    assert found is not None and found.revoked_at is None
    # With a second admin key, either may go (a leaked key revokes itself once replaced), and
    # then the other is the last.
    _, second = await store.create("ops-2", is_admin=True)
    assert await store.revoke(first.prefix) is True
    with pytest.raises(LastAdminKey):
        await store.revoke(second.prefix)
    # Client keys are not counted, and an expired admin key is no way in.
    await store.create("client")
    _, expired = await store.create(
        "old", is_admin=True, expires_at=datetime.now(UTC) - timedelta(days=1)
    )
    with pytest.raises(LastAdminKey):
        await store.revoke(second.prefix)
    assert await store.revoke(expired.prefix) is True  # it locked no one out by going


async def test_the_last_active_admin_key_cannot_be_expired_either(store: KeyStore) -> None:
    _, first = await store.create("ops", is_admin=True)
    past = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(LastAdminKey, match="expiring it would lock the admin API out"):
        await store.update(first.prefix, expires_at=past)
    found = await store.get(first.prefix)
    assert found is not None and found.expires_at is None
    # A later expiry is no lock-out yet; a second admin key lets the first expire now.
    later = datetime.now(UTC) + timedelta(days=1)
    changed = await store.update(first.prefix, expires_at=later)
    assert changed is not None and changed.expires_at == later
    _, second = await store.create("ops-2", is_admin=True)
    expired = await store.update(first.prefix, expires_at=past)
    assert expired is not None and expired.status(datetime.now(UTC)) == "expired"
    with pytest.raises(LastAdminKey):
        await store.update(second.prefix, expires_at=past)
    # Client keys may expire whenever.
    _, client = await store.create("client")
    assert await store.update(client.prefix, expires_at=past) is not None


async def test_two_admin_keys_revoked_at_once_leave_one(store: KeyStore) -> None:
    """Each revocation alone would leave an admin key; run together, they must not leave none."""
    _, first = await store.create("a", is_admin=True)
    pair = [first.prefix]
    for round in range(8):
        _, another = await store.create(f"b{round}", is_admin=True)
        pair.append(another.prefix)
        outcomes = await asyncio.gather(*map(store.revoke, pair), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, LastAdminKey)]
        assert outcomes.count(True) == 1 and len(refused) == 1, outcomes
        pair = [prefix for prefix, o in zip(pair, outcomes, strict=True) if o is not True]


async def test_expiry(store: KeyStore) -> None:
    now = datetime.now(UTC)
    plain, record = await store.create("temp", expires_at=now + timedelta(hours=1))
    assert record.status(now) == "active"
    assert record.status(now + timedelta(hours=2)) == "expired"
    found = await store.authenticate(plain)
    assert found is not None and found.expires_at == record.expires_at


def test_allows() -> None:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "id": 1,
        "prefix": "ng_00000000",
        "name": "k",
        "is_admin": False,
        "account_id": 1,
        "account_name": "acme",
        "balance": 0,
        "created_at": now,
        "expires_at": None,
        "revoked_at": None,
        "rpm_limit": None,
        "concurrency_limit": None,
    }
    assert KeyRecord(allowed_models=None, **fields).allows("anything")
    limited = KeyRecord(allowed_models=("a", "b"), **fields)
    assert limited.allows("a") and not limited.allows("c")


async def test_cache_hit_skips_the_database(engine: AsyncEngine) -> None:
    clock = FakeClock()
    store = KeyStore(engine, cache_seconds=10, clock=clock)
    plain, _ = await store.create("alice")
    seen = _statements(engine)
    assert await store.authenticate(plain) is not None
    assert len(seen) == 1
    for _ in range(5):
        assert await store.authenticate(plain) is not None
    assert len(seen) == 1
    # The wrong secret is checked against the cached hash too.
    assert await store.authenticate(_other_secret(plain)) is None
    assert len(seen) == 1
    clock.now += 11
    assert await store.authenticate(plain) is not None
    assert len(seen) == 2


async def test_unknown_prefixes_are_cached_too(engine: AsyncEngine) -> None:
    clock = FakeClock()
    store = KeyStore(engine, cache_seconds=10, clock=clock)
    unknown, _ = new_key()
    seen = _statements(engine)
    assert await store.authenticate(unknown) is None
    assert await store.authenticate(unknown) is None
    assert len(seen) == 1
    clock.now += 11
    assert await store.authenticate(unknown) is None
    assert len(seen) == 2


async def test_zero_cache_seconds_always_queries(engine: AsyncEngine, store: KeyStore) -> None:
    plain, _ = await store.create("alice")
    seen = _statements(engine)
    for _ in range(3):
        await store.authenticate(plain)
    assert len(seen) == 3


async def test_revoke_through_the_store_bypasses_its_cache(engine: AsyncEngine) -> None:
    store = KeyStore(engine, cache_seconds=60)
    plain, record = await store.create("alice")
    assert await store.authenticate(plain) is not None
    await store.revoke(record.prefix)
    found = await store.authenticate(plain)
    assert found is not None and found.status(datetime.now(UTC)) == "revoked"


async def test_credits_write_a_topup_ledger_row(engine: AsyncEngine, store: KeyStore) -> None:
    _, funded = await store.create("alice", credits=500)
    await store.create("bob")  # no credits, no ledger row
    async with engine.connect() as conn:
        rows = (await conn.execute(select(ledger).order_by(ledger.c.id))).all()
        balance = await conn.scalar(
            select(accounts.c.balance).where(accounts.c.id == funded.account_id)
        )
    assert [(r.account_id, r.key_id, r.kind, r.amount, r.balance_after) for r in rows] == [
        (funded.account_id, funded.id, "topup", 500, 500)
    ]
    assert balance == 500


async def test_each_key_gets_its_own_account_unless_given_one(store: KeyStore) -> None:
    _, first = await store.create("alice", credits=100)
    _, second = await store.create("alice-ci", account_id=first.account_id, credits=50)
    _, third = await store.create("bob")
    assert second.account_id == first.account_id and second.balance == 150
    assert third.account_id != first.account_id and third.account_name == third.prefix
    found = await store.get(first.prefix)
    assert found is not None and found.balance == 150 and found.account_name == first.prefix
    with pytest.raises(LookupError):
        await store.create("nobody", account_id=9999)


async def test_bad_credit_amounts_are_refused(store: KeyStore) -> None:
    with pytest.raises(ValueError):
        await store.create("alice", credits=-1)
    assert await store.count() == 0


async def test_list_and_count(store: KeyStore) -> None:
    assert await store.count() == 0
    _, first = await store.create("a")
    _, second = await store.create("b", rpm_limit=60, concurrency_limit=4)
    assert await store.count() == 2
    listed = await store.list()
    assert [r.prefix for r in listed] == [first.prefix, second.prefix]
    assert (listed[1].rpm_limit, listed[1].concurrency_limit) == (60, 4)
    assert listed[0].allowed_models is None


async def test_image_output_is_stored_and_changed(engine: AsyncEngine, store: KeyStore) -> None:
    _, default = await store.create("a")
    _, urls = await store.create("b", image_output="url")
    assert (default.image_output, urls.image_output) == (None, "url")
    assert [r.image_output for r in await store.list()] == [None, "url"]
    async with engine.connect() as conn:
        stored = await conn.scalar(select(api_keys.c.image_output).where(api_keys.c.id == urls.id))
    assert stored == "url"

    changed = await store.update(default.prefix, image_output="data")
    assert changed is not None and changed.image_output == "data"
    cleared = await store.update(urls.prefix, image_output=None)
    assert cleared is not None and cleared.image_output is None
    found = await store.by_id(default.id)
    assert found is not None and found.image_output == "data"

    # Refused before any SQL: a failed insert would otherwise be retried as a prefix clash.
    with pytest.raises(ValueError, match="image_output"):
        await store.create("c", image_output="b64_json")
    with pytest.raises(ValueError, match="image_output"):
        await store.update(default.prefix, image_output="URL")
    assert await store.count() == 2
    after = await store.get(default.prefix)
    assert after is not None and after.image_output == "data"


async def test_bootstrap_creates_two_keys_once(store: KeyStore) -> None:
    issued = await bootstrap(store, starter_credits=1000)
    assert issued is not None
    client_key, admin_key = issued
    client = await store.authenticate(client_key)
    admin = await store.authenticate(admin_key)
    assert client is not None and (client.name, client.is_admin, client.balance) == (
        "default",
        False,
        1000,
    )
    assert admin is not None and (admin.name, admin.is_admin) == ("admin", True)
    assert await bootstrap(store, starter_credits=1000) is None
    assert await store.count() == 2


async def test_bootstrap_race_has_one_winner(db_url: str, engine: AsyncEngine) -> None:
    # Separate engines, as two processes starting at once would have.
    engines = [make_engine(db_url) for _ in range(4)]
    try:
        stores = [KeyStore(e, cache_seconds=0) for e in engines]
        results = await asyncio.gather(*(bootstrap(s, starter_credits=10) for s in stores))
    finally:
        for e in engines:
            await e.dispose()
    assert sum(result is not None for result in results) == 1
    store = KeyStore(engine, cache_seconds=0)
    assert await store.count() == 2
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(ledger)) == 1


async def test_bootstrap_race_past_the_count_check(db_url: str, engine: AsyncEngine) -> None:
    # Both processes saw an empty table before either wrote: the guarded insert decides.
    engines = [make_engine(db_url) for _ in range(4)]
    try:
        stores = [KeyStore(e, cache_seconds=0) for e in engines]
        specs = [_NewKey(name="default", credits=1), _NewKey(name="admin", is_admin=True)]
        results = await asyncio.gather(*(s._create(specs, only_if_empty=True) for s in stores))
    finally:
        for e in engines:
            await e.dispose()
    assert sum(result is not None for result in results) == 1
    assert await KeyStore(engine, cache_seconds=0).count() == 2
