"""Input inspection and output conversion, on images made in memory with Pillow."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import pillow_heif
import pytest
from PIL import Image

from nanogate.core.images import Format, ImageRejected, convert_image, image_size, inspect_image
from nanogate.core.media import sniff_image

MP = 1_000_000


def encode(im: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **options)
    return buffer.getvalue()


def heic(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    pillow_heif.from_pillow(im).save(buffer, quality=80)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def pixel(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = im.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def png_header_only(width: int, height: int) -> bytes:
    """A valid, tiny PNG that claims any size: what a decompression bomb looks like up front."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


RGB = Image.new("RGB", (64, 48), (200, 30, 30))
PNG = encode(RGB, "PNG")
JPEG = encode(RGB, "JPEG")
WEBP = encode(RGB, "WEBP")
HEIC = heic(RGB)


# -- inspect_image ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, mime",
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp"), (HEIC, "image/heic")],
)
def test_accepted_formats_report_mime_and_size(data: bytes, mime: str) -> None:
    assert inspect_image(data, max_pixels=MP) == (mime, 64, 48)


def test_the_bytes_decide_the_type_not_the_name(tmp_path: Path) -> None:
    lying = tmp_path / "photo.png"
    lying.write_bytes(JPEG)
    assert inspect_image(lying.read_bytes(), max_pixels=MP)[0] == "image/jpeg"


def test_gif_is_refused_with_the_accepted_list() -> None:
    with pytest.raises(ImageRejected, match="GIF images are not supported; send PNG, JPEG"):
        inspect_image(encode(RGB, "GIF"), max_pixels=MP)


def test_avif_in_a_heif_container_is_refused() -> None:
    avif = encode(RGB, "AVIF")
    assert sniff_image(avif) == "image/heif"  # the sniffer cannot tell the codecs apart
    with pytest.raises(ImageRejected, match="AVIF images are not supported"):
        inspect_image(avif, max_pixels=MP)


@pytest.mark.parametrize("data", [b"", b"hello, world", b"<svg xmlns='...'/>", encode(RGB, "BMP")])
def test_unknown_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ImageRejected, match="not a recognised image"):
        inspect_image(data, max_pixels=MP)


def test_pixel_limit_is_inclusive() -> None:
    assert inspect_image(PNG, max_pixels=64 * 48)[1:] == (64, 48)
    with pytest.raises(ImageRejected, match=r"64x48 .* over the 0.003071-megapixel limit"):
        inspect_image(PNG, max_pixels=64 * 48 - 1)


@pytest.mark.parametrize("size", [(10_000, 10_000), (100_000, 100_000)])
def test_decompression_bombs_are_refused_by_the_limit_not_by_pillow(
    size: tuple[int, int],
) -> None:
    # 10_000² is over Pillow's warning threshold and 100_000² over its error threshold; with
    # warnings as errors (pytest config), either would surface here as a Pillow exception.
    with pytest.raises(ImageRejected, match="megapixel limit"):
        inspect_image(png_header_only(*size), max_pixels=50 * MP)


@pytest.mark.parametrize(
    "data",
    [
        PNG[:20],
        PNG[: len(PNG) // 2],  # header intact: the chunk CRC walk notices the missing rest
        JPEG[:100],
        WEBP[:20],
        WEBP[: len(WEBP) // 2],
        HEIC[:64],
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        b"\xff\xd8\xff" + b"\x00" * 64,
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 64,
    ],
)
def test_truncated_or_garbage_images_are_rejected_cleanly(data: bytes) -> None:
    with pytest.raises(ImageRejected, match="cannot be read; it is truncated or corrupt"):
        inspect_image(data, max_pixels=MP)


# -- convert_image ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, fmt",
    [
        (PNG, "jpeg"),
        (PNG, "webp"),
        (JPEG, "png"),
        (JPEG, "webp"),
        (WEBP, "png"),
        (WEBP, "jpeg"),
        (HEIC, "png"),
        (HEIC, "jpeg"),
    ],
)
def test_conversion_changes_format_and_keeps_size(source: bytes, fmt: Format) -> None:
    data, mime = convert_image(source, fmt)
    assert sniff_image(data) == mime == f"image/{fmt}"
    assert decode(data).size == (64, 48)


def test_round_trip_back_to_png_keeps_size() -> None:
    data, _ = convert_image(convert_image(PNG, "webp")[0], "png")
    assert decode(data).size == (64, 48)


@pytest.mark.parametrize("data, fmt", [(PNG, "png"), (JPEG, "jpeg"), (WEBP, "webp")])
def test_same_format_is_returned_untouched(data: bytes, fmt: Format) -> None:
    out, mime = convert_image(data, fmt)
    assert out is data
    assert mime == f"image/{fmt}"


def test_rgba_to_jpeg_lays_transparency_on_white() -> None:
    im = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    im.paste((0, 0, 255, 255), (10, 0, 20, 10))
    data, _ = convert_image(encode(im, "PNG"), "jpeg")
    out = decode(data)
    assert (out.mode, out.size) == ("RGB", (20, 10))
    assert all(c > 245 for c in pixel(out, (2, 5)))  # was transparent: white, not black
    red, green, blue = pixel(out, (17, 5))
    assert blue > 230 and red < 25 and green < 25


def test_palette_with_transparency_to_jpeg() -> None:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 255, 0, 0])
    im.paste(1, (4, 0, 8, 8))
    data, _ = convert_image(encode(im, "PNG", transparency=0), "jpeg")
    out = decode(data)
    assert all(c > 245 for c in pixel(out, (1, 1)))
    assert pixel(out, (6, 4))[0] > 230


def test_alpha_survives_conversion_to_webp() -> None:
    im = Image.new("LA", (8, 8), (128, 0))
    out = decode(convert_image(encode(im, "PNG"), "webp")[0])
    assert out.mode == "RGBA" and pixel(out, (0, 0))[3] == 0


def test_exif_is_carried_over() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the pixels must stay as they are, the tag must travel
    data, _ = convert_image(encode(RGB, "JPEG", exif=exif), "png")
    out = decode(data)
    assert out.size == (64, 48)
    assert out.getexif()[0x0112] == 6


@pytest.mark.parametrize(
    "data, message",
    [
        (encode(RGB, "GIF"), "GIF images are not supported"),
        (b"nothing to see", "not a recognised image"),
        (PNG[: len(PNG) // 2], "PNG image cannot be converted to WEBP"),
    ],
)
def test_unconvertible_input_is_rejected_cleanly(data: bytes, message: str) -> None:
    with pytest.raises(ImageRejected, match=message):
        convert_image(data, "webp")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_image_size_reads_the_header_of_a_whole_or_a_cut_image(fmt: str) -> None:
    data = encode(Image.effect_noise((1184, 864), 64).convert("RGB"), fmt)
    assert image_size(data) == (1184, 864)
    # The header is all PNG and JPEG need; Pillow's WebP reader wants the whole file.
    assert image_size(data[:4096]) == (None if fmt == "WEBP" else (1184, 864))


def test_image_size_is_none_when_the_header_is_not_there() -> None:
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # a description long enough to push the JPEG header past a cut
    data = encode(Image.new("RGB", (300, 200)), "JPEG", exif=exif.tobytes())
    assert image_size(data[:4096]) is None
    assert image_size(data) == (300, 200)
    assert image_size(b"not an image") is None
    assert image_size(heic(Image.new("RGB", (64, 48)))) == (64, 48)
