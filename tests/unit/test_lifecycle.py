"""Model lifecycle as data: catalog loading, what a call to a name runs as on a given day, and
which upstreams still serve a shut-down model. Pure: every date is passed in."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydantic import ValidationError

from nanogate.core import lifecycle
from nanogate.core.catalog import CatalogError, load_catalog
from nanogate.core.config import UpstreamConfig, load_settings
from nanogate.core.errors import NotFound

TODAY = date(2026, 12, 4)
BEFORE_PREVIEW_SHUTDOWN = date(2026, 6, 1)
CATALOG = load_catalog()


def test_current_image_ids_have_their_own_tables() -> None:
    pro = CATALOG.resolve("gemini-3-pro-image")
    assert pro.status == "ga" and pro.image_pixels("1:1", "4K") == (4096, 4096)
    assert [pro.image_tokens(s) for s in ("1K", "2K", "4K")] == [1120, 1120, 2000]
    assert pro.prices["output_image"] == 120_000_000  # $120 / 1M, Google's pricing page
    flash = CATALOG.resolve("gemini-3.1-flash-image")
    assert flash.image_sizes == ("512", "1K", "2K", "4K")
    assert flash.image_pixels("8:1", "4K") == (12288, 1536)
    lite = CATALOG.resolve("gemini-3.1-flash-lite-image")
    assert lite.image_sizes == ("1K",) and lite.output_token_limit == 4096
    assert "1:4" not in lite.aspect_ratios and lite.image_pixels("16:9", None) == (1376, 768)
    v21 = CATALOG.resolve("gemini-nano-banana-2.1")
    assert "512" not in v21.image_sizes and {"1:8", "8:1"} <= set(v21.aspect_ratios)


def test_a_preview_id_takes_its_replacements_figures() -> None:
    preview = CATALOG.resolve("gemini-3-pro-image-preview")
    ga = CATALOG.resolve("gemini-3-pro-image")
    assert preview.name == "gemini-3-pro-image-preview" and preview.kind == "image"
    assert preview.pixels == ga.pixels and preview.prices == ga.prices
    assert preview.aliases == ()  # the aliases stay on the GA id
    assert preview.shutdown_date == date(2026, 6, 25)
    assert preview.replacement is not None and preview.replacement.same_model
    assert ga.former_names == ("gemini-3-pro-image-preview",)
    assert ga.names == ("gemini-3-pro-image", "gemini-3-pro-image-preview")


def test_hold_output_tokens_per_model_and_by_kind() -> None:
    assert CATALOG.resolve("gemini-2.5-flash-image").hold_output_tokens == 256
    assert CATALOG.resolve("gemini-3-pro-image").hold_output_tokens == 1024
    assert CATALOG.resolve("gemini-3.8-flash").hold_output_tokens == 4096
    added = load_catalog(
        {"my-image": {"kind": "image", "pixels": {"1K": {"1:1": "1024x1024"}}}, "my-text": {}}
    )
    assert added.resolve("my-image").hold_output_tokens == 256
    assert added.resolve("my-text").hold_output_tokens == 4096


def test_status_follows_the_shutdown_date() -> None:
    preview = CATALOG.resolve("gemini-3-pro-image-preview")
    assert lifecycle.state(preview, BEFORE_PREVIEW_SHUTDOWN) == "deprecated"
    assert lifecycle.state(preview, date(2026, 6, 25)) == "shut_down"
    flash = CATALOG.resolve("gemini-2.5-flash")
    assert lifecycle.state(flash, date(2026, 11, 30)) == "deprecated"
    assert lifecycle.state(flash, TODAY) == "shut_down"
    # A GA model with a planned retirement is not deprecated before it.
    lite = CATALOG.resolve("gemini-3.1-flash-lite")
    assert lifecycle.state(lite, TODAY) == "ga"
    assert lifecycle.state(lite, date(2027, 5, 7)) == "shut_down"
    explicit = load_catalog({"gemini-3.8-flash": {"status": "shut_down"}})
    assert lifecycle.state(explicit.resolve("gemini-3.8-flash"), TODAY) == "shut_down"


def test_a_shut_down_preview_runs_on_its_ga_id_with_a_warning() -> None:
    found = lifecycle.resolve(CATALOG, "models/gemini-3-pro-image-preview", TODAY)
    assert found.requested == "gemini-3-pro-image-preview"
    assert found.spec.name == "gemini-3-pro-image" and not found.shut_down
    header = found.warning_header
    assert header is not None and header.startswith('299 - "') and header.endswith('"')
    assert "gemini-3-pro-image-preview" in header and "gemini-3-pro-image," in header
    assert "2026-06-25" in header and header.isascii()
    assert header.count('"') == 2  # one quoted-string: the text itself has no quotes


def test_before_its_date_a_deprecated_preview_runs_as_itself() -> None:
    found = lifecycle.resolve(CATALOG, "gemini-3-pro-image-preview", BEFORE_PREVIEW_SHUTDOWN)
    assert found.spec.name == "gemini-3-pro-image-preview" and not found.shut_down
    (warning,) = found.warnings
    assert "deprecated" in warning and "2026-06-25" in warning
    assert "gemini-3-pro-image (the same model)" in warning


def test_warnings_add_up_along_the_way() -> None:
    # The Nano Banana 2 preview runs on its GA id, which is itself deprecated.
    found = lifecycle.resolve(CATALOG, "gemini-3.1-flash-image-preview", TODAY)
    assert found.spec.name == "gemini-3.1-flash-image"
    first, second = found.warnings
    assert "gemini-3.1-flash-image-preview was shut down on 2026-06-25" in first
    assert "gemini-3.1-flash-image is deprecated" in second and "gemini-nano-banana-2.1" in second
    assert found.warning_header is not None and found.warning_header.count("299 -") == 2


def test_aliases_resolve_to_ga_ids_without_a_warning() -> None:
    for alias in ("nano-banana-pro", "google/nano-banana-pro"):
        found = lifecycle.resolve(CATALOG, alias, TODAY)
        assert found.spec.name == "gemini-3-pro-image" and found.warnings == ()
        assert found.requested == alias
    assert lifecycle.resolve(CATALOG, "nano-banana-2", TODAY).spec.name == "gemini-3.1-flash-image"
    assert lifecycle.resolve(CATALOG, "gemini-3.8-flash", TODAY).warning_header is None


def test_a_different_replacement_is_never_swapped_in() -> None:
    found = lifecycle.resolve(CATALOG, "gemini-2.5-flash", TODAY)
    assert found.spec.name == "gemini-2.5-flash" and found.shut_down
    error = lifecycle.not_served(found.spec)
    assert isinstance(error, NotFound) and error.status == 404
    assert "2026-12-01" in error.message and "gemini-3.5-flash-lite" in error.message
    assert "switch_to_replacement" in error.message
    # The day before, it is only deprecated.
    before = lifecycle.resolve(CATALOG, "gemini-2.5-flash", date(2026, 11, 30))
    assert before.spec.name == "gemini-2.5-flash" and not before.shut_down
    assert "shuts down on 2026-12-01" in before.warnings[0]


def test_the_operator_may_switch_to_a_different_replacement() -> None:
    catalog = load_catalog({"gemini-2.5-flash": {"switch_to_replacement": True}})
    found = lifecycle.resolve(catalog, "gemini-2.5-flash", TODAY)
    assert found.spec.name == "gemini-3.5-flash-lite" and not found.shut_down
    assert found.spec.prices["output_text"] == 2_500_000  # the replacement's prices
    assert "a different model" in found.warnings[0] and "prices" in found.warnings[0]


def test_callable_models_and_the_default_image_model() -> None:
    names = {spec.name for spec in lifecycle.callable_specs(CATALOG, TODAY)}
    assert "gemini-3-pro-image-preview" not in names and "gemini-2.5-flash" not in names
    assert {"gemini-3-pro-image", "gemini-2.5-flash-image", "gemini-3.8-flash"} <= names
    default = lifecycle.default_image_model(CATALOG, TODAY)
    assert default is not None and default.name == "gemini-3-pro-image"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"gemini-3.8-flash": {"replacement": {"model": "gemini-99"}}}, "not in the catalog"),
        ({"gemini-3.8-flash": {"status": "retired"}}, "status must be one of"),
        ({"gemini-3.8-flash": {"shutdown_date": "next week"}}, "YYYY-MM-DD"),
        ({"gemini-3.8-flash": {"replacement": 7}}, "replacement must be"),
        (
            {
                "a": {"replacement": {"model": "b", "same_model": True}},
                "b": {"replacement": {"model": "a", "same_model": True}},
            },
            "circle",
        ),
    ],
)
def test_a_catalog_that_does_not_hold_together_is_refused(
    override: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(CatalogError, match=message):
        load_catalog(override)


def test_which_upstreams_still_serve_a_shut_down_model() -> None:
    google = UpstreamConfig(name="google", kind="gemini")
    assert google.follows_google_lifecycle and not google.keeps_shut_down("gemini-2.5-flash")
    # Named in `models`, it is served whatever Google did.
    listed = UpstreamConfig(name="g", kind="gemini", models=["gemini-2.5-flash"])
    assert listed.keeps_shut_down("gemini-2.5-flash")
    reseller = UpstreamConfig(name="r", kind="gemini", base_url="https://api.reseller.example")
    assert not reseller.follows_google_lifecycle and reseller.keeps_shut_down("gemini-2.5-flash")
    marked = UpstreamConfig(
        name="m", kind="gemini", base_url="http://127.0.0.1:9", google_lifecycle=True
    )
    assert not marked.keeps_shut_down("gemini-2.5-flash")
    for kind in ("demo", "task", "openai"):
        assert UpstreamConfig(name=kind, kind=kind).keeps_shut_down("gemini-2.5-flash")  # type: ignore[arg-type]
    only_images = UpstreamConfig(name="i", kind="demo", models=["gemini-3-pro-image"])
    assert not only_images.keeps_shut_down("gemini-2.5-flash")  # it never served it


def test_upstream_names_written_for_a_preview_id_still_apply() -> None:
    ga = CATALOG.resolve("gemini-3-pro-image")
    table = {"gemini-3-pro-image-preview": "nano-banana-pro"}
    assert UpstreamConfig.mapped(table, ga.names) == "nano-banana-pro"
    assert UpstreamConfig.mapped({"gemini-3-pro-image": "pro"}, ga.names) == "pro"
    assert UpstreamConfig.mapped({}, ga.names) == "gemini-3-pro-image"
    vendor = UpstreamConfig(name="v", kind="task", models=["gemini-3-pro-image-preview"])
    assert vendor.serves_any(ga.names) and not vendor.serves("gemini-3-pro-image")


def test_unlisted_models_need_prices_while_metering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_settings points NANOGATE_CONFIG at the file: restored afterwards, so the invalid
    # file written last does not reach every later test's Settings().
    monkeypatch.setenv("NANOGATE_CONFIG", "")
    path = tmp_path / "c.yaml"
    path.write_text("allow_unlisted_models: true\n")
    with pytest.raises(ValidationError, match="unlisted_model_prices"):
        load_settings(path)
    path.write_text("allow_unlisted_models: true\nmetering: false\n")
    assert load_settings(path).allow_unlisted_models
    path.write_text(
        "allow_unlisted_models: true\nunlisted_model_prices: {input_text: 1, output_text: 2}\n"
    )
    assert load_settings(path).unlisted_model_prices == {"input_text": 1, "output_text": 2}
    path.write_text("unlisted_model_prices: {input_txt: 1}\n")
    with pytest.raises(ValidationError, match="input_txt"):
        load_settings(path)
