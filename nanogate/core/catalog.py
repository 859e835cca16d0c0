"""The model catalog: loaded once from the shipped data file, extended by the operator's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from typing import Any, Literal, cast

import yaml

from nanogate.core.errors import NotFound

MODALITIES = ("input_text", "input_image", "output_text", "output_image", "thoughts")
Status = Literal["preview", "ga", "deprecated", "shut_down"]
STATUSES: tuple[Status, ...] = ("preview", "ga", "deprecated", "shut_down")
# The output-text allowance a call holds when it sets no maxOutputTokens, where the catalog
# entry gives none: an image model's text is a caption, a text model's an answer.
HOLD_OUTPUT_TOKENS = {"image": 256, "text": 4096}
# What an entry that is the same model as its replacement does not take from it.
_OWN_FIELDS = frozenset(
    {"aliases", "edit_aliases", "display_name", "status", "shutdown_date", "replacement"}
)


class CatalogError(ValueError):
    """The catalog (shipped, or as the operator's `models:` changed it) does not hold together."""


@dataclass(frozen=True, slots=True)
class Replacement:
    """What Google names as a model's successor. `same_model`: the same model under a new name
    (a preview that went GA at the same price), so calls may run on it unchanged."""

    model: str
    same_model: bool = False


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    display_name: str
    kind: str  # "image" or "text"
    aliases: tuple[str, ...] = ()
    # Aliases that name an edit of this model: a task for one must carry input images.
    edit_aliases: tuple[str, ...] = ()
    input_token_limit: int = 32768
    output_token_limit: int = 8192
    max_input_images: int = 16
    input_image_tokens: int = 258
    input_mime_types: frozenset[str] = frozenset()
    image_sizes: tuple[str, ...] = ()
    default_image_size: str = "1K"
    output_image_tokens: dict[str, int] = field(default_factory=dict)
    prices: dict[str, int] = field(default_factory=dict)
    # Optional flat credits per output image, by size tier, instead of its tokens.
    image_prices: dict[str, int] = field(default_factory=dict)
    # imageSize -> aspectRatio -> (width, height)
    pixels: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    # The output-text allowance a call holds when it sets no generationConfig.maxOutputTokens.
    hold_output_tokens: int = HOLD_OUTPUT_TOKENS["text"]
    # Lifecycle, as Google publishes it (see lifecycle.py for what a call does with it).
    status: Status = "ga"
    shutdown_date: date | None = None
    replacement: Replacement | None = None
    # The operator's choice: once shut down, run calls on a different replacement model.
    switch_to_replacement: bool = False
    # Shut-down names of this same model (its preview ids): an upstream's `models` or
    # `model_map` written for them still applies to it.
    former_names: tuple[str, ...] = ()
    # Not in the catalog: a text model an upstream lists, let through by allow_unlisted_models.
    unlisted: bool = False

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def names(self) -> tuple[str, ...]:
        """Its id, then the shut-down ids of the same model (for upstream config written for
        those)."""
        return (self.name, *self.former_names)

    @property
    def aspect_ratios(self) -> tuple[str, ...]:
        tier = self.pixels.get(self.default_image_size) or {}
        return tuple(tier)

    def image_pixels(self, aspect_ratio: str | None, image_size: str | None) -> tuple[int, int]:
        """Exact output size for a validated request (1:1 and the default tier when unset)."""
        tier = self.pixels[image_size or self.default_image_size]
        return tier[aspect_ratio or "1:1"]

    def image_tokens(self, image_size: str | None) -> int:
        return self.output_image_tokens.get(image_size or self.default_image_size, 0)


class Catalog:
    def __init__(self, models: dict[str, ModelSpec]) -> None:
        self.models = models
        self._by_name: dict[str, ModelSpec] = {}
        for spec in models.values():
            self._by_name[spec.name] = spec
            for alias in (*spec.aliases, *spec.edit_aliases):
                self._by_name[alias] = spec
        self._edits = {alias for spec in models.values() for alias in spec.edit_aliases}

    def resolve(self, name: str) -> ModelSpec:
        """Map a client's model name (with or without `models/`, or an alias) to its spec."""
        key = name.removeprefix("models/")
        spec = self._by_name.get(key)
        if spec is None:
            raise unknown_model(key)
        return spec

    def is_edit(self, name: str) -> bool:
        """Whether `name` is an edit alias (e.g. google/nano-banana-edit): input images needed."""
        return name.removeprefix("models/") in self._edits

    def get(self, name: str) -> ModelSpec | None:
        return self._by_name.get(name.removeprefix("models/"))

    def __iter__(self) -> Any:
        return iter(self.models.values())


def unknown_model(name: str) -> NotFound:
    """The 404 for a model name this gateway does not serve."""
    name = name.removeprefix("models/")
    # Echo a bounded name: a client's junk (or pasted base64) stays out of the error.
    shown = name if len(name) <= 60 else name[:40] + "..."
    return NotFound(
        f"Model '{shown}' is not served by this gateway. "
        "GET /v1beta/models (or /v1/models) lists the models you can call; the operator "
        "can add one under `models:` in the gateway's config file."
    )


def _parse_pixels(raw: dict[str, dict[str, str]]) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for size, ratios in raw.items():
        tier: dict[str, tuple[int, int]] = {}
        for ratio, dims in ratios.items():
            width, height = (int(v) for v in str(dims).lower().split("x"))
            tier[str(ratio)] = (width, height)
        out[str(size)] = tier
    return out


def parse_prices(raw_prices: dict[str, Any]) -> dict[str, int]:
    """Credits per million tokens by modality; thinking is billed as output text unless given."""
    prices = {m: int(raw_prices.get(m, 0)) for m in MODALITIES}
    if "thoughts" not in raw_prices:
        prices["thoughts"] = prices["output_text"]
    return prices


def _replacement(name: str, raw: Any) -> Replacement | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return Replacement(raw)
    if isinstance(raw, dict) and isinstance(raw.get("model"), str):
        return Replacement(raw["model"], bool(raw.get("same_model", False)))
    raise CatalogError(f"{name}: replacement must be {{model: NAME, same_model: true|false}}")


def _date(name: str, raw: Any) -> date | None:
    if raw is None or isinstance(raw, date):
        return raw
    try:
        return date.fromisoformat(str(raw))
    except ValueError:
        raise CatalogError(f"{name}: shutdown_date must be YYYY-MM-DD, not {raw!r}") from None


def _build_spec(
    name: str, raw: dict[str, Any], defaults: dict[str, Any], former: tuple[str, ...]
) -> ModelSpec:
    merged = {**defaults, **raw}
    status = merged.get("status", "ga")
    if status not in STATUSES:
        raise CatalogError(f"{name}: status must be one of {', '.join(STATUSES)}, not {status!r}")
    kind = str(merged.get("kind", "text"))
    return ModelSpec(
        name=name,
        display_name=str(merged.get("display_name", name)),
        kind=kind,
        aliases=tuple(str(a) for a in merged.get("aliases", ())),
        edit_aliases=tuple(str(a) for a in merged.get("edit_aliases", ())),
        input_token_limit=int(merged.get("input_token_limit", 32768)),
        output_token_limit=int(merged.get("output_token_limit", 8192)),
        max_input_images=int(merged.get("max_input_images", 16)),
        input_image_tokens=int(merged.get("input_image_tokens", 258)),
        input_mime_types=frozenset(str(m) for m in merged.get("input_mime_types", ())),
        image_sizes=tuple(str(s) for s in merged.get("image_sizes", ())),
        default_image_size=str(merged.get("default_image_size", "1K")),
        output_image_tokens={
            str(k): int(v) for k, v in merged.get("output_image_tokens", {}).items()
        },
        prices=parse_prices(merged.get("prices") or {}),
        image_prices={str(k): int(v) for k, v in (merged.get("image_prices") or {}).items()},
        pixels=_parse_pixels(merged.get("pixels", {})),
        hold_output_tokens=int(
            merged.get(
                "hold_output_tokens", HOLD_OUTPUT_TOKENS.get(kind, HOLD_OUTPUT_TOKENS["text"])
            )
        ),
        status=cast(Status, status),
        shutdown_date=_date(name, merged.get("shutdown_date")),
        replacement=_replacement(name, merged.get("replacement")),
        switch_to_replacement=bool(merged.get("switch_to_replacement", False)),
        former_names=former,
    )


def _inherit(raw_models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """An entry that is the same model as its replacement takes the replacement's figures it
    does not give itself (pixels, prices, limits), so a preview id need not repeat them."""
    out: dict[str, dict[str, Any]] = {}

    def full(name: str, seen: tuple[str, ...]) -> dict[str, Any]:
        if name in out:
            return out[name]
        raw = raw_models[name]
        rep = _replacement(name, raw.get("replacement"))
        merged = dict(raw)
        if rep is not None:
            if rep.model not in raw_models:
                raise CatalogError(f"{name}: its replacement {rep.model!r} is not in the catalog")
            if rep.same_model:
                if rep.model in seen:
                    raise CatalogError(f"{name}: replacements go round in a circle")
                inherited = full(rep.model, (*seen, name))
                merged = {k: v for k, v in inherited.items() if k not in _OWN_FIELDS} | raw
        out[name] = merged
        return merged

    for name in raw_models:
        full(name, ())
    return out


def load_catalog(overrides: dict[str, dict[str, Any]] | None = None) -> Catalog:
    """Read the shipped catalog, then apply the operator's per-model overrides or additions.

    An override is merged key by key over the shipped entry, so `{prices: {...}}` alone keeps the
    model's pixel tables; a name that is not shipped adds a new model.
    """
    text = resources.files("nanogate").joinpath("data/catalog.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    defaults: dict[str, Any] = data.get("defaults", {})
    raw_models: dict[str, dict[str, Any]] = dict(data["models"])
    for name, override in (overrides or {}).items():
        if override is not None and not isinstance(override, dict):
            raise CatalogError(f"{name}: must be a mapping of fields, e.g. {{prices: {{...}}}}")
        base = dict(raw_models.get(name, {}))
        for key, value in (override or {}).items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        raw_models[name] = base
    raw_models = _inherit(raw_models)
    former: dict[str, list[str]] = {}
    for name, raw in raw_models.items():
        rep = _replacement(name, raw.get("replacement"))
        if rep is not None and rep.same_model:
            former.setdefault(rep.model, []).append(name)
    return Catalog(
        {
            name: _checked(name, raw, defaults, tuple(former.get(name, ())))
            for name, raw in raw_models.items()
        }
    )


# The least each figure may be: a model that takes no tokens, or a negative price, is a typo.
_AT_LEAST = {
    "input_token_limit": 1,
    "output_token_limit": 1,
    "max_input_images": 0,
    "input_image_tokens": 0,
    "hold_output_tokens": 1,
}


def _checked(
    name: str, raw: dict[str, Any], defaults: dict[str, Any], former: tuple[str, ...]
) -> ModelSpec:
    """`_build_spec`, with a wrong type or an impossible figure named as a CatalogError."""
    try:
        spec = _build_spec(name, raw, defaults, former)
    except (TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, CatalogError):
            raise
        raise CatalogError(f"{name}: a field has the wrong type ({exc})") from None
    for figure, least in _AT_LEAST.items():
        value = getattr(spec, figure)
        if value < least:
            raise CatalogError(f"{name}: {figure} must be at least {least}, not {value}")
    money = [*spec.prices.values(), *spec.image_prices.values()]
    if any(price < 0 for price in money):
        raise CatalogError(f"{name}: prices cannot be negative")
    return spec
