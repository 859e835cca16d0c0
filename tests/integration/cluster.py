"""A cluster of real processes: `nanogate serve` nodes on one PostgreSQL database, a `nanogate
worker`, and nginx in front with the configuration docs/nginx.conf gives operators (only its
ports changed). The cluster tests (test_cluster.py) drive it through nginx, as clients would.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.simulator.processes import free_port, stop

from .conftest import (
    Gateway,
    Simulator,
    join_gateway,
    simulator_upstream,
    start_gateway,
    wait_healthy,
)

NGINX_CONF = Path(__file__).resolve().parents[2] / "docs" / "nginx.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class Cluster:
    url: str  # nginx
    nodes: list[Gateway]
    worker: subprocess.Popen[str] | None
    env: dict[str, str]  # what every node shares (database, upstreams, ...)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def client_key(self) -> str:
        return self.nodes[0].client_key

    @property
    def admin_key(self) -> str:
        return self.nodes[0].admin_key

    @property
    def front(self) -> Gateway:
        """The first node's handle addressed to nginx: a helper that takes a Gateway (new_key,
        create, sdk_client, ...) then goes through the load balancer, as a client does."""
        return dataclasses.replace(self.nodes[0], url=self.url)


def nginx_config(listen: int, ports: list[int], tmp: Path) -> str:
    """docs/nginx.conf with these ports, inside the few lines nginx needs to run unprivileged
    in the foreground with its files under `tmp`."""
    site = NGINX_CONF.read_text()
    servers = re.findall(r"^\s*server 127\.0\.0\.1:\d+[^;]*;$", site, flags=re.M)
    assert len(servers) == 3, "docs/nginx.conf lists three nodes"
    site = site.replace(
        servers[0],
        "\n".join(re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", servers[0]) for port in ports),
    )
    for extra in servers[1:]:
        site = site.replace(extra + "\n", "")
    site = re.sub(r"listen \d+;", f"listen 127.0.0.1:{listen};", site)
    temp = tmp / "nginx-temp"
    temp.mkdir(parents=True, exist_ok=True)
    return (
        f"daemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/nginx-error.log warn;\n"
        "worker_processes 1;\nevents { worker_connections 4096; }\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {temp}/body;\n"
        f"  proxy_temp_path {temp}/proxy;\n  fastcgi_temp_path {temp}/fastcgi;\n"
        f"  uwsgi_temp_path {temp}/uwsgi;\n  scgi_temp_path {temp}/scgi;\n{site}\n}}\n"
    )


@contextmanager
def nginx_in_front(ports: list[int], tmp: Path, listen: int) -> Iterator[str]:
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(listen, ports, tmp))
    proc = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "nginx-stderr.log").open("w"),
        text=True,
    )
    url = f"http://127.0.0.1:{listen}"
    try:
        # Through nginx, /healthz is a node's: up once nginx listens.
        wait_healthy(url, proc, tmp / "nginx-stderr.log", "nginx")
        yield url
    finally:
        stop(proc)


def start_worker(first: Gateway, tmp: Path, name: str = "cluster-worker") -> subprocess.Popen[str]:
    """`nanogate worker` on the cluster's database: tasks and callbacks, no HTTP."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**first.env, "NANOGATE_DATA_DIR": str(tmp / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogate", "worker", "--id", name],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "worker.log").open("w"),
        text=True,
        env=env,
    )
    time.sleep(0.5)
    if proc.poll() is not None:
        raise RuntimeError(f"worker did not start: {(tmp / 'worker.log').read_text()[-3000:]}")
    return proc


@contextmanager
def cluster(
    tmp: Path,
    database_url: str,
    sim: Simulator,
    *,
    nodes: int = 3,
    worker: bool = True,
    **env: str,
) -> Iterator[Cluster]:
    """`nodes` gateways (the first prints the keys), a worker, and nginx before them."""
    config = {"upstreams": [simulator_upstream(sim, timeout_s=30)]}
    listen = free_port()
    shared: dict[str, str] = {
        "NANOGATE_DATABASE_URL": database_url,
        # As docs/deployment.md says: result links point at the load balancer, not at a node.
        "NANOGATE_PUBLIC_BASE_URL": f"http://127.0.0.1:{listen}",
        "NANOGATE_EGRESS_ALLOWLIST": "127.0.0.1",
        "NANOGATE_STARTER_CREDITS": str(10**12),
        **env,
    }
    with ExitStack() as stack:
        (tmp / "node1").mkdir(parents=True)
        first = start_gateway(tmp / "node1", config, **shared)
        stack.callback(stop, first.proc)
        members = [first]
        for n in range(2, nodes + 1):
            (tmp / f"node{n}").mkdir()
            node = join_gateway(first, tmp / f"node{n}")
            stack.callback(stop, node.proc)
            members.append(node)
        work = start_worker(first, tmp / "worker") if worker else None
        if work is not None:
            stack.callback(stop, work)
        ports = [int(node.url.rsplit(":", 1)[1]) for node in members]
        url = stack.enter_context(nginx_in_front(ports, tmp, listen))
        yield Cluster(url, members, work, {**first.env})
