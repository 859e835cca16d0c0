"""The bare forwarder: a Gemini call relayed on nanogate's own stack (a Starlette route, aiohttp's
pooled client; served by uvicorn with uvloop and httptools, as `nanogate serve` does) with no
auth, limits, metering or parsing. What Python itself costs a relay: bench/perf.py's floor.

`FORWARD_TO=http://upstream python bench/forwarder.py PORT` serves it with uvicorn; any ASGI
server can serve `forwarder:app` instead (bench/perf.py runs it under granian too)."""

import os
import sys

import aiohttp
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

UPSTREAM = os.environ["FORWARD_TO"]
HEADERS = {"Content-Type": "application/json", "x-goog-api-key": "forwarder"}
session: aiohttp.ClientSession | None = None


async def relay(request: Request) -> Response:
    global session
    if session is None:  # made on first use, so it binds to the serving loop
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        session = aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20)
    body = await request.body()
    async with session.post(UPSTREAM + request.scope["path"], data=body, headers=HEADERS) as up:
        return Response(await up.read(), up.status, media_type="application/json")


app = Router([Route("/v1beta/models/{tail:path}", relay, methods=["POST"])])

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
