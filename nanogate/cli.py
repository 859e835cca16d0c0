"""The `nanogate` command: serve, migrate, keys, usage."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from .catalog import load_catalog
from .config import Settings, load_settings
from .db.engine import make_engine, run_migrations
from .errors import NotFound
from .keys import KeyStore, bootstrap
from .logs import setup_logging
from .usage import UsageRecorder

app = typer.Typer(help="nanogate: a gateway for Gemini image models.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
# Piped output (scripts, tests) gets wide tables instead of elided columns.
console = Console(width=None if sys.stdout.isatty() else 200)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (or set NANOGATE_CONFIG)."),
]
T = TypeVar("T")


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from None


def _with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = make_engine(settings.resolved_database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """Migrate the database, create first keys if there are none, and serve."""
    import uvicorn

    from .app import create_app

    settings = _settings(config)
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    setup_logging(settings.log_level, settings.log_format)
    run_migrations(settings.resolved_database_url)
    created = _with_engine(
        settings, lambda engine: bootstrap(KeyStore(engine, 0), settings.starter_credits)
    )
    if created is not None:
        _show_first_keys(*created, settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
    )


def _show_first_keys(client_key: str, admin_key: str, settings: Settings) -> None:
    console.print(
        Panel.fit(
            f"client key ({settings.starter_credits} credits):\n  {client_key}\n"
            f"admin key:\n  {admin_key}\n\n"
            "These are shown once and stored only as hashes. Save them now.",
            title="nanogate: first start",
        ),
        soft_wrap=True,
    )
    # Also plain lines, easy to grep from scripts: `NANOGATE_CLIENT_KEY=...`.
    print(f"NANOGATE_CLIENT_KEY={client_key}", flush=True)
    print(f"NANOGATE_ADMIN_KEY={admin_key}", flush=True)


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Bring the database schema up to date (Alembic upgrade head)."""
    settings = _settings(config)
    run_migrations(settings.resolved_database_url)
    console.print("database is up to date")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "client",
    credits: Annotated[int, typer.Option(min=0, help="Starting credits.")] = 0,
    expires_in_days: Annotated[int | None, typer.Option(min=1, help="Expire after N days.")] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may call (default: all).")
    ] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Requests at a time.")] = None,
    admin: Annotated[bool, typer.Option(help="An admin key.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    settings = _settings(config)
    run_migrations(settings.resolved_database_url)
    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    allowed = None
    if models:
        catalog = load_catalog(settings.models)
        try:
            allowed = [catalog.resolve(m.strip()).name for m in models.split(",") if m.strip()]
        except NotFound as exc:
            raise typer.BadParameter(exc.message, param_hint="--models") from None

    async def work(engine: AsyncEngine) -> str:
        plain, _ = await KeyStore(engine, 0).create(
            name,
            is_admin=admin,
            credits=credits,
            expires_at=expires_at,
            allowed_models=allowed,
            rpm_limit=rpm,
            concurrency_limit=concurrency,
        )
        return plain

    plain = _with_engine(settings, work)
    print(plain)


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List keys by prefix (never the keys themselves)."""
    settings = _settings(config)
    records = _with_engine(settings, lambda engine: KeyStore(engine, 0).list())
    now = datetime.now(UTC)
    table = Table("prefix", "name", "admin", "status", "balance", "models", "rpm", "concurrency")
    for rec in records:
        table.add_row(
            rec.prefix,
            rec.name,
            "yes" if rec.is_admin else "",
            rec.status(now),
            str(rec.balance),
            ",".join(rec.allowed_models) if rec.allowed_models else "all",
            str(rec.rpm_limit or ""),
            str(rec.concurrency_limit or ""),
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix, e.g. ng_3f9a2c7b.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key: it is refused from then on (within key_cache_seconds on running servers)."""
    settings = _settings(config)
    done = _with_engine(settings, lambda engine: KeyStore(engine, 0).revoke(prefix))
    if not done:
        console.print(f"no active key with prefix {prefix}")
        raise typer.Exit(1)
    console.print(f"revoked {prefix}")


@app.command()
def usage(
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 20,
    key: Annotated[str | None, typer.Option(help="Only this key prefix.")] = None,
    config: ConfigOption = None,
) -> None:
    """Show the most recent usage records."""
    settings = _settings(config)

    async def work(engine: AsyncEngine) -> list[dict[str, object]]:
        return await UsageRecorder(engine).recent(limit=limit, key_prefix=key)

    rows = _with_engine(settings, work)
    table = Table("time", "key", "dialect", "model", "upstream", "status", "ms", "tokens", "images")
    for row in rows:
        table.add_row(
            str(row["created_at"])[:19],
            str(row["key_prefix"]),
            str(row["dialect"]),
            str(row["model"]),
            str(row["upstream"] or ""),
            str(row["status"]),
            str(row["latency_ms"]),
            str(row["total_tokens"]),
            str(row["images"]),
        )
    console.print(table)


def main() -> None:
    app()
