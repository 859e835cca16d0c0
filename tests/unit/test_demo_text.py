"""demo.text: schema fakes validate (checked by a small validator below), replies, token counts."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
import pytest

from nanogate.upstreams.demo.text import estimate_tokens, fake_from_schema, text_reply

# --- a small validator for the keywords the faker claims to honour (jsonschema is not a dep) ---

_PY_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, kind: str) -> bool:
    kind = kind.lower()
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _PY_TYPES[kind])


def validate(value: Any, schema: Any, root: Any = None) -> None:
    root = schema if root is None else root
    if schema is True or schema == {}:
        return
    assert schema is not False, f"{value!r} where nothing is allowed"
    if "$ref" in schema:
        target: Any = root
        for token in schema["$ref"].lstrip("#").strip("/").split("/"):
            target = target[token] if token else target
        validate(value, target, root)
    for part in schema.get("allOf", ()):
        validate(value, part, root)
    if "anyOf" in schema:
        assert any(_passes(value, option, root) for option in schema["anyOf"]), value
    if "oneOf" in schema:
        assert sum(_passes(value, option, root) for option in schema["oneOf"]) == 1, value
    if "const" in schema:
        assert value == schema["const"]
    if "enum" in schema:
        assert value in schema["enum"], value
    if value is None and schema.get("nullable") is True:
        return
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        assert any(_is_type(value, kind) for kind in kinds), f"{value!r} is not {kinds}"
    if isinstance(value, dict):
        _validate_object(value, schema, root)
    if isinstance(value, list):
        _validate_array(value, schema, root)
    if isinstance(value, str):
        assert len(value) >= schema.get("minLength", 0), value
        assert len(value) <= schema.get("maxLength", math.inf), value
        if schema.get("format") == "date-time":
            datetime.fromisoformat(value)
        if schema.get("format") == "date":
            assert re.fullmatch(r"\d{4}-\d\d-\d\d", value)
        if schema.get("format") == "email":
            assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", value)
    if _is_type(value, "number"):
        _validate_number(value, schema)


def _passes(value: Any, schema: Any, root: Any) -> bool:
    try:
        validate(value, schema, root)
    except AssertionError:
        return False
    return True


def _validate_object(value: dict[str, Any], schema: Mapping[str, Any], root: Any) -> None:
    properties = schema.get("properties", {})
    for key in schema.get("required", ()):
        assert key in value, f"missing required {key}"
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            validate(item, properties[key], root)
        else:
            validate(item, extra, root)
    assert len(value) >= schema.get("minProperties", 0)


def _validate_array(value: list[Any], schema: Mapping[str, Any], root: Any) -> None:
    assert len(value) >= int(schema.get("minItems", 0)), value
    assert len(value) <= int(schema.get("maxItems", 10**9)), value
    prefix = schema.get("prefixItems", [])
    for index, item in enumerate(value):
        validate(item, prefix[index] if index < len(prefix) else schema.get("items", {}), root)
    if schema.get("uniqueItems"):
        keys = [orjson.dumps(item, option=orjson.OPT_SORT_KEYS) for item in value]
        assert len(set(keys)) == len(keys), value


def _validate_number(value: float, schema: Mapping[str, Any]) -> None:
    assert value >= schema.get("minimum", -math.inf)
    assert value <= schema.get("maximum", math.inf)
    assert value > schema.get("exclusiveMinimum", -math.inf)
    assert value < schema.get("exclusiveMaximum", math.inf)
    if "multipleOf" in schema:
        quotient = value / schema["multipleOf"]
        assert abs(quotient - round(quotient)) < 1e-9, value


def test_the_validator_itself_rejects_bad_values() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    with pytest.raises(AssertionError):
        validate({"n": "one"}, schema)
    with pytest.raises(AssertionError):
        validate({}, schema)
    with pytest.raises(AssertionError):
        validate([1, 1], {"type": "array", "uniqueItems": True})


# --- Gemini's OpenAPI-subset responseSchema ---

RECIPE = {
    "type": "OBJECT",
    "properties": {
        "recipe_name": {"type": "STRING"},
        "servings": {"type": "INTEGER", "minimum": 1, "maximum": 8},
        "rating": {"type": "NUMBER", "nullable": True},
        "vegan": {"type": "BOOLEAN"},
        "cooked_at": {"type": "STRING", "format": "date-time"},
        "course": {"type": "STRING", "format": "enum", "enum": ["starter", "main", "dessert"]},
        "ingredients": {
            "type": "ARRAY",
            "items": {"type": "STRING"},
            "minItems": 1,
            "maxItems": 5,
        },
        "steps": {
            "type": "ARRAY",
            "items": {
                "type": "OBJECT",
                "properties": {"order": {"type": "INTEGER"}, "text": {"type": "STRING"}},
                "required": ["text"],
            },
        },
    },
    "required": ["recipe_name"],
    "propertyOrdering": ["vegan", "recipe_name", "servings"],
}


def test_openapi_schema_fake_validates_and_fills_every_property() -> None:
    value = fake_from_schema(RECIPE, "seed")
    validate(value, RECIPE)
    assert set(value) == set(RECIPE["properties"])
    assert list(value)[:3] == ["vegan", "recipe_name", "servings"]
    assert 2 <= len(value["steps"]) <= 3
    assert all("order" in step for step in value["steps"])


def test_fakes_are_deterministic_per_seed() -> None:
    first = orjson.dumps(fake_from_schema(RECIPE, "seed"))
    assert orjson.dumps(fake_from_schema(RECIPE, "seed")) == first
    assert orjson.dumps(fake_from_schema(RECIPE, "other seed")) != first


def test_array_lengths_respect_min_and_max() -> None:
    assert len(fake_from_schema({"type": "ARRAY", "items": {}, "minItems": 5}, "s")) == 5
    assert len(fake_from_schema({"type": "ARRAY", "items": {}, "maxItems": 1}, "s")) == 1
    assert fake_from_schema({"type": "ARRAY", "items": {}, "maxItems": 0}, "s") == []
    lengths = {len(fake_from_schema({"type": "array"}, str(seed))) for seed in range(20)}
    assert lengths == {2, 3}


def test_int64_counts_written_as_strings_are_understood() -> None:
    # Google's JSON form of int64 fields is a string.
    schema = {"type": "ARRAY", "items": {"type": "INTEGER"}, "minItems": "4", "maxItems": "4"}
    assert len(fake_from_schema(schema, "s")) == 4


# --- JSON Schema responseJsonSchema ---

PERSON = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "Address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "minLength": 30},
                "zip": {"type": "string", "maxLength": 5},
            },
            "required": ["street"],
            "additionalProperties": False,
        },
        "Kind": {"enum": ["friend", "colleague"]},
    },
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": ["integer", "null"], "minimum": 18, "exclusiveMaximum": 20},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "email": {"type": "string", "format": "email"},
        "born": {"type": "string", "format": "date"},
        "address": {"$ref": "#/$defs/Address"},
        "kind": {"$ref": "#/$defs/Kind"},
        "version": {"const": 2},
        "nickname": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 3}]},
        "contact": {
            "oneOf": [
                {"type": "string", "format": "email"},
                {"type": "integer"},
            ]
        },
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "minItems": 1},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]},
        "meta": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 7}},
        "flags": {"type": "array", "items": {"type": "boolean"}, "uniqueItems": True},
        "even": {"type": "integer", "multipleOf": 2, "minimum": 3, "maximum": 9},
        "half": {"type": "number", "multipleOf": 0.5, "minimum": 0.1, "maximum": 2},
        "both": {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
            ]
        },
    },
    "required": ["name", "address"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", ["one", "two", "three", "four", "five"])
def test_json_schema_fake_validates(seed: str) -> None:
    value = fake_from_schema(PERSON, seed)
    validate(value, PERSON)
    assert value["version"] == 2
    assert value["kind"] in ("friend", "colleague")
    assert value["age"] in (18, 19)
    assert len(value["meta"]) >= 1
    assert set(value["both"]) == {"a", "b"}


def test_legacy_definitions_and_draft4_exclusive_flags() -> None:
    schema = {
        "definitions": {"Score": {"type": "integer", "minimum": 0, "exclusiveMinimum": True}},
        "type": "object",
        "properties": {
            "score": {"$ref": "#/definitions/Score"},
            "tuple": {"type": "array", "items": [{"type": "string"}], "additionalItems": False},
        },
    }
    value = fake_from_schema(schema, "s")
    assert value["score"] >= 1
    assert len(value["tuple"]) == 1 and isinstance(value["tuple"][0], str)


def test_recursive_schema_terminates_and_validates() -> None:
    tree = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
                "required": ["label"],
            }
        },
        "$ref": "#/$defs/Node",
    }
    value = fake_from_schema(tree, "s")
    validate(value, tree)
    assert len(orjson.dumps(value)) < 200_000


def test_schema_with_no_finite_instance_is_an_error() -> None:
    loop = {"type": "object", "properties": {"self": {"$ref": "#"}}, "required": ["self"]}
    with pytest.raises(ValueError, match="finite"):
        fake_from_schema(loop, "s")


def test_untyped_and_boolean_schemas() -> None:
    assert isinstance(fake_from_schema({}, "s"), str)
    assert isinstance(fake_from_schema(True, "s"), str)
    assert isinstance(fake_from_schema({"properties": {"a": {}}}, "s"), dict)
    assert isinstance(fake_from_schema({"items": {"type": "integer"}}, "s"), list)


@pytest.mark.parametrize(
    ("fmt", "pattern"),
    [
        ("date-time", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"),
        ("date", r"\d{4}-\d\d-\d\d"),
        ("uuid", r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"),
        ("uri", r"https://example\.com/.+"),
        ("ipv4", r"192\.0\.2\.\d+"),
    ],
)
def test_string_formats(fmt: str, pattern: str) -> None:
    assert re.fullmatch(pattern, fake_from_schema({"type": "string", "format": fmt}, "s"))


# --- replies and token estimates ---


def test_text_reply_is_deterministic_and_says_it_is_a_demo() -> None:
    reply = text_reply("What is the capital of France?")
    assert reply == text_reply("What is the capital of France?")
    assert "demo" in reply and "not a model" in reply
    assert "capital of France" in reply
    assert len(text_reply("x" * 10_000)) < 400


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100
