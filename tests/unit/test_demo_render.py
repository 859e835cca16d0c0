"""demo.render: exact sizes, determinism, visible edits that follow their prompt's words, input
formats and ratio matching."""

from __future__ import annotations

import io

import pillow_heif
import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from nanogate.core.catalog import load_catalog
from nanogate.upstreams.demo.render import (
    nearest_aspect_ratio,
    probe_size,
    read_edit,
    render_image,
    transform_image,
)

CATALOG = load_catalog()


def _open(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _photo(width: int = 320, height: int = 240) -> Image.Image:
    """A stand-in photo: the render of another prompt, decoded."""
    return _open(render_image("a source photo", width, height)).convert("RGB")


def _mean_difference(first: Image.Image, second: Image.Image) -> float:
    diff = ImageChops.difference(first.convert("RGB"), second.convert("RGB"))
    return sum(ImageStat.Stat(diff).mean) / 3


@pytest.mark.parametrize(
    ("model", "ratio", "size", "expected"),
    [
        ("gemini-2.5-flash-image", "16:9", None, (1344, 768)),
        ("gemini-2.5-flash-image", "21:9", None, (1536, 672)),
        ("gemini-2.5-flash-image", "2:3", None, (832, 1248)),
        ("gemini-3-pro-image-preview", "1:1", "4K", (4096, 4096)),
        ("gemini-3-pro-image-preview", "9:16", "1K", (768, 1376)),
        ("gemini-3.1-flash-image-preview", "1:8", "1K", (384, 3072)),
        ("gemini-3.1-flash-image-preview", "8:1", "512", (1536, 192)),
    ],
)
def test_render_has_the_exact_catalog_size(
    model: str, ratio: str, size: str | None, expected: tuple[int, int]
) -> None:
    width, height = CATALOG.resolve(model).image_pixels(ratio, size)
    assert (width, height) == expected
    image = _open(render_image("a nano banana on a beach", width, height))
    assert image.size == expected
    assert image.mode == "RGB"


def test_render_of_the_widest_4k_banner() -> None:
    # gemini-3.1 8:1 at 4K: the largest side in the catalog.
    width, height = CATALOG.resolve("gemini-3.1-flash-image-preview").image_pixels("8:1", "4K")
    assert _open(render_image("banner", width, height)).size == (12288, 1536)


def test_render_is_deterministic_per_prompt() -> None:
    first = render_image("same prompt", 640, 480)
    assert render_image("same prompt", 640, 480) == first
    assert render_image("another prompt", 640, 480) != first


def test_render_is_not_a_flat_picture() -> None:
    image = _open(render_image("colour check", 512, 512))
    low, high = zip(*image.getextrema(), strict=True)
    assert max(high) - min(low) > 100


@pytest.mark.parametrize("prompt", ["", "x" * 5000, "word " * 3000, "naïve café 香蕉 🍌"])
def test_render_copes_with_odd_prompts(prompt: str) -> None:
    assert _open(render_image(prompt, 192, 1536)).size == (192, 1536)


@pytest.mark.parametrize("prompt", ["a" * 1_000_001, "\u0301" * 1_200_000])
def test_render_and_edit_cope_with_prompts_over_a_million_characters(prompt: str) -> None:
    # Pillow refuses to measure a string of more than a million characters.
    assert _open(render_image(prompt, 512, 512)).size == (512, 512)
    source = _encoded(_photo(), "PNG")
    assert _open(transform_image(source, prompt, 256, 256)).size == (256, 256)


def test_render_rejects_an_empty_size() -> None:
    with pytest.raises(ValueError):
        render_image("p", 0, 10)


def test_transform_keeps_input_size_by_default_and_visibly_changes_it() -> None:
    source = _photo()
    edited = _open(transform_image(_encoded(source, "PNG"), "make it blue", None, None))
    assert edited.size == source.size
    assert _mean_difference(source, edited) > 20


def test_transform_fits_to_the_requested_size() -> None:
    source = _encoded(_photo(400, 300), "JPEG", quality=90)
    assert _open(transform_image(source, "p", 1344, 768)).size == (1344, 768)
    assert _open(transform_image(source, "p", 200, None)).size == (200, 150)


def test_transform_changes_even_a_grey_input() -> None:
    grey = Image.new("RGB", (256, 256), (128, 128, 128))
    edited = _open(transform_image(_encoded(grey, "PNG"), "colour it", None, None))
    assert _mean_difference(grey, edited) > 20


def test_transform_is_deterministic() -> None:
    source = _encoded(_photo(), "PNG")
    assert transform_image(source, "p", 300, 300) == transform_image(source, "p", 300, 300)


def test_transform_reads_webp_and_transparent_png() -> None:
    webp = _encoded(_photo(), "WEBP")
    assert _open(transform_image(webp, "p", None, None)).size == (320, 240)
    clear = Image.new("RGBA", (64, 48), (255, 0, 0, 0))
    assert _open(transform_image(_encoded(clear, "PNG"), "p", None, None)).mode == "RGB"


def test_transform_reads_heic() -> None:
    pillow_heif.register_heif_opener()
    heic = _encoded(_photo(256, 192), "HEIF", quality=80)
    assert probe_size(heic) == (256, 192)
    assert _open(transform_image(heic, "p", 512, 384)).size == (512, 384)


def test_exif_rotation_is_applied() -> None:
    # A 300x200 JPEG tagged "rotate 90°" is shown (and edited) as 200x300.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _encoded(_photo(300, 200), "JPEG", exif=exif.tobytes())
    assert probe_size(rotated) == (200, 300)
    assert _open(transform_image(rotated, "p", None, None)).size == (200, 300)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
)
def test_transform_refuses_undecodable_input(data: bytes) -> None:
    with pytest.raises(ValueError, match="could not be decoded"):
        transform_image(data, "p", None, None)


def test_transform_refuses_formats_outside_the_allowed_list() -> None:
    gif = _encoded(Image.new("RGB", (8, 8)), "GIF")
    with pytest.raises(ValueError):
        transform_image(gif, "p", None, None)


def test_truncated_png_is_refused() -> None:
    png = _encoded(_photo(), "PNG")
    with pytest.raises(ValueError):
        transform_image(png[: len(png) // 2], "p", None, None)


FLASH_RATIOS = tuple(CATALOG.resolve("gemini-2.5-flash-image").aspect_ratios)
V31_RATIOS = tuple(CATALOG.resolve("gemini-3.1-flash-image-preview").aspect_ratios)


@pytest.mark.parametrize(
    ("width", "height", "ratios", "expected"),
    [
        (1920, 1080, FLASH_RATIOS, "16:9"),
        (1000, 1000, FLASH_RATIOS, "1:1"),
        (800, 600, FLASH_RATIOS, "4:3"),
        (600, 800, FLASH_RATIOS, "3:4"),
        (3000, 1000, FLASH_RATIOS, "21:9"),
        (300, 2400, FLASH_RATIOS, "9:16"),
        (300, 2400, V31_RATIOS, "1:8"),
        (4000, 1000, V31_RATIOS, "4:1"),
    ],
)
def test_nearest_aspect_ratio(
    width: int, height: int, ratios: tuple[str, ...], expected: str
) -> None:
    assert nearest_aspect_ratio(width, height, ratios) == expected


def test_nearest_aspect_ratio_needs_choices_and_a_real_size() -> None:
    with pytest.raises(ValueError):
        nearest_aspect_ratio(10, 10, [])
    with pytest.raises(ValueError):
        nearest_aspect_ratio(0, 10, ["1:1"])
    with pytest.raises(ValueError):
        nearest_aspect_ratio(10, 10, ["wide"])


# -- an edit follows its prompt's words ----------------------------------------------------------


def _top(png: bytes) -> Image.Image:
    """The upper half of an edit: away from its caption panel (bottom left)."""
    image = _open(png).convert("RGB")
    return image.crop((0, 0, image.width, image.height // 2))


def _mean(image: Image.Image) -> list[float]:
    return list(ImageStat.Stat(image).mean)


@pytest.mark.parametrize(
    ("prompt", "channel"), [("make it blue", 2), ("Turn the car RED.", 0), ("now green", 1)]
)
def test_an_edit_takes_the_colour_its_prompt_names(prompt: str, channel: int) -> None:
    means = _mean(_top(transform_image(_encoded(_photo(), "PNG"), prompt, None, None)))
    others = [value for index, value in enumerate(means) if index != channel]
    assert means[channel] > max(others) + 40, means


def test_the_last_colour_named_wins() -> None:
    source = _encoded(_photo(), "PNG")
    assert _top(transform_image(source, "turn the red car blue", None, None)) == _top(
        transform_image(source, "make it blue", None, None)
    )


def test_different_prompts_give_visibly_different_edits_and_each_is_deterministic() -> None:
    source = _encoded(_photo(), "PNG")
    prompts = ["make it blue", "make it pink", "add a hat", "a winter scene", "at night"]
    edits = {prompt: transform_image(source, prompt, 320, 240) for prompt in prompts}
    for prompt, png in edits.items():
        assert transform_image(source, prompt, 320, 240) == png  # byte for byte
    tops = [_top(png) for png in edits.values()]
    for index, first in enumerate(tops):
        for second in tops[index + 1 :]:
            assert _mean_difference(first, second) > 10


def test_night_words_darken_and_day_words_brighten() -> None:
    source = _encoded(_photo(), "PNG")

    def lightness(prompt: str) -> float:
        return ImageStat.Stat(_top(transform_image(source, prompt, None, None)).convert("L")).mean[
            0
        ]

    plain, night, day = lightness("blue"), lightness("blue at night"), lightness("blue by day")
    assert night < plain - 20 and day > plain + 20


def test_black_and_white_words_leave_no_colour() -> None:
    source = _encoded(_photo(), "PNG")
    for prompt in ("black and white", "make it greyscale"):
        top = _top(transform_image(source, prompt, None, None))
        red, green, blue = top.split()
        assert red == green == blue, prompt


def test_mirror_words_mirror_the_picture() -> None:
    source = _encoded(_photo(), "PNG")
    plain = _top(transform_image(source, "make it blue", None, None))
    mirrored = _top(transform_image(source, "mirror it, blue", None, None))
    assert mirrored == ImageOps.mirror(plain)


@pytest.mark.parametrize(
    ("prompt", "note"),
    [
        ("make it blue", "read from the prompt: blue tone"),
        ("a dark, mirrored sepia print", "read from the prompt: sepia tone, darker, mirrored"),
        ("black and white, with a rainbow", "read from the prompt: black and white, a rainbow"),
        ("add a hat", "read from the prompt: a tone picked by the prompt's words"),
        ("bright night", "read from the prompt: a tone picked by the prompt's words"),
    ],
)
def test_how_an_edit_prompt_is_read(prompt: str, note: str) -> None:
    assert read_edit(prompt).describe() == note


def test_an_edit_of_a_tiny_image_keeps_its_size() -> None:
    tiny = _encoded(_photo(24, 16), "PNG")
    long_prompt = "mirror it, make it blue at night with a rainbow " * 20
    assert _open(transform_image(tiny, long_prompt, None, None)).size == (24, 16)
