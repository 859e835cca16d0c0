"""Result storage: the local backend, signed links, and the file route."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from nanogate.core.config import Settings
from nanogate.core.errors import Unavailable
from nanogate.core.metrics import REGISTRY
from nanogate.storage import (
    Storage,
    StorageError,
    content_type_for,
    extension_for,
    open_storage,
    valid_name,
)
from nanogate.storage.local import TEMP_GRACE_S, LocalStorage
from nanogate.storage.signing import UrlSigner
from nanogate.web import file_routes

SECRET = b"s" * 32
BASE = "http://testserver"
PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 1000


@pytest.fixture
def signer() -> UrlSigner:
    return UrlSigner(SECRET)


@pytest.fixture
def storage(tmp_path: Path, signer: UrlSigner) -> LocalStorage:
    store = open_storage(Settings(storage_dir=tmp_path / "store", public_base_url=BASE), signer)
    assert isinstance(store, LocalStorage)
    return store


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


# --- names and content types ---


def test_content_types_map_both_ways() -> None:
    assert extension_for("image/png") == "png"
    assert extension_for("IMAGE/JPEG; q=1") == "jpg"
    assert extension_for("text/html") == "bin"
    assert content_type_for("ab/x.heic") == "image/heic"
    assert content_type_for("ab/x.bin") == "application/octet-stream"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../etc/passwd",
        "/etc/passwd",
        "ab/../../x.png",
        "ab\\" + "ab" * 32 + ".png",
        "ab/" + "ab" * 32 + ".png\x00",
        "cd/" + "ab" * 32 + ".png",  # shard does not match the digest
        "ab/" + "AB" * 32 + ".png",
        "ab/" + "ab" * 32 + ".exe",
        "ab" * 32 + ".png",
    ],
)
def test_invalid_names(name: str) -> None:
    assert not valid_name(name)


# --- the local backend ---


async def test_put_get_delete_round_trip(storage: LocalStorage) -> None:
    stored = await storage.put(PNG, "image/png")
    digest = hashlib.sha256(PNG).hexdigest()
    assert stored.name == f"{digest[:2]}/{digest}.png"
    assert (stored.content_type, stored.size) == ("image/png", len(PNG))
    assert await storage.get(stored.name) == (PNG, "image/png")
    assert await storage.delete(stored.name) is True
    assert await storage.get(stored.name) is None
    assert await storage.delete(stored.name) is False


async def test_unknown_type_is_opaque_bytes(storage: LocalStorage) -> None:
    stored = await storage.put(b"<script>", "text/html")
    assert stored.name.endswith(".bin")
    assert stored.content_type == "application/octet-stream"
    assert await storage.get(stored.name) == (b"<script>", "application/octet-stream")


async def test_json_answers(storage: LocalStorage) -> None:
    stored = await storage.put(b'{"ok": true}', "application/json")
    assert stored.name.endswith(".json")
    assert await storage.get(stored.name) == (b'{"ok": true}', "application/json")


async def test_same_bytes_same_name_and_refreshed(storage: LocalStorage, tmp_path: Path) -> None:
    first = await storage.put(PNG, "image/png")
    path = tmp_path / "store" / first.name
    _age(path, 86400)
    again = await storage.put(PNG, "image/png")
    assert again == first
    assert time.time() - path.stat().st_mtime < 60
    assert len(_files(tmp_path / "store")) == 1


async def test_concurrent_puts_of_same_bytes(storage: LocalStorage, tmp_path: Path) -> None:
    results = await asyncio.gather(*(storage.put(PNG, "image/png") for _ in range(20)))
    assert len({r.name for r in results}) == 1
    assert [p.name for p in _files(tmp_path / "store")] == [results[0].name.split("/")[1]]
    assert await storage.get(results[0].name) == (PNG, "image/png")


async def test_write_leaves_no_temp_files(storage: LocalStorage, tmp_path: Path) -> None:
    for i in range(5):
        await storage.put(PNG + bytes([i]), "image/png")
    names = [p.name for p in _files(tmp_path / "store")]
    assert len(names) == 5
    assert not [n for n in names if n.startswith(".")]


def storage_errors() -> float:
    return REGISTRY.get_sample_value("nanogate_storage_errors_total", {"operation": "put"}) or 0


async def test_failed_write_leaves_nothing_and_says_storage(
    storage: LocalStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_replace(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    monkeypatch.setattr(os, "replace", broken_replace)
    before = storage_errors()
    with pytest.raises(Unavailable) as caught:
        await storage.put(PNG, "image/png")
    assert _files(tmp_path / "store") == []
    # A 503 that names the storage and the cause, never the path; counted for the operator.
    assert caught.value.status == 503
    assert "result storage is failing (No space left on device)" in caught.value.message
    assert str(tmp_path) not in caught.value.message
    assert storage_errors() == before + 1


@pytest.mark.parametrize("name", ["../x.png", "/etc/passwd", "ab/../../../etc/passwd", "a\x00b"])
async def test_traversal_names_refused(storage: LocalStorage, name: str) -> None:
    assert await storage.get(name) is None
    assert await storage.delete(name) is False
    assert await storage.local_file(name) is None
    with pytest.raises(ValueError):
        storage.url(name, expires=int(time.time()) + 60)


async def test_sweep_removes_old_keeps_new(storage: LocalStorage, tmp_path: Path) -> None:
    old = await storage.put(b"old", "image/png")
    new = await storage.put(b"new", "image/png")
    _age(tmp_path / "store" / old.name, 7200)
    stray = tmp_path / "store" / "README"
    stray.write_text("not ours")
    _age(stray, 7200)
    removed = await storage.sweep(datetime.now(UTC) - timedelta(hours=1))
    assert removed == 1
    assert await storage.get(old.name) is None
    assert await storage.get(new.name) == (b"new", "image/png")
    assert stray.exists()  # not an object name: left alone


async def test_sweep_naive_cutoff_is_utc(storage: LocalStorage, tmp_path: Path) -> None:
    old = await storage.put(b"old", "image/png")
    _age(tmp_path / "store" / old.name, 7200)
    naive = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    assert await storage.sweep(naive) == 1


async def test_sweep_clears_crashed_temp_files(storage: LocalStorage, tmp_path: Path) -> None:
    stored = await storage.put(PNG, "image/png")
    shard = (tmp_path / "store" / stored.name).parent
    crashed, writing = shard / ".tmp-crashed", shard / ".tmp-writing"
    crashed.write_bytes(b"half")
    writing.write_bytes(b"half")
    _age(crashed, TEMP_GRACE_S + 60)
    assert await storage.sweep(datetime.now(UTC) - timedelta(days=1)) == 0
    assert not crashed.exists()
    assert writing.exists()  # a write that may still be in progress
    assert await storage.get(stored.name) is not None


async def test_sweep_of_missing_directory(tmp_path: Path, signer: UrlSigner) -> None:
    store = LocalStorage(tmp_path / "never-created", BASE, signer)
    assert await store.sweep(datetime.now(UTC)) == 0
    await store.close()


async def test_url_is_signed(storage: LocalStorage, signer: UrlSigner) -> None:
    stored = await storage.put(PNG, "image/png")
    url = urlsplit(storage.url(stored.name, expires=int(time.time()) + 600))
    assert f"{url.scheme}://{url.netloc}" == BASE
    assert url.path == f"/files/{stored.name}"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert 590 <= int(query["expires"]) - time.time() <= 600
    assert signer.verify(stored.name, query["expires"], query["sig"]) == "ok"


def test_local_storage_is_a_storage(storage: LocalStorage) -> None:
    typed: Storage = storage
    assert typed is storage


# --- the signer ---


def test_signer_verdicts(signer: UrlSigner) -> None:
    name, expires, now = "ab/cd.png", 2_000_000_000, 1_900_000_000.0
    sig = signer.sign(name, expires)
    assert len(sig) == 64
    assert signer.verify(name, expires, sig, now) == "ok"
    assert signer.verify(name, str(expires), sig.upper(), now) == "ok"
    assert signer.verify("ab/ce.png", expires, sig, now) == "bad"  # tampered name
    assert signer.verify(name, expires + 1, sig, now) == "bad"  # stretched expiry
    tampered = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert signer.verify(name, expires, tampered, now) == "bad"  # tampered sig
    assert signer.verify(name, expires, sig, float(expires)) == "expired"
    assert UrlSigner(b"t" * 32).verify(name, expires, sig, now) == "bad"  # another secret


@pytest.mark.parametrize(
    "expires", ["", "-1", "1e9", " 2000000000", "2000000000.0", "١٢", "9" * 13]
)
def test_signer_malformed_expires(signer: UrlSigner, expires: str) -> None:
    assert signer.verify("ab/cd.png", expires, signer.sign("ab/cd.png", 0)) == "bad"


@pytest.mark.parametrize("sig", ["", "zz" * 32, "ab" * 31, "é" * 64])
def test_signer_malformed_sig(signer: UrlSigner, sig: str) -> None:
    assert signer.verify("ab/cd.png", 2_000_000_000, sig, 0) == "bad"


def test_signer_needs_a_real_secret() -> None:
    with pytest.raises(ValueError):
        UrlSigner(b"short")


# --- the file route ---


@pytest.fixture
def client(storage: LocalStorage, signer: UrlSigner) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(file_routes.router)
    app.state.storage = storage
    app.state.url_signer = signer
    with TestClient(app) as client:
        yield client


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _signed(signer: UrlSigner, name: str, expires: int | None = None) -> str:
    expires = int(time.time()) + 600 if expires is None else expires
    return f"/files/{name}?expires={expires}&sig={signer.sign(name, expires)}"


async def test_route_serves_the_object(storage: LocalStorage, client: TestClient) -> None:
    stored = await storage.put(PNG, "image/png")
    response = client.get(_path(storage.url(stored.name, expires=int(time.time()) + 600)))
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert response.headers["etag"] == f'"{hashlib.sha256(PNG).hexdigest()}"'
    cache = response.headers["cache-control"]
    assert cache.startswith("private, max-age=")
    assert 590 <= int(cache.rpartition("=")[2]) <= 600


async def test_route_json_and_revalidation(storage: LocalStorage, client: TestClient) -> None:
    stored = await storage.put(b'{"a": 1}', "application/json")
    url = _path(storage.url(stored.name, expires=int(time.time()) + 60))
    first = client.get(url)
    assert first.headers["content-type"] == "application/json"
    assert first.json() == {"a": 1}
    again = client.get(url, headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


async def test_route_head(storage: LocalStorage, client: TestClient) -> None:
    stored = await storage.put(PNG, "image/png")
    response = client.head(_path(storage.url(stored.name, expires=int(time.time()) + 60)))
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(PNG))


async def test_route_tampered_is_403(
    storage: LocalStorage, signer: UrlSigner, client: TestClient
) -> None:
    stored = await storage.put(PNG, "image/png")
    other = await storage.put(b"other", "image/png")
    url = _path(storage.url(stored.name, expires=int(time.time()) + 600))
    for bad in (
        url.replace(stored.name, other.name),
        url.replace("sig=", "sig=0"),
        url.replace("expires=", "expires=9"),
        f"/files/{stored.name}",
        url.split("&")[0],
    ):
        response = client.get(bad)
        assert response.status_code == 403, bad
        error = response.json()["error"]
        assert error["code"] == 403
        assert error["status"] == "PERMISSION_DENIED"
        assert "altered or is not signed" in error["message"]
        assert SECRET.decode() not in response.text


async def test_route_expired_is_410(
    storage: LocalStorage, signer: UrlSigner, client: TestClient
) -> None:
    stored = await storage.put(PNG, "image/png")
    response = client.get(_signed(signer, stored.name, expires=1_700_000_000))
    assert response.status_code == 410
    error = response.json()["error"]
    assert error["code"] == 410
    assert error["status"] == "NOT_FOUND"
    assert "2023-11-14T22:13:20Z" in error["message"]
    assert "fetch the task again" in error["message"]


async def test_route_removed_is_404(
    storage: LocalStorage, signer: UrlSigner, client: TestClient
) -> None:
    stored = await storage.put(PNG, "image/png")
    url = _path(storage.url(stored.name, expires=int(time.time()) + 600))
    await storage.delete(stored.name)
    response = client.get(url)
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "name",
    [
        "../secret.png",
        "ab/../../secret.png",
        "%2e%2e/%2e%2e/secret.png",
        "%2Fetc%2Fpasswd",
        "ab%5C..%5Csecret.png",
        "ab/x%00.png",
        "..%2F..%2Fsecret.png",
    ],
)
def test_route_traversal_never_escapes(
    client: TestClient, signer: UrlSigner, tmp_path: Path, name: str
) -> None:
    (tmp_path / "secret.png").write_bytes(b"secret")
    unsigned = client.get(f"/files/{name}?expires=9999999999&sig={'0' * 64}")
    assert unsigned.status_code in (403, 404)
    # Even a link signed for the hostile name must not reach outside the store.
    expires = int(time.time()) + 600
    sig = signer.sign(unquote(name), expires)
    signed = client.get(f"/files/{name}?expires={expires}&sig={sig}")
    assert signed.status_code in (403, 404)
    assert b"secret" not in signed.content


async def test_route_raw_scope_hostile_names(storage: LocalStorage, signer: UrlSigner) -> None:
    app = FastAPI()
    app.include_router(file_routes.router)
    app.state.storage, app.state.url_signer = storage, signer
    expires = int(time.time()) + 600
    for name in ["../secret.png", "/etc/passwd", "ab\\..\\secret.png", "ab/x\x00.png", ".."]:
        status, body = await _raw_get(app, f"/files/{name}", signer.sign(name, expires), expires)
        assert status == 404, name
        assert b"NOT_FOUND" in body


async def _raw_get(app: FastAPI, path: str, sig: str, expires: int) -> tuple[int, bytes]:
    """One request straight into the ASGI app, the path exactly as given (no URL parsing)."""
    sent: list[dict[str, object]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "root_path": "",
        "query_string": f"expires={expires}&sig={sig}".encode(),
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[arg-type]
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")  # type: ignore[misc]
    assert isinstance(status, int)
    return status, body


async def test_check_writes_and_leaves_nothing(storage: LocalStorage, tmp_path: Path) -> None:
    """/readyz's probe: makes the directory on a first start, and leaves no file behind."""
    await storage.check()
    assert (tmp_path / "store").is_dir()
    assert _files(tmp_path / "store") == []


async def test_check_of_a_directory_that_cannot_be_written_fails(
    tmp_path: Path, signer: UrlSigner
) -> None:
    blocked = tmp_path / "store"
    blocked.write_text("a file where the directory should be")
    store = LocalStorage(blocked, BASE, signer)
    with pytest.raises(StorageError):
        await store.check()
