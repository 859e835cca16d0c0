"""Settings precedence (env over YAML over defaults) and the shipped catalog as data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from nanogate.core.catalog import CatalogError, load_catalog
from nanogate.core.config import load_settings
from nanogate.core.errors import NotFound


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NANOGATE_CONFIG", "NANOGATE_PORT", "NANOGATE_UPSTREAMS", "NANOGATE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_embedded_single_node() -> None:
    settings = load_settings()
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert [u.kind for u in settings.upstreams] == ["demo"]
    assert settings.max_request_bytes == 20 * 1024 * 1024


def test_yaml_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "port": 9000,
                "host": "0.0.0.0",
                "upstreams": [{"name": "g", "kind": "gemini", "api_key": "AIzaXYZ", "priority": 1}],
                "models": {"gemini-2.5-flash-image": {"prices": {"output_image": 1}}},
            }
        )
    )
    monkeypatch.setenv("NANOGATE_PORT", "9100")
    settings = load_settings(path)
    assert settings.port == 9100 and settings.host == "0.0.0.0"
    upstream = settings.upstreams[0]
    assert upstream.kind == "gemini" and upstream.api_key is not None
    assert "AIzaXYZ" not in repr(upstream)  # secrets stay out of reprs and logs
    assert (
        load_catalog(settings.models).resolve("gemini-2.5-flash-image").prices["output_image"] == 1
    )


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"upstreams": [{"name": "x", "kind": "carrier-pigeon"}]}))
    with pytest.raises(ValidationError):
        load_settings(path)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_catalog_matches_the_design() -> None:
    catalog = load_catalog()
    flash = catalog.resolve("gemini-2.5-flash-image")
    assert catalog.resolve("google/nano-banana") is flash
    assert catalog.resolve("gemini-2.5-flash-image-preview") is flash
    assert catalog.resolve("models/google/nano-banana-edit") is flash
    assert flash.aspect_ratios == (
        "1:1",
        "2:3",
        "3:2",
        "3:4",
        "4:3",
        "4:5",
        "5:4",
        "9:16",
        "16:9",
        "21:9",
    )
    assert flash.image_tokens(None) == 1290 and flash.image_pixels("16:9", None) == (1344, 768)
    # The task API's names are aliases of Google's GA ids (issue 15).
    pro = catalog.resolve("nano-banana-pro")
    assert pro.name == "gemini-3-pro-image" and catalog.resolve("google/nano-banana-pro") is pro
    assert [pro.image_tokens(s) for s in ("1K", "2K", "4K")] == [1120, 1120, 2000]
    assert pro.image_pixels("1:1", "4K") == (4096, 4096)
    v2 = catalog.resolve("google/nano-banana-v2")
    assert v2 is catalog.resolve("nano-banana-2") and v2.name == "gemini-3.1-flash-image"
    assert {"1:4", "4:1", "1:8", "8:1"} <= set(v2.aspect_ratios)
    assert [v2.image_tokens(s) for s in ("1K", "2K", "4K")] == [1120, 1680, 2520]
    # Every pixel table is complete: each size has every ratio, at the ratio it claims.
    for spec in catalog:
        for size, table in spec.pixels.items():
            assert set(table) == set(spec.aspect_ratios), (spec.name, size)
            for ratio, (w, h) in table.items():
                rw, rh = (int(x) for x in ratio.split(":"))
                assert abs(w / h - rw / rh) / (rw / rh) < 0.08, (spec.name, size, ratio)


def test_unknown_model() -> None:
    with pytest.raises(NotFound, match="GET /v1beta/models"):
        load_catalog().resolve("gemini-9")


def test_override_adds_a_model_and_merges_prices() -> None:
    catalog = load_catalog(
        {
            "gemini-2.5-flash-image": {"prices": {"output_image": 5}},
            "my-model": {"kind": "text", "aliases": ["mine"]},
        }
    )
    flash = catalog.resolve("gemini-2.5-flash-image")
    assert flash.prices["output_image"] == 5 and flash.prices["input_text"] == 300000
    assert flash.image_pixels("4:3", None) == (1184, 864)  # pixel table kept
    assert catalog.resolve("mine").name == "my-model"


@pytest.mark.parametrize(
    "example", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")), ids=str
)
def test_every_shipped_config_example_loads(example: Path) -> None:
    settings = load_settings(example)
    assert settings.upstreams and all(u.api_key for u in settings.upstreams)
    assert {u.kind for u in settings.upstreams} <= {"gemini", "task", "openai"}


@pytest.mark.parametrize(
    "override, says",
    [
        ({"output_token_limit": -1}, "output_token_limit must be at least 1, not -1"),
        ({"input_token_limit": 0}, "input_token_limit must be at least 1"),
        ({"prices": {"input_text": -3}}, "prices cannot be negative"),
        ({"prices": "cheap"}, "a field has the wrong type"),
        ({"output_token_limit": "lots"}, "a field has the wrong type"),
        ("cheap", "must be a mapping of fields"),
    ],
)
def test_impossible_model_overrides_are_refused_by_name(override: object, says: str) -> None:
    with pytest.raises(CatalogError) as refused:
        load_catalog({"gemini-2.5-flash": override})  # type: ignore[dict-item]
    assert str(refused.value).startswith("gemini-2.5-flash: ") and says in str(refused.value)
