"""Fixtures the unit and the integration tests share: the database a test runs on."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import DBAPIError

from tests import postgres


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
