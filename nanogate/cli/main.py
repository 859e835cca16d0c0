"""The `nanogate` command: serve, migrate, accounts, keys, usage, upstreams, generate."""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import re
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.core import TyperCommand

from nanogate.access.cluster import Bus
from nanogate.access.keys import KeyRecord, LastAdminKey
from nanogate.access.redisconn import RedisLink
from nanogate.access.switches import FEATURES, SwitchBoard, Switches
from nanogate.billing.accounts import Account, AccountError, AccountStore
from nanogate.billing.keys import KeyStore, bootstrap
from nanogate.billing.runners import open_runner
from nanogate.cli.generate import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MODEL,
    DEFAULT_URL,
    KEY_ENV,
    URL_ENV,
    GenerateError,
    Options,
)
from nanogate.cli.generate import run as run_generate
from nanogate.console.reports import SUMMARY_TOTALS, summarize
from nanogate.core.catalog import CatalogError, load_catalog
from nanogate.core.config import Settings, load_settings, settings_problems
from nanogate.core.errors import NotFound
from nanogate.core.logs import setup_logging
from nanogate.core.memory import keep_freed_memory
from nanogate.db.engine import make_engine, run_migrations, sqlite_file
from nanogate.engine.usage import RECORD_COLUMNS, UsageRecorder


def _commands(summary: str) -> typer.Typer:
    # Markdown mode joins a docstring's lines into paragraphs, so help wraps at the terminal's
    # width, not also at the source's line breaks.
    return typer.Typer(help=summary, no_args_is_help=True, rich_markup_mode="markdown")


app = _commands("nanogate: a gateway for Gemini image models.")
keys_app = _commands("Create, list, revoke and top up API keys.")
app.add_typer(keys_app, name="keys")
accounts_app = _commands("Accounts hold the credits their keys spend: create, list, show, top up.")
app.add_typer(accounts_app, name="accounts")
upstreams_app = _commands("Check the configured upstreams.")
app.add_typer(upstreams_app, name="upstreams")
callbacks_app = _commands("Task callbacks: the secret that signs them.")
app.add_typer(callbacks_app, name="callbacks")
switches_app = _commands(
    "Runtime switches every node follows within a second: maintenance mode, features off."
)
app.add_typer(switches_app, name="switches")
models_app = _commands("Check the catalog against what the gemini upstreams list.")
app.add_typer(models_app, name="models")
# Piped output (scripts, tests) gets wide tables instead of elided columns.
console = Console(width=None if sys.stdout.isatty() else 200)
# Errors and notes go to stderr, so stdout stays clean for keys, CSV and JSON.
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class ShowFormat(StrEnum):
    table = "table"
    json = "json"


class ImageOutput(StrEnum):
    data = "data"
    url = "url"


class HoldPolicy(StrEnum):  # nanogate.db.tables.HOLD_POLICIES
    fair = "fair"
    worst_case = "worst_case"


class GroupBy(StrEnum):
    account = "account"
    key = "key"
    model = "model"
    day = "day"


DEFAULT_TOPUP_REASON = "top-up from the command line"
DEFAULT_ADJUSTMENT_REASON = "adjustment from the command line"

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (or set NANOGATE_CONFIG)."),
]
HoldPolicyOption = Annotated[
    HoldPolicy | None,
    typer.Option(
        help="How much the account's calls hold (default: the hold_policy setting).",
        show_default=False,
    ),
]
T = TypeVar("T")


def _settings(config: Path | None) -> Settings:
    """The settings, and the catalog as they change it, checked: a mistake in either is one line
    on stderr, never a traceback."""
    try:
        settings = load_settings(config)
        load_catalog(settings.models)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from None
    except ValidationError as exc:
        _fail(f"invalid settings: {settings_problems(exc)}")
    except CatalogError as exc:
        _fail(f"invalid models: {exc}")
    return settings


def _database(config: Path | None) -> Settings:
    """Settings for a command that works on an existing database, found as `serve` finds it
    (the config file, NANOGATE_DATA_DIR or NANOGATE_DATABASE_URL, else ./nanogate-data). Only
    serve, worker and migrate create one: another command run from the wrong folder fails,
    naming the path it looked at, instead of leaving an empty database there."""
    settings = _settings(config)
    path = sqlite_file(settings.resolved_database_url)
    if path is not None and not path.is_file():
        _fail(
            f"no database at {path}. Run this in the folder where `nanogate serve` runs, or "
            "point NANOGATE_DATA_DIR (or --config) at its data directory."
        )
    return settings


def _fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and a non-zero exit: no traceback for a mistake or a refusal."""
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _db_error(exc: BaseException) -> NoReturn:
    # The engines hide bound parameters, so the first line names the problem, never row values.
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    _fail(f"database: {lines[0] if lines else type(exc).__name__}")


def _with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = make_engine(settings.resolved_database_url)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except (DBAPIError, sqlite3.Error, OSError) as exc:
        _db_error(exc)


def _with_accounts(
    settings: Settings, work: Callable[[AccountStore, AsyncEngine], Awaitable[T]]
) -> T:
    """Run `work` with an account store (and the ledger runner it moves money through).
    A refusal from the store (an unknown name, a balance that would go negative) exits 1."""

    async def run(engine: AsyncEngine) -> T:
        runner = open_runner(settings.resolved_database_url, engine)
        try:
            return await work(AccountStore(engine, runner), engine)
        except AccountError as exc:
            _fail(str(exc))
        finally:
            await runner.close()

    return _with_engine(settings, run)


def _migrate(settings: Settings) -> None:
    try:
        run_migrations(settings.resolved_database_url)
    except (DBAPIError, sqlite3.Error, OSError) as exc:
        _db_error(exc)


def _migrate_apart(settings: Settings) -> None:
    """`_migrate` in a forked child, for `serve`: Alembic and its templates (~11 MiB) never
    enter the serving process, whose resident memory is what the operator provisions. The
    child's errors are its own to print; its exit code is ours."""
    if not hasattr(os, "fork"):
        _migrate(settings)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its outcome is the exit code
        code = 1
        try:
            _migrate(settings)
            code = 0
        except typer.Exit as exc:
            code = exc.exit_code
        except BaseException:
            logging.getLogger("nanogate").exception("migrating the database failed")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        raise typer.Exit(code if code > 0 else 1)


async def _find_account(store: AccountStore, ref: str, code: int = 1) -> Account:
    account = await store.get(ref)
    if account is None:
        _fail(
            f"no account {ref!r} (give an id or a name; `nanogate accounts list` shows them)", code
        )
    return account


def _cell(value: object) -> Text:
    """A table cell shown as it is: names and notes are not rich markup."""
    return Text("" if value is None else str(value))


def _number(value: int | None) -> str:
    """A count or an amount of credits, as tables show it: 1,234,567 (JSON and CSV keep the
    plain integer)."""
    return "" if value is None else f"{value:,}"


def _when(value: datetime | None) -> str:
    return str(value)[:19] if value is not None else ""


def _plain(value: Any) -> Any:
    """A value as JSON and CSV carry it."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value


def _emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: OutputFormat) -> None:
    """Rows as CSV (a header, then one line a row) or a JSON array, on stdout."""
    if fmt is OutputFormat.json:
        data = [{column: _plain(row.get(column)) for column in columns} for row in rows]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _plain(row[c]) for c in columns])


_NEGATIVE = re.compile(r"-\d+")


class _SignedAmountCommand(TyperCommand):
    """Lets an AMOUNT argument be negative: `topup acme -500`, `topup acme -- -500 --reason x`.

    Click reads `-500` as an option. The command runs with `ignore_unknown_options`, so `-500`
    reaches the arguments; a `--` just before a negative number is dropped so the options after
    it still count; and a misspelt option is still refused (ignore_unknown_options alone would
    pass it on as an argument)."""

    # `ctx` is click's Context (typer's vendored copy in recent typer versions).
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = list(args)
        if "--" in args:
            at = args.index("--")
            if at + 1 < len(args) and _NEGATIVE.fullmatch(args[at + 1]):
                del args[at]
        known: set[str] = set(self.get_help_option_names(ctx))
        takes_value: set[str] = set()
        for param in self.get_params(ctx):
            if param.param_type_name == "option":
                known.update(param.opts + param.secondary_opts)
                if not getattr(param, "is_flag", False):
                    takes_value.update(param.opts)
        previous = ""
        for arg in args:
            if arg == "--":
                break
            name = arg.split("=", 1)[0]
            if (
                arg.startswith("-")
                and not _NEGATIVE.fullmatch(arg)
                and name not in known
                and previous not in takes_value
            ):
                ctx.fail(f"No such option: {name}")
            previous = arg
        return super().parse_args(ctx, args)


def _amount(argument: int | None, option: int | None) -> int:
    if argument is not None and option is not None and argument != option:
        _fail("give the amount once: as AMOUNT or as --amount", 2)
    amount = argument if argument is not None else option
    if amount is None:
        _fail("missing the amount: give AMOUNT (negative for an adjustment) or --amount", 2)
    if amount == 0:
        _fail("the amount must not be zero", 2)
    return amount


def _reason(reason: str | None, amount: int) -> str:
    if reason is not None and not reason.strip():
        _fail("--reason must not be empty", 2)
    if reason is None:
        return DEFAULT_TOPUP_REASON if amount > 0 else DEFAULT_ADJUSTMENT_REASON
    return reason


AmountArgument = Annotated[
    int | None,
    typer.Argument(
        help="Credits: positive to top up, negative to take away (an adjustment).",
        show_default=False,
    ),
]
AmountOption = Annotated[
    int | None,
    typer.Option(
        "--amount", help="The amount as an option (e.g. --amount -500).", show_default=False
    ),
]
ReasonOption = Annotated[
    str | None,
    typer.Option(
        help=f"Why, for the ledger (default: '{DEFAULT_TOPUP_REASON}', or "
        f"'{DEFAULT_ADJUSTMENT_REASON}' for a negative amount).",
        show_default=False,
    ),
]


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="Processes serving on the one port: about one per core."),
    ] = None,
) -> None:
    """Migrate the database, create first keys if there are none, and serve."""
    from nanogate.web import drain
    from nanogate.web.app import create_app
    from nanogate.web.workers import supervise

    settings = _settings(config)
    overrides = {
        name: value
        for name, value in (("host", host), ("port", port), ("workers", workers))
        if value is not None
    }
    for name, value in overrides.items():
        setattr(settings, name, value)
    setup_logging(settings.log_level, settings.log_format)
    _migrate_apart(settings)
    created = _with_engine(
        settings, lambda engine: bootstrap(KeyStore(engine, 0), settings.starter_credits)
    )
    if created is not None:
        _show_first_keys(*created, settings)
    if settings.workers > 1:
        try:
            raise SystemExit(supervise(settings, overrides))
        except OSError as exc:
            _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}", 3)
    process = drain.Drain(settings.shutdown_grace_seconds)
    keep_freed_memory()
    drain.serve(
        create_app(settings, process),
        process,
        host=settings.host,
        port=settings.port,
        delay_s=settings.drain_delay_seconds,
    )


@app.command()
def worker(
    config: ConfigOption = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="Tasks this process runs at once (default: task_workers)."),
    ] = None,
    worker_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="This worker's lease owner name. Give a stable one to let a restarted worker "
            "take its unfinished tasks back at once (default: host:worker:pid).",
        ),
    ] = None,
) -> None:
    """Run task workers and callback delivery, without HTTP (scale tasks out on their own)."""
    import signal

    from nanogate.web.runtime import running
    from nanogate.web.runtime import worker_id as default_worker_id

    settings = _settings(config)
    setup_logging(settings.log_level, settings.log_format)
    _migrate_apart(settings)
    workers = concurrency or settings.task_workers or 16
    owner = worker_id or default_worker_id(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with running(settings, load_catalog(settings.models), workers=workers, owner=owner):
            logging.getLogger("nanogate").info(
                "worker started", extra={"owner": owner, "concurrency": workers}
            )
            await stop.wait()

    asyncio.run(main())


def _show_first_keys(client_key: str, admin_key: str, settings: Settings) -> None:
    # Plain lines, no box around them: each `export` line pastes into a shell as it is, and
    # NANOGATE_KEY is the variable the README's examples and `nanogate generate` read.
    lines = [
        "nanogate: first start. These keys are shown once and stored only as hashes: "
        "save them now.",
        f"Client key ({_number(settings.starter_credits)} starter credits), for the API and "
        "`nanogate generate`:",
        f"export NANOGATE_KEY={client_key}",
        "Admin key, for the console and the admin API:",
        f"export NANOGATE_ADMIN_KEY={admin_key}",
    ]
    data = sqlite_file(settings.resolved_database_url)
    if data is not None:
        lines.append(
            f"Data: {data.parent} (other nanogate commands use it when run from this folder, "
            "or with NANOGATE_DATA_DIR set to it)"
        )
    console_url = f"{settings.resolved_public_base_url}/console"
    lines.append(f"Console: {console_url} (log in with the admin key)")
    print("\n".join(lines), flush=True)


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Bring the database schema up to date (Alembic upgrade head)."""
    settings = _settings(config)
    _migrate(settings)
    console.print("database is up to date")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "client",
    account: Annotated[
        str | None,
        typer.Option(
            help="The account (id or name) the key draws on (default: a new account of its own)."
        ),
    ] = None,
    credits: Annotated[int, typer.Option(min=0, help="Credits to add to the key's account.")] = 0,
    daily_cap: Annotated[
        int | None, typer.Option(min=1, help="At most this many credits per UTC day.")
    ] = None,
    monthly_cap: Annotated[
        int | None, typer.Option(min=1, help="At most this many credits per UTC month.")
    ] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1, help="Expire after N days.")] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models the key may call (default: all).")
    ] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Requests at a time.")] = None,
    image_output: Annotated[
        ImageOutput | None,
        typer.Option(
            help="How the OpenAI dialect returns images: base64 data URLs (the default) or "
            "signed result URLs."
        ),
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin key.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create a key. It is printed once; only its hash is stored."""
    settings = _database(config)
    _migrate(settings)
    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    allowed = None
    if models:
        catalog = load_catalog(settings.models)
        try:
            allowed = [catalog.resolve(m.strip()).name for m in models.split(",") if m.strip()]
        except NotFound as exc:
            raise typer.BadParameter(exc.message, param_hint="--models") from None

    async def work(store: AccountStore, engine: AsyncEngine) -> tuple[str, KeyRecord]:
        account_id = None
        if account is not None:
            account_id = (await _find_account(store, account, code=2)).id
        return await KeyStore(engine, 0).create(
            name,
            is_admin=admin,
            account_id=account_id,
            credits=credits,
            expires_at=expires_at,
            allowed_models=allowed,
            rpm_limit=rpm,
            concurrency_limit=concurrency,
            daily_cap=daily_cap,
            monthly_cap=monthly_cap,
            image_output=image_output.value if image_output is not None else None,
        )

    plain, record = _with_accounts(settings, work)
    print(plain)
    err_console.print(
        _cell(
            f"{record.prefix} on account {record.account_name} (id {record.account_id}), "
            f"balance {_number(record.balance)}"
        )
    )


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List keys by prefix (never the keys themselves)."""
    settings = _database(config)
    records = _with_engine(settings, lambda engine: KeyStore(engine, 0).list())
    now = datetime.now(UTC)
    table = Table(
        "prefix",
        "name",
        "admin",
        "status",
        "account",
        "balance",
        "daily cap",
        "monthly cap",
        "models",
        "rpm",
        "concurrency",
        "image output",
    )
    for rec in records:
        table.add_row(
            rec.prefix,
            _cell(rec.name),
            "yes" if rec.is_admin else "",
            rec.status(now),
            _cell(rec.account_name),
            _number(rec.balance),
            _number(rec.daily_cap),
            _number(rec.monthly_cap),
            ",".join(rec.allowed_models) if rec.allowed_models else "all",
            str(rec.rpm_limit or ""),
            str(rec.concurrency_limit or ""),
            rec.image_output or "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix, e.g. ng_3f9a2c7b.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key: it is refused from then on (with redis_url set, on every running node at
    once; otherwise within key_cache_seconds)."""
    settings = _database(config)
    try:
        done = _with_engine(settings, lambda engine: _revoke(settings, engine, prefix))
    except LastAdminKey as exc:
        _fail(str(exc))
    if not done:
        console.print(f"no active key with prefix {prefix}")
        raise typer.Exit(1)
    console.print(f"revoked {prefix}")


async def _revoke(settings: Settings, engine: AsyncEngine, prefix: str) -> bool:
    store = KeyStore(engine, 0)
    link = RedisLink.open(settings) if settings.redis_url else None
    try:
        if link is not None:
            store.announce(Bus(link, "cli"))
        done = await store.revoke(prefix)
        if link is not None and not link.is_up():
            err_console.print(
                "warning: Redis did not answer; running nodes refuse the key within "
                "key_cache_seconds"
            )
        return done
    finally:
        if link is not None:
            await link.close()


@keys_app.command(
    "topup",
    cls=_SignedAmountCommand,
    context_settings={"ignore_unknown_options": True},
)
def keys_topup(
    prefix: Annotated[str, typer.Argument(help="The key's prefix, e.g. ng_3f9a2c7b.")],
    amount: AmountArgument = None,
    amount_option: AmountOption = None,
    reason: ReasonOption = None,
    config: ConfigOption = None,
) -> None:
    """Top up (or, with a negative amount, adjust) the account a key draws on."""
    value = _amount(amount, amount_option)
    note = _reason(reason, value)
    settings = _database(config)
    _migrate(settings)

    async def work(store: AccountStore, engine: AsyncEngine) -> tuple[KeyRecord, int]:
        record = await KeyStore(engine, 0).get(prefix.strip())
        if record is None:
            _fail(f"no key with prefix {prefix!r} (`nanogate keys list` shows them)")
        return record, await store.topup(record.account_id, value, note, key_id=record.id)

    record, balance = _with_accounts(settings, work)
    console.print(
        _cell(
            f"{record.prefix}: account {record.account_name} (id {record.account_id}) "
            f"balance {_number(balance)} ({value:+,d})"
        )
    )


@accounts_app.command("create")
def accounts_create(
    name: Annotated[str, typer.Argument(help="A unique name, e.g. acme.")],
    credits: Annotated[int, typer.Option(min=0, help="Starting credits.")] = 0,
    reason: Annotated[
        str | None,
        typer.Option(help="Why, for the ledger (default: 'starting credits').", show_default=False),
    ] = None,
    hold_policy: HoldPolicyOption = None,
    config: ConfigOption = None,
) -> None:
    """Create an account; keys made with "keys create --account NAME" draw on it."""
    if name.strip().isdigit():
        _fail("an account name cannot be all digits (a number means an account id)", 2)
    settings = _database(config)
    _migrate(settings)

    async def work(store: AccountStore, _: AsyncEngine) -> Account:
        policy = hold_policy.value if hold_policy else None
        return await store.create(name, credits, reason or "", policy)

    account = _with_accounts(settings, work)
    console.print(
        _cell(f"created account {account.id} {account.name}: balance {_number(account.balance)}")
    )


@accounts_app.command("list")
def accounts_list(
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = (
        OutputFormat.table
    ),
    config: ConfigOption = None,
) -> None:
    """List accounts: balance, credits held by calls in flight, and how many keys."""
    settings = _database(config)

    async def work(store: AccountStore, _: AsyncEngine) -> list[Account]:
        return await store.list()

    found = _with_accounts(settings, work)
    if fmt is not OutputFormat.table:
        columns = ("id", "name", "balance", "held", "keys", "created_at")
        _emit([a.as_dict() for a in found], columns, fmt)
        return
    table = Table("id", "name", "balance", "held", "keys", "created")
    for account in found:
        table.add_row(
            str(account.id),
            _cell(account.name),
            _number(account.balance),
            _number(account.held),
            str(account.keys),
            _when(account.created_at),
        )
    console.print(table)


_LEDGER_COLUMNS = ("created_at", "kind", "amount", "balance_after", "request_id", "note")


@accounts_app.command("show")
def accounts_show(
    account: Annotated[str, typer.Argument(help="The account's id or name.")],
    fmt: Annotated[ShowFormat, typer.Option("--format", help="Output format.")] = (
        ShowFormat.table
    ),
    config: ConfigOption = None,
) -> None:
    """An account: its balance, its keys and its last 20 ledger rows (newest first)."""
    settings = _database(config)

    async def work(
        store: AccountStore, engine: AsyncEngine
    ) -> tuple[Account, list[KeyRecord], list[dict[str, Any]]]:
        found = await _find_account(store, account)
        keys = [k for k in await KeyStore(engine, 0).list() if k.account_id == found.id]
        return found, keys, await store.entries(found.id, limit=20)

    found, keys, entries = _with_accounts(settings, work)
    now = datetime.now(UTC)
    key_rows = [
        {
            "prefix": k.prefix,
            "name": k.name,
            "status": k.status(now),
            "daily_cap": k.daily_cap,
            "monthly_cap": k.monthly_cap,
        }
        for k in keys
    ]
    if fmt is ShowFormat.json:
        shown = {
            "account": {k: _plain(v) for k, v in found.as_dict().items()},
            "keys": key_rows,
            "ledger": [{c: _plain(row[c]) for c in _LEDGER_COLUMNS} for row in entries],
        }
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
        return
    console.print(
        _cell(
            f"account {found.id} {found.name}: balance {_number(found.balance)}, "
            f"held {_number(found.held)}, {found.keys} keys, created {_when(found.created_at)}"
        )
    )
    policy = found.hold_policy or f"{settings.hold_policy} (the gateway's setting)"
    lost = _number(found.written_off)
    console.print(_cell(f"hold policy: {policy}; written off over its life: {lost}"))
    key_table = Table("prefix", "name", "status", "daily cap", "monthly cap", title="keys")
    for k in keys:
        key_table.add_row(
            k.prefix, _cell(k.name), k.status(now), _number(k.daily_cap), _number(k.monthly_cap)
        )
    console.print(key_table)
    ledger_table = Table(
        "time", "kind", "amount", "balance after", "request", "note", title="ledger (last 20)"
    )
    for row in entries:
        ledger_table.add_row(
            _when(row["created_at"]),
            row["kind"],
            f"{row['amount']:+,d}",
            _number(row["balance_after"]),
            _cell(row["request_id"]),
            _cell(row["note"]),
        )
    console.print(ledger_table)


@accounts_app.command("policy")
def accounts_policy(
    account: Annotated[str, typer.Argument(help="The account's id or name.")],
    policy: Annotated[
        str,
        typer.Argument(
            help="fair (certain cost plus an output allowance), worst_case (the most a call "
            "could cost; nothing is ever written off) or default (the hold_policy setting)."
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Set how much an account's calls hold."""
    choices = [*HoldPolicy, "default"]
    if policy not in choices:
        _fail(f"policy must be one of {', '.join(choices)}", 2)
    settings = _settings(config)

    async def work(store: AccountStore, _: AsyncEngine) -> Account:
        found = await _find_account(store, account)
        await store.set_hold_policy(found.id, None if policy == "default" else policy)
        return found

    found = _with_accounts(settings, work)
    console.print(_cell(f"account {found.id} {found.name}: hold policy {policy}"))


@accounts_app.command(
    "topup",
    cls=_SignedAmountCommand,
    context_settings={"ignore_unknown_options": True},
)
def accounts_topup(
    account: Annotated[str, typer.Argument(help="The account's id or name.")],
    amount: AmountArgument = None,
    amount_option: AmountOption = None,
    reason: ReasonOption = None,
    config: ConfigOption = None,
) -> None:
    """Top up an account (a positive amount) or adjust it (negative, never below zero).

    For a negative AMOUNT write "topup acme -500", "topup acme -- -500" or "--amount -500"."""
    value = _amount(amount, amount_option)
    note = _reason(reason, value)
    settings = _database(config)
    _migrate(settings)

    async def work(store: AccountStore, _: AsyncEngine) -> tuple[Account, int]:
        found = await _find_account(store, account)
        return found, await store.topup(found.id, value, note)

    found, balance = _with_accounts(settings, work)
    console.print(
        _cell(f"account {found.id} {found.name}: balance {_number(balance)} ({value:+,d})")
    )


@app.command()
def usage(
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Recent records to show.")] = 20,
    key: Annotated[str | None, typer.Option(help="Only this key prefix.")] = None,
    by: Annotated[
        GroupBy | None,
        typer.Option(help="Totals per account, key, model or UTC day instead of records."),
    ] = None,
    days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Only the last N UTC days, today included (default with --by: 30).",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = (
        OutputFormat.table
    ),
    config: ConfigOption = None,
) -> None:
    """Show the most recent usage records, or with --by, totals per group: requests, errors
    (status >= 400), images, tokens and credits."""
    settings = _database(config)
    since = None
    if days is not None or by is not None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        since = today - timedelta(days=(days or 30) - 1)
    if by is not None:
        assert since is not None
        _usage_summary(settings, by, since, key, fmt)
        return

    async def work(engine: AsyncEngine) -> list[dict[str, Any]]:
        return await UsageRecorder(engine).recent(limit=limit, key_prefix=key, since=since)

    rows = _with_engine(settings, work)
    if fmt is not OutputFormat.table:
        _emit(rows, RECORD_COLUMNS, fmt)
        return
    table = Table(
        "time",
        "key",
        "dialect",
        "model",
        "upstream",
        "status",
        "ms",
        "tokens",
        "images",
        "cost",
    )
    for row in rows:
        table.add_row(
            str(row["created_at"])[:19],
            _cell(row["key_prefix"]),
            _cell(row["dialect"]),
            _cell(row["model"]),
            _cell(row["upstream"]),
            str(row["status"]),
            _number(row["latency_ms"]),
            _number(row["total_tokens"]),
            _number(row["images"]),
            _number(row["cost"]),
        )
    console.print(table)


@upstreams_app.command("check")
def upstreams_check(
    config: ConfigOption = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds each upstream's health check may take.")
    ] = 10.0,
) -> None:
    """Health-check each configured upstream once and print a table; exit 1 unless all pass."""
    import secrets
    import time

    from nanogate.core.config import UpstreamConfig
    from nanogate.storage import UrlSigner, open_storage
    from nanogate.transport.egress import EgressGuard, GuardedHttp
    from nanogate.upstreams import Services, build_upstream

    settings = _settings(config)
    # A health probe stores and fetches no files: a throwaway signing key will do.
    signer = UrlSigner(secrets.token_bytes(32))
    services = Services(
        open_storage(settings, signer),
        GuardedHttp(EgressGuard(settings.egress_allowlist)),
        settings.image_url_max_bytes,
    )

    async def probe(cfg: UpstreamConfig) -> tuple[bool, str, float]:
        adapter = build_upstream(cfg, services)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                healthy = await adapter.health()
            result = "healthy" if healthy else "unhealthy"
        except TimeoutError:
            healthy, result = False, f"no answer within {timeout:g} s"
        except Exception as exc:
            healthy, result = False, f"failed ({type(exc).__name__})"
        elapsed_ms = (time.perf_counter() - started) * 1000
        await adapter.close()
        return healthy, result, elapsed_ms

    async def probe_all() -> list[tuple[bool, str, float]]:
        return list(await asyncio.gather(*(probe(cfg) for cfg in settings.upstreams)))

    results = asyncio.run(probe_all())
    table = Table("name", "kind", "base_url", "result", "latency ms", title="upstreams")
    for cfg, (healthy, result, elapsed_ms) in zip(settings.upstreams, results, strict=True):
        table.add_row(
            _cell(cfg.name),
            _cell(cfg.kind),
            _cell("(built in)" if cfg.kind == "demo" else cfg.base_url),
            Text(result, style="green" if healthy else "red"),
            f"{elapsed_ms:.0f}",
        )
    console.print(table)
    if not all(healthy for healthy, _, _ in results):
        raise typer.Exit(1)


class OnOff(StrEnum):
    on = "on"
    off = "off"


def _switch_board(settings: Settings, work: Callable[[SwitchBoard], Awaitable[T]]) -> T:
    # Migrated first, so a database from before the switches existed gets their table.
    _migrate(settings)
    initial = Switches(settings.maintenance, frozenset(settings.disabled_features))

    async def run(engine: AsyncEngine) -> T:
        board = SwitchBoard(engine, initial)
        await board.load()
        return await work(board)

    return _with_engine(settings, run)


def _print_switches(state: Switches) -> None:
    console.print(f"maintenance: {'on' if state.maintenance else 'off'}")
    console.print(f"disabled_features: {', '.join(sorted(state.disabled_features)) or 'none'}")


@switches_app.command("show")
def switches_show(config: ConfigOption = None) -> None:
    """Show the switches as every node sees them."""
    settings = _database(config)
    _print_switches(_switch_board(settings, lambda board: board.refresh()))


@switches_app.command("set")
def switches_set(
    maintenance: Annotated[
        OnOff | None,
        typer.Option(help="on: refuse calls (455 on the task API, 503 elsewhere); off: serve."),
    ] = None,
    disable: Annotated[
        str | None,
        typer.Option(
            help=f"The features switched off, comma-separated ({', '.join(sorted(FEATURES))}); "
            "'' turns them all back on."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Change the switches; running nodes follow within a second."""
    if maintenance is None and disable is None:
        _fail("nothing to set: give --maintenance on|off and/or --disable <features>.")
    features = None
    if disable is not None:
        features = [f.strip() for f in disable.split(",") if f.strip()]
        unknown = sorted(set(features) - FEATURES)
        if unknown:
            _fail(
                f"unknown feature {', '.join(unknown)}; choose from {', '.join(sorted(FEATURES))}."
            )
    settings = _database(config)
    on = None if maintenance is None else maintenance is OnOff.on
    state = _switch_board(
        settings, lambda board: board.set(maintenance=on, disabled_features=features)
    )
    _print_switches(state)


@app.command()
def reload(config: ConfigOption = None) -> None:
    """Have every running node re-read its config file within a second: upstreams, models and
    prices change at once (SIGHUP reloads just the process it is sent to)."""
    settings = _database(config)  # the file loads here, or this fails saying why
    _switch_board(settings, lambda board: board.request_reload())
    upstreams = ", ".join(u.name for u in settings.upstreams) or "the demo upstream"
    console.print(f"Asked every node to reload. This file's upstreams: {upstreams}.")
    console.print("Each node logs 'config reloaded', or why it kept its configuration.")


@callbacks_app.command("secret")
def callbacks_secret(
    config: ConfigOption = None,
    standard: Annotated[
        bool,
        typer.Option(
            "--standard-webhooks",
            help="Print the key in the Standard Webhooks form (whsec_ + base64), what a receiver "
            "passes to standardwebhooks.Webhook(...) to verify webhook-signature.",
        ),
    ] = False,
) -> None:
    """Print the secret that signs callbacks (what a receiver verifies x-nanogate-signature
    with): the callback_secret setting, else the one generated on first start."""
    from nanogate.tasks.callbacks import standard_secret
    from nanogate.web.runtime import CALLBACK_SECRET, configured_callback_secret, stored_secret

    settings = _settings(config)
    secret = configured_callback_secret(settings)
    if secret is not None:
        source = "the callback_secret setting (NANOGATE_CALLBACK_SECRET)"
    else:
        # Migrated first: on a fresh database this generates the secret a first start would.
        _migrate(settings)

        async def read(engine: AsyncEngine) -> str:
            runner = open_runner(settings.resolved_database_url, engine)
            try:
                return await runner.run(lambda tx: stored_secret(tx, CALLBACK_SECRET))
            finally:
                await runner.close()

        secret = _with_engine(settings, read)
        source = "the database (generated on first start)"
    # The secret alone on stdout, for `SECRET=$(nanogate callbacks secret)`; the rest on stderr.
    if standard:
        print(standard_secret(secret.encode()), flush=True)
        about = (
            "the Standard Webhooks form (whsec_ + base64) of the key: pass it to "
            "standardwebhooks.Webhook(...) to verify webhook-id, webhook-timestamp and "
            "webhook-signature."
        )
    else:
        print(secret, flush=True)
        about = (
            'x-nanogate-signature is the hex HMAC-SHA256 of `x-nanogate-timestamp + "." + '
            "body`, keyed with this string's UTF-8 bytes as printed (not hex-decoded). "
            "--standard-webhooks prints the same key for a Standard Webhooks library."
        )
    err_console.print(
        f"from {source}. {about} A gateway started with other settings may use another secret: "
        "GET /admin/callbacks/secret asks the running one.",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@models_app.command("check")
def models_check(
    config: ConfigOption = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds each upstream's GET …/models may take.")
    ] = 30.0,
) -> None:
    """Ask each gemini upstream for GET …/models: print, per catalog model, whether it lists it,
    and per listed model, whether the catalog knows it. Exit 1 if a model clients may call is
    missing (or an upstream could not be asked)."""
    from nanogate.core import lifecycle
    from nanogate.upstreams import modelcheck
    from nanogate.upstreams.gemini import GeminiUpstream

    settings = _settings(config)
    catalog = load_catalog(settings.models)
    upstreams = [cfg for cfg in settings.upstreams if cfg.kind == "gemini"]
    if not upstreams:
        err_console.print("No gemini upstream is configured: nothing to check.")
        return

    async def check_all() -> list[modelcheck.Report]:
        adapters = [GeminiUpstream(cfg) for cfg in upstreams]
        try:
            on = lifecycle.today()
            return list(
                await asyncio.gather(
                    *(
                        modelcheck.check(catalog, cfg, adapter, on, timeout)
                        for cfg, adapter in zip(upstreams, adapters, strict=True)
                    )
                )
            )
        finally:
            for adapter in adapters:
                await adapter.close()

    failed = False
    for report in asyncio.run(check_all()):
        if report.error:
            failed = True
            console.print(Text(f"{report.upstream}: could not list models: {report.error}", "red"))
            continue
        table = Table("catalog model", "upstream name", "status", "listed", title=report.upstream)
        for row in report.catalog:
            if row.listed:
                listed = Text("listed", "green")
            elif row.expected:
                listed = Text("MISSING", "red")
            else:
                listed = Text("not listed (shut down)", "yellow")
            table.add_row(_cell(row.model), _cell(row.upstream_name), _cell(row.status), listed)
        console.print(table)
        known = Table("upstream model", "in the catalog", title=f"{report.upstream} lists")
        for item in report.listed:
            known.add_row(_cell(item.name), "yes" if item.known else Text("no", "yellow"))
        console.print(known)
        if report.missing:
            failed = True
            console.print(
                Text(f"{report.upstream} does not list: {', '.join(report.missing)}", "red")
            )
    if failed:
        raise typer.Exit(1)


@app.command()
def generate(
    prompt: Annotated[
        str | None,
        typer.Argument(help="What to draw (leave it out with --batch).", show_default=False),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="The model.")] = DEFAULT_MODEL,
    aspect: Annotated[
        str | None, typer.Option(help="Aspect ratio W:H, e.g. 16:9.", show_default=False)
    ] = None,
    size: Annotated[
        str | None, typer.Option(help="Image size: 512, 1K, 2K or 4K.", show_default=False)
    ] = None,
    images: Annotated[
        list[Path] | None,
        typer.Option(
            "--image",
            "-i",
            metavar="FILE",
            help="A reference image (repeat for several).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="The image file (overwritten; more images: NAME-2, NAME-3...). Default: a "
            "name from the prompt in the current folder, never overwriting.",
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str,
        typer.Option(
            envvar=URL_ENV,
            help="Base URL: this gateway, or e.g. https://gateway.theturbo.ai/v1 or "
            "https://generativelanguage.googleapis.com.",
        ),
    ] = DEFAULT_URL,
    key: Annotated[
        str | None, typer.Option(envvar=KEY_ENV, help="The API key.", show_default=False)
    ] = None,
    batch: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Run a file of prompts: .jsonl (one JSON object a line: prompt, model, aspect, "
            "size, images, name) or text (one prompt a line, # for comments).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Batch output folder (default: the current one). Items whose file is already "
            "there are skipped, so a re-run resumes.",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help=f"Batch calls at a time (default {DEFAULT_CONCURRENCY}).", show_default=False
        ),
    ] = None,
) -> None:
    """Generate images from a prompt, or from a file of prompts with --batch.

    Calls POST URL/v1beta/models/MODEL:generateContent on this gateway or any Gemini-native
    endpoint, retrying 429 and 5xx answers and dropped connections a couple of times, and saves
    every image of the answer.

    Exit codes: 0 all done; 1 a call failed (a batch lists its failures); 2 a usage error,
    found before any call; 3 the key, a model or the credits were refused (401, 402, 403), and
    a batch stops starting new items; 130 interrupted.
    """
    options = Options(
        prompt=prompt,
        model=model,
        aspect=aspect,
        size=size,
        images=images or [],
        output=output,
        url=url,
        key=key,
        batch=batch,
        out_dir=out,
        concurrency=concurrency,
    )
    try:
        code = run_generate(options, console, err_console)
    except GenerateError as exc:
        _fail(exc.message, exc.code)
    raise typer.Exit(code)


def _usage_summary(
    settings: Settings, by: GroupBy, since: datetime, key: str | None, fmt: OutputFormat
) -> None:
    async def work(engine: AsyncEngine) -> list[dict[str, Any]]:
        return await summarize(engine, by.value, since, key_prefix=key)

    rows = _with_engine(settings, work)
    columns = (by.value, *SUMMARY_TOTALS)
    if fmt is not OutputFormat.table:
        _emit(rows, columns, fmt)
        return
    table = Table(
        *columns, title=f"usage by {by.value} since {since:%Y-%m-%d} (UTC)", show_footer=False
    )
    for row in rows:
        # Calls refused before a key or a model was known (no key, a body without a model)
        # have none to group by.
        group = row[by.value] or "(none)"
        table.add_row(_cell(group), *(_number(row[c]) for c in SUMMARY_TOTALS))
    console.print(table)


def main() -> None:
    app()
