"""Redis for the tests and the benchmarks: the machine's server under a key prefix of the test's
own, or a redis-server process of the test's own, which it may kill and start again.

No pytest here, so bench/ imports it too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass

import redis

from tests.simulator.processes import free_port

# The machine's server; a test keeps to its own prefix on it (fresh_prefix, drop_prefix).
SERVER_URL = os.environ.get("NANOGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def fresh_prefix() -> str:
    return f"nanogate-test-{secrets.token_hex(6)}:"


def drop_prefix(prefix: str, url: str = SERVER_URL) -> None:
    with redis.Redis.from_url(url) as client:
        for name in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(name)


@dataclass
class RedisServer:
    """A redis-server of a test's own on a loopback port, keeping nothing on disk."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port), once it answers."""
        port = str(self.port)
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=0.5) as client:
                    client.ping()
                return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: Redis gone at once, as when its host dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def start_redis_server() -> RedisServer:
    server = RedisServer(free_port())
    server.start()
    return server
