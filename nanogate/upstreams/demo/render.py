"""Pillow renders for the offline demo upstream: pure functions from bytes and text to PNG bytes.

Everything here is deterministic: the seed is the SHA-256 of the prompt, PNGs carry no metadata,
so the same prompt always gives byte-identical output. That is what makes the demo usable as a
test fixture. An edit also reads a few plain words of its prompt (colours, night and day, black
and white, mirror, rainbow), so whoever tries "make it blue" sees the prompt arrive.

Speed matters because a 4K render is 16-19 megapixels on a small box, so the slow parts are kept
off full resolution: the smooth backdrop is painted on a canvas at most 256 pixels long and
upscaled once, shapes and text are plain ImageDraw fills (C loops), and PNGs are written with
fast zlib settings.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

RENDER_LABEL = "DEMO RENDER - not a model"
EDIT_LABEL = "DEMO EDIT - not a model"

# Formats an edit may decode. Other formats Pillow knows (GIF, BMP, TIFF...) stay closed: the
# gateway only accepts these mime types, and fewer parsers means less attack surface.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "HEIF")

# Below Pillow's own DecompressionBombWarning threshold (about 89 MP): a larger input is refused
# with a plain message instead of a warning or a multi-gigabyte allocation.
MAX_INPUT_PIXELS = 80_000_000

_BACKDROP_SIDE = 256  # long side of the low-resolution canvas the backdrop is painted on
_PNG_LEVEL = 1  # zlib level: smooth art compresses well even at 1, and 1 is the fastest
_UNDECODABLE = "The input image could not be decoded as PNG, JPEG, WEBP, HEIC or HEIF."

RGB = tuple[int, int, int]
# load_default gives the bundled FreeType font, or a bitmap font where FreeType is missing.
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def render_image(prompt: str, width: int, height: int) -> bytes:
    """A PNG of exactly width x height, deterministic from the prompt (text-to-image)."""
    _check_size(width, height)
    rng = _rng(prompt)
    palette = _palette(rng)
    canvas = _backdrop(rng, palette, width, height)
    _draw_shapes(canvas, rng, palette)
    _draw_caption(canvas, RENDER_LABEL, prompt, at_top=True)
    return _png(canvas)


def transform_image(data: bytes, prompt: str, width: int | None, height: int | None) -> bytes:
    """Image-to-image: a PNG that visibly follows the prompt's words, sized width x height when
    given (see `read_edit`). The input is cover-fitted (scaled and centre-cropped) to the output
    size, toned in the prompt's colour, and labelled with what was read. Raises ValueError on
    bad input.
    """
    source = _decode(data, _draft_hint(width, height))
    size = _output_size(source.size, width, height)
    edit = read_edit(prompt)
    # Tone at whichever of the two sizes is smaller: a per-pixel pass costs per pixel.
    if size[0] * size[1] > source.width * source.height:
        edited = _fit(_tone(source, edit), size)
    else:
        edited = _tone(_fit(source, size), edit)
    if edit.mirror:
        edited = ImageOps.mirror(edited)
    if edit.rainbow:
        _draw_rainbow(edited, _rng(prompt))
    # Bottom left, so an edit of a demo render does not stack its label on the render's.
    _draw_caption(edited, EDIT_LABEL, prompt, at_top=False, note=edit.describe())
    return _png(edited)


# Words an edit's prompt is read for, whole and in lower case. The last colour named wins
# ("turn the red car blue" is blue); with none, the words themselves pick a hue.
_COLOURS: dict[str, RGB] = {
    "red": (220, 30, 40),
    "orange": (245, 130, 20),
    "yellow": (245, 215, 30),
    "gold": (212, 170, 40),
    "golden": (212, 170, 40),
    "green": (40, 170, 60),
    "teal": (20, 150, 150),
    "cyan": (30, 200, 220),
    "turquoise": (40, 210, 190),
    "blue": (30, 80, 230),
    "navy": (20, 35, 130),
    "purple": (130, 40, 190),
    "violet": (140, 70, 220),
    "pink": (240, 100, 170),
    "magenta": (220, 30, 180),
    "brown": (130, 80, 40),
    "sepia": (160, 110, 60),
}
_GREY_WORDS = frozenset({"grey", "gray", "greyscale", "grayscale", "monochrome", "b&w"})
_DARK_WORDS = frozenset({"night", "dark", "darker", "midnight", "dusk", "evening", "moody"})
_LIGHT_WORDS = frozenset({"day", "daylight", "bright", "brighter", "sunny", "light", "lighter"})
_MIRROR_WORDS = frozenset({"mirror", "mirrored", "flip", "flipped"})
_WORD = re.compile(r"[a-z&]+")
_DARKER, _LIGHTER = 0.55, 1.35  # brightness factors for night and day words


@dataclass(frozen=True, slots=True)
class EditLook:
    """What a demo edit does, as read from its prompt."""

    colour: RGB | None  # the tone; None: black and white
    colour_name: str | None  # the colour word it came from; None: picked by the words
    brightness: float = 1.0
    mirror: bool = False
    rainbow: bool = False

    def describe(self) -> str:
        """One caption line saying how the prompt was read."""
        if self.colour is None:
            effects = ["black and white"]
        elif self.colour_name:
            effects = [f"{self.colour_name} tone"]
        else:
            effects = ["a tone picked by the prompt's words"]
        if self.brightness < 1:
            effects.append("darker")
        elif self.brightness > 1:
            effects.append("brighter")
        if self.mirror:
            effects.append("mirrored")
        if self.rainbow:
            effects.append("a rainbow")
        return "read from the prompt: " + ", ".join(effects)


def read_edit(prompt: str) -> EditLook:
    """The demo's reading of an edit prompt: a tone (the last colour word, grey for black and
    white words, else a hue picked by the words), darker for night words, brighter for day
    words, mirrored for mirror words, a rainbow when asked for."""
    text = prompt.lower()
    words = _WORD.findall(text)
    named = [word for word in words if word in _COLOURS]
    colour: RGB | None
    if "black and white" in text or _GREY_WORDS.intersection(words):
        colour, name = None, None
    elif named:
        colour, name = _COLOURS[named[-1]], named[-1]
    else:
        seed = hashlib.sha256(" ".join(words).encode()).digest()
        colour, name = _hls(seed[0] / 256, 0.5, 0.85), None
    dark, light = bool(_DARK_WORDS.intersection(words)), bool(_LIGHT_WORDS.intersection(words))
    brightness = _DARKER if dark and not light else _LIGHTER if light and not dark else 1.0
    return EditLook(
        colour,
        name,
        brightness,
        mirror=bool(_MIRROR_WORDS.intersection(words)),
        rainbow="rainbow" in words or "rainbows" in words,
    )


def probe_size(data: bytes) -> tuple[int, int]:
    """The input image's displayed size (EXIF rotation applied), reading only its header."""
    with _open(data) as image:
        width, height = image.size
        # Orientations 5-8 are rotated a quarter turn: the photo is shown with sides swapped.
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            return height, width
        return width, height


def nearest_aspect_ratio(width: int, height: int, ratios: Iterable[str]) -> str:
    """The ratio ("W:H") closest to width/height, compared on a log scale.

    Log scale makes 2:1 and 1:2 equally far from 1:1, so portrait and landscape inputs are
    treated alike. Ties go to the earlier ratio, so catalog order decides.
    """
    if width <= 0 or height <= 0:
        raise ValueError("Image dimensions must be positive.")
    target = math.log(width / height)
    best: str | None = None
    best_distance = math.inf
    for ratio in ratios:
        distance = abs(math.log(_ratio_value(ratio)) - target)
        if distance < best_distance:
            best, best_distance = ratio, distance
    if best is None:
        raise ValueError("No aspect ratios to choose from.")
    return best


# --- seeds and colours --------------------------------------------------------------------------

_BILINEAR = Image.Resampling.BILINEAR
_EXIF_ORIENTATION = 0x0112


def _rng(prompt: str) -> random.Random:
    return random.Random(hashlib.sha256(prompt.encode("utf-8")).digest())


def _palette(rng: random.Random) -> list[RGB]:
    """Five related colours: a base hue, its neighbours and its complement."""
    base = rng.random()
    offsets = (0.0, 0.08, -0.1, 0.5, 0.42)
    return [
        _hls(base + offset, rng.uniform(0.35, 0.65), rng.uniform(0.55, 0.95)) for offset in offsets
    ]


def _hls(hue: float, lightness: float, saturation: float) -> RGB:
    red, green, blue = colorsys.hls_to_rgb(hue % 1.0, lightness, saturation)
    return round(red * 255), round(green * 255), round(blue * 255)


def _ratio_value(ratio: str) -> float:
    left, sep, right = ratio.partition(":")
    try:
        value = float(left) / float(right)
    except (ValueError, ZeroDivisionError):
        value = 0.0
    if not sep or value <= 0:
        raise ValueError(f"'{ratio}' is not an aspect ratio like '16:9'.")
    return value


# --- text-to-image ------------------------------------------------------------------------------


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"Cannot render a {width}x{height} image.")


def _backdrop(rng: random.Random, palette: list[RGB], width: int, height: int) -> Image.Image:
    """A rotated two-colour gradient with a soft glow, painted small and upscaled once."""
    scale = _BACKDROP_SIDE / max(width, height)
    small = (max(2, round(width * scale)), max(2, round(height * scale)))
    ramp = _rotated_ramp(rng.uniform(0, 360)).resize(small, _BILINEAR)
    canvas = Image.composite(_solid(small, palette[0]), _solid(small, palette[3]), ramp)
    glow = _glow_mask(rng, small)
    canvas = Image.composite(_solid(small, palette[1]), canvas, glow)
    return canvas.resize((width, height), _BILINEAR)


def _solid(size: tuple[int, int], colour: RGB) -> Image.Image:
    return Image.new("RGB", size, colour)


def _rotated_ramp(angle: float) -> Image.Image:
    """A linear 0-255 ramp at any angle, with no empty corners."""
    ramp = Image.linear_gradient("L").resize((512, 512), _BILINEAR).rotate(angle, _BILINEAR)
    # The inscribed square of a rotated 512 square (side 512/sqrt 2) is always fully covered.
    inset = (512 - 362) // 2
    return ramp.crop((inset, inset, inset + 362, inset + 362))


def _glow_mask(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A soft round highlight at a seeded spot, as a mask of at most 80% strength."""
    width, height = size
    side = max(2, round(max(width, height) * rng.uniform(0.5, 0.9)))
    # radial_gradient reaches 255 at the corners, so its inscribed circle ends at about 181:
    # map 0..181 to 204..0 (80% strength at the centre) so the blob fades out before its edges.
    fade = [max(0, (181 - level) * 204 // 181) for level in range(256)]
    blob = Image.radial_gradient("L").point(fade).resize((side, side), _BILINEAR)
    mask = Image.new("L", size, 0)
    corner = (round(rng.uniform(-0.3, 0.8) * width), round(rng.uniform(-0.3, 0.8) * height))
    mask.paste(blob, corner)
    return mask


def _draw_shapes(canvas: Image.Image, rng: random.Random, palette: list[RGB]) -> None:
    """Translucent circles, rings, rounded boxes and polygons at seeded places."""
    draw = ImageDraw.Draw(canvas, "RGBA")
    width, height = canvas.size
    unit = min(width, height)
    for _ in range(rng.randint(5, 8)):
        colour = (*rng.choice(palette), rng.randint(60, 150))
        centre = (rng.uniform(0, width), rng.uniform(0, height))
        radius = max(2.0, unit * rng.uniform(0.08, 0.35))
        box = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
        kind = rng.choice(("circle", "ring", "box", "polygon"))
        if kind == "circle":
            draw.ellipse(box, fill=colour)
        elif kind == "ring":
            draw.ellipse(box, outline=colour, width=max(1, round(radius / 6)))
        elif kind == "box":
            draw.rounded_rectangle(box, radius=radius / 4, fill=colour)
        else:
            sides, turn = rng.randint(3, 7), rng.uniform(0, 360)
            draw.regular_polygon((*centre, radius), sides, rotation=turn, fill=colour)


# --- image-to-image -----------------------------------------------------------------------------


def _open(data: bytes) -> Image.Image:
    """Open (header only) one of the accepted formats, or raise ValueError."""
    _register_heif()
    try:
        image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(_UNDECODABLE) from exc
    if image.width * image.height > MAX_INPUT_PIXELS:
        image.close()
        raise ValueError(
            f"The input image is {image.width}x{image.height}; "
            f"at most {MAX_INPUT_PIXELS:,} pixels are accepted."
        )
    return image


def _decode(data: bytes, draft: int | None) -> Image.Image:
    """Fully decode to an upright RGB image (transparency flattened onto white)."""
    with _open(data) as image:
        try:
            if draft is not None:
                # JPEG can decode at 1/2, 1/4 or 1/8 scale for free; every side stays >= draft,
                # so the later cover-fit never upscales.
                image.draft("RGB", (draft, draft))
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _flatten(upright)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(_UNDECODABLE) from exc


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _draft_hint(width: int | None, height: int | None) -> int | None:
    if width is None or height is None:
        return None
    return max(width, height)


def _output_size(source: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """width x height when given; one side alone keeps the input's shape; none keeps its size."""
    source_width, source_height = source
    if width is not None and height is not None:
        size = (width, height)
    elif width is not None:
        size = (width, max(1, round(width * source_height / source_width)))
    elif height is not None:
        size = (max(1, round(height * source_width / source_height)), height)
    else:
        size = source
    _check_size(*size)
    return size


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover `size` and crop the centre, so the output never has bars."""
    return image if image.size == size else ImageOps.fit(image, size, _BILINEAR)


def _tone(image: Image.Image, edit: EditLook) -> Image.Image:
    """The image's light and shade in one colour (a duotone from near black through the colour
    to near white), or in grey; then brightened or darkened. Lookup tables only: fast at 4K."""
    grey = image.convert("L")
    if edit.colour is None:
        toned = ImageOps.autocontrast(grey).convert("RGB")
    else:
        colour = edit.colour
        shadow = tuple(channel * 15 // 100 for channel in colour)
        highlight = tuple(channel + (255 - channel) * 3 // 4 for channel in colour)
        toned = ImageOps.colorize(grey, shadow, highlight, mid=colour)
    if edit.brightness != 1.0:
        levels = [min(255, round(level * edit.brightness)) for level in range(256)]
        toned = toned.point(levels * 3)
    return toned


def _draw_rainbow(canvas: Image.Image, rng: random.Random) -> None:
    """A translucent seven-band arc centred below a seeded point near the bottom edge."""
    draw = ImageDraw.Draw(canvas, "RGBA")
    width, height = canvas.size
    unit = min(width, height)
    band = max(1, round(unit * 0.025))
    centre_x = width * rng.uniform(0.3, 0.7)
    centre_y = height * rng.uniform(0.85, 1.1)
    outer = unit * rng.uniform(0.45, 0.7)
    for index in range(7):
        colour = (*_hls(index / 7 * 0.8, 0.55, 1.0), 130)
        radius = outer - index * band
        box = (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius)
        draw.arc(box, 180, 360, fill=colour, width=band)


# --- caption ------------------------------------------------------------------------------------


def _draw_caption(
    canvas: Image.Image, label: str, prompt: str, *, at_top: bool, note: str | None = None
) -> None:
    """The demo label, the pixel size (and `note`) and the wrapped prompt on a dark panel in a
    left corner.

    Sized from the short side so that 8:1 banners and 1:8 strips both stay legible.
    """
    width, height = canvas.size
    short = min(width, height)
    margin = max(4, short // 32)
    big_size, small_size = max(8, short // 18), max(8, short // 24)
    big, small = ImageFont.load_default(size=big_size), ImageFont.load_default(size=small_size)
    big_step, small_step = round(big_size * 1.3), round(small_size * 1.4)
    room = width - 4 * margin
    head = [f"{width}x{height} px", *(_wrap(note, small, room, 2) if note else [])]
    free = height - 4 * margin - big_step - len(head) * small_step
    body = _wrap(prompt.strip() or "(no prompt)", small, room, min(6, free // small_step))
    lines = [(label, big, big_step)]
    lines += [(text, small, small_step) for text in (*head, *body)]
    panel_width = max(_text_width(text, face) for text, face, _ in lines) + 2 * margin
    panel_height = sum(step for _, _, step in lines) + 2 * margin
    draw = ImageDraw.Draw(canvas, "RGBA")
    panel_top = margin if at_top else max(margin, height - margin - panel_height)
    panel = (margin, panel_top, margin + panel_width, panel_top + panel_height)
    draw.rounded_rectangle(panel, radius=margin / 2, fill=(0, 0, 0, 190))
    top = panel_top + margin
    for text, face, step in lines:
        draw.text((2 * margin, top), text, font=face, fill=(255, 255, 255, 255))
        top += step


def _text_width(text: str, font: Font) -> int:
    return math.ceil(font.getlength(text))


def _wrap(text: str, font: Font, room: int, max_lines: int) -> list[str]:
    """Greedy word wrap into at most max_lines lines; overflow ends the last line with '...'."""
    if max_lines <= 0 or room <= 0:
        return []
    # A visible glyph is at least a pixel wide, so no more than this much of the text can show; the
    # cut also keeps each string measured under Pillow's limit (a million characters).
    text = text[: (max_lines + 1) * room]
    lines: list[str] = []
    current = ""
    for word in text.split():
        for piece in _split_long(word, font, room, max_lines + 1):
            candidate = f"{current} {piece}" if current else piece
            if current and _text_width(candidate, font) > room:
                lines.append(current)
                candidate = piece
            current = candidate
        if len(lines) > max_lines:
            break  # a huge prompt must not cost a measurement per word
    if current:
        lines.append(current)
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max_lines]
    kept[-1] = _ellipsize(kept[-1], font, room)
    return kept


def _split_long(word: str, font: Font, room: int, most: int) -> list[str]:
    """Cut a word wider than the line into line-sized pieces (URLs, long identifiers).

    Only the first `most` pieces can be shown, so the rest stays one uncut (unshown) piece.
    """
    pieces: list[str] = []
    while len(pieces) < most and len(word) > 1 and _text_width(word, font) > room:
        cut = _fitting_prefix(word, font, room)
        pieces.append(word[:cut])
        word = word[cut:]
    pieces.append(word)
    return pieces


def _fitting_prefix(word: str, font: Font, room: int) -> int:
    """Length of the longest prefix that fits (binary search); at least one character."""
    # Every glyph is at least a pixel wide, so no prefix longer than `room` can fit.
    low, high = 1, min(len(word), room)
    while low < high:
        middle = (low + high + 1) // 2
        if _text_width(word[:middle], font) <= room:
            low = middle
        else:
            high = middle - 1
    return low


def _ellipsize(line: str, font: Font, room: int) -> str:
    while line and _text_width(line + "...", font) > room:
        line = line[:-1]
    return line + "..."


def _register_heif() -> None:
    """Teach Pillow HEIC/HEIF on first use; importing pillow_heif is too slow for import time."""
    global _heif_registered
    if not _heif_registered:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _heif_registered = True


_heif_registered = False


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=_PNG_LEVEL)
    return buffer.getvalue()
