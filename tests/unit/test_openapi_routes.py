"""/openapi.json against the routes the app really serves, both ways: every API route is
documented (clients are generated from the document, and the fuzzer reaches only what it lists),
and everything documented is served."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from starlette.routing import BaseRoute, Match, Route

from nanogate.core.config import Settings
from nanogate.web import app as app_module
from nanogate.web import gemini_routes, openai_images_routes, openai_routes
from nanogate.web.front import Front

# Pages for people, not API operations: the console, the docs themselves, the document.
PAGES = {
    "/",
    "/console",
    "/console/",
    "/console/login",
    "/console/{page}",
    "/console/static/{name}",
    "/docs",
    "/docs/{name}",
    "/openapi.json",
}
# The Gemini routes take `models/{model}:{action}` as one tail; the document lists each action.
GEMINI_ACTIONS = {
    ("post", "/models/{model}:generateContent"),
    ("post", "/models/{model}:streamGenerateContent"),
    ("post", "/models/{model}:countTokens"),
    ("get", "/models/{model}"),
}


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Front:
    made = app_module.create_app(Settings(data_dir=tmp_path_factory.mktemp("openapi")))
    assert isinstance(made, Front)
    return made


@pytest.fixture(scope="module")
def document(front: Front) -> dict[str, Any]:
    return front.api.openapi()  # type: ignore[attr-defined, no-any-return]


def _flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        # FastAPI 0.165 keeps an included router whole; earlier ones copy its routes in.
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat(included.routes)
        else:
            yield route


def served(front: Front) -> list[Route]:
    relay = [
        *gemini_routes.routes,
        *openai_routes.routes,
        *openai_images_routes.routes,
        *app_module._shared_routes(),
    ]
    api = _flat(front.api.routes)  # type: ignore[attr-defined]
    return [route for route in [*relay, *api] if isinstance(route, Route)]


def operations(route: Route) -> set[str]:
    """Its methods, but HEAD where GET is served: Starlette adds it to every GET route, and
    HTTP implies it."""
    methods = {method.lower() for method in route.methods or ()}
    return methods - {"head"} if "get" in methods else methods


def test_every_api_route_served_is_documented(front: Front, document: dict[str, Any]) -> None:
    paths = document["paths"]
    missing = []
    for route in served(front):
        if route.path in PAGES:
            continue
        if route.path.endswith("/models/{tail:path}"):
            prefix = route.path.removesuffix("/models/{tail:path}")
            wanted = {(m, prefix + p) for m, p in GEMINI_ACTIONS if m in operations(route)}
        else:
            path = re.sub(r"\{(\w+):path\}", r"{\1}", route.path)
            wanted = {(method, path) for method in operations(route)}
        missing += [(m, p) for m, p in wanted if m not in paths.get(p, {})]
    assert missing == []


def test_everything_documented_is_served(front: Front, document: dict[str, Any]) -> None:
    routes = served(front)
    unserved = []
    for path, described in document["paths"].items():
        concrete = re.sub(r"\{\w+\}", "x1", path)
        for method in described:
            scope = {"type": "http", "path": concrete, "method": method.upper()}
            if not any(route.matches(scope)[0] == Match.FULL for route in routes):
                unserved.append((method, path))
    assert unserved == []


def test_the_pages_left_out_are_pages(front: Front, document: dict[str, Any]) -> None:
    assert {route.path for route in served(front)} >= PAGES
    assert not PAGES & set(document["paths"])
