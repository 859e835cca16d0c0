"""The signed file links: `GET /files/{name}?expires=...&sig=...` serves a stored result.

The link is the credential (no API key): the signature proves the gateway issued it, the expiry
bounds how long it works. Checks run signature, then expiry, then lookup, so an unsigned caller
learns nothing about which objects exist. With `storage_redirect` (S3 storage), a valid link
answers 307 to a presigned URL of the object instead, so its bytes bypass the gateway.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from nanogate.storage import Storage, content_type_for, digest_of
from nanogate.storage.local import LocalStorage
from nanogate.storage.signing import UrlSigner

router = APIRouter(tags=["Files"])


# Documented by hand (openapi/paths.py), with its query parameters and one operation a method.
@router.api_route("/files/{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def get_file(request: Request, name: str) -> Response:
    signer: UrlSigner = request.app.state.url_signer
    storage: Storage = request.app.state.storage
    # Missing parameters verify as "bad" like malformed ones: both are a 403.
    expires = request.query_params.get("expires", "")
    sig = request.query_params.get("sig", "")
    now = time.time()
    verdict = signer.verify(name, expires, sig, now)
    if verdict == "bad":
        return _error(
            403,
            "PERMISSION_DENIED",
            "This file URL was altered or is not signed; use the link exactly as the task gave it.",
        )
    if verdict == "expired":
        at = datetime.fromtimestamp(int(expires), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Google has no 410 of its own; the link (not the object) is what no longer exists.
        return _error(
            410,
            "NOT_FOUND",
            f"This file link expired at {at}; fetch the task again for a fresh link.",
        )
    target = await storage.redirect_url(name, method=request.method, expires=int(expires))
    if target is not None:
        # The presigned URL differs on every request: nothing worth caching.
        return RedirectResponse(target, status_code=307, headers={"cache-control": "no-store"})
    headers = {
        "cache-control": f"private, max-age={max(0, math.floor(int(expires) - now))}",
        # Content-addressed: the name's hash is a strong validator.
        "etag": f'"{digest_of(name)}"',
        "x-content-type-options": "nosniff",
    }
    if isinstance(storage, LocalStorage):
        found = await storage.local_file(name)
        if found is None:
            return _gone_by_retention()
        if _matches(request, headers["etag"]):
            return Response(status_code=304, headers=headers)
        path, stat = found
        return FileResponse(
            path, headers=headers, media_type=content_type_for(name), stat_result=stat
        )
    obj = await storage.get(name)
    if obj is None:
        return _gone_by_retention()
    if _matches(request, headers["etag"]):
        return Response(status_code=304, headers=headers)
    return Response(obj[0], headers=headers, media_type=obj[1])


def _matches(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match")
    if wanted is None:
        return False
    # If-None-Match compares weakly: a W/ prefix still matches.
    return any(tag.strip().removeprefix("W/") in (etag, "*") for tag in wanted.split(","))


def _gone_by_retention() -> Response:
    return _error(
        404,
        "NOT_FOUND",
        "This file is no longer stored; results are removed after the retention period.",
    )


def _error(code: int, status: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "status": status}},
        status_code=code,
        headers={"cache-control": "no-store"},
    )
