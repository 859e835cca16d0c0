"""Config reloads: re-read the settings (the config file and the environment) while the process
runs, on SIGHUP, `POST /admin/reload` or `nanogate reload`.

What takes effect at once: the upstreams (one whose settings did not change keeps its
connections, breaker and figures; a changed or removed one finishes the calls it is serving,
then closes), the models' catalog and prices (`models`), and the gateway's model and routing
settings (APPLIED). Anything else (the listen address, the database, Redis, storage, limits...)
needs a restart: a reload names what changed of it and leaves it as it runs. A file that does not
parse, or models that do not hold together, change nothing.

A reload asked through the admin API or the CLI reaches every node on the database: it is a time
in the switches row, which each node reads twice a second (access/switches.py), and each node
then re-reads its own file. SIGHUP reloads only the process it is sent to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from nanogate.core.catalog import CatalogError, load_catalog
from nanogate.core.config import Settings, settings_problems
from nanogate.engine.gateway import Gateway
from nanogate.upstreams import Services, build_upstream
from nanogate.upstreams.base import Upstream
from nanogate.upstreams.gemini import GeminiUpstream
from nanogate.upstreams.modelcheck import ModelWatch

log = logging.getLogger("nanogate")

# The settings a reload applies; the others are read once, at start.
APPLIED = frozenset(
    {
        "upstreams",
        "models",
        "max_attempts",
        "request_deadline_seconds",
        "allow_unlisted_models",
        "unlisted_model_prices",
        "charge_blocked_prompts",
    }
)
# How long a replaced upstream's adapter stays open after its last call could have started.
RETIRE_MARGIN_S = 5.0


class ReloadFailed(Exception):
    """The settings as they read now do not load; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Reloaded:
    upstreams: list[str]
    models: int
    restart_needed: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "upstreams": self.upstreams,
            "models": self.models,
            "restart_needed": self.restart_needed,
        }


def read_settings() -> Settings:
    """The settings as the process would read them now; ReloadFailed, saying why, if they do
    not load."""
    named = os.environ.get("NANOGATE_CONFIG")
    if named and not Path(named).is_file():
        # The YAML source would read a missing file as empty: every upstream would vanish.
        raise ReloadFailed(f"the config file {named} is gone")
    try:
        settings = Settings()
        load_catalog(settings.models)
    except ValidationError as exc:
        raise ReloadFailed(f"invalid settings: {settings_problems(exc)}") from None
    except yaml.YAMLError as exc:
        raise ReloadFailed(f"the config file is not valid YAML: {_first_line(exc)}") from None
    except CatalogError as exc:
        raise ReloadFailed(f"invalid models: {exc}") from None
    except OSError as exc:
        raise ReloadFailed(f"cannot read the config file ({exc.strerror})") from None
    return settings


class Reloader:
    """Applies re-read settings to a running process's gateway."""

    def __init__(
        self,
        settings: Settings,
        gateway: Gateway,
        services: Services,
        watch: ModelWatch,
        *,
        read: Callable[[], Settings] = read_settings,
    ) -> None:
        self.gateway = gateway
        self.services = services
        self.watch = watch
        self.read = read
        # What changed is told against the settings as last read, not as the process runs
        # them: `serve --port` sets a value no file or variable holds.
        try:
            self._last = read()
        except ReloadFailed:
            self._last = settings
        self._lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        self._retiring: dict[asyncio.Task[None], list[Upstream]] = {}

    async def reload(self) -> Reloaded:
        """Re-read and apply the settings; ReloadFailed (nothing changed) if they do not load."""
        async with self._lock:
            new = self.read()
            catalog = load_catalog(new.models)
            gateway, router = self.gateway, self.gateway.router
            retired = router.replace(
                new.upstreams,
                lambda cfg: build_upstream(cfg, self.services),
                max_attempts=new.max_attempts,
                deadline_s=new.request_deadline_seconds,
            )
            gateway.catalog = catalog
            gateway.allow_unlisted = new.allow_unlisted_models
            gateway.unlisted_prices = new.unlisted_model_prices
            gateway.charge_blocked_prompts = new.charge_blocked_prompts
            self.watch.reconfigure(
                catalog,
                [
                    (t.config, t.adapter)
                    for t in router.targets
                    if isinstance(t.adapter, GeminiUpstream)
                ],
            )
            if retired:
                self._retire(retired, new.request_deadline_seconds + RETIRE_MARGIN_S)
            old, self._last = self._last, new
            done = Reloaded(
                upstreams=[t.name for t in router.targets],
                models=len(list(catalog)),
                restart_needed=_restart_needed(old, new),
            )
        log.warning("config reloaded", extra=done.as_json())
        return done

    def reload_soon(self) -> None:
        """Reload in the background (a signal, or a request from another node): a failure is
        logged, and the running configuration stays."""
        task = asyncio.get_running_loop().create_task(self._logged(), name="config-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _logged(self) -> None:
        try:
            await self.reload()
        except ReloadFailed as exc:
            log.error("config reload refused; the running configuration stays: %s", exc)

    def _retire(self, adapters: list[Upstream], after_s: float) -> None:
        async def close_later() -> None:
            await asyncio.sleep(after_s)
            await _close(adapters)

        task = asyncio.get_running_loop().create_task(close_later(), name="retire-upstreams")
        self._retiring[task] = adapters
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        """At shutdown: stop reloading, and close the replaced upstreams now."""
        for task in [*self._reloads, *self._retiring]:
            task.cancel()
        retiring = list(self._retiring.items())
        for task, adapters in retiring:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await _close(adapters)
        for task in list(self._reloads):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _close(adapters: list[Upstream]) -> None:
    for adapter in adapters:
        try:
            await adapter.close()
        except Exception as exc:
            log.warning("closing a replaced upstream failed (%s)", type(exc).__name__)


def _restart_needed(old: Settings, new: Settings) -> list[str]:
    before, after = old.model_dump(), new.model_dump()
    return sorted(
        name for name in after if name not in APPLIED and before.get(name) != after.get(name)
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
