"""Child-process plumbing shared by the integration tests and the benchmark: free ports, reading
what a server prints on stdout, and stopping it."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import threading
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pump_stdout(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """Drain the child's stdout on a thread (a full pipe would block it); lines go to a queue.

    A thread, because select() cannot see lines already sitting in Python's read buffer.
    """
    lines: queue.Queue[str | None] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_line(
    lines: queue.Queue[str | None], pattern: re.Pattern[str], timeout: float
) -> list[str]:
    """Lines up to and including the first that matches `pattern`; RuntimeError otherwise."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if pattern.search(line):
            return seen
    raise RuntimeError(f"no line matching {pattern.pattern!r}; stdout ended with {seen[-10:]}")


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM (a graceful shutdown flushes usage records), then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
