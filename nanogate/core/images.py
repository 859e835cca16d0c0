"""Pillow helpers: what an input image really is and how large, and output format conversion.

An image is judged by its own leading bytes, never by a URL extension or a Content-Type. It is
then opened with the one Pillow plugin those bytes name, constructed directly instead of through
`Image.open`: hostile bytes never reach Pillow's other forty plugins, and Pillow's
decompression-bomb warning (which `warnings` can only silence process-wide, unsafely across
threads) never fires. Our own `max_pixels` check, made on the header alone, takes its place.
"""

from __future__ import annotations

import io
from typing import Any, Literal

from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from nanogate.core.media import sniff_image

Format = Literal["png", "jpeg", "webp"]

_ACCEPTED = "send PNG, JPEG, WebP, HEIC or HEIF"
_NAMES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WebP",
    "image/heic": "HEIC",
    "image/heif": "HEIF",
}
_TARGETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "png": ("PNG", "image/png", {}),
    "jpeg": ("JPEG", "image/jpeg", {"quality": 92}),
    "webp": ("WEBP", "image/webp", {"quality": 90}),
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
_JPEG_MODES = frozenset({"L", "RGB", "CMYK"})
_RGB_MODES = frozenset({"RGB", "RGBA", "P", "PA"})  # an RGB ICC profile still fits these


class ImageRejected(Exception):
    """The bytes are not an image the gateway accepts; the message says why."""


def inspect_image(data: bytes, *, max_pixels: int) -> tuple[str, int, int]:
    """Return (mime, width, height) from the header, refusing what the gateway does not take."""
    mime = _readable_mime(data)
    name = _NAMES[mime]
    try:
        with _open(data, mime) as im:
            width, height = im.size
            if width < 1 or height < 1:
                raise ImageRejected(f"the {name} image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageRejected(
                    f"the image is {width}x{height} ({width * height / 1e6:.1f} megapixels), "
                    f"over the {max_pixels / 1e6:g}-megapixel limit; scale it down"
                )
            # Cheap structural checks where the format has them (PNG checks every chunk's CRC,
            # so a truncated PNG is caught); never a pixel decode.
            im.verify()
    except ImageRejected:
        raise
    except Exception:
        # Whatever a malformed file makes a parser raise, the answer is the same; Pillow's own
        # messages can quote raw bytes, so they stay out.
        raise ImageRejected(
            f"the {name} image cannot be read; it is truncated or corrupt"
        ) from None
    return mime, width, height


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read off an image's header, or None when `data` does not show one.
    `data` may be only the image's first bytes: the header is all that is read."""
    mime = sniff_image(data)
    if mime not in _NAMES:
        return None
    try:
        with _open(data, mime) as im:
            width, height = im.size
    except Exception:
        return None  # a header cut short (or a broken one): the caller may try all the bytes
    return width, height


def convert_image(data: bytes, fmt: Format) -> tuple[bytes, str]:
    """Return the image as `fmt` and its mime type; bytes already in `fmt` come back untouched."""
    pil_format, mime, options = _TARGETS[fmt]
    source = sniff_image(data)
    if source == mime:
        return data, mime
    source = _readable_mime(data)
    try:
        with _open(data, source) as im:
            im.load()
            out = _fit_mode(im, fmt)
            buffer = io.BytesIO()
            out.save(buffer, pil_format, **options, **_carried_info(im, out))
    except ImageRejected:
        raise
    except Exception:
        raise ImageRejected(
            f"the {_NAMES[source]} image cannot be converted to {fmt.upper()}; "
            "it is truncated or corrupt"
        ) from None
    return buffer.getvalue(), mime


def thumbnail_image(data: bytes, max_side: int) -> bytes:
    """A WebP no larger than `max_side` on either side, for the console's grids."""
    try:
        with _open(data, _readable_mime(data)) as im:
            im.draft("RGB", (max_side, max_side))  # JPEG decodes at 1/2..1/8 scale: much cheaper
            im.thumbnail((max_side, max_side))
            out = im if im.mode in ("RGB", "RGBA") else im.convert("RGBA")
            buffer = io.BytesIO()
            out.save(buffer, "WEBP", quality=80, method=2)  # 4+ triples the time for ~3% smaller
    except ImageRejected:
        raise
    except Exception:
        raise ImageRejected("the stored image is truncated or corrupt") from None
    return buffer.getvalue()


def _readable_mime(data: bytes) -> str:
    mime = sniff_image(data)
    if mime == "image/gif":
        raise ImageRejected(f"GIF images are not supported; {_ACCEPTED}")
    if mime not in _NAMES:
        raise ImageRejected(f"the data is not a recognised image; {_ACCEPTED}")
    return mime


def _open(data: bytes, mime: str) -> ImageFile.ImageFile:
    fp = io.BytesIO(data)
    if mime == "image/png":
        return PngImagePlugin.PngImageFile(fp)
    if mime == "image/jpeg":
        return JpegImagePlugin.JpegImageFile(fp)
    if mime == "image/webp":
        return WebPImagePlugin.WebPImageFile(fp)
    # Imported on first use: it loads libheif, which most requests never need.
    import pillow_heif

    # pillow-heif leaves its plugin's __init__ unannotated; it takes what ImageFile takes.
    im: ImageFile.ImageFile = pillow_heif.HeifImageFile(fp)  # type: ignore[no-untyped-call]
    if im.custom_mimetype == "image/avif":
        # AVIF shares HEIF's container (the sniffer calls it HEIF), but is a different codec.
        raise ImageRejected(f"AVIF images are not supported; {_ACCEPTED}")
    return im


def _fit_mode(im: Image.Image, fmt: Format) -> Image.Image:
    """The image in a mode `fmt` can store; same pixel size, alpha dropped only for JPEG."""
    alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
    if fmt == "jpeg":
        if alpha:
            # JPEG has no alpha: lay the image on white, as a viewer would show it on a page.
            rgba = im.convert("RGBA")
            flat = Image.new("RGB", im.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            return flat
        return im if im.mode in _JPEG_MODES else im.convert("RGB")
    if fmt == "png" and im.mode in _PNG_MODES:
        return im
    wanted = "RGBA" if alpha else "RGB"
    return im if im.mode == wanted else im.convert(wanted)


def _carried_info(source: Image.Image, out: Image.Image) -> dict[str, Any]:
    """EXIF (orientation, capture data) always; the ICC profile while the colour space holds."""
    info: dict[str, Any] = {}
    if source.info.get("exif"):
        info["exif"] = source.info["exif"]
    profile = source.info.get("icc_profile")
    if profile and (out.mode == source.mode or {out.mode, source.mode} <= _RGB_MODES):
        info["icc_profile"] = profile
    return info
