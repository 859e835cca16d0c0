"""nanogate next to its floor and its peers: small text generateContent at 1 to 256 connections.

Run `python bench/perf.py [--connections 1,8,32,64,128,256] [--duration 6] [--rounds 2]
[--skip litellm,portkey,granian] [--no-plot]` (or `make perf`). It needs the bench extra
(`pip install -e '.[bench]'`: granian, matplotlib), Debian's nginx and, for Portkey, node and
npm. One command starts, on free loopback ports:

- direct: a static nginx answering every generateContent with one canned 400-byte answer, the
  upstream of every other system (so "direct" is not Python-bound);
- forwarder: bench/forwarder.py, ~20 lines relaying the call on nanogate's own stack (Starlette,
  aiohttp's client, uvicorn with uvloop and httptools) with no auth, limits or metering: the
  floor Python sets;
- nanogate: `nanogate serve`, default settings (metering on, single-node SQLite), one process;
- nanogate x2: the same with `--workers 2` (two processes on one port, one SQLite file): what a
  second core buys;
- forwarder+granian and nanogate+granian: the same two apps served by granian (1 worker,
  uvloop), the server-stack comparison;
- litellm: LiteLLM 1.x's proxy (no database, a master key, one worker), in a virtualenv of its own
  under the cache dir, its `gemini` provider's api_base pointing at nginx, called on its
  Gemini-native route (POST /v1beta/models/{model}:generateContent);
- portkey: Portkey's open-source gateway from npm (installed under the cache dir), called on its
  pass-through route (POST /v1/models/{model}:generateContent with `x-portkey-provider: google`
  and `x-portkey-custom-host: <nginx>/v1beta`). Portkey 1.15.2 answers that route 500
  ("TypeError: immutable", re-wrapping fetch's response) with @hono/node-server 1.14 or later,
  which its `^1.3.3` range resolves to; the install pins 1.13.8 through npm overrides.

Every system is first checked to relay: one call must come back with the canned answer and add
to nginx's request count. Then, for each connection count, every system runs the closed loop
of bench/relay.py (its load generator: aiohttp on uvloop, in this process) in alternating rounds
(`--rounds`, order reversed each round, a 1 s warm-up each). It prints one table (req/s, p50/p99,
CPU per request, ratios to direct and to the forwarder) and a summary of the ratios the issue
asks for, writes bench/results/perf.json, and draws docs/performance.png from it
(bench/perf_plot.py). The load generator, every server and nginx share the machine's cores:
read ratios within one run, not absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from common import (
    ROOT,
    SIM_KEY,
    STARTER_CREDITS,
    Server,
    interrupt_on_signals,
    loop_factory,
    machine,
    raise_fd_limit,
    run_script,
    wait_healthy,
    write_json,
)
from relay import (
    TEXT_BODY,
    TEXT_MODEL,
    Column,
    Request,
    Target,
    compare_closed_loop,
    gateway_config,
    gateway_db,
    knobs_for,
    ledger_check,
    metered_env,
    print_table,
    start_gateway,
)

from tests.simulator.processes import free_port, stop

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "perf.json"
CACHE = BENCH / ".cache"  # the peers' installs (gitignored)
LEVELS = (1, 8, 32, 64, 128, 256)
# Plot and table order; the granian rows follow the app they serve.
SYSTEMS = (
    "direct",
    "forwarder",
    "forwarder+granian",
    "nanogate",
    "nanogate x2",
    "nanogate+granian",
    "litellm",
    "portkey",
)
PEERS = ("litellm", "portkey")
LITELLM_SPEC = "litellm[proxy]>=1,<2"
LITELLM_KEY = "sk-bench-0123456789abcdef0123456789abcdef"  # its master key (no database)
PORTKEY_PACKAGE = {
    "private": True,
    "dependencies": {"@portkey-ai/gateway": "1.15.2"},
    # See the docstring: the pass-through route fails on @hono/node-server >= 1.14.
    "overrides": {"@hono/node-server": "1.13.8"},
}
GENERATE_PATH = f"/models/{TEXT_MODEL}:generateContent"
# The canned answer: what the simulator answers "hello", with an id only nginx gives.
CANNED_ID = "nanogate-bench-canned-answer"
CANNED = (
    '{"candidates":[{"content":{"parts":[{"text":"simulated reply to: hello"}],"role":"model"},'
    '"index":0,"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":2,'
    '"candidatesTokenCount":7,"totalTokenCount":9,"promptTokensDetails":[{"modality":"TEXT",'
    '"tokenCount":2}],"candidatesTokensDetails":[{"modality":"TEXT","tokenCount":7}]},'
    f'"modelVersion":"{TEXT_MODEL}","responseId":"{CANNED_ID}"}}'
)
MODELS = f'{{"models":[{{"name":"models/{TEXT_MODEL}"}}]}}'
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
GRANIAN = [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop"]
GRANIAN += ["--http", "1", "--no-ws", "--workers", "1", "--log-level", "warning"]


@dataclass
class System:
    """A started system: the target the load generator drives, the request it sends, and how
    it was started (for the JSON)."""

    target: Target
    request: Request
    command: list[str]
    version: str = ""


class Skip(Exception):
    """A system that cannot run here, and why."""


# --- processes ----------------------------------------------------------------------------


def spawn(
    stack: ExitStack, tmp: Path, name: str, cmd: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Path]:
    """`cmd` in a session of its own (granian and npm-started servers have children), its
    output in tmp/<name>.log; the whole group is stopped when `stack` closes."""
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(
        cmd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=BENCH,
        start_new_session=True,
    )
    stack.callback(stop_group, proc)
    return proc, log


def stop_group(proc: subprocess.Popen[str]) -> None:
    stop(proc)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children left behind, if any


def wait_answering(url: str, proc: subprocess.Popen[str], log: Path, timeout: float = 90) -> None:
    """Until `url` answers HTTP at all (any status): the server listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise Skip(f"no answer at {url}: {log.read_text()[-1500:]}")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    found = [int(child) for child in text.split()]
    return found + [grandchild for child in found for grandchild in children(child)]


def server_pids(pid: int) -> dict[str, int]:
    """CPU accounting names for a server and its children (granian's worker)."""
    return {f"server{index or ''}": p for index, p in enumerate([pid, *children(pid)])}


def nginx_conf(port: int, tmp: Path) -> str:
    temp = tmp / "nginx-temp"
    temp.mkdir(parents=True, exist_ok=True)
    paths = "".join(f"  {kind}_temp_path {temp}/{kind};\n" for kind in ("proxy", "fastcgi"))
    paths += "".join(f"  {kind}_temp_path {temp}/{kind};\n" for kind in ("uwsgi", "scgi"))
    # One process (no master): its CPU is all of nginx's, as each server's is its own.
    return (
        f"daemon off;\nmaster_process off;\npid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {temp}/body;\n{paths}"
        "  keepalive_requests 100000000;\n  keepalive_timeout 120s;\n"
        f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n"
        "    default_type application/json;\n"
        "    location = /nginx_status { stub_status; }\n"
        f"    location = /v1beta/models {{ return 200 '{MODELS}'; }}\n"
        f"    location ~ ^/v1beta/models/[^/]+:generateContent$ {{ return 200 '{CANNED}'; }}\n"
        "  }\n}\n"
    )


def start_nginx(stack: ExitStack, tmp: Path) -> tuple[Server, list[str]]:
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(port, tmp))
    cmd = [NGINX, "-p", str(tmp), "-c", str(conf)]
    proc, log = spawn(stack, tmp, "nginx", cmd)
    url = f"http://127.0.0.1:{port}"
    wait_answering(f"{url}/nginx_status", proc, log)
    return Server("direct", url, SIM_KEY, proc, log), cmd


def nginx_requests(upstream: Server) -> int:
    """nginx's request count so far (stub_status), this request included."""
    with urllib.request.urlopen(f"{upstream.url}/nginx_status", timeout=5) as resp:
        return int(resp.read().decode().splitlines()[2].split()[2])


# --- the systems --------------------------------------------------------------------------


def canned_ok(status: int, size: int, body: bytes) -> bool:
    """nginx's answer came back: through every relay, byte for byte where it matters."""
    return status == 200 and CANNED_ID.encode() in body


def system(
    label: str,
    url: str,
    proc: subprocess.Popen[str],
    upstream: Server,
    command: list[str],
    path: str,
    headers: dict[str, str],
    version: str = "",
) -> System:
    pids = {**server_pids(proc.pid), "upstream": upstream.pid}
    if label == "direct":
        pids = {"server": upstream.pid}
    request = Request(
        url=f"{url}{path}",
        headers={"Content-Type": "application/json", **headers},
        body=TEXT_BODY,
        stream=False,
        check=canned_ok,
    )
    return System(Target(label, url, "", proc.pid, pids), request, command, version)


def start_forwarder(stack: ExitStack, tmp: Path, upstream: Server, granian: bool) -> System:
    port = free_port()
    env = {**os.environ, "FORWARD_TO": upstream.url}
    if granian:
        cmd = [*GRANIAN, "--host", "127.0.0.1", "--port", str(port), "forwarder:app"]
    else:
        cmd = [sys.executable, "forwarder.py", str(port)]
    label = "forwarder+granian" if granian else "forwarder"
    proc, log = spawn(stack, tmp, label, cmd, env)
    url = f"http://127.0.0.1:{port}"
    wait_answering(url, proc, log)
    return system(label, url, proc, upstream, cmd, f"/v1beta{GENERATE_PATH}", {})


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nanogate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise Skip(f"nanogate {' '.join(args)}: {done.stderr[-1500:]}")
    return done.stdout.strip()


def start_nanogate(stack: ExitStack, tmp: Path, upstream: Server, workers: int = 1) -> System:
    """`nanogate serve`, as relay.py starts it: metering on, its own SQLite database; with
    `workers` processes (the supervisor and its workers are all counted in its CPU)."""
    label, root = (
        ("nanogate", "nanogate")
        if workers == 1
        else (f"nanogate x{workers}", f"nanogate-x{workers}")
    )
    gateway = start_gateway(stack, tmp / root, upstream, NANOGATE_WORKERS=str(workers))
    headers = {"x-goog-api-key": gateway.key}
    cmd, path = ["nanogate", "serve", "--workers", str(workers)], "/v1beta" + GENERATE_PATH
    return system(label, gateway.url, gateway.proc, upstream, cmd, path, headers)


def start_nanogate_granian(stack: ExitStack, tmp: Path, upstream: Server) -> System:
    """The same app and settings under granian, on a database set up as `serve` would."""
    root = tmp / "nanogate-granian"
    root.mkdir(parents=True)
    config = root / "nanogate.yaml"
    config.write_text(yaml.safe_dump(gateway_config(upstream.url)))
    port = free_port()
    env = metered_env(root, port, config, metering=True)
    cli(env, "migrate")
    cli(env, "accounts", "create", "bench", "--credits", str(STARTER_CREDITS))
    key = cli(env, "keys", "create", "--name", "bench", "--account", "bench").splitlines()[-1]
    cmd = [*GRANIAN, "--factory", "--host", "127.0.0.1", "--port", str(port), "nanogate_asgi:app"]
    proc, log = spawn(stack, tmp, "nanogate+granian", cmd, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, timeout=90)
    except RuntimeError as exc:
        raise Skip(str(exc)) from None
    headers = {"x-goog-api-key": key}
    path = "/v1beta" + GENERATE_PATH
    return system("nanogate+granian", url, proc, upstream, cmd, path, headers)


def install(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    print(f"installing {what} ...", flush=True)
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise Skip(f"{what} did not install: {(done.stderr or done.stdout)[-1500:]}")


def litellm_install(cache: Path) -> tuple[Path, str]:
    """LiteLLM's proxy in a virtualenv of its own under `cache` (made on first use)."""
    venv = cache / "litellm"
    python = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists():
        install([sys.executable, "-m", "venv", str(venv)], "a virtualenv for LiteLLM")
        install([str(python), "-m", "pip", "install", "-q", LITELLM_SPEC], LITELLM_SPEC)
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return venv / "bin" / "litellm", version


def start_litellm(stack: ExitStack, tmp: Path, upstream: Server, cache: Path) -> System:
    binary, version = litellm_install(cache)
    config = tmp / "litellm.yaml"
    model = {
        "model_name": TEXT_MODEL,
        "litellm_params": {
            "model": f"gemini/{TEXT_MODEL}",
            # Its Gemini-native route posts to {api_base}/models/...; the chat route adds the
            # version itself, but this one needs it in the base.
            "api_base": f"{upstream.url}/v1beta",
            "api_key": SIM_KEY,
        },
    }
    config.write_text(
        yaml.safe_dump({"model_list": [model], "general_settings": {"master_key": LITELLM_KEY}})
    )
    port = free_port()
    cmd = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", "1"]
    # No database; the cost map it ships, not one fetched at start (no network here).
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "VIRTUAL_ENV")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
    proc, log = spawn(stack, tmp, "litellm", cmd, env)
    url = f"http://127.0.0.1:{port}"
    wait_answering(f"{url}/health/liveliness", proc, log, timeout=180)
    headers = {"x-goog-api-key": LITELLM_KEY}
    path = "/v1beta" + GENERATE_PATH
    return system("litellm", url, proc, upstream, cmd, path, headers, version)


def portkey_install(cache: Path) -> tuple[Path, str]:
    """Portkey's gateway from npm under `cache` (installed on first use, or when the pinned
    package.json changed)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise Skip(f"{tool} is not installed (Debian: apt-get install nodejs npm)")
    root = cache / "portkey"
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "package.json"
    wanted = json.dumps(PORTKEY_PACKAGE, indent=2) + "\n"
    package = root / "node_modules" / "@portkey-ai" / "gateway"
    if not package.is_dir() or not manifest.exists() or manifest.read_text() != wanted:
        manifest.write_text(wanted)
        install(["npm", "install", "--no-audit", "--no-fund"], "@portkey-ai/gateway", root)
    version = json.loads((package / "package.json").read_text())["version"]
    return package / "build" / "start-server.js", version


def start_portkey(stack: ExitStack, tmp: Path, upstream: Server, cache: Path) -> System:
    script, version = portkey_install(cache)
    port = free_port()
    cmd = ["node", str(script), f"--port={port}", "--headless"]
    proc, log = spawn(stack, tmp, "portkey", cmd)
    url = f"http://127.0.0.1:{port}"
    wait_answering(url, proc, log)
    headers = {
        "x-portkey-provider": "google",
        "x-portkey-custom-host": f"{upstream.url}/v1beta",
        "x-goog-api-key": SIM_KEY,  # passed through to the upstream as it is
    }
    return system("portkey", url, proc, upstream, cmd, "/v1" + GENERATE_PATH, headers, version)


def verify(found: System, upstream: Server) -> None:
    """One call through `found` must come back with nginx's canned answer, and reach nginx."""
    req = found.request
    before = nginx_requests(upstream)
    call = urllib.request.Request(req.url, data=req.body, headers=req.headers, method="POST")
    try:
        with urllib.request.urlopen(call, timeout=30) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        raise Skip(f"no answer to a generateContent call: {exc}") from None
    if not canned_ok(status, len(body), body):
        raise Skip(f"answered HTTP {status} without nginx's answer: {body[:300]!r}")
    # Each read counts itself: 2 more with the call relayed, 1 without.
    if nginx_requests(upstream) - before < 2 and found.target.label != "direct":
        raise Skip("answered without calling nginx")


def start_all(
    stack: ExitStack, tmp: Path, upstream: Server, nginx_cmd: list[str], args: argparse.Namespace
) -> tuple[list[System], dict[str, str]]:
    """Every system not skipped, checked to relay; and why each missing one is missing."""
    direct = system(
        "direct", upstream.url, upstream.proc, upstream, nginx_cmd, "/v1beta" + GENERATE_PATH, {}
    )
    starters = {
        "forwarder": lambda: start_forwarder(stack, tmp, upstream, granian=False),
        "forwarder+granian": lambda: start_forwarder(stack, tmp, upstream, granian=True),
        "nanogate": lambda: start_nanogate(stack, tmp, upstream),
        "nanogate x2": lambda: start_nanogate(stack, tmp, upstream, workers=2),
        "nanogate+granian": lambda: start_nanogate_granian(stack, tmp, upstream),
        "litellm": lambda: start_litellm(stack, tmp, upstream, args.cache),
        "portkey": lambda: start_portkey(stack, tmp, upstream, args.cache),
    }
    systems, skipped = [direct], {}
    for label, start in starters.items():
        if label in args.skip or ("granian" in args.skip and label.endswith("+granian")):
            skipped[label] = "--skip"
            continue
        print(f"starting {label} ...", flush=True)
        try:
            found = start()
            verify(found, upstream)
        except Skip as exc:
            print(f"  ! {label} skipped: {exc}", flush=True)
            skipped[label] = str(exc)
            continue
        systems.append(found)
    verify(direct, upstream)
    return systems, skipped


# --- the run and the report ---------------------------------------------------------------


def server_cpu(row: dict[str, Any]) -> float:
    """CPU ms per request of the system under test (all its processes), not of nginx."""
    spent = row["cpu_ms_per_req"]
    return sum(v for k, v in spent.items() if k.startswith("server"))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its server CPU, and req/s over direct's and over the forwarder's (same
    connection count)."""
    by = {(row["target"], row["concurrency"]): row for row in rows}
    for row in rows:
        c = row["concurrency"]
        row["server_cpu_ms_per_req"] = server_cpu(row)
        for base in ("direct", "forwarder"):
            other = by.get((base, c))
            row[f"x_{base}"] = _ratio(row["rps"], other["rps"] if other else None)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per connection count: nanogate's req/s over each other system's (granian's over
    uvicorn's for the stack); the same comparisons "by CPU", the other's CPU per request over
    this one's (what the req/s ratio would be were each CPU-bound on a core of its own: the
    steadier figure on a shared machine); and nanogate's p50 minus direct's."""
    by = {(row["target"], row["concurrency"]): row for row in rows}
    pairs = {
        "nanogate/forwarder": ("nanogate", "forwarder"),
        "nanogate/direct": ("nanogate", "direct"),
        "nanogate/litellm": ("nanogate", "litellm"),
        "nanogate/portkey": ("nanogate", "portkey"),
        "forwarder granian/uvicorn": ("forwarder+granian", "forwarder"),
        "nanogate granian/uvicorn": ("nanogate+granian", "nanogate"),
        "nanogate 2 workers/1": ("nanogate x2", "nanogate"),
    }
    out: dict[str, dict[str, float | None]] = {}
    for c in sorted({row["concurrency"] for row in rows}):
        line: dict[str, float | None] = {}
        for key, per_cpu in (("rps", False), ("server_cpu_ms_per_req", True)):
            for name, (a, b) in pairs.items():
                if per_cpu and b == "direct":
                    continue  # nginx's CPU is no Python floor
                ra, rb = by.get((a, c)), by.get((b, c))
                va, vb = (ra[key] if ra else None), (rb[key] if rb else None)
                line[f"{name} by CPU" if per_cpu else name] = (
                    _ratio(vb, va) if per_cpu else _ratio(va, vb)
                )
        gw, direct = by.get(("nanogate", c)), by.get(("direct", c))
        line["nanogate p50 - direct p50 ms"] = (
            gw["p50_ms"] - direct["p50_ms"] if gw and direct else None
        )
        out[str(c)] = line
    return out


def _get(key: str) -> Any:
    return lambda row: row.get(key)


COLUMNS: list[Column] = [
    ("c", _get("concurrency"), 0),
    ("system", _get("target"), 0),
    ("req/s", _get("rps"), 0),
    ("p50 ms", _get("p50_ms"), 2),
    ("p99 ms", _get("p99_ms"), 2),
    ("errors", _get("errors"), 0),
    ("server cpu ms/req", _get("server_cpu_ms_per_req"), 3),
    ("client cpu ms/req", lambda row: row["cpu_ms_per_req"].get("client"), 3),
    ("x direct", _get("x_direct"), 2),
    ("x forwarder", _get("x_forwarder"), 2),
]


def print_summary(table: dict[str, dict[str, float | None]]) -> None:
    names = list(next(iter(table.values())))
    width = max(map(len, names))
    print("\nratios at each connection count (req/s; by CPU: CPU per request, inverted)")
    print("  " + "c".ljust(width) + "".join(f"  {c:>6}" for c in table))
    for name in names:
        cells = (table[c][name] for c in table)
        shown = "".join(f"  {'-' if v is None else f'{v:.2f}':>6}" for v in cells)
        print(f"  {name:<{width}}{shown}")


def versions() -> dict[str, str]:
    """The stacks' versions (the peers' own go with their systems)."""
    found = {}
    for name in ("nanogate", "uvicorn", "uvloop", "httptools", "starlette", "aiohttp", "granian"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    for tool, flag in ((NGINX, "-v"), ("node", "--version")):
        try:
            done = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10)
            found[Path(tool).name] = (done.stdout or done.stderr).strip().split("/")[-1]
        except OSError:
            found[Path(tool).name] = "not installed"
    return found


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--connections",
        default=",".join(map(str, LEVELS)),
        help="connection counts, comma-separated (default %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=6.0, help="measured seconds per system and count"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument(
        "--skip",
        default="",
        help="systems to leave out, comma-separated: forwarder, nanogate, 'nanogate x2', "
        "litellm, portkey, granian (both granian rows), forwarder+granian, nanogate+granian",
    )
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the peers install")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON (%(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="no docs/performance.png")
    args = parser.parse_args(argv)
    args.levels = tuple(int(c) for c in args.connections.split(","))
    args.skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    if args.rounds < 1 or args.duration <= 0 or min(args.levels) < 1:
        parser.error("--rounds, --duration and each connection count must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    knobs = replace(knobs_for(False), duration_s=args.duration, rounds=args.rounds)
    factory, loop_name = loop_factory()
    raise_fd_limit()
    env = machine(
        loop_name,
        nproc=os.cpu_count(),
        cpu_model=cpu_model(),
        versions=versions(),
        command=" ".join(["python", "bench/perf.py", *(argv or sys.argv[1:])]),
        knobs={"duration_s": args.duration, "rounds": args.rounds, "warmup_s": knobs.warmup_s},
        note="load generator (this process), servers and nginx share the same CPUs",
    )
    started = time.monotonic()
    with (
        interrupt_on_signals(),
        tempfile.TemporaryDirectory(prefix="nanogate-perf-") as tmp_name,
        ExitStack() as stack,
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        tmp = Path(tmp_name)
        upstream, nginx_cmd = start_nginx(stack, tmp)
        systems, skipped = start_all(stack, tmp, upstream, nginx_cmd, args)
        targets = tuple(found.target for found in systems)
        requests = {found.target.label: found.request for found in systems}
        rows: list[dict[str, Any]] = []
        for c in args.levels:
            rows += compare_closed_loop(
                runner,
                f"c={c}",
                targets,
                c,
                knobs,
                stream=False,
                build=lambda target: requests[target.label],
            )
        # Metering ran: what each nanogate's ledger holds (relay.py's check).
        ledgers = {
            label: ledger_check(gateway_db(tmp / root))
            for label, root in (
                ("nanogate", "nanogate"),
                ("nanogate x2", "nanogate-x2"),
                ("nanogate+granian", "nanogate-granian"),
            )
            if label in requests
        }
    rows = with_ratios(rows)
    print_table(
        "small text generateContent, closed loop; server cpu = the system's own processes "
        "(nginx's excluded); x = req/s over direct's, over the forwarder's",
        COLUMNS,
        rows,
    )
    ratios = summary(rows)
    print_summary(ratios)
    for label, check in ledgers.items():
        print(f"  {label} ledger: {check['ledger_rows']} rows, holds {check['holds']}")
    for label, why in skipped.items():
        print(f"  ! {label} not measured: {why}")
    env["wall_s"] = time.monotonic() - started
    doc = {
        "environment": env,
        "systems": {
            s.target.label: {"command": " ".join(s.command), "version": s.version} for s in systems
        },
        "skipped": skipped,
        "results": rows,
        "summary": ratios,
        "ledgers": ledgers,
    }
    write_json(args.out, doc)
    if not args.no_plot:
        try:
            from perf_plot import plot
        except ImportError as exc:
            print(f"no plot ({exc}): pip install -e '.[bench]'", file=sys.stderr)
            return 1
        plot(args.out, ROOT / "docs" / "performance.png")
    return 0


if __name__ == "__main__":
    run_script(main)
