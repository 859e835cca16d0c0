"""What a call to a model name does, given where the model is in Google's lifecycle. Pure.

- A name whose model is shut down (`status: shut_down`, or its `shutdown_date` has come) and
  whose replacement is the same model under a new name runs on the replacement: the upstream
  gets the new name, and the answer carries a Warning naming both and the date.
- A shut-down model whose replacement is a different model is never swapped in silently. Only
  upstreams that still serve it may take the call (`UpstreamConfig.keeps_shut_down`); with none,
  the answer is a 404 naming the date and the replacement. The operator may opt in to the switch
  (`switch_to_replacement: true`), and the call is then priced as the replacement.
- A deprecated model runs as it is, with a Warning.

"Today" is the UTC date by default; every function takes it as an argument, so tests pin it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from nanogate.core.catalog import Catalog, ModelSpec, Status
from nanogate.core.errors import NotFound


def today() -> date:
    return datetime.now(UTC).date()


def state(spec: ModelSpec, on: date) -> Status:
    """The model's status on `on`: a passed shutdown date makes it shut down."""
    if spec.shutdown_date is not None and spec.shutdown_date <= on:
        return "shut_down"
    return spec.status


def switches(spec: ModelSpec) -> bool:
    """Whether calls run on the replacement once the model is shut down."""
    replacement = spec.replacement
    return replacement is not None and (replacement.same_model or spec.switch_to_replacement)


@dataclass(frozen=True, slots=True)
class Resolution:
    requested: str  # the name the client sent, without "models/": an id or an alias
    spec: ModelSpec  # what the call runs as; its name is what upstreams get
    warnings: tuple[str, ...] = ()
    # Shut down and replaced by a different model: only upstreams that still serve it may
    # take the call.
    shut_down: bool = False

    @property
    def warning_header(self) -> str | None:
        """The value of the HTTP Warning header (RFC 7234's 299, "miscellaneous persistent")."""
        if not self.warnings:
            return None
        return ", ".join(f'299 - "{text}"' for text in self.warnings)


def resolve(catalog: Catalog, name: str, on: date) -> Resolution:
    """Map a client's model name to what the call runs as on `on` (raises NotFound if unknown)."""
    requested = name.removeprefix("models/")
    spec = catalog.resolve(requested)
    warnings: list[str] = []
    seen = {spec.name}
    while True:
        status = state(spec, on)
        replacement = spec.replacement
        if status == "shut_down":
            if replacement is None or not switches(spec):
                warnings.append(_served_anyway(spec))
                return Resolution(requested, spec, tuple(warnings), shut_down=True)
            target = catalog.models[replacement.model]
            warnings.append(_switched(spec, target))
            if target.name in seen:  # a loop the operator's overrides made: stop on it
                return Resolution(requested, target, tuple(warnings))
            seen.add(target.name)
            spec = target
            continue
        if status == "deprecated":
            warnings.append(_deprecated(spec))
        return Resolution(requested, spec, tuple(warnings))


def not_served(spec: ModelSpec) -> NotFound:
    """The 404 for a shut-down model no upstream of this gateway still serves."""
    when = f" on {spec.shutdown_date.isoformat()}" if spec.shutdown_date else ""
    text = (
        f"Model '{spec.name}' was shut down{when}, and no upstream of this gateway still serves it."
    )
    replacement = spec.replacement
    if replacement is not None:
        text += (
            f" Its replacement is '{replacement.model}'"
            + ("" if replacement.same_model else ", a different model with its own prices")
            + f": send model '{replacement.model}'"
            + (
                "."
                if replacement.same_model
                else ", or ask the operator to switch the old name to it "
                "(switch_to_replacement in the gateway's config)."
            )
        )
    return NotFound(text)


def callable_specs(catalog: Iterable[ModelSpec], on: date) -> list[ModelSpec]:
    """The models a client may pick on `on`: none that is shut down."""
    return [spec for spec in catalog if state(spec, on) != "shut_down"]


def default_image_model(catalog: Iterable[ModelSpec], on: date) -> ModelSpec | None:
    """The first image model that is neither deprecated nor shut down (else the first image
    model still callable): the OpenAI images endpoints' default."""
    images = [spec for spec in callable_specs(catalog, on) if spec.is_image]
    current = [spec for spec in images if state(spec, on) in ("ga", "preview")]
    return next(iter(current or images), None)


# Warning texts: ASCII only and no double quotes, so they fit a quoted-string as they are.


def _when(spec: ModelSpec) -> str:
    return f" on {spec.shutdown_date.isoformat()}" if spec.shutdown_date else ""


def _switched(spec: ModelSpec, target: ModelSpec) -> str:
    assert spec.replacement is not None
    if spec.replacement.same_model:
        return (
            f"{spec.name} was shut down{_when(spec)}; this call ran on {target.name}, "
            f"the same model under its current name. Send {target.name} instead."
        )
    return (
        f"{spec.name} was shut down{_when(spec)}; this gateway runs it on {target.name}, "
        f"a different model, at {target.name}'s prices. Send {target.name} instead."
    )


def _served_anyway(spec: ModelSpec) -> str:
    text = f"{spec.name} was shut down{_when(spec)}; this gateway's upstream still serves it."
    if spec.replacement is not None:
        text += f" Its replacement is {spec.replacement.model}, a different model."
    return text


def _deprecated(spec: ModelSpec) -> str:
    text = f"{spec.name} is deprecated"
    if spec.shutdown_date is not None:
        text += f" and shuts down on {spec.shutdown_date.isoformat()}"
    if spec.replacement is not None:
        kind = "the same model" if spec.replacement.same_model else "a different model"
        text += f"; its replacement is {spec.replacement.model} ({kind})"
    return text + "."
