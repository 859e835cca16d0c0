"""Which models each `gemini` upstream lists (GET …/models), against the catalog.

`compare` is pure: per catalog model routed to the upstream, whether the upstream lists it (under
its `model_map` name), and per listed model, whether the catalog knows it. A model clients may
call that the upstream does not list is "missing": `nanogate models check` exits 1 on one, and
`/readyz` and the console's Upstreams page show them.

`ModelWatch` keeps one report per upstream for the serving process. Nothing is asked at start
(no traffic an operator did not ask for): the first look at /readyz, the console's Upstreams page
or a call to a model the catalog does not list checks, and the answer is kept a day (an upstream
that could not be asked is asked again after ERROR_RETRY_S). `allow_unlisted_models` reads it to
know which upstream lists a model the catalog does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

from nanogate.core.catalog import Catalog, Status
from nanogate.core.config import UpstreamConfig
from nanogate.core.lifecycle import state, switches

log = logging.getLogger("nanogate")

CHECK_EVERY_S = 24 * 3600.0
ERROR_RETRY_S = 600.0
CHECK_TIMEOUT_S = 30.0


class Lister(Protocol):
    """An upstream adapter that can list its models (the gemini kind)."""

    async def list_models(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class CatalogRow:
    model: str  # the catalog's id
    upstream_name: str  # what this upstream calls it (model_map)
    status: Status
    expected: bool  # clients may call it here, so the upstream should list it
    listed: bool


@dataclass(frozen=True, slots=True)
class ListedRow:
    name: str
    known: bool  # the catalog knows it (an id, an alias or a model_map name)


@dataclass(frozen=True, slots=True)
class Report:
    upstream: str
    checked_at: datetime
    error: str | None = None
    catalog: tuple[CatalogRow, ...] = ()
    listed: tuple[ListedRow, ...] = ()
    # Listed models' token limits, for models the catalog does not list.
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return [row.model for row in self.catalog if row.expected and not row.listed]

    @property
    def unknown(self) -> list[str]:
        return [row.name for row in self.listed if not row.known]

    def lists(self, upstream_name: str) -> bool:
        return any(row.name == upstream_name for row in self.listed)

    def summary(self) -> dict[str, Any]:
        """The report in short, for /readyz and GET /admin/upstreams."""
        return {
            "checked_at": self.checked_at.isoformat(timespec="seconds"),
            "error": self.error,
            "missing": self.missing,
            "listed": sum(1 for row in self.catalog if row.listed),
            "expected": sum(1 for row in self.catalog if row.expected),
            "not_in_catalog": self.unknown,
        }


def compare(
    catalog: Catalog,
    config: UpstreamConfig,
    models: list[dict[str, Any]],
    on: date,
    checked_at: datetime,
) -> Report:
    limits: dict[str, tuple[int, int]] = {}
    for model in models:
        name = str(model.get("name") or "").removeprefix("models/")
        if name:
            limits[name] = (
                _int(model.get("inputTokenLimit"), 1_048_576),
                _int(model.get("outputTokenLimit"), 65_536),
            )
    rows: list[CatalogRow] = []
    mapped: set[str] = set()
    for spec in catalog:
        if not config.serves_any(spec.names):
            continue
        status = state(spec, on)
        if status == "shut_down" and switches(spec):
            continue  # its calls run on the replacement, which has a row of its own
        upstream_name = config.mapped(config.model_map, spec.names)
        mapped.add(upstream_name)
        expected = status != "shut_down" or config.keeps_shut_down(spec.name)
        rows.append(CatalogRow(spec.name, upstream_name, status, expected, upstream_name in limits))
    listed = tuple(
        ListedRow(name, catalog.get(name) is not None or name in mapped) for name in sorted(limits)
    )
    return Report(config.name, checked_at, None, tuple(rows), listed, limits)


async def check(
    catalog: Catalog, config: UpstreamConfig, lister: Lister, on: date, timeout_s: float
) -> Report:
    """Ask one upstream for its models and compare; a failure is a report with `error`."""
    now = datetime.now(UTC)
    try:
        async with asyncio.timeout(timeout_s):
            models = await lister.list_models()
    except TimeoutError:
        return Report(config.name, now, f"no answer within {timeout_s:g} s")
    except Exception as exc:
        return Report(config.name, now, _describe(exc))
    return compare(catalog, config, models, on, now)


def _describe(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    status = getattr(exc, "status", None)
    if isinstance(message, str):
        return f"HTTP {status}: {message}"[:200] if status else message[:200]
    return type(exc).__name__


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class ModelWatch:
    """The serving process's model check of its gemini upstreams, cached."""

    def __init__(
        self,
        catalog: Catalog,
        upstreams: Iterable[tuple[UpstreamConfig, Lister]],
        today: Callable[[], date],
        *,
        every_s: float = CHECK_EVERY_S,
        timeout_s: float = CHECK_TIMEOUT_S,
    ) -> None:
        self.catalog = catalog
        self.upstreams = list(upstreams)
        self.today = today
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.reports: dict[str, Report] = {}
        self._due = 0.0  # monotonic time of the next check
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def reconfigure(
        self, catalog: Catalog, upstreams: Iterable[tuple[UpstreamConfig, Lister]]
    ) -> None:
        """A config reload: check these from now on, at the next call."""
        self.catalog = catalog
        self.upstreams = list(upstreams)
        self._due = 0.0

    async def refresh(self) -> dict[str, Report]:
        async with self._lock:
            return await self._refresh()

    async def current(self) -> dict[str, Report]:
        """The reports, checked now if they are due (callers share one check under way)."""
        if time.monotonic() >= self._due:
            async with self._lock:
                if time.monotonic() >= self._due:
                    await self._refresh()
        return self.reports

    async def _refresh(self) -> dict[str, Report]:
        on = self.today()
        results = await asyncio.gather(
            *(check(self.catalog, c, lister, on, self.timeout_s) for c, lister in self.upstreams)
        )
        self.reports = {report.upstream: report for report in results}
        failed = any(report.error for report in results)
        self._due = time.monotonic() + (ERROR_RETRY_S if failed else self.every_s)
        for report in results:
            if report.error:
                log.warning(
                    "model check failed", extra={"upstream": report.upstream, "error": report.error}
                )
            elif report.missing:
                log.warning(
                    "upstream does not list catalog models",
                    extra={"upstream": report.upstream, "missing": report.missing},
                )
        return self.reports

    def listing(self, model: str) -> frozenset[str]:
        """The upstreams whose last check listed `model`."""
        return frozenset(name for name, r in self.reports.items() if r.lists(model))

    def summary(self) -> dict[str, dict[str, Any]]:
        return {name: report.summary() for name, report in self.reports.items()}

    def kick(self) -> dict[str, dict[str, Any]]:
        """The cached summary at once; starts a check in the background when one is due (a
        readiness probe must not wait for an upstream)."""
        if self.upstreams and time.monotonic() >= self._due and self._task is None:
            self._task = asyncio.create_task(self._background(), name="model-check")
        return self.summary()

    async def _background(self) -> None:
        try:
            await self.current()
        except Exception as exc:
            log.warning("model check round failed (%s)", type(exc).__name__)
        finally:
            self._task = None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
