"""Text for the offline demo upstream: replies, token estimates and schema-valid fake JSON.

`fake_from_schema` understands both schema languages Gemini accepts for structured output:
the OpenAPI subset of `responseSchema` (upper-case types, `nullable`, `propertyOrdering`) and the
JSON Schema of `responseJsonSchema` (`$ref`, `anyOf`, `const`, type lists...). The value it builds
validates against the schema, so client code that parses structured output can be exercised
offline. Regex `pattern`s are the one thing it does not try to satisfy.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

# Past this depth a recursive schema gets its smallest valid value (required keys only, minItems
# items, null where allowed), so a self-referencing tree ends instead of growing without bound.
_SHRINK_DEPTH = 4
_MAX_DEPTH = 48  # a schema that still has not ended here has no finite instance

_WORDS = (
    "amber", "banana", "cobalt", "delta", "ember", "fjord", "garnet", "harbor", "indigo",
    "juniper", "kestrel", "lagoon", "meadow", "nimbus", "orchid", "pebble", "quartz", "river",
    "saffron", "tundra", "umber", "velvet", "willow", "yonder", "zephyr",
)  # fmt: skip

_CLOSINGS = (
    "Point a real upstream at this model to get real answers.",
    "Configure a Gemini upstream with an API key for real output.",
    "Everything else (keys, credits, usage, streaming) works as it will in production.",
)


def text_reply(prompt: str) -> str:
    """A short, fixed-per-prompt answer that says plainly it is a demo and not a model."""
    rng = _rng(prompt)
    return (
        "This is a demo reply from nanogate's built-in demo upstream, not a model. "
        f"It received your message ({_quote(prompt)}) and answers with canned text. "
        + rng.choice(_CLOSINGS)
    )


def thought_text(prompt: str) -> str:
    """The demo's stand-in for a thought summary (when a client asks for includeThoughts)."""
    return (
        "Demo thinking, not a model: the demo upstream read the request "
        f"({_quote(prompt)}) and picked its canned answer."
    )


def estimate_tokens(text: str) -> int:
    """About four characters per token, as Google's own rule of thumb; at least 1 if non-empty."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / 4))


def fake_from_schema(schema: Mapping[str, Any] | bool, seed: str) -> Any:
    """A value that validates against `schema`, the same for the same seed.

    Every declared property is filled in (in `propertyOrdering` order when given), arrays get
    two or three items within `minItems`/`maxItems`. Raises ValueError for a schema with no
    finite instance (a property that requires itself).
    """
    root = schema if isinstance(schema, Mapping) else {}
    return _Faker(root, seed).value(schema, "", 0)


def _rng(seed: str) -> random.Random:
    return random.Random(hashlib.sha256(seed.encode("utf-8")).digest())


def _quote(prompt: str, limit: int = 60) -> str:
    flat = " ".join(prompt.split())
    if not flat:
        return "an empty prompt"
    if len(flat) > limit:
        flat = flat[: limit - 3].rstrip() + "..."
    return f'"{flat}"'


class _Faker:
    """Walks one schema with one seeded random stream, so output depends only on the seed."""

    def __init__(self, root: Mapping[str, Any], seed: str) -> None:
        self.root = root
        self.rng = _rng(seed)
        self.serial = 0  # numbers generated strings, so they differ (helps uniqueItems)

    def value(self, schema: Mapping[str, Any] | bool, name: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise ValueError("The schema has no finite instance: a required part contains itself.")
        if not isinstance(schema, Mapping):
            return "demo" if schema else None  # `true` accepts anything; `false` nothing
        node = self._resolve(schema)
        shrink = depth >= _SHRINK_DEPTH
        if "const" in node:
            return node["const"]
        if node.get("enum"):
            return self.rng.choice(list(node["enum"]))
        branch = _pick_branch(node, shrink)
        if branch is not None:
            return self.value(branch, name, depth)
        kind = _pick_type(node, shrink)
        if kind == "null" or (shrink and node.get("nullable") is True):
            return None
        if kind == "object":
            return self._object(node, depth, shrink)
        if kind == "array":
            return self._array(node, name, depth, shrink)
        if kind == "integer":
            return self._integer(node)
        if kind == "number":
            return self._number(node)
        if kind == "boolean":
            return self.rng.random() < 0.5
        return self._string(node, name)

    # --- references and combinators ---

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """Follow `$ref` chains (sibling keywords override the target) and flatten `allOf`."""
        node = schema
        for _ in range(_MAX_DEPTH):
            ref = node.get("$ref")
            if not isinstance(ref, str):
                break
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            node = {**self._lookup(ref), **siblings}
        parts = node.get("allOf")
        if isinstance(parts, list) and parts:
            merged: Mapping[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, Mapping):
                    merged = _merge(merged, self._resolve(part))
            node = merged
        return node

    def _lookup(self, ref: str) -> Mapping[str, Any]:
        """A local JSON pointer ('#/$defs/Name'); a remote reference becomes the empty schema."""
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for token in ref[1:].split("/")[1:]:
            key = token.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return {}
        return node if isinstance(node, Mapping) else {}

    # --- one method per type ---

    def _object(self, node: Mapping[str, Any], depth: int, shrink: bool) -> dict[str, Any]:
        properties: Mapping[str, Any] = node.get("properties") or {}
        required = [str(key) for key in node.get("required") or ()]
        extra = node.get("additionalProperties")
        out: dict[str, Any] = {}
        for key in _ordered_keys(properties, node.get("propertyOrdering")):
            if not shrink or key in required:
                out[key] = self.value(properties[key], key, depth + 1)
        # Required names with no property schema of their own fall under additionalProperties.
        fallback: Mapping[str, Any] = extra if isinstance(extra, Mapping) else {}
        for key in required:
            if key not in out:
                out[key] = self.value(fallback, key, depth + 1)
        wanted = _count(node, "minProperties") or 0
        if not properties and isinstance(extra, Mapping) and not shrink:
            wanted = max(wanted, 2)  # a map-shaped object: show a couple of entries
        while extra is not False and len(out) < wanted:
            key = f"key{len(out) + 1}"
            out[key] = self.value(fallback, key, depth + 1)
        return out

    def _array(self, node: Mapping[str, Any], name: str, depth: int, shrink: bool) -> list[Any]:
        prefix, rest = _item_schemas(node)
        low = _count(node, "minItems") or 0
        high = _count(node, "maxItems")
        count = low if shrink else max(low, self.rng.randint(2, 3))
        if high is not None:
            count = min(count, high)
        if rest is False:
            count = min(count, len(prefix))
        unique = node.get("uniqueItems") is True
        out: list[Any] = []
        seen: set[bytes] = set()
        for index in range(count):
            schema = prefix[index] if index < len(prefix) else rest
            if not unique:
                out.append(self.value(schema, name, depth + 1))
                continue
            item = self._distinct(schema, name, depth + 1, seen)
            if item is _EXHAUSTED:
                break  # e.g. three unique booleans: stop at the distinct values there are
            out.append(item)
        return out

    def _distinct(
        self, schema: Mapping[str, Any] | bool, name: str, depth: int, seen: set[bytes]
    ) -> Any:
        """A value not yet in `seen` (compared as canonical JSON), or _EXHAUSTED."""
        for _ in range(8):
            item = self.value(schema, name, depth)
            key = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
            if key not in seen:
                seen.add(key)
                return item
        return _EXHAUSTED

    def _integer(self, node: Mapping[str, Any]) -> int:
        low, low_open, high, high_open = _bounds(node)
        first = None if low is None else math.floor(low) + 1 if low_open else math.ceil(low)
        last = None if high is None else math.ceil(high) - 1 if high_open else math.floor(high)
        first, last = (int(bound) for bound in _default_range(first, last))
        step = _number_at(node, "multipleOf")
        if step is not None and step > 0 and step.is_integer():
            lowest, highest = math.ceil(first / step), math.floor(last / step)
            if lowest <= highest:
                return int(self.rng.randint(lowest, highest) * step)
        return self.rng.randint(first, last) if first <= last else first

    def _number(self, node: Mapping[str, Any]) -> float:
        low, low_open, high, high_open = _bounds(node)
        first, last = _default_range(low, high)

        def inside(value: float) -> bool:
            above = value > first if low_open else value >= first
            below = value < last if high_open else value <= last
            return above and below

        step = _number_at(node, "multipleOf")
        if step is not None and step > 0:
            for multiple in range(math.ceil(first / step), math.floor(last / step) + 1):
                if inside(multiple * step):
                    return round(multiple * step, 12)
        value = round(self.rng.uniform(first, last), 2)
        if inside(value):
            return value
        middle = (first + last) / 2  # a tight or open range that rounding stepped out of
        return middle if inside(middle) else float(first)

    def _string(self, node: Mapping[str, Any], name: str) -> str:
        text = self._formatted(str(node.get("format") or "").lower()) or self._words(name)
        low = _count(node, "minLength") or 0
        high = _count(node, "maxLength")
        if len(text) < low:
            filler = " " + self.rng.choice(_WORDS)
            text += filler * math.ceil((low - len(text)) / len(filler))
        return text if high is None else text[: max(high, 0)]

    def _words(self, name: str) -> str:
        self.serial += 1
        first, second = self.rng.choice(_WORDS), self.rng.choice(_WORDS)
        return f"demo {name or 'text'} {self.serial}: {first} {second}"

    def _formatted(self, fmt: str) -> str | None:
        """A fixed-shape fake for the common string formats (None for plain strings)."""
        rng = self.rng
        if fmt in ("date-time", "date", "time"):
            date = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            time = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
            return {"date-time": f"{date}T{time}", "date": date, "time": time}[fmt]
        word = rng.choice(_WORDS)
        formats = {
            "email": f"{word}@example.com",
            "idn-email": f"{word}@example.com",
            "hostname": f"{word}.example.com",
            "idn-hostname": f"{word}.example.com",
            "uri": f"https://example.com/demo/{word}",
            "url": f"https://example.com/demo/{word}",
            "iri": f"https://example.com/demo/{word}",
            "uri-reference": f"/demo/{word}",
            "iri-reference": f"/demo/{word}",
            "ipv4": f"192.0.2.{rng.randint(1, 254)}",
            "ipv6": f"2001:db8::{rng.randint(1, 0xFFFF):x}",
            "duration": f"PT{rng.randint(1, 59)}M",
            "byte": "ZGVtbw==",  # OpenAPI's base64 format: "demo"
        }
        if fmt == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return formats.get(fmt)


_EXHAUSTED = object()

_TYPE_HINTS = (
    ("object", ("properties", "required", "additionalProperties", "propertyOrdering")),
    ("array", ("items", "prefixItems", "minItems", "maxItems")),
    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")),
)
_KNOWN_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}


def _pick_type(node: Mapping[str, Any], shrink: bool) -> str:
    """The type to build: the first non-null one listed (null when shrinking), else inferred."""
    raw = node.get("type")
    listed = raw if isinstance(raw, list) else [raw] if raw else []
    types = [str(kind).lower() for kind in listed if str(kind).lower() in _KNOWN_TYPES]
    if types:
        if shrink and "null" in types:
            return "null"
        concrete = [kind for kind in types if kind != "null"]
        return concrete[0] if concrete else "null"
    for kind, keys in _TYPE_HINTS:
        if any(key in node for key in keys):
            return kind
    return "string"


def _pick_branch(node: Mapping[str, Any], shrink: bool) -> Mapping[str, Any] | None:
    """For anyOf/oneOf: the first non-null option (null when shrinking), merged over siblings."""
    for key in ("anyOf", "oneOf"):
        options = [o for o in node.get(key) or () if isinstance(o, Mapping)]
        if not options:
            continue
        nulls = [o for o in options if _is_null(o)]
        others = [o for o in options if not _is_null(o)]
        chosen = nulls[0] if (shrink and nulls) or not others else others[0]
        siblings = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
        return _merge(siblings, chosen)
    return None


def _is_null(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    return isinstance(kind, str) and kind.lower() == "null"


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Combine two schemas that must both hold: properties and required lists are unioned."""
    out = {**base, **extra}
    if isinstance(base.get("properties"), Mapping) and isinstance(extra.get("properties"), Mapping):
        out["properties"] = {**base["properties"], **extra["properties"]}
    if base.get("required") and extra.get("required"):
        out["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return out


def _ordered_keys(properties: Mapping[str, Any], ordering: Any) -> list[str]:
    """propertyOrdering first (Gemini emits keys in that order), then the rest as declared."""
    first = [str(k) for k in ordering or () if k in properties]
    return first + [str(k) for k in properties if k not in first]


def _item_schemas(node: Mapping[str, Any]) -> tuple[list[Any], Mapping[str, Any] | bool]:
    """(positional schemas, schema for the items after them); `False` forbids extra items."""
    items = node.get("items")
    if isinstance(items, list):  # draft-4 tuple form
        return items, node.get("additionalItems", True)
    prefix = node.get("prefixItems")
    rest = items if isinstance(items, Mapping | bool) else {}
    return (list(prefix) if isinstance(prefix, list) else []), rest


def _bounds(node: Mapping[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low is exclusive, high, high is exclusive), for draft-4 and later styles alike."""
    low, low_open = _number_at(node, "minimum"), False
    high, high_open = _number_at(node, "maximum"), False
    exclusive_low, exclusive_high = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if exclusive_low is True:  # draft 4: a flag on minimum
        low_open = low is not None
    elif (value := _number_at(node, "exclusiveMinimum")) is not None and (
        low is None or value >= low
    ):
        low, low_open = value, True
    if exclusive_high is True:
        high_open = high is not None
    elif (value := _number_at(node, "exclusiveMaximum")) is not None and (
        high is None or value <= high
    ):
        high, high_open = value, True
    return low, low_open, high, high_open


def _default_range(low: float | None, high: float | None) -> tuple[float, float]:
    """Fill a missing bound 100 away from the other one (1..100 when both are missing)."""
    if low is None and high is None:
        return 1.0, 100.0
    if low is None:
        assert high is not None
        return high - 100, high
    return low, low + 100 if high is None else high


def _number_at(node: Mapping[str, Any], key: str) -> float | None:
    """A numeric keyword; Google's JSON writes int64 fields as strings, so accept "5" too."""
    value = node.get(key)
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(node: Mapping[str, Any], key: str) -> int | None:
    value = _number_at(node, key)
    return None if value is None else max(0, int(value))
