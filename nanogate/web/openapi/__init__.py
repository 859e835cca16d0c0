"""The OpenAPI document at /openapi.json: FastAPI's own, completed.

FastAPI describes the admin API from its pydantic models, but not what happens around them: the
admin key, the 400 (not 422) that app._validation_error makes of a validation error, and the
401/403/404/409/503 the routes raise. Everything else reads raw bodies (the relay on plain
Starlette routes, the task API, files, results, operations) and is written out in paths.py, with
the components in schemas.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI

from nanogate.web.openapi.paths import all_paths
from nanogate.web.openapi.schemas import (
    ADMIN,
    GEMINI_SCHEMAS,
    OPENAI_SCHEMAS,
    SECURITY_SCHEMES,
    TASK_SCHEMAS,
    errors,
    link,
)

# What an admin route raises besides 400 (a bad parameter or body), 401/403 (the admin key or
# console session), 429 (too many unknown keys from the address) and 503 (maintenance): 404
# for what it names, 409 for a change the account refuses (a duplicate name, an adjustment
# below zero, revoking the last admin key).
ADMIN_RAISES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/admin/keys"): (404,),
    ("post", "/admin/keys/{prefix}/revoke"): (404, 409),
    ("patch", "/admin/keys/{prefix}"): (404,),
    ("post", "/admin/keys/{prefix}/topup"): (404, 409),
    ("post", "/admin/accounts"): (409,),
    ("get", "/admin/accounts/{account}"): (404,),
    ("patch", "/admin/accounts/{account}"): (404,),
    ("post", "/admin/accounts/{account}/topup"): (404, 409),
    ("get", "/admin/ledger"): (404,),
    ("get", "/admin/tasks/{task_id}"): (404,),
    ("get", "/admin/callbacks"): (404,),
    ("get", "/admin/usage"): (404,),
    ("get", "/admin/usage.csv"): (404,),
    ("get", "/admin/tasks"): (404,),
    ("get", "/admin/tasks/{task_id}/thumbnail"): (404,),
}
# From what an admin call creates to the calls on it: the fuzzer's stateful phase follows these
# (rather than guessing names, or taking them off listings, where it would find the keys it runs
# with and revoke them).
_KEY = "$response.body#/prefix"
_ACCOUNT = "$response.body#/name"
ADMIN_LINKS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/admin/keys"): {
        "ChangeKey": link("/admin/keys/{prefix}", "patch", prefix=_KEY),
        "TopUpKey": link("/admin/keys/{prefix}/topup", "post", prefix=_KEY),
        "RevokeKey": link("/admin/keys/{prefix}/revoke", "post", prefix=_KEY),
    },
    ("post", "/admin/accounts"): {
        "GetAccount": link("/admin/accounts/{account}", "get", account=_ACCOUNT),
        "ChangeAccount": link("/admin/accounts/{account}", "patch", account=_ACCOUNT),
        "TopUpAccount": link("/admin/accounts/{account}/topup", "post", account=_ACCOUNT),
        "Ledger": link("/admin/ledger", "get", account=_ACCOUNT),
    },
}
# Logging in takes the key in its body, not in a carrier.
KEYLESS = {("post", "/admin/session")}


def install(app: FastAPI, model_examples: Iterable[str]) -> None:
    """Serve the completed document; `model_examples` are model names for the `model`
    parameters, so a client (or a fuzzer) starts from names this gateway serves."""
    generate = app.openapi
    examples = list(model_examples)
    made: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not made:
            made.append(complete(generate(), examples))
        return made[0]

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any], examples: list[str]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = document.setdefault("paths", {})
    for path, item in paths.items():
        for method, op in item.items():
            if path.startswith("/admin/"):
                _admin(method, path, op)
    # Replaces what FastAPI made of the raw-body routes it also serves (tasks, files, ...).
    paths.update(all_paths(examples))
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    # FastAPI's 422 body: no route answers with it (see app._validation_error).
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(GEMINI_SCHEMAS | OPENAI_SCHEMAS | TASK_SCHEMAS)
    components["securitySchemes"] = SECURITY_SCHEMES
    return document


def _admin(method: str, path: str, op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op["responses"]
    statuses = {401, 403, 429, 503, *ADMIN_RAISES.get((method, path), ())}
    if responses.pop("422", None) is not None:
        statuses.add(400)
    responses.update(errors("GoogleError", *sorted(statuses)))
    links = ADMIN_LINKS.get((method, path))
    if links:
        responses["201"]["links"] = links
    op["security"] = [] if (method, path) in KEYLESS else ADMIN
