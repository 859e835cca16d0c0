"""The S3 backend against a real S3-protocol server (moto's, a child process), its settings, and
the file route's redirect to presigned URLs."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiobotocore.session import get_session
from fastapi import FastAPI
from pydantic import ValidationError

from nanogate.core.config import Settings
from nanogate.core.errors import Unavailable
from nanogate.core.metrics import REGISTRY
from nanogate.storage import Storage, StorageError, open_storage
from nanogate.storage import s3 as s3_module
from nanogate.storage.s3 import PRESIGN_MAX_S, RULE_ID, S3Storage
from nanogate.storage.signing import UrlSigner
from nanogate.web import file_routes
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server, start_s3_server

BASE = "http://gateway.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 1000
PREFIX = "results/"
SIGNER = UrlSigner(b"s" * 32)


def make_storage(url: str, bucket: str, **overrides: object) -> S3Storage:
    options: dict[str, object] = {
        "bucket": bucket,
        "prefix": PREFIX,
        "public_base_url": BASE,
        "signer": SIGNER,
        "endpoint_url": url,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "path_style": True,
        **overrides,
    }
    return S3Storage(**options)  # type: ignore[arg-type]


@pytest.fixture
async def storage(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3Storage]:
    """No lifecycle rule: the sweep is in charge of retention."""
    store = make_storage(s3_server.url, s3_bucket)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
def lone_server() -> Iterator[S3Server]:
    """An S3 server of the test's own, which the test may stop."""
    server = start_s3_server()
    yield server
    server.stop()


def storage_errors(operation: str) -> float:
    sample = REGISTRY.get_sample_value("nanogate_storage_errors_total", {"operation": operation})
    return sample or 0


def _later(seconds: int = 600) -> int:
    return int(time.time()) + seconds


# --- objects ---


async def test_round_trip_under_the_prefix(
    storage: S3Storage, s3_server: S3Server, s3_bucket: str
) -> None:
    stored = await storage.put(PNG, "image/png")
    digest = hashlib.sha256(PNG).hexdigest()
    assert stored.name == f"{digest[:2]}/{digest}.png"
    assert (stored.content_type, stored.size) == ("image/png", len(PNG))
    assert s3_server.keys(s3_bucket) == [PREFIX + stored.name]
    assert await storage.get(stored.name) == (PNG, "image/png")
    assert await storage.delete(stored.name) is True
    assert await storage.get(stored.name) is None
    assert await storage.delete(stored.name) is False
    assert s3_server.keys(s3_bucket) == []


async def test_object_carries_its_content_type(storage: S3Storage, s3_bucket: str) -> None:
    stored = await storage.put(b"<script>", "text/html")
    assert stored.name.endswith(".bin")
    # S3 answers with the type stored at put: a presigned download is never run as HTML.
    client = await storage._s3()
    head = await client.head_object(Bucket=s3_bucket, Key=PREFIX + stored.name)
    assert head["ContentType"] == "application/octet-stream"
    assert await storage.get(stored.name) == (b"<script>", "application/octet-stream")


async def test_same_bytes_one_object_refreshed(
    storage: S3Storage, s3_server: S3Server, s3_bucket: str
) -> None:
    first = await storage.put(PNG, "image/png")
    client = await storage._s3()
    key = PREFIX + first.name
    before = (await client.head_object(Bucket=s3_bucket, Key=key))["LastModified"]
    await asyncio.sleep(1.1)  # Last-Modified counts seconds
    assert await storage.put(PNG, "image/png") == first
    assert (await client.head_object(Bucket=s3_bucket, Key=key))["LastModified"] > before
    assert s3_server.keys(s3_bucket) == [PREFIX + first.name]


@pytest.mark.parametrize("name", ["../x.png", "ab/../../x.png", "ab/" + "ab" * 32 + ".exe", ""])
async def test_invalid_names_never_reach_the_bucket(storage: S3Storage, name: str) -> None:
    assert await storage.get(name) is None
    assert await storage.delete(name) is False
    assert await storage.redirect_url(name, method="GET", expires=_later()) is None
    with pytest.raises(ValueError):
        storage.url(name, expires=_later())


async def test_url_is_the_gateways_signed_link(storage: S3Storage) -> None:
    stored = await storage.put(PNG, "image/png")
    url = urlsplit(storage.url(stored.name, expires=_later()))
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{BASE}/files/{stored.name}"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert SIGNER.verify(stored.name, query["expires"], query["sig"]) == "ok"


def test_s3_storage_is_a_storage(storage: S3Storage) -> None:
    typed: Storage = storage
    assert typed is storage


# --- retention ---


async def test_sweep_removes_old_keeps_new_and_foreign(
    storage: S3Storage, s3_server: S3Server, s3_bucket: str
) -> None:
    old = await storage.put(b"old", "image/png")
    await asyncio.sleep(1.1)
    cutoff = datetime.now(UTC)
    await asyncio.sleep(1.1)
    new = await storage.put(b"new", "image/png")
    # Keys the gateway did not make: outside the prefix, or not an object name.
    client = await storage._s3()
    for key in ("elsewhere/ab/old.png", f"{PREFIX}README"):
        await client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    assert await storage.sweep(cutoff) == 1
    assert await storage.get(old.name) is None
    assert await storage.get(new.name) == (b"new", "image/png")
    assert sorted(s3_server.keys(s3_bucket)) == sorted(
        ["elsewhere/ab/old.png", f"{PREFIX}README", PREFIX + new.name]
    )


async def test_sweep_deletes_in_batches(
    storage: S3Storage, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "_DELETE_BATCH", 2)
    for i in range(5):
        await storage.put(PNG + bytes([i]), "image/png")
    naive_future = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=1)
    assert await storage.sweep(naive_future) == 5
    assert s3_server.keys(s3_bucket) == []


async def test_lifecycle_rule_set_beside_the_operators(s3_server: S3Server, s3_bucket: str) -> None:
    store = make_storage(s3_server.url, s3_bucket, retention_days=2)
    client = await store._s3()
    theirs = {
        "ID": "operator-logs",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 30},
    }
    await client.put_bucket_lifecycle_configuration(
        Bucket=s3_bucket,
        LifecycleConfiguration={"Rules": [theirs, {**theirs, "ID": RULE_ID}]},  # type: ignore[list-item]
    )
    await store.start()
    rules = (await client.get_bucket_lifecycle_configuration(Bucket=s3_bucket))["Rules"]
    by_id = {rule.get("ID"): rule for rule in rules}
    assert set(by_id) == {"operator-logs", RULE_ID}
    assert by_id["operator-logs"]["Filter"] == {"Prefix": "logs/"}
    ours = by_id[RULE_ID]
    assert ours["Filter"] == {"Prefix": PREFIX}
    assert ours["Expiration"] == {"Days": 2}
    assert ours["Status"] == "Enabled"
    # The bucket removes old results now: the sweep leaves them to it.
    stored = await store.put(PNG, "image/png")
    assert await store.sweep(datetime.now(UTC) + timedelta(days=3)) == 0
    assert await store.get(stored.name) == (PNG, "image/png")
    await store.close()


async def test_lifecycle_days_round_retention_up() -> None:
    for hours, days in ((1, 1), (24, 1), (25, 2), (72, 3)):
        settings = Settings(storage_backend="s3", s3_bucket="b", result_ttl_hours=hours)
        store = S3Storage.from_settings(settings, SIGNER)
        assert store._retention_days == days
        await store.close()


async def test_lifecycle_retried_after_an_outage(lone_server: S3Server) -> None:
    bucket = lone_server.create_bucket("nanogate-outage")
    port = int(lone_server.url.rpartition(":")[2])
    lone_server.stop()
    store = make_storage(lone_server.url, bucket, retention_days=1)
    await store.start()  # never raises: the gateway starts while storage is down
    with pytest.raises(StorageError):
        await store.sweep(datetime.now(UTC))
    restarted = start_s3_server(port)  # moto keeps nothing: the bucket is made again
    try:
        restarted.create_bucket(bucket)
        assert await store.sweep(datetime.now(UTC)) == 0
        client = await store._s3()
        rules = (await client.get_bucket_lifecycle_configuration(Bucket=bucket))["Rules"]
        assert [rule.get("ID") for rule in rules] == [RULE_ID]
    finally:
        await store.close()
        restarted.stop()


# --- failures ---


async def test_server_down_is_a_storage_error(
    lone_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = lone_server.create_bucket("nanogate-down")
    store = make_storage(lone_server.url, bucket)
    stored = await store.put(PNG, "image/png")
    lone_server.stop()
    before = {op: storage_errors(op) for op in ("put", "get", "sweep")}
    for attempt in (
        store.put(b"more", "image/png"),
        store.get(stored.name),
        store.sweep(datetime.now(UTC)),
    ):
        with pytest.raises(StorageError) as caught:
            await attempt
        error = caught.value
        assert isinstance(error, Unavailable)
        assert error.status == 503
        assert error.message == "The gateway's result storage could not be reached; retry shortly."
    await store.close()
    counted = {op: storage_errors(op) - before[op] for op in before}
    assert counted == {"put": 1, "get": 1, "sweep": 1}
    assert SECRET_KEY not in caplog.text
    assert "s3 storage unreachable" in caplog.text


async def test_missing_bucket_is_a_storage_error(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_storage(s3_server.url, "nanogate-no-such-bucket", retention_days=1)
    await store.start()
    for attempt in (store.put(PNG, "image/png"), store.sweep(datetime.now(UTC))):
        with pytest.raises(StorageError) as caught:
            await attempt
        message = caught.value.message
        assert "result storage failed: its bucket does not exist" in message
        assert "operator must fix" in message
        assert "nanogate-no-such-bucket" not in message
    await store.close()
    assert SECRET_KEY not in caplog.text


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[S3Server, dict[str, dict[str, str]]]]:
    """An S3 server that checks credentials and IAM policies, with a bucket and two users:
    "writer" may do everything but set lifecycle rules, "reader" may only read."""
    server = start_s3_server(open_requests=7)  # the bucket, then two users made
    try:
        server.create_bucket("nanogate-guarded")
        allowed = {
            "writer": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:ListBucket",
                "s3:GetLifecycleConfiguration",
            ],
            "reader": ["s3:GetObject", "s3:ListBucket"],
        }
        users: dict[str, dict[str, str]] = {}
        async with get_session().create_client(
            "iam",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        ) as iam:
            for user, actions in allowed.items():
                await iam.create_user(UserName=user)
                statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
                policy = {"Version": "2012-10-17", "Statement": [statement]}
                await iam.put_user_policy(
                    UserName=user, PolicyName="gateway", PolicyDocument=json.dumps(policy)
                )
                key = (await iam.create_access_key(UserName=user))["AccessKey"]
                users[user] = {
                    "access_key_id": key["AccessKeyId"],
                    "secret_access_key": key["SecretAccessKey"],
                }
        yield server, users
    finally:
        server.stop()


async def test_lifecycle_refused_falls_back_to_the_sweep(
    guarded: tuple[S3Server, dict[str, dict[str, str]]], caplog: pytest.LogCaptureFixture
) -> None:
    server, users = guarded
    caplog.set_level(logging.INFO, logger="nanogate")
    store = make_storage(server.url, "nanogate-guarded", retention_days=1, **users["writer"])
    await store.start()
    assert "s3 lifecycle rule refused; the sweeper removes old results" in caplog.text
    stored = await store.put(PNG, "image/png")
    assert await store.sweep(datetime.now(UTC) + timedelta(minutes=1)) == 1
    assert await store.get(stored.name) is None
    await store.close()


async def test_refused_credentials_and_denied_access(
    guarded: tuple[S3Server, dict[str, dict[str, str]]],
) -> None:
    server, users = guarded
    stranger = make_storage(server.url, "nanogate-guarded")  # a key the server does not know
    reader = make_storage(server.url, "nanogate-guarded", **users["reader"])
    for store, fault in ((stranger, "its credentials were refused"), (reader, "access was denied")):
        with pytest.raises(StorageError) as caught:
            await store.put(PNG, "image/png")
        assert caught.value.status == 503
        assert caught.value.message == (
            f"The gateway's result storage failed: {fault}. The operator must fix the storage "
            "settings."
        )
        await store.close()


# --- settings ---


def test_s3_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "STORAGE_BACKEND": "s3",
        "STORAGE_REDIRECT": "true",
        "S3_ENDPOINT_URL": "http://minio:9000",
        "S3_BUCKET": "results",
        "S3_REGION": "eu-west-1",
        "S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "S3_SECRET_ACCESS_KEY": "very-secret-value",
        "S3_PATH_STYLE": "true",
        "S3_PREFIX": "/gw/results",
    }.items():
        monkeypatch.setenv(f"NANOGATE_{name}", value)
    settings = Settings()
    assert settings.storage_backend == "s3"
    assert settings.storage_redirect is True
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert (settings.s3_bucket, settings.s3_region) == ("results", "eu-west-1")
    assert settings.s3_access_key_id == "AKIAEXAMPLE"
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "very-secret-value"
    assert "very-secret-value" not in repr(settings)
    assert settings.s3_path_style is True
    assert settings.s3_prefix == "gw/results/"
    assert isinstance(open_storage(settings, SIGNER), S3Storage)


def test_local_is_the_default() -> None:
    settings = Settings()
    assert (settings.storage_backend, settings.storage_redirect) == ("local", False)
    assert settings.s3_prefix == "nanogate/"
    assert not isinstance(open_storage(settings, SIGNER), S3Storage)
    assert Settings(s3_prefix="").s3_prefix == ""


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"storage_backend": "s3"}, "storage_backend s3 needs s3_bucket (NANOGATE_S3_BUCKET)"),
        ({"storage_redirect": True}, "storage_redirect needs storage_backend s3"),
        (
            {"storage_backend": "s3", "s3_bucket": "b", "s3_access_key_id": "AKIA"},
            "set s3_access_key_id and s3_secret_access_key together",
        ),
        (
            {"storage_backend": "s3", "s3_bucket": "b", "s3_secret_access_key": "shh-secret"},
            "set s3_access_key_id and s3_secret_access_key together",
        ),
    ],
)
def test_incomplete_s3_settings_refused(fields: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**fields)  # type: ignore[arg-type]
    assert says in str(caught.value)


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "aiobotocore" else found(name, *args),
    )
    with pytest.raises(ValidationError) as caught:
        Settings(storage_backend="s3", s3_bucket="b")
    assert "pip install 'nanogate[s3]'" in str(caught.value)
    assert Settings().storage_backend == "local"  # the local backend needs no extra


def test_serve_without_a_bucket_is_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NANOGATE_DATA_DIR": str(tmp_path),
        "NANOGATE_STORAGE_BACKEND": "s3",
        "NANOGATE_S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "NANOGATE_S3_SECRET_ACCESS_KEY": "shh-secret-value",
    }
    env.pop("NANOGATE_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "nanogate", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip() == (
        "error: invalid settings: settings: storage_backend s3 needs s3_bucket "
        "(NANOGATE_S3_BUCKET): the bucket results are kept in"
    )
    assert not (tmp_path / "nanogate.db").exists()


# --- the file route's redirect ---


def _route_client(storage: Storage) -> httpx.AsyncClient:
    """The file route in this event loop (the storage's client belongs to it)."""
    app = FastAPI()
    app.include_router(file_routes.router)
    app.state.storage = storage
    app.state.url_signer = SIGNER
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


async def test_redirect_to_a_presigned_url(s3_server: S3Server, s3_bucket: str) -> None:
    store = make_storage(s3_server.url, s3_bucket, redirect=True)
    stored = await store.put(PNG, "image/png")
    expires = _later(900)
    link = urlsplit(store.url(stored.name, expires=expires))
    async with _route_client(store) as client:
        got = await client.get(f"{link.path}?{link.query}")
        head = await client.head(f"{link.path}?{link.query}")
        forged = await client.get(f"{link.path}?expires={expires}&sig={'0' * 64}")
    async with httpx.AsyncClient() as s3:
        download = await s3.get(got.headers["location"])
        head_target = await s3.head(head.headers["location"])
    assert got.status_code == 307
    assert got.headers["cache-control"] == "no-store"
    target = got.headers["location"]
    assert target.startswith(f"{s3_server.url}/{s3_bucket}/{PREFIX}{stored.name}?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert 895 <= int(query["X-Amz-Expires"]) <= 900  # until the gateway link's own expiry
    assert download.status_code == 200
    assert download.content == PNG
    assert download.headers["content-type"] == "image/png"
    assert head.status_code == 307
    assert head_target.status_code == 200
    assert head_target.headers["content-length"] == str(len(PNG))
    assert forged.status_code == 403  # the gateway's signature is checked before any redirect
    await store.close()


async def test_presigned_url_capped_at_seven_days(s3_server: S3Server, s3_bucket: str) -> None:
    store = make_storage(s3_server.url, s3_bucket, redirect=True)
    name = "ab/" + "ab" * 32 + ".png"
    target = await store.redirect_url(name, method="GET", expires=_later(10**8))
    assert target is not None
    query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
    assert int(query["X-Amz-Expires"]) == PRESIGN_MAX_S
    await store.close()


async def test_no_redirect_serves_through_the_gateway(storage: S3Storage) -> None:
    stored = await storage.put(PNG, "image/png")
    link = urlsplit(storage.url(stored.name, expires=_later()))
    async with _route_client(storage) as client:
        got = await client.get(f"{link.path}?{link.query}")
    assert got.status_code == 200
    assert got.content == PNG
    assert got.headers["etag"] == f'"{hashlib.sha256(PNG).hexdigest()}"'


async def test_check_heads_the_bucket(s3_server: S3Server, s3_bucket: str) -> None:
    """/readyz's probe: up on the bucket, a StorageError when it does not exist."""
    reachable = make_storage(s3_server.url, s3_bucket)
    missing = make_storage(s3_server.url, "nanogate-no-such-bucket")
    try:
        await reachable.check()
        with pytest.raises(StorageError):
            await missing.check()
    finally:
        await reachable.close()
        await missing.close()
