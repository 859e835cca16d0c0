"""Real processes over real HTTP: `nanogate serve` and the upstream simulator, on free ports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from google import genai

from tests.simulator.processes import free_port, pump_stdout, stop, wait_for_line

from .receiver import Receiver

SIM_KEY = "sim-upstream-secret-key-0123456789"


@dataclass
class Simulator:
    url: str
    proc: subprocess.Popen[str]

    def requests(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = httpx.get(f"{self.url}/_sim/requests").json()
        return records

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_sim/requests")
        httpx.delete(f"{self.url}/_sim/faults")

    def faults(self, *faults: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_sim/faults", json=list(faults)).raise_for_status()

    def idle(self, timeout: float = 60) -> None:
        """Wait until no request is in flight here: a test that counts concurrent requests
        must not see the delayed calls an earlier test left behind (their gateway is gone, but
        the simulator sleeps on). Then its in-flight high-water mark starts from zero."""
        deadline = time.monotonic() + timeout
        while httpx.get(f"{self.url}/_sim/stats").json()["in_flight"]:
            assert time.monotonic() < deadline, "the simulator never went idle"
            time.sleep(0.1)
        httpx.delete(f"{self.url}/_sim/stats")


@dataclass
class Gateway:
    url: str
    client_key: str
    admin_key: str
    data_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[str]
    stderr_path: Path
    banner: list[str] = field(default_factory=list)  # what `serve` printed on first start
    extra: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        # From the folder serve's data directory is in, where a gateway started with `cwd`
        # (and no NANOGATE_DATA_DIR) keeps its data.
        return subprocess.run(
            [sys.executable, "-m", "nanogate", *args],
            cwd=self.data_dir.parent,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def logs(self) -> str:
        return self.stderr_path.read_text()


def start_simulator(*extra: str) -> Simulator:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.simulator", "--port", "0", "--api-key", SIM_KEY, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = wait_for_line(pump_stdout(proc), re.compile(r"SIMULATOR LISTENING (\S+)"), 30)[-1]
    url = line.split()[-1]
    return Simulator(url, proc)


def start_gateway(
    tmp: Path, config: dict[str, Any] | None = None, *, cwd: Path | None = None, **env: str
) -> Gateway:
    """`nanogate serve` on a free port, with its data in tmp/data; or, given `cwd`, run there
    with no data directory set, as a newcomer runs it (its data in cwd/nanogate-data)."""
    port = free_port()
    data_dir = tmp / "data" if cwd is None else cwd / "nanogate-data"
    full_env = {
        **os.environ,
        "NANOGATE_DATA_DIR": str(data_dir),
        "NANOGATE_PORT": str(port),
        "NANOGATE_KEY_CACHE_SECONDS": "1",
        "NANOGATE_USAGE_FLUSH_SECONDS": "0.2",
        # Every test is one client address (127.0.0.1), sending unknown keys on purpose: the
        # failed-authentication throttle has its own tests (test_redis_limits.py).
        "NANOGATE_AUTH_FAILURES_PER_MINUTE": "0",
        # No load balancer polls these gateways' /readyz: a stop need not keep the listener
        # open for one (test_shutdown.py sets the delay it tests).
        "NANOGATE_DRAIN_DELAY_SECONDS": "0",
        **env,
    }
    full_env.pop("NANOGATE_CONFIG", None)
    if cwd is not None:
        del full_env["NANOGATE_DATA_DIR"]  # serve's default then: ./nanogate-data
    if config is not None:
        path = tmp / "nanogate.yaml"
        path.write_text(yaml.safe_dump(config))
        full_env["NANOGATE_CONFIG"] = str(path)
    stderr_path = tmp / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogate", "serve"],
        stdout=subprocess.PIPE,
        stderr=stderr_path.open("w"),
        text=True,
        env=full_env,
        cwd=cwd,
    )
    try:
        # The first-start banner ends with the console's address.
        lines = wait_for_line(pump_stdout(proc), re.compile(r"^Console: "), 60)
    except RuntimeError:
        stop(proc)
        raise RuntimeError(f"gateway failed to start:\n{stderr_path.read_text()[-3000:]}") from None
    values = dict(line.split("=", 1) for line in lines if line.startswith("export NANOGATE_"))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, stderr_path)
    return Gateway(
        url,
        values["export NANOGATE_KEY"],
        values["export NANOGATE_ADMIN_KEY"],
        data_dir,
        full_env,
        proc,
        stderr_path,
        lines,
    )


def wait_healthy(
    url: str, proc: subprocess.Popen[str], stderr_path: Path, what: str = "gateway"
) -> None:
    """Until `url`/healthz answers 200; the process is stopped and its log's end raised if it
    exits or takes longer than 30 s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop(proc)
            raise RuntimeError(f"{what} not healthy:\n{stderr_path.read_text()[-3000:]}")
        time.sleep(0.1)


def join_gateway(first: Gateway, tmp: Path) -> Gateway:
    """Another node of `first`'s gateway: `nanogate serve` on its own port and data directory,
    on the same database (so no first-start banner: the keys are `first`'s)."""
    port = free_port()
    env = {**first.env, "NANOGATE_PORT": str(port), "NANOGATE_DATA_DIR": str(tmp / "data")}
    env.setdefault("NANOGATE_DATABASE_URL", f"sqlite+aiosqlite:///{first.data_dir}/nanogate.db")
    stderr_path = tmp / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogate", "serve"],
        stdout=subprocess.DEVNULL,
        stderr=stderr_path.open("w"),
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, stderr_path)
    return Gateway(url, first.client_key, first.admin_key, tmp / "data", env, proc, stderr_path)


@contextmanager
def two_nodes(
    tmp: Path, config: dict[str, Any] | None, env: dict[str, str]
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two `nanogate serve` processes on one database (and one config file), stopped after."""
    for node in ("a", "b"):
        (tmp / node).mkdir()
    a = start_gateway(tmp / "a", config, **env)
    try:
        b = join_gateway(a, tmp / "b")
    except BaseException:
        stop(a.proc)
        raise
    try:
        yield a, b
    finally:
        stop(b.proc)
        stop(a.proc)


def within(seconds: float, condition: Callable[[], bool]) -> float:
    """How long `condition` took to hold, polled every 50 ms; fails past `seconds`."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    """Callbacks, input images and redirects on 127.0.0.1 (see receiver.py)."""
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    sim = start_simulator()
    yield sim
    stop(sim.proc)


@pytest.fixture(scope="session")
def demo_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The embedded default: SQLite, local storage, the demo upstream, no config file."""
    gw = start_gateway(tmp_path_factory.mktemp("demo"))
    yield gw
    stop(gw.proc)


def simulator_upstream(sim: Simulator, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "sim",
        "kind": "gemini",
        "base_url": sim.url,
        "api_key": SIM_KEY,
        **overrides,
    }


@pytest.fixture(scope="session")
def sim_gateway(
    tmp_path_factory: pytest.TempPathFactory, simulator: Simulator
) -> Iterator[Gateway]:
    """The gateway relaying to the simulator as a Gemini upstream."""
    gw = start_gateway(
        tmp_path_factory.mktemp("sim"),
        # Fault tests fail the upstream many times in a row; the breaker has its own tests.
        {"upstreams": [simulator_upstream(simulator, timeout_s=5, breaker_failures=1000)]},
    )
    yield gw
    stop(gw.proc)


_CLIENTS: dict[tuple[str, str], genai.Client] = {}


def sdk_client(gw: Gateway, key: str | None = None) -> genai.Client:
    """A google-genai client on the gateway, changed from stock only in key and base URL.

    Kept alive: google-genai closes its HTTP client when the Client object is collected.
    """
    api_key = key or gw.client_key
    if (gw.url, api_key) not in _CLIENTS:
        _CLIENTS[gw.url, api_key] = genai.Client(api_key=api_key, http_options={"base_url": gw.url})
    return _CLIENTS[gw.url, api_key]


@pytest.fixture
def database_env(database: str | None) -> dict[str, str]:
    """Environment for a gateway on the embedded SQLite default, or on a fresh PostgreSQL
    database of its own."""
    return {"NANOGATE_DATABASE_URL": database} if database else {}
