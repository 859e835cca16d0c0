"""Fixtures the unit and the integration tests share: the database a test runs on, S3 and Redis."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy.exc import DBAPIError

from tests import postgres
from tests.redis_server import (
    SERVER_URL,
    RedisServer,
    drop_prefix,
    fresh_prefix,
    start_redis_server,
)
from tests.s3server import S3Server, start_s3_server


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database of the test's own, dropped afterwards."""
    name = f"nanogate_test_{secrets.token_hex(6)}"
    try:
        url = postgres.create_database(name)
    except (OSError, DBAPIError) as exc:
        # The machine and CI run PostgreSQL: its absence is a broken setup, not a reason to skip.
        pytest.fail(f"PostgreSQL not reachable at {postgres.SERVER_URL}: {exc}")
    try:
        yield url
    finally:
        postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    """Run the test twice: on the embedded SQLite default (None: the caller picks the file) and
    on a fresh PostgreSQL database (its URL)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server, a real process on a free port, for the whole session."""
    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh bucket of the test's own on the session's S3 server."""
    return s3_server.create_bucket(f"nanogate-{secrets.token_hex(6)}")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of the test's own on the machine's Redis (SERVER_URL), emptied afterwards."""
    prefix = fresh_prefix()
    try:
        drop_prefix(prefix)
    except redis.RedisError as exc:
        # The machine and CI run Redis: its absence is a broken setup, not a reason to skip.
        pytest.fail(f"Redis not reachable at {SERVER_URL}: {exc}")
    yield prefix
    drop_prefix(prefix)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server process of the test's own, which the test may kill and start again."""
    server = start_redis_server()
    yield server
    server.kill()
