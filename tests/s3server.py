"""A real S3-protocol server for the tests and the benchmarks: moto's, as a child process.

No pytest here, so bench/ imports it too. moto checks no signatures, so any key pair works and
a bucket is made with a plain PUT; the gateway still signs every request, as for real S3.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from tests.simulator.processes import free_port, stop

ACCESS_KEY = "test-access-key-id"
SECRET_KEY = "test-secret-access-key-0123456789"
REGION = "us-east-1"


@dataclass
class S3Server:
    url: str
    proc: subprocess.Popen[str]

    def create_bucket(self, name: str) -> str:
        httpx.put(f"{self.url}/{name}", timeout=10).raise_for_status()
        return name

    def keys(self, bucket: str) -> list[str]:
        """The bucket's object keys, through moto's own listing (unsigned, path style)."""
        answer = httpx.get(f"{self.url}/{bucket}", params={"list-type": "2"}, timeout=10)
        answer.raise_for_status()
        text = answer.text
        return [part.split("</Key>", 1)[0] for part in text.split("<Key>")[1:]]

    def stop(self) -> None:
        stop(self.proc)


def start_s3_server(port: int | None = None, *, open_requests: int | None = None) -> S3Server:
    """`python -m moto.server` on a free (or the given) loopback port, once it answers.

    `open_requests`: after that many requests moto checks credentials and IAM policies (its own
    IAM API makes users and keys), as S3 does; without it, it checks nothing.
    """
    port = port or free_port()
    env = dict(os.environ)
    if open_requests is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(open_requests)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            return S3Server(url, proc)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop(proc)
            raise RuntimeError(f"moto server did not start on port {port}")
        time.sleep(0.1)
