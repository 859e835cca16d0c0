"""A callback receiver and file server on 127.0.0.1, in the test process: the gateway (another
process) calls it back over real HTTP, and fetches input images and redirects from it."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return orjson.loads(self.body)

    def verified(self, secret: str) -> bool:
        """What a receiver does: HMAC-SHA256 over timestamp + "." + body, compared in constant
        time, and a timestamp no older than five minutes."""
        timestamp = self.headers.get("x-nanogate-timestamp", "")
        expected = hmac.new(
            secret.encode(), timestamp.encode() + b"." + self.body, hashlib.sha256
        ).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        return fresh and hmac.compare_digest(expected, self.headers.get("x-nanogate-signature", ""))


class Receiver:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.statuses: defaultdict[str, deque[int]] = defaultdict(deque)
        self.files: dict[str, tuple[bytes, str]] = {}
        self.fetched: list[str] = []  # the paths of GET requests, in order
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.deliveries.append(Delivery(self.path, headers, body, time.time()))
                    planned = receiver.statuses[self.path]
                    status = planned.popleft() if planned else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def do_GET(self) -> None:
                with receiver.lock:
                    receiver.fetched.append(self.path)
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("location", self.path.removeprefix("/redirect?to="))
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                found = receiver.files.get(self.path)
                if found is None:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data, content_type = found
                self.send_response(200)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def at(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, count: int = 1, timeout: float = 30) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.at(path)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{path}: {len(self.at(path))} deliveries, expected {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
