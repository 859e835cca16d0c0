"""`nanogate serve --workers N`: N processes serving on one port, so every core is used.

The supervisor (the process `serve` runs in) binds the address and starts N worker processes
(spawned, not forked: it has run an event loop and threads by then). Each serves the whole app
on a listening socket of its own, all N bound to the port with SO_REUSEPORT, so the kernel
spreads new connections evenly over them. One socket shared by all would not: a worker accepts
every connection waiting when it wakes, so a client opening its keep-alive pool at once lands
on one worker (measured: all 32 connections of a closed-loop client on one of two workers, and
2 workers serving 1.04x what one did). The supervisor keeps every socket open, so connections
that arrive at a dead worker's socket wait for its replacement instead of being refused. Where
SO_REUSEPORT is missing, the workers share one socket. What must hold
across them holds as it does across nodes: money, idempotency and tasks are in the database,
switches and config reloads come through it, and each worker is a node of its own to it,
`<node id>/w<i>`, stable across restarts, so worker i closes the holds worker i left. Limits and
the failed-authentication count are the supervisor's, served to the workers on a Unix socket
(access/shared.py), unless Redis shares them (`redis_url`).

SIGTERM or SIGINT drains every worker, as one node drains; a second one stops them at once.
SIGHUP reloads each worker's config. A worker that dies is started again in its place; one that
cannot start at all stops the whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from typing import Any

from nanogate.access.shared import LimitsServer
from nanogate.core.config import Settings
from nanogate.core.logs import setup_logging

log = logging.getLogger("nanogate")

# A worker that exits this soon after its start, this many times in a row, cannot start.
EARLY_EXIT_S = 10.0
EARLY_EXITS = 3
WATCH_EVERY_S = 0.5


def listen(host: str, port: int, count: int) -> list[socket.socket]:
    """The listening sockets, one a worker (or one for all, without SO_REUSEPORT); OSError if
    the address is taken. The first is bound before the rest exist, so a port another process
    holds fails here, and port 0 becomes the port the others bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    spread = hasattr(socket, "SO_REUSEPORT")
    if spread and port and _answering(host, port):
        # Another gateway's SO_REUSEPORT sockets would take ours in beside them: refuse as a
        # bind would.
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    sockets: list[socket.socket] = []
    try:
        for _ in range(count if spread else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if spread:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, sockets[0].getsockname()[1] if len(sockets) > 1 else port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _answering(host: str, port: int) -> bool:
    """Whether something already listens on the address (tried on loopback for a wildcard)."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


def supervise(settings: Settings, overrides: dict[str, Any]) -> int:
    """Serve with `settings.workers` processes until a signal; the exit code. `overrides`: the
    settings the command line set, which each worker applies over what it reads."""
    sockets = listen(settings.host, settings.port, settings.workers)
    with tempfile.TemporaryDirectory(prefix="nanogate-") as folder:
        limits = os.path.join(folder, "limits")
        return asyncio.run(_supervise(settings, overrides, sockets, limits))


async def _supervise(
    settings: Settings, overrides: dict[str, Any], sockets: list[socket.socket], limits: str
) -> int:
    server = await LimitsServer(settings.auth_failures_per_minute).serve(limits)
    spawn = multiprocessing.get_context("spawn")
    base = settings.resolved_node_id
    procs: dict[int, tuple[BaseProcess, float]] = {}
    early: dict[int, int] = {}

    def start(index: int) -> None:
        mine = {**overrides, "node_id": f"{base}/w{index}"}
        sock = sockets[index % len(sockets)]
        proc = spawn.Process(
            target=run_worker, args=(mine, sock, limits), name=f"nanogate-w{index}"
        )
        proc.start()
        procs[index] = (proc, time.monotonic())

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def tell(sig: signal.Signals) -> None:
        if sig != signal.SIGHUP:
            stopping.set()
        for proc, _ in procs.values():
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM if sig == signal.SIGINT else sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, tell, sig)
    for index in range(settings.workers):
        start(index)
    log.info("workers started", extra={"workers": settings.workers, "node": base})
    code = 0
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), WATCH_EVERY_S)
        for index, (proc, started) in list(procs.items()):
            if proc.is_alive() or stopping.is_set():
                continue
            early[index] = (
                early.get(index, 0) + 1 if time.monotonic() - started < EARLY_EXIT_S else 0
            )
            if early[index] >= EARLY_EXITS:
                log.error("a worker cannot start; stopping", extra={"worker": index})
                code = 3
                tell(signal.SIGTERM)
                break
            log.error(
                "a worker exited; starting another",
                extra={"worker": index, "exit_code": proc.exitcode},
            )
            start(index)
    # Each listener closes once its worker has closed its copy, after its drain delay.
    for sock in sockets:
        sock.close()
    for proc, _ in procs.values():
        await asyncio.to_thread(proc.join)
    server.close()
    await server.wait_closed()
    return code


def run_worker(overrides: dict[str, Any], sock: socket.socket, limits: str) -> None:
    """A worker process: the app on the supervisor's socket, counting limits with it."""
    # Its own process group: a Ctrl-C at the terminal reaches only the supervisor, which
    # passes it on once (twice would stop the worker without its drain).
    os.setpgid(0, 0)
    from nanogate.web import drain
    from nanogate.web.app import create_app

    settings = Settings(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    process = drain.Drain(settings.shutdown_grace_seconds)
    drain.serve(
        create_app(settings, process, shared_limits=limits),
        process,
        host=settings.host,
        port=settings.port,
        delay_s=settings.drain_delay_seconds,
        sockets=[sock],
    )
