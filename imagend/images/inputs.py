"""Images a producer hands in: `init_image`, `mask_image`, `reference_image` (base64 text in the row), or
a finished row's image bytes read from storage (`init_image_id`, `reference_image_id`).

They are hostile input: every limit is checked before the pixels are decoded, and whatever is wrong
raises BadInput with one sentence that names the column and never quotes the input.

Accepted: PNG, JPEG and WebP, a single still picture. Animated PNG and WebP are refused (which frame the
producer meant is a guess); GIF, BMP, TIFF and the rest are refused as formats. A camera's JPEG with
extra pictures (MPO: a depth map, a preview) gives its first, the photograph itself.

What comes out is 8-bit and fully loaded (no file behind it): images are RGB with transparency laid
over white, masks are L (white = repaint) taken as the luminance of the mask laid over black, so a
transparent pixel keeps the picture and only what is drawn, opaque and light, is repainted.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from imagend.errors import BadInput, clip

MiB = 1024 * 1024
MAX_INPUT_BYTES = 20 * MiB  # an image once base64-decoded (or as read from storage)
MAX_INPUT_PIXELS = 4096 * 4096  # width x height; what a decoded RGB image may cost: 48 MiB
MAX_INPUT_SIDE = 8192  # either side: a 16384x1000 strip is within the pixel limit yet no model's shape
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
EXPECTED = "PNG, JPEG or WebP expected"
# The text of a library error, quoted in a message, is cut to this.
LIBRARY_TEXT_MAX_CHARS = 120

# A base64 text longer than this cannot decode to MAX_INPUT_BYTES or less (4 characters per 3 bytes).
_MAX_BASE64_CHARS = (MAX_INPUT_BYTES + 2) // 3 * 4
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[^;,]*)*)(;base64)?,", re.IGNORECASE)
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=_\s-]")  # \s: whitespace is dropped, not refused
_URLSAFE = str.maketrans("-_", "+/")
# Formats Pillow reads but imagend refuses, by their first bytes, so the message says which it was.
_REFUSED_MAGIC = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
# What Pillow raises on damaged data besides OSError (UnidentifiedImageError is one) and ValueError:
# its parsers index, unpack and look up what the file claims.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError)
# Modes whose transparency is laid over the background.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_16_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def decode_base64_image(text: str, column: str) -> Image.Image:
    """A base64 image (whitespace and a `data:image/...;base64,` prefix allowed) as a loaded RGB image."""
    return decode_image_bytes(_base64_bytes(text, column), column)


def decode_base64_mask(text: str, column: str) -> Image.Image:
    """A base64 mask as a loaded L image, white = repaint: its luminance laid over black."""
    return decode_mask_bytes(_base64_bytes(text, column), column)


def decode_image_bytes(data: bytes, column: str) -> Image.Image:
    """Image file bytes as a loaded RGB image, EXIF orientation applied, transparency laid over white."""
    return _decode(data, column, background=(255, 255, 255)).convert("RGB")


def decode_mask_bytes(data: bytes, column: str) -> Image.Image:
    """Mask file bytes as a loaded L image, white = repaint: its luminance laid over black."""
    return _decode(data, column, background=(0, 0, 0)).convert("L")


def fit_size(width: int, height: int, multiple: int = 8, max_side: int = 2048) -> tuple[int, int]:
    """The size an image-to-image row with NULL width/height takes from its init image.

    The init image's size, scaled down keeping its aspect ratio until the longer side is at most
    max_side (never scaled up), then each side rounded down to a multiple of `multiple` (at least `multiple`).
    """
    if width < 1 or height < 1:
        raise ValueError(f"an image has at least one pixel a side, got {width}x{height}")
    if multiple < 1 or max_side < multiple:
        raise ValueError(f"multiple must be at least 1 and at most max_side, got {multiple} and {max_side}")
    longer = max(width, height)
    if longer > max_side:
        # Integers, not floats: 3000x1000 into 2048 gives 682 exactly, never 681.99… or 683.
        width, height = width * max_side // longer, height * max_side // longer
    return max(multiple, width // multiple * multiple), max(multiple, height // multiple * multiple)


def to_base64_png(image: Image.Image) -> str:
    """An image as base64 PNG text, as a producer would write it (for tests and tools)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def check_base64_length(chars: int, column: str) -> None:
    """Cheap refusal first: a text far over the limit is not even read (whitespace may double it at
    most). The claim gives each image column's length (octet_length), so this runs before the text
    is fetched from the row at all."""
    if chars > 2 * _MAX_BASE64_CHARS:
        raise BadInput(f"{column}: {chars / MiB:.0f} MiB of text, more than an image of at most "
                       f"{MAX_INPUT_BYTES // MiB} MiB takes in base64")


def _base64_bytes(text: str, column: str) -> bytes:
    check_base64_length(len(text), column)
    offset = len(text) - len(text.lstrip())  # where the payload starts in what the producer wrote
    text = text.strip()
    if text[:5].lower() == "data:":
        match = _DATA_URL.match(text, 0, 300)  # the prefix is short; never scan the payload for it
        if match is None or match.group(3) is None:
            raise BadInput(f"{column}: a data URL must be base64 (data:image/png;base64,…)")
        text = text[match.end() :]
        offset += match.end()
    elif text[:8].lower().startswith(("http://", "https://")):
        raise BadInput(f"{column}: a URL is not accepted; put the image itself in the column, base64-encoded")
    bad = _NOT_BASE64.search(text)
    if bad is not None:  # the offset in the column's own text, so the producer can find it
        raise BadInput(f"{column}: not valid base64 (the character {bad.group()!r} at offset {offset + bad.start()})")
    text = "".join(text.split())  # line breaks every 76 characters (MIME, `base64` CLI) and stray spaces
    if not text:
        raise BadInput(f"{column}: empty; a base64-encoded image is expected ({EXPECTED})")
    if len(text) > _MAX_BASE64_CHARS:
        raise BadInput(f"{column}: {len(text) * 3 // 4 / MiB:.1f} MiB once decoded, "
                       f"at most {MAX_INPUT_BYTES // MiB} MiB")
    # Both alphabets: base64url (JavaScript's, JWT's) is as unambiguous as the standard one.
    text = text.translate(_URLSAFE).rstrip("=")
    if len(text) % 4 == 1:
        raise BadInput(f"{column}: not valid base64 (cut short: {len(text)} characters cannot encode whole bytes)")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:  # "=" inside the text
        raise BadInput(f"{column}: not valid base64 ({clip(str(exc), LIBRARY_TEXT_MAX_CHARS)})") from None
    return data


def _decode(data: bytes, column: str, background: tuple[int, int, int]) -> Image.Image:
    """The checked, loaded, upright, 8-bit RGB (or L) picture; alpha laid over `background`."""
    if not data:
        raise BadInput(f"{column}: empty; an image is expected ({EXPECTED})")
    if len(data) > MAX_INPUT_BYTES:
        raise BadInput(f"{column}: {len(data) / MiB:.1f} MiB, at most {MAX_INPUT_BYTES // MiB} MiB")
    try:
        # PIL's own bomb check warns past 89 Mpx and raises past twice that: ours, right after the
        # header is read, is lower and does not depend on the process-wide Image.MAX_IMAGE_PIXELS.
        # (catch_warnings swaps the process-wide filters; two threads racing here can at worst leave
        # this one warning ignored, which our check makes moot.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except Image.DecompressionBombError:
        raise BadInput(f"{column}: too many pixels, at most {MAX_INPUT_PIXELS} "
                       f"({MAX_INPUT_SIDE} on either side)") from None
    except UnidentifiedImageError:
        refused = next((name for magic, name in _REFUSED_MAGIC.items() if data.startswith(magic)), None)
        if refused is not None:
            raise BadInput(f"{column}: {refused} is not accepted ({EXPECTED})") from None
        raise BadInput(f"{column}: not an image ({EXPECTED})") from None
    except _DECODE_ERRORS as exc:
        raise BadInput(f"{column}: {_damaged(exc)}") from None
    with opened as image:
        kind = "WebP" if image.format == "WEBP" else image.format
        width, height = image.size  # from the header: nothing decoded yet
        if width > MAX_INPUT_SIDE or height > MAX_INPUT_SIDE or width * height > MAX_INPUT_PIXELS:
            raise BadInput(f"{column}: {width}x{height} is too large, at most {MAX_INPUT_PIXELS} pixels "
                           f"and {MAX_INPUT_SIDE} on either side")
        if width < 1 or height < 1:
            raise BadInput(f"{column}: {width}x{height}, an image without pixels")
        # MPO (a camera's JPEG with a depth map or preview after it): the first picture is the photo.
        frames = getattr(image, "n_frames", 1)
        if image.format != "MPO" and frames > 1:
            raise BadInput(f"{column}: an animated {kind} ({frames} frames); a single still image is expected")
        try:
            # load() raises on truncated data as long as ImageFile.LOAD_TRUNCATED_IMAGES stays False,
            # Pillow's default, which imagend never changes (a test holds it).
            image.load()
            upright = ImageOps.exif_transpose(image)  # a new image: nothing refers to the file after this
            return _to_8_bit(upright, background)
        except _DECODE_ERRORS as exc:
            raise BadInput(f"{column}: the {kind} {_damaged(exc)}") from None


def _damaged(exc: BaseException) -> str:
    text = clip(str(exc), LIBRARY_TEXT_MAX_CHARS)
    return "cannot be decoded, damaged or cut short" + (f" ({text})" if text else "")


def _to_8_bit(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """8-bit RGB, or L for grayscale without transparency; transparency laid over `background`."""
    mode = image.mode
    if mode in _16_BIT_MODES:
        # Scaled, not clipped: Pillow's own convert("L") clips 16-bit values, so mid-gray became white.
        return image.convert("I").point(lambda value: value / 257 + 0.5).convert("L")
    if mode in _ALPHA_MODES or "transparency" in image.info:  # tRNS: a palette's, or one RGB or gray key
        rgba = image.convert("RGBA")
        laid = Image.new("RGB", image.size, background)
        laid.paste(rgba, mask=rgba.getchannel("A"))
        return laid
    if mode in ("RGB", "L"):
        return image
    return image.convert("RGB")  # P, 1, CMYK (Pillow undoes the inversion Adobe's JPEGs carry), the rest
