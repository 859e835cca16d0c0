"""Which async S3 client the S3 storage backend uses: aiobotocore against obstore, measured.

Run `python bench/s3_clients.py [--runs N] [--mib N]`. The script starts moto's S3 server
(`python -m moto.server`, tests/s3server.py) on a free loopback port, makes a bucket, and with
each client, in alternating rounds, puts one `--mib` (16) MiB object and gets it back `--runs`
(5) times; it prints min and median seconds of each step, and the installed size of each
client with what it pulls in beyond the gateway's own dependencies. Both clients must be
installed (`pip install aiobotocore obstore`); the gateway itself needs only aiobotocore.

moto serves from memory in one Python process and takes most of each step's time, on both
sides alike, so the figures compare the clients (their signing, hashing and copying of 16 MiB)
against one fixed server; against real S3 the network dominates both.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY, start_s3_server

BUCKET = "bench-clients"
Step = Callable[[str, bytes], Awaitable[None]]


async def aiobotocore_steps(url: str) -> tuple[Step, Step, Callable[[], Awaitable[None]]]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    context = get_session().create_client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=AioConfig(
            s3={"addressing_style": "path"}, request_checksum_calculation="when_required"
        ),
    )
    client = await context.__aenter__()

    async def put(key: str, data: bytes) -> None:
        await client.put_object(Bucket=BUCKET, Key=key, Body=data, ContentType="image/png")

    async def get(key: str, data: bytes) -> None:
        answer = await client.get_object(Bucket=BUCKET, Key=key)
        async with answer["Body"] as body:
            assert await body.read() == data

    async def close() -> None:
        await context.__aexit__(None, None, None)

    return put, get, close


async def obstore_steps(url: str) -> tuple[Step, Step, Callable[[], Awaitable[None]]]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=url,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    async def put(key: str, data: bytes) -> None:
        await obstore.put_async(store, key, data, attributes={"Content-Type": "image/png"})

    async def get(key: str, data: bytes) -> None:
        answer = await obstore.get_async(store, key)
        assert bytes(await answer.bytes_async()) == data

    async def close() -> None:
        """obstore keeps no session to close."""

    return put, get, close


def installed_mib(*distributions: str) -> float:
    total = 0
    for name in distributions:
        for file in importlib.metadata.distribution(name).files or []:
            path = Path(str(file.locate()))
            if path.is_file():
                total += path.stat().st_size
    return total / 2**20


class LoopLag:
    """The longest the event loop went without running a 1 ms ticker: how long a step held the
    loop (hashing, signing and copying in Python stall every other request of the process)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - started - 0.001)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst

    def stop(self) -> None:
        self._task.cancel()


async def measure(url: str, runs: int, size: int) -> dict[str, dict[str, list[float]]]:
    data = os.urandom(size)
    clients = {"aiobotocore": await aiobotocore_steps(url), "obstore": await obstore_steps(url)}
    times: dict[str, dict[str, list[float]]] = {
        n: {"put": [], "get": [], "put lag": [], "get lag": []} for n in clients
    }
    for name, (put, get, _) in clients.items():  # warm up: connections, imports, first signing
        await put(f"warm-{name}", data[:1024])
        await get(f"warm-{name}", data[:1024])
    lag = LoopLag()
    for run in range(runs):
        for name, (put, get, _) in clients.items():
            key = f"{name}/{run}.png"
            for step, call in (("put", put), ("get", get)):
                lag.take()
                started = time.perf_counter()
                await call(key, data)
                times[name][step].append(time.perf_counter() - started)
                times[name][f"{step} lag"].append(lag.take())
    lag.stop()
    for _, _, close in clients.values():
        await close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args()
    server = start_s3_server()
    try:
        server.create_bucket(BUCKET)
        times = asyncio.run(measure(server.url, args.runs, args.mib * 2**20))
    finally:
        server.stop()
    print(f"{args.mib} MiB object, {args.runs} runs each, moto server on loopback (seconds)")
    columns = ("put", "get", "put lag", "get lag")
    print(f"{'client':12}" + "".join(f" {c + ' min':>12} {c + ' p50':>12}" for c in columns))
    for name, steps in times.items():
        cells = (f" {min(steps[c]):12.3f} {statistics.median(steps[c]):12.3f}" for c in columns)
        print(f"{name:12}" + "".join(cells))
    # aiohttp and multidict are the gateway's own dependencies already.
    extra = {
        "aiobotocore": ("aiobotocore", "botocore", "aioitertools", "jmespath", "wrapt"),
        "obstore": ("obstore",),
    }
    for name, distributions in extra.items():
        size = installed_mib(*distributions)
        print(f"{name}: {size:.1f} MiB installed ({', '.join(distributions)})")


if __name__ == "__main__":
    main()
