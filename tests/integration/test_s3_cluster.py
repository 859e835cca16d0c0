"""Several nodes on S3 storage: two `nanogate serve` processes and a `nanogate worker` on one
PostgreSQL database and one bucket of a real S3-protocol server (moto's). A result made anywhere
is served everywhere; `storage_redirect` hands out presigned URLs; S3 down is a 503 naming
storage."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from openai import OpenAI

from tests import postgres
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server, start_s3_server
from tests.simulator.processes import stop

from .conftest import Gateway, join_gateway, start_gateway
from .test_credits import balance
from .test_task_durability import start_worker
from .test_tasks import TASK_ENV, create, result_urls, task_id, wait_final

PREFIX = "cluster/"


def s3_env(server: S3Server, bucket: str) -> dict[str, str]:
    return {
        "NANOGATE_STORAGE_BACKEND": "s3",
        "NANOGATE_S3_ENDPOINT_URL": server.url,
        "NANOGATE_S3_BUCKET": bucket,
        "NANOGATE_S3_ACCESS_KEY_ID": ACCESS_KEY,
        "NANOGATE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "NANOGATE_S3_PATH_STYLE": "true",
        "NANOGATE_S3_PREFIX": PREFIX,
    }


@dataclass
class Cluster:
    a: Gateway
    b: Gateway
    bucket: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Cluster]:
    """Nodes A and B take requests and run no tasks; one `nanogate worker` runs them all."""
    name = f"nanogate_test_{secrets.token_hex(6)}"
    database = postgres.create_database(name)
    bucket = s3_server.create_bucket(f"nanogate-{secrets.token_hex(6)}")
    env = {
        **TASK_ENV,
        **s3_env(s3_server, bucket),
        "NANOGATE_DATABASE_URL": database,
        "NANOGATE_TASK_WORKERS": "0",
    }
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(postgres.drop_database, name)
        a = start_gateway(tmp_path_factory.mktemp("a"), NANOGATE_NODE_ID="node-a", **env)
        cleanup.callback(stop, a.proc)
        b_env = {**a.env, "NANOGATE_NODE_ID": "node-b"}
        b = join_gateway(dataclasses.replace(a, env=b_env), tmp_path_factory.mktemp("b"))
        cleanup.callback(stop, b.proc)
        worker = start_worker(a, "worker-1", tmp_path_factory.mktemp("worker") / "worker.log")
        cleanup.callback(stop, worker)
        yield Cluster(a, b, bucket)


def new_task(node: Gateway, prompt: str) -> str:
    answer = create(node, node.client_key, "message", "google/nano-banana", {"prompt": prompt})
    return task_id(answer, "message")


def on(node: Gateway, url: str) -> str:
    """The same link, asked of another node."""
    parts = urlsplit(url)
    return f"{node.url}{parts.path}?{parts.query}"


def test_a_task_run_by_the_worker_is_served_by_every_node(
    cluster: Cluster, s3_server: S3Server
) -> None:
    a, b = cluster.a, cluster.b
    task = new_task(a, "x")
    data = wait_final(b, a.client_key, "message", task, timeout=60)
    assert data["status"] == "succeeded"
    (url,) = result_urls(data, "message")
    assert url.startswith(b.url)  # rendered by node B, which asked
    from_b = httpx.get(url)
    assert from_b.status_code == 200 and from_b.headers["content-type"] == "image/png"
    from_a = httpx.get(on(a, url))
    assert from_a.status_code == 200 and from_a.content == from_b.content
    name = urlsplit(url).path.removeprefix("/files/")
    assert PREFIX + name in s3_server.keys(cluster.bucket)
    # Nothing went to any process's local directory.
    for node in (a, b):
        assert not (node.data_dir / "storage").exists()


def test_an_openai_image_url_made_on_a_works_on_b(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    client = OpenAI(api_key=a.client_key, base_url=f"{a.url}/v1", max_retries=0)
    result = client.images.generate(
        model="gemini-2.5-flash-image", prompt="a fern", response_format="url"
    )
    url = result.data[0].url or ""
    assert url.startswith(a.url)
    from_a, from_b = httpx.get(url), httpx.get(on(b, url))
    assert from_b.status_code == 200
    assert from_b.content == from_a.content and from_b.content.startswith(b"\x89PNG")


def test_console_thumbnails_from_either_node(cluster: Cluster, s3_server: S3Server) -> None:
    a, b = cluster.a, cluster.b
    task = new_task(a, "y")
    assert wait_final(a, a.client_key, "message", task, timeout=60)["status"] == "succeeded"
    admin = {"x-api-key": a.admin_key}
    before = set(s3_server.keys(cluster.bucket))
    made = httpx.get(f"{b.url}/admin/tasks/{task}/thumbnail", headers=admin)
    assert made.status_code == 200 and made.headers["content-type"] == "image/webp"
    (thumbnail,) = set(s3_server.keys(cluster.bucket)) - before
    assert thumbnail.startswith(PREFIX) and thumbnail.endswith(".webp")
    # Node A finds the thumbnail B made (its row in the database, its bytes in the bucket).
    again = httpx.get(f"{a.url}/admin/tasks/{task}/thumbnail", headers=admin)
    assert again.status_code == 200 and again.content == made.content
    assert set(s3_server.keys(cluster.bucket)) - before == {thumbnail}


def test_storage_redirect_answers_307_to_the_same_bytes(
    cluster: Cluster, s3_server: S3Server, tmp_path: Path
) -> None:
    a = cluster.a
    redirecting = dataclasses.replace(
        a, env={**a.env, "NANOGATE_STORAGE_REDIRECT": "true", "NANOGATE_NODE_ID": "node-c"}
    )
    c = join_gateway(redirecting, tmp_path)
    try:
        task = new_task(a, "z")
        (url,) = result_urls(wait_final(a, a.client_key, "message", task, timeout=60), "message")
        direct = httpx.get(url)
        for method in ("GET", "HEAD"):
            answer = httpx.request(method, on(c, url))
            assert answer.status_code == 307, answer.text
            target = answer.headers["location"]
            assert target.startswith(f"{s3_server.url}/{cluster.bucket}/{PREFIX}")
            assert "X-Amz-Signature=" in target
            fetched = httpx.request(method, target)
            assert fetched.status_code == 200
            assert fetched.headers["content-type"] == "image/png"
            assert fetched.headers["content-length"] == str(len(direct.content))
            if method == "GET":
                assert fetched.content == direct.content
        forged = httpx.get(on(c, url).replace("sig=", "sig=0"))
        assert forged.status_code == 403
        assert SECRET_KEY not in c.logs()
    finally:
        stop(c.proc)


def test_storage_down_is_a_503_naming_storage(tmp_path: Path) -> None:
    server = start_s3_server()
    try:
        bucket = server.create_bucket("nanogate-down")
        gw = start_gateway(tmp_path, **s3_env(server, bucket))
    except BaseException:
        server.stop()
        raise
    try:
        client = OpenAI(api_key=gw.client_key, base_url=f"{gw.url}/v1", max_retries=0)
        made = client.images.generate(
            model="gemini-2.5-flash-image", prompt="kept", response_format="url"
        )
        url = made.data[0].url or ""
        assert httpx.get(url).status_code == 200
        server.stop()
        before = balance(gw, gw.client_key)
        images = httpx.post(
            f"{gw.url}/v1/images/generations",
            headers={"Authorization": f"Bearer {gw.client_key}"},
            json={"model": "gemini-2.5-flash-image", "prompt": "lost", "response_format": "url"},
            timeout=60,
        )
        assert images.status_code == 503, images.text
        error = images.json()["error"]  # OpenAI's envelope
        assert error["message"] == (
            "The gateway's result storage could not be reached; retry shortly."
        )
        assert balance(gw, gw.client_key) == before  # no answer, no charge
        file = httpx.get(url, timeout=60)
        assert file.status_code == 503, file.text
        assert file.json()["error"]["status"] == "UNAVAILABLE"  # Google's envelope
        assert "result storage could not be reached" in file.json()["error"]["message"]
        assert httpx.get(f"{gw.url}/healthz").status_code == 200
        logs = gw.logs()
        assert "s3 storage unreachable" in logs
        assert SECRET_KEY not in logs and "Traceback" not in logs
    finally:
        stop(gw.proc)
        server.stop()


def test_missing_bucket_is_a_503_the_operator_can_act_on(
    tmp_path: Path, s3_server: S3Server
) -> None:
    gw = start_gateway(tmp_path, **s3_env(s3_server, f"nanogate-absent-{int(time.time())}"))
    try:
        answer = httpx.post(
            f"{gw.url}/v1/images/generations",
            headers={"Authorization": f"Bearer {gw.client_key}"},
            json={"model": "gemini-2.5-flash-image", "prompt": "p", "response_format": "url"},
            timeout=60,
        )
        assert answer.status_code == 503, answer.text
        message = answer.json()["error"]["message"]
        assert message == (
            "The gateway's result storage failed: its bucket does not exist. The operator must "
            "fix the storage settings."
        )
    finally:
        stop(gw.proc)
