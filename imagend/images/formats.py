"""Output formats: what a row's `format` and `quality` ask for, recognising what a backend made, re-encoding
with the generation parameters kept, and thumbnails.

Parameters travel as AUTOMATIC1111 writes them, so A1111, ComfyUI and Civitai read them back: a PNG
`parameters` text chunk; for JPEG and WebP the EXIF UserComment, "UNICODE\\0" then UTF-16BE text (what
piexif's UserComment.dump(..., encoding="unicode") writes and A1111's reader loads).

An image already in the asked format (the default: PNG, or what the backend made when the row names
none) passes through untouched: no decode, no cost on the finishing path.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from imagend.errors import BadInput, RetryableError

# format -> (file extension, Content-Type). `jpg` is the extension a JPEG has always had here.
FORMATS = {"png": ("png", "image/png"), "webp": ("webp", "image/webp"), "jpeg": ("jpg", "image/jpeg")}
FORMAT_ALIASES = {"jpg": "jpeg"}
QUALITY_RANGE = (1, 100)
# Pillow's defaults when a row names no quality: JPEG 75 looks soft on generated images.
DEFAULT_QUALITY = {"jpeg": 90, "webp": 85}
THUMBNAIL_QUALITY = 80
PNG_COMPRESS_LEVEL = 4  # as the local backend: close to level 6's size at about half the time

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """What a row asked for: `format` (None: as the backend made it, PNG for all but Fusion Brain's
    legacy JPEG) and `quality` (None: the format's default)."""

    format: str | None = None
    quality: int | None = None


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    format: str  # png, webp or jpeg

    @property
    def extension(self) -> str:
        return FORMATS[self.format][0]

    @property
    def content_type(self) -> str:
        return FORMATS[self.format][1]


def parse_output_format(fmt: str | None, quality: int | None) -> OutputFormat | None:
    """A row's `format` and `quality`, checked; BadInput names what is wrong. None: the default."""
    name = None
    if fmt is not None and fmt.strip():
        lowered = fmt.strip().lower()
        name = FORMAT_ALIASES.get(lowered, lowered)
        if name not in FORMATS:
            shown = fmt if len(fmt) <= 20 else fmt[:20] + "…"
            raise BadInput(f"format must be one of: {', '.join(FORMATS)}; got {shown!r}")
    if quality is not None and not QUALITY_RANGE[0] <= quality <= QUALITY_RANGE[1]:
        raise BadInput(f"quality must be between {QUALITY_RANGE[0]} and {QUALITY_RANGE[1]}, got {quality}")
    if name is None and quality is None:
        return None
    return OutputFormat(name, quality)


def sniff(data: bytes) -> str:
    """The format of encoded image bytes, from their magic numbers (PNG unless shown otherwise)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "png"


def encode(data: bytes, wanted: OutputFormat | None) -> Encoded:
    """`data` in the format the row asked for, its parameters carried over."""
    made = sniff(data)
    if wanted is None or ((wanted.format or made) == made and (wanted.quality is None or made == "png")):
        return Encoded(data, made)
    target = wanted.format or made
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as image:
            image.load()
            parameters = _parameters_of(image)
            picture = image.convert("RGB") if target == "jpeg" or image.mode not in ("RGB", "RGBA") else image.copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise RetryableError(f"the backend's image does not decode ({type(exc).__name__}: {exc})") from None
    return Encoded(_save(picture, target, wanted.quality, parameters), target)


def thumbnail(data: bytes, side_px: int) -> bytes:
    """A WebP no larger than `side_px` on its longest side (never enlarged), parameters left out."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as image:
            image.draft("RGB", (side_px, side_px))  # JPEG: decode at a reduced scale, much faster
            picture = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise RetryableError(f"the backend's image does not decode ({type(exc).__name__}: {exc})") from None
    picture.thumbnail((side_px, side_px))
    buffer = io.BytesIO()
    picture.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


def read_parameters(data: bytes) -> str | None:
    """The A1111 parameters text of a PNG, JPEG or WebP, or None (for tests and tools)."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as image:
        return _parameters_of(image)


def _parameters_of(image: object) -> str | None:
    info = getattr(image, "info", {})
    text = info.get("parameters")
    if isinstance(text, str):
        return text
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)  # type: ignore[attr-defined]
    if isinstance(comment, bytes) and comment.startswith(_UNICODE_PREFIX):
        return comment[len(_UNICODE_PREFIX) :].decode("utf-16-be", errors="replace")
    return None


def user_comment_exif(text: str) -> bytes:
    """An EXIF block holding only UserComment = `text`, typed UNDEFINED as the standard says (Pillow's
    Exif writes a nested tag as BYTE, which piexif, and so A1111, cannot read back): a little-endian TIFF
    header, IFD0 with one pointer to the Exif IFD, the Exif IFD with one entry, then the comment."""
    comment = _UNICODE_PREFIX + text.encode("utf-16-be")
    exif_ifd_at = 8 + 18  # after the header (8) and IFD0 (count 2 + one 12-byte entry + next-IFD 4)
    data_at = exif_ifd_at + 18
    tiff = (
        b"II*\x00" + struct.pack("<I", 8)
        + struct.pack("<HHHII", 1, _EXIF_IFD, 4, 1, exif_ifd_at) + struct.pack("<I", 0)  # LONG pointer
        + struct.pack("<HHHII", 1, _USER_COMMENT, 7, len(comment), data_at) + struct.pack("<I", 0)  # UNDEFINED
        + comment
    )
    return b"Exif\x00\x00" + tiff


def _save(picture: object, target: str, quality: int | None, parameters: str | None) -> bytes:
    from PIL import Image as PILImage
    from PIL.PngImagePlugin import PngInfo

    assert isinstance(picture, PILImage.Image)
    buffer = io.BytesIO()
    if target == "png":
        info = PngInfo()
        if parameters is not None:
            info.add_text("parameters", parameters)
        picture.save(buffer, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()
    options: dict[str, object] = {"quality": quality or DEFAULT_QUALITY[target]}
    if parameters is not None:
        options["exif"] = user_comment_exif(parameters)
    picture.save(buffer, format="WEBP" if target == "webp" else "JPEG", **options)
    return buffer.getvalue()
