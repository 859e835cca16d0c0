"""The model catalog: loaded once from the shipped data file, extended by the operator's config."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from .errors import NotFound

MODALITIES = ("input_text", "input_image", "output_text", "output_image", "thoughts")


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
    # The output text a call holds credits for when it sets no maxOutputTokens (see
    # billing/prices.py `quote`): a caption for image models, a few thousand for text.
    hold_output_tokens: int = 4096
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

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

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
            # Echo a bounded name: a client's junk (or pasted base64) stays out of the error.
            shown = key if len(key) <= 60 else key[:40] + "..."
            raise NotFound(
                f"Model '{shown}' is not served by this gateway. "
                "GET /v1beta/models (or /v1/models) lists the models you can call."
            )
        return spec

    def is_edit(self, name: str) -> bool:
        """Whether `name` is an edit alias (e.g. google/nano-banana-edit): input images needed."""
        return name.removeprefix("models/") in self._edits

    def get(self, name: str) -> ModelSpec | None:
        return self._by_name.get(name.removeprefix("models/"))

    def __iter__(self) -> Any:
        return iter(self.models.values())


def _parse_pixels(raw: dict[str, dict[str, str]]) -> dict[str, dict[str, tuple[int, int]]]:
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for size, ratios in raw.items():
        tier: dict[str, tuple[int, int]] = {}
        for ratio, dims in ratios.items():
            width, height = (int(v) for v in str(dims).lower().split("x"))
            tier[str(ratio)] = (width, height)
        out[str(size)] = tier
    return out


def _build_spec(name: str, raw: dict[str, Any], defaults: dict[str, Any]) -> ModelSpec:
    merged = {**defaults, **raw}
    raw_prices = merged.get("prices") or {}
    prices = {m: int(raw_prices.get(m, 0)) for m in MODALITIES}
    if "thoughts" not in raw_prices:
        prices["thoughts"] = prices["output_text"]  # thinking is billed as output text
    return ModelSpec(
        name=name,
        display_name=str(merged.get("display_name", name)),
        kind=str(merged.get("kind", "text")),
        aliases=tuple(str(a) for a in merged.get("aliases", ())),
        edit_aliases=tuple(str(a) for a in merged.get("edit_aliases", ())),
        input_token_limit=int(merged.get("input_token_limit", 32768)),
        output_token_limit=int(merged.get("output_token_limit", 8192)),
        hold_output_tokens=int(merged.get("hold_output_tokens", 4096)),
        max_input_images=int(merged.get("max_input_images", 16)),
        input_image_tokens=int(merged.get("input_image_tokens", 258)),
        input_mime_types=frozenset(str(m) for m in merged.get("input_mime_types", ())),
        image_sizes=tuple(str(s) for s in merged.get("image_sizes", ())),
        default_image_size=str(merged.get("default_image_size", "1K")),
        output_image_tokens={
            str(k): int(v) for k, v in merged.get("output_image_tokens", {}).items()
        },
        prices=prices,
        image_prices={str(k): int(v) for k, v in (merged.get("image_prices") or {}).items()},
        pixels=_parse_pixels(merged.get("pixels", {})),
    )


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
        base = dict(raw_models.get(name, {}))
        for key, value in (override or {}).items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        raw_models[name] = base
    return Catalog({name: _build_spec(name, raw, defaults) for name, raw in raw_models.items()})
