"""Inline media helpers shared by the dialects and the upstreams: base64 and image sniffing."""

from __future__ import annotations

import binascii

_URLSAFE = bytes.maketrans(b"-_", b"+/")
_WHITESPACE = b" \t\r\n"


def decode_base64(data: str | bytes | memoryview) -> bytes | None:
    """Decode standard or URL-safe base64, padded or not (the SDK sends URL-safe)."""
    encoded = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    # One C-speed pass maps the URL-safe alphabet and drops line breaks (`base64` wraps lines).
    raw = encoded.translate(_URLSAFE, _WHITESPACE)
    raw += b"=" * (-len(raw) % 4)
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        return None


def sniff_image(head: bytes) -> str | None:
    """The image type the leading bytes announce, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"):
            return "image/heic"
        if brand in (b"mif1", b"msf1", b"avif"):
            return "image/heif"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    return None
