"""Scrubbing for anything that leaves the process as text: error messages and log lines."""

from __future__ import annotations

import re

# Long unbroken runs of base64/urlsafe characters are image data or secrets, never prose.
_BLOB = re.compile(r"[A-Za-z0-9+/_\-]{48,}={0,2}")
# Our own keys and Google API keys, even when short enough to pass the blob rule.
_KEYS = re.compile(r"\b(?:nga?_[0-9a-f]{8}_[A-Za-z0-9_\-]+|AIza[0-9A-Za-z_\-]{20,})")
_QUERY_KEY = re.compile(r"([?&]key=)[^&\s]*")


def scrub(text: str, limit: int = 400) -> str:
    """Remove keys and base64 runs, and cap the length."""
    text = _QUERY_KEY.sub(r"\1[redacted]", text)
    text = _KEYS.sub("[redacted-key]", text)
    text = _BLOB.sub("[data]", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
