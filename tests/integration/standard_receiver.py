"""A callback receiver in a process of its own that verifies with the `standardwebhooks` library,
as a receiver that knows nothing of nanogate would: `python -m tests.integration.standard_receiver`
with WEBHOOK_SECRET (the whsec_ form) and PORT; SLOW_SECONDS makes it take that long to answer
an event's first delivery (a slow receiver, for stop drills).

It drops an event id it has seen, as the Standard Webhooks spec advises, and prints one JSON line
per request: its verdict (verified, duplicate or refused, with the library's reason), the
headers and the body, so a test can see what arrived and replay it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

WEBHOOK = Webhook(os.environ["WEBHOOK_SECRET"])
SLOW_S = float(os.environ.get("SLOW_SECONDS", "0"))
seen: set[str] = set()
lock = threading.Lock()


class Hook(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        line: dict[str, Any] = {"headers": headers, "body": body.decode()}
        try:
            WEBHOOK.verify(body, headers)
        except WebhookVerificationError as exc:
            line |= {"verdict": "refused", "reason": str(exc)}
            status = 401
        else:
            with lock:
                duplicate = headers["webhook-id"] in seen
                seen.add(headers["webhook-id"])
            line["verdict"] = "duplicate" if duplicate else "verified"
            status = 204
        print(json.dumps(line), flush=True)
        if SLOW_S and line["verdict"] == "verified":
            time.sleep(SLOW_S)
        try:
            self.send_response(status)
            self.end_headers()
        except OSError:
            pass  # the sender gave up on us meanwhile


server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hook)
print(f"listening on http://127.0.0.1:{server.server_address[1]}/hook", flush=True)
server.serve_forever()
