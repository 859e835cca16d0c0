"""Settings: environment (`NANOGATE_*`) over an optional YAML file over the defaults.

Every field here is documented in the README's settings table; keep the two in step.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

MiB = 1024 * 1024
# Google's own Gemini API: an upstream there stops serving a model on Google's shutdown date.
GOOGLE_API_HOST = "generativelanguage.googleapis.com"

# Switches an operator can turn off (505 on the task API): creating tasks, callback URLs,
# fetching input images from URLs.
Feature = Literal["tasks", "callbacks", "image_urls"]


class UpstreamConfig(BaseModel):
    """One upstream. `kind` picks the adapter in nanogate/upstreams/."""

    name: str
    kind: Literal["gemini", "task", "openai", "demo"]
    base_url: str = "https://generativelanguage.googleapis.com"
    api_key: SecretStr | None = None
    auth_style: Literal["x-goog-api-key", "bearer", "query"] = "x-goog-api-key"
    path_prefix: Literal["/v1beta", "/v1/v1beta"] = "/v1beta"
    models: list[str] = Field(default_factory=lambda: ["*"])
    model_map: dict[str, str] = Field(default_factory=dict)
    # task kind: which task API form the vendor speaks, and its model names for edits (calls
    # with input images), where the vendor has separate ones (google/nano-banana-edit).
    protocol: Literal["taskinfo", "recordinfo"] = "taskinfo"
    edit_model_map: dict[str, str] = Field(default_factory=dict)
    # openai kind: Gemini image models offered through chat completions or the images API.
    mode: Literal["chat", "images"] = "chat"
    priority: int = 0
    weight: int = Field(default=1, ge=1)
    timeout_s: float = Field(default=300.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    # No cap unless the operator sets one; with one, a call waits at most queue_timeout_s for
    # a slot, then fails over to an upstream with room, or gets 429 with Retry-After.
    max_concurrency: int | None = Field(default=None, ge=1)
    queue_timeout_s: float = Field(default=30.0, gt=0)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    latency_ms: int = Field(default=0, ge=0)  # demo only: pretend render time
    # Whether this upstream stops serving a model on Google's shutdown date. Unset: yes for a
    # `gemini` upstream at Google's own API, no for every other (the demo, resellers and vendors
    # keep serving what they serve). A shut-down model named in `models` is served either way.
    google_lifecycle: bool | None = None

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def serves(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    def serves_any(self, names: tuple[str, ...]) -> bool:
        return any(self.serves(name) for name in names)

    @property
    def follows_google_lifecycle(self) -> bool:
        if self.google_lifecycle is not None:
            return self.google_lifecycle
        host = self.base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        return self.kind == "gemini" and host == GOOGLE_API_HOST

    def keeps_shut_down(self, model: str) -> bool:
        """Whether it still serves `model` after Google shut it down."""
        return model in self.models or (self.serves(model) and not self.follows_google_lifecycle)

    @staticmethod
    def mapped(table: dict[str, str], names: tuple[str, ...]) -> str:
        """The vendor's name for a model known by `names` (its id first, then former ids)."""
        return next((table[name] for name in names if name in table), names[0])


def _default_upstreams() -> list[UpstreamConfig]:
    return [UpstreamConfig(name="demo", kind="demo")]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NANOGATE_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Processes serving on one port (`serve --workers N`): about one per core.
    workers: int = Field(default=1, ge=1, le=256)
    data_dir: Path = Path("nanogate-data")
    database_url: str | None = None
    storage_dir: Path | None = None
    # Result storage: the local directory (one node, or several sharing it), or an S3-compatible
    # bucket every node reaches. With `storage_redirect`, a file link answers 307 to a presigned
    # S3 URL, so large images do not pass through the gateway.
    storage_backend: Literal["local", "s3"] = "local"
    storage_redirect: bool = False
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_path_style: bool = False
    s3_prefix: str = "nanogate/"
    upstreams: list[UpstreamConfig] = Field(default_factory=_default_upstreams)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Text models the catalog does not list, where an upstream lists them, and their prices
    # (credits per 1M tokens by modality, as in the catalog).
    allow_unlisted_models: bool = False
    unlisted_model_prices: dict[str, int] | None = None
    max_request_bytes: int = Field(default=20 * MiB, ge=1024)
    key_cache_seconds: float = Field(default=10.0, ge=0)
    starter_credits: int = Field(default=10_000_000, ge=0)
    usage_flush_seconds: float = Field(default=1.0, gt=0)
    metering: bool = True
    charge_blocked_prompts: bool = False
    reservation_ttl_seconds: float = Field(default=3600.0, ge=60)
    # What a call holds (billing/ledger.py): "fair" holds its certain cost plus an output
    # allowance; "worst_case" the most it could cost. Accounts may override it.
    hold_policy: Literal["fair", "worst_case"] = "fair"
    # Under "fair": calls an account whose balance cannot cover their worst case runs at once;
    # what can be written off is bounded by this many calls. Further calls wait for one to end.
    uncovered_calls_per_account: int = Field(default=4, ge=1, le=1000)
    hold_wait_seconds: float = Field(default=30.0, ge=0)
    node_id: str | None = None
    # Cluster mode: per-key limits and the failed-authentication count shared by every node
    # through Redis (without it, each node counts its own; a single node needs none). Every
    # Redis call gives up after redis_timeout_seconds; while Redis is down each node applies the
    # limits on its own. A node renews its concurrency slots' leases every third of
    # concurrency_lease_seconds, so a dead node's slots come back after it.
    redis_url: str | None = None
    redis_key_prefix: str = "nanogate:"
    redis_timeout_seconds: float = Field(default=0.25, gt=0, le=5)
    concurrency_lease_seconds: float = Field(default=30.0, ge=3)
    # Unknown keys one client address may send a minute before it gets 429 (0: no limit).
    # Its address is the peer's, or behind a proxy listed in trusted_proxies (addresses or
    # networks), the one the nearest untrusted hop in X-Forwarded-For gives.
    auth_failures_per_minute: int = Field(default=30, ge=0)
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)
    # Tasks, stored results, callbacks and the egress guard (the task API).
    public_base_url: str | None = None
    result_ttl_hours: float = Field(default=24.0, gt=0)
    egress_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    callback_secret: SecretStr | None = None
    callback_timeout_seconds: float = Field(default=10.0, gt=0)
    callback_retry_seconds: float = Field(default=3600.0, gt=0)
    task_workers: int = Field(default=16, ge=0)
    # The console: how long a login lasts, and how it shows credits as money: an ISO code
    # (USD shows as $, EUR as €) or any symbol, at `credits_per_unit` credits to one unit.
    console_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    currency: str = Field(default="USD", min_length=1, max_length=8, pattern=r"^\S(.*\S)?$")
    credits_per_unit: int = Field(default=1_000_000, ge=1)
    task_lease_seconds: float = Field(default=30.0, ge=1)
    task_timeout_seconds: float = Field(default=900.0, ge=10)
    task_max_attempts: int = Field(default=3, ge=1)
    image_url_max_bytes: int = Field(default=20 * MiB, ge=1024)
    image_url_timeout_seconds: float = Field(default=30.0, gt=0)
    image_max_pixels: int = Field(default=50_000_000, ge=1)
    # n > 1 on an image model runs n upstream calls at once; at most this many per request.
    max_images_per_request: int = Field(default=4, ge=1, le=16)
    idempotency_wait_seconds: float = Field(default=300.0, ge=0)
    # A running call's hold on its Idempotency-Key, renewed every third of it by its node: a
    # node gone for good frees its keys after this.
    idempotency_lease_seconds: float = Field(default=60.0, ge=3)
    # Each call's routing budget: upstream attempts at most, and one deadline across them.
    max_attempts: int = Field(default=3, ge=1)
    request_deadline_seconds: float = Field(default=600.0, gt=0)
    # A stream's bounds (core/pace.py): the whole call, admission to last byte, and the rate
    # below which an upstream that drips bytes is cut, after falling the grace behind it.
    stream_deadline_seconds: float = Field(default=600.0, gt=0)
    stream_min_bytes_per_second: float = Field(default=64.0, ge=0)
    stream_rate_grace_seconds: float = Field(default=60.0, ge=0)
    # SIGTERM: /readyz answers 503 at once and the listener stays open `drain_delay_seconds`
    # (at most the grace) for load balancers that poll it; requests in flight get
    # `shutdown_grace_seconds` from the signal to finish, then are cut and refunded.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    drain_delay_seconds: float = Field(default=2.0, ge=0)
    maintenance: bool = False
    disabled_features: Annotated[list[Feature], NoDecode] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @field_validator("egress_allowlist", "disabled_features", "trusted_proxies", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        # The environment spells lists as "a,b,c"; YAML as a real list.
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("unlisted_model_prices")
    @classmethod
    def _known_modalities(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        from nanogate.core.catalog import MODALITIES

        unknown = sorted(set(value or {}) - set(MODALITIES))
        if unknown:
            raise ValueError(
                f"unknown token kinds {', '.join(unknown)}; use {', '.join(MODALITIES)}"
            )
        return value

    @model_validator(mode="after")
    def _unlisted_need_prices(self) -> Settings:
        if self.allow_unlisted_models and self.metering and self.unlisted_model_prices is None:
            raise ValueError(
                "allow_unlisted_models needs unlisted_model_prices while metering is on: set "
                "unlisted_model_prices (credits per 1M tokens, e.g. {input_text: 300000, "
                "output_text: 2500000}) or metering: false"
            )
        return self

    @model_validator(mode="after")
    def _storage_complete(self) -> Settings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError(
                "storage_backend s3 needs s3_bucket (NANOGATE_S3_BUCKET): the bucket results "
                "are kept in"
            )
        if self.storage_backend == "s3" and importlib.util.find_spec("aiobotocore") is None:
            raise ValueError(
                "storage_backend s3 needs the S3 client, an optional extra: "
                "pip install 'nanogate[s3]'"
            )
        if self.storage_redirect and self.storage_backend != "s3":
            raise ValueError(
                "storage_redirect needs storage_backend s3: the local backend has no presigned "
                "URLs to redirect to"
            )
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(
                "set s3_access_key_id and s3_secret_access_key together, or neither (then the "
                "usual AWS credential chain applies: AWS_* variables, profile, instance role)"
            )
        return self

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "redis_url must start with redis://, rediss:// (TLS) or unix:// "
                "(e.g. redis://127.0.0.1:6379/0)"
            )
        return value or None

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        # Keys are `<prefix><shard>/<digest>.<ext>`: a prefix names a folder, never a stem.
        value = value.strip("/")
        return f"{value}/" if value else ""

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    @property
    def resolved_public_base_url(self) -> str:
        """What result URLs start with: the operator's public address, or the listen address."""
        if self.public_base_url:
            return self.public_base_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'nanogate.db').resolve()}"

    @property
    def resolved_node_id(self) -> str:
        """Names this process's reservations, so a restart can close the ones it left."""
        return self.node_id or f"{socket.gethostname()}:{self.port}"

    @property
    def resolved_storage_dir(self) -> Path:
        return self.storage_dir or self.data_dir / "storage"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("NANOGATE_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings; `config_file` (or NANOGATE_CONFIG) names the YAML file."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        os.environ["NANOGATE_CONFIG"] = str(path.resolve())
    return Settings(**overrides)


def settings_problems(exc: ValidationError) -> str:
    """The first few mistakes in the settings, one line: where each is, and what is wrong."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: "
        f"{err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()[:5]
    )
