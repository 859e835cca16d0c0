"""What the benchmark scripts share: starting the simulator and `nanogate serve` as child
processes, percentiles, the client's event loop, and stopping cleanly on a signal.

Not a benchmark itself; `bench/relay.py`, `bench/tasks.py`, `bench/slow.py`, `bench/console.py`
and `bench/perf.py` import it (each script's own directory is first on sys.path when it runs).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import queue
import re
import resource
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import aiohttp
from sqlalchemy.engine import make_url

# The simulator and the PostgreSQL helper live in the repository's tests/ package, and a script
# run as `python bench/<name>.py` has only bench/ on its path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import postgres
from tests.simulator.processes import pump_stdout, stop, wait_for_line

ROOT = Path(__file__).resolve().parent.parent

SIM_KEY = "bench-simulator-key-0123456789abcdef"
GATEWAY_COMMAND = (sys.executable, "-m", "nanogate", "serve")


@dataclass
class Server:
    """A child process serving HTTP, and the key a client presents to it."""

    name: str
    url: str
    key: str
    proc: subprocess.Popen[str]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def wait_for_output(
    lines: queue.Queue[str | None], pattern: re.Pattern[str], timeout: float, log: Path
) -> list[str]:
    """`wait_for_line`, with the end of the child's stderr log in the error."""
    try:
        return wait_for_line(lines, pattern, timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nstderr: {log.read_text()[-3000:]}") from None


def start_simulator(stack: ExitStack, tmp: Path, image_bytes: int | None) -> Server:
    """The upstream simulator on a free port, stopped when `stack` closes."""
    log = tmp / f"simulator-{image_bytes or 'small'}.log"
    cmd = [sys.executable, "-m", "tests.simulator", "--port", "0"]
    cmd += ["--api-key", SIM_KEY, "--no-record"]
    if image_bytes is not None:
        cmd += ["--image-bytes", str(image_bytes)]
    # From the repository's root, where `-m tests.simulator` finds its package.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=ROOT)
    stack.callback(stop, proc)
    lines = pump_stdout(proc)
    found = wait_for_output(lines, re.compile(r"SIMULATOR LISTENING (\S+)"), 60, log)
    return Server("simulator", found[-1].split()[-1], SIM_KEY, proc, log)


def clean_environ() -> dict[str, str]:
    """This process's environment without any NANOGATE_* setting, for a child gateway."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NANOGATE_")}


@dataclass
class Launch:
    """A `nanogate serve` started by `spawn_gateway`; `ready()` waits until it serves."""

    name: str
    port: int
    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None]
    log: Path

    def ready(self) -> Server:
        """Once it is healthy: the server, with the client key it printed."""
        pattern = re.compile(r"^export NANOGATE_KEY=")
        found = wait_for_output(self.lines, pattern, 120, self.log)
        key = found[-1].split("=", 1)[1].strip()
        url = f"http://127.0.0.1:{self.port}"
        wait_healthy(url, self.proc, self.log)
        return Server(self.name, url, key, self.proc, self.log)


def spawn_gateway(
    stack: ExitStack,
    tmp: Path,
    port: int,
    env: dict[str, str],
    name: str = "gateway",
    source: Path | None = None,
) -> Launch:
    """`nanogate serve` with `env` (which must set NANOGATE_PORT to `port` and a fresh data
    dir, so it creates its first keys), stopped when `stack` closes; returns at once, so several
    gateways can start side by side (`ready()` each afterwards). With `source`, the package is
    imported from that source tree (another commit's checkout) instead of the installed one."""
    log = tmp / "gateway.log"
    if source is not None:
        # `python -m` puts the working directory first on sys.path, ahead of the install.
        env = {**env, "PYTHONPATH": str(source)}
    proc = subprocess.Popen(
        list(GATEWAY_COMMAND),
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=env,
        cwd=source,
    )
    stack.callback(stop, proc)
    return Launch(name, port, proc, pump_stdout(proc), log)


def launch_gateway(
    stack: ExitStack, tmp: Path, port: int, env: dict[str, str], name: str = "gateway"
) -> Server:
    """`spawn_gateway`, returning once it is healthy, with the client key it printed."""
    return spawn_gateway(stack, tmp, port, env, name).ready()


def wait_healthy(url: str, proc: subprocess.Popen[str], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway not healthy at {url}:\n{log.read_text()[-3000:]}")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    version = getattr(uvloop, "__version__", "?")
    return uvloop.new_event_loop, f"uvloop {version}"


def _as_sigint(signum: int, frame: FrameType | None) -> None:
    # Whoever handles SIGINT right now (asyncio.Runner while load runs, which cancels the load
    # task cleanly; Python's default handler otherwise) handles this signal the same way.
    os.kill(os.getpid(), signal.SIGINT)


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, so every child process gets stopped.

    SIGINT gets Python's default handler back even where the parent ignored it (a shell's
    background job), so `kill -INT` works too and asyncio.Runner cancels the load cleanly.
    """
    handlers = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGTERM: _as_sigint,
        signal.SIGHUP: _as_sigint,
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after its closing paren don't.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """A run's figures as JSON (NaN, a percentile of no samples, becomes null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(doc), indent=2, allow_nan=False, default=str) + "\n")
    print(f"\nwrote {path}")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# Far above what any run reserves, so a benchmark never meets a 402.
STARTER_CREDITS = 10**15


def gateway_env(data_root: Path, port: int, config: Path, **settings: str) -> dict[str, str]:
    """The environment of a benchmarked `nanogate serve`: its data under `data_root`, quiet
    logs, a long key cache, ample credits, plus `settings` (NANOGATE_* names)."""
    env = clean_environ()
    env.update(
        NANOGATE_DATA_DIR=str(data_root / "data"),
        NANOGATE_PORT=str(port),
        NANOGATE_CONFIG=str(config),
        NANOGATE_LOG_LEVEL="warning",
        NANOGATE_KEY_CACHE_SECONDS="60",
        NANOGATE_STARTER_CREDITS=str(STARTER_CREDITS),
        **settings,
    )
    return env


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's open-file limit toward `wanted` (at most the hard limit); child
    processes started afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def status_kib(pid: int, field_name: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/{pid}/status")


class RssPeak:
    """Samples VmRSS of one process on a thread while in the `with` block; `peak_kib` is the
    largest sample, `baseline_kib` the value on entry."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline_kib = status_kib(pid, "VmRSS")
        self.peak_kib = self.baseline_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
            except (OSError, RuntimeError):
                return  # the process went away
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def machine(loop_name: str, **extra: Any) -> dict[str, Any]:
    """What a result file says about where it was measured, plus the benchmark's own `extra`."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "client_loop": loop_name,
        **extra,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def postgres_database(
    stack: ExitStack, server_url: str, name: str | None = None, keep: bool = False
) -> str:
    """A fresh database on the server at `server_url` (its own database is only connected to):
    `name` (one left by an earlier run is replaced) or a random one, dropped when `stack`
    closes unless `keep`; returns its URL."""
    server = make_url(server_url)
    if not server.database:
        server = server.set(database="postgres")
    admin_url = server.render_as_string(hide_password=False)
    name = name or f"nanogate_bench_{secrets.token_hex(6)}"
    postgres.drop_database(name, admin_url)
    url = postgres.create_database(name, admin_url)
    if not keep:
        stack.callback(postgres.drop_database, name, admin_url)
    return url


def run_script(main: Callable[[], int], stopped: str = "child processes stopped") -> NoReturn:
    """Exit with `main()`'s code; Ctrl-C (or a signal interrupt_on_signals turned into one)
    exits 130 after saying what was stopped, without a traceback."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"\ninterrupted; {stopped}", file=sys.stderr)
        sys.exit(130)
