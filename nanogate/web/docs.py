"""GET /docs: Swagger UI on /openapi.json, its files served from an installed package.

The page shares its origin with /admin and the console, so it must not run code from anywhere
else: Swagger UI's script and stylesheet come from the fastapi-offline package (Swagger UI's
release, installed with the gateway; no CDN, no network at run time), and the page's CSP lets it
load those files and talk to this origin only.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

from nanogate.core.errors import NotFound

router = APIRouter(include_in_schema=False)

_SWAGGER = resources.files("fastapi_offline") / "static"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}
# An inline script would need 'unsafe-inline': the page's own setup is a file too.
# validatorUrl: null, or Swagger UI draws a badge fetched from its public validator.
_SETUP = b"""window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
"""
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>nanogate API</title>
<link rel="icon" href="/docs/favicon.png">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/setup.js"></script>
</body>
</html>
"""
HEADERS = {
    # Swagger UI sets style attributes from script (allowed: CSSOM) and draws its icons as
    # data: URLs; it reads /openapi.json and sends "Try it out" calls to this origin.
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


@router.get("/docs")
async def docs() -> Response:
    return HTMLResponse(_PAGE, headers={**HEADERS, "cache-control": "no-cache"})


@cache
def _asset(name: str) -> bytes:
    return _SETUP if name == "setup.js" else (_SWAGGER / name).read_bytes()


@router.get("/docs/{name}")
async def asset(name: str) -> Response:
    media = "text/javascript" if name == "setup.js" else _ASSETS.get(name)
    if media is None:
        raise NotFound(f"No docs asset '{name[:60]}'.")
    return Response(
        _asset(name), media_type=media, headers={**HEADERS, "cache-control": "no-cache"}
    )
