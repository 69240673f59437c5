"""image_inputs: hostile base64 and image bytes become a loaded 8-bit image or a BadInput naming the column.

Every input is built here with Pillow, in memory."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from imagend.errors import BadInput
from imagend.images.inputs import (
    MAX_INPUT_BYTES,
    MAX_INPUT_PIXELS,
    MAX_INPUT_SIDE,
    decode_base64_image,
    decode_base64_mask,
    decode_image_bytes,
    fit_size,
    to_base64_png,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def noise(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Pixels that do not compress, so cutting the file cuts the picture."""
    return Image.frombytes("RGB", size, random.Random(7).randbytes(size[0] * size[1] * 3))


def halves(size: tuple[int, int] = (32, 16)) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1]))
    return image


def close(pixel: object, expected: tuple[int, ...], tolerance: int = 12) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def png_with_header(width: int, height: int, idat: bytes) -> bytes:
    """A PNG whose IHDR claims width x height (1-bit grayscale), with correct CRCs and the given IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rejected(column: str, text: str) -> str:
    with pytest.raises(BadInput) as caught:
        decode_base64_image(text, column)
    message = str(caught.value)
    assert message.startswith(f"{column}: "), message
    assert "\n" not in message and len(message) < 300, message
    return message


# --- what is accepted ---


@pytest.mark.parametrize(("fmt", "options", "tolerance"), [
    ("PNG", {}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("JPEG", {"quality": 95}, 12),
])
def test_png_jpeg_and_webp_come_back_as_loaded_rgb_with_their_pixels(fmt, options, tolerance):
    image = decode_base64_image(b64(encoded(halves(), fmt, **options)), "init_image")
    assert (image.mode, image.size) == ("RGB", (32, 16))
    assert close(image.getpixel((4, 8)), RED, tolerance)
    assert close(image.getpixel((28, 8)), BLUE, tolerance)
    assert getattr(image, "fp", None) is None  # loaded: no file behind it


def test_a_data_url_prefix_whitespace_line_breaks_and_base64url_are_read():
    data = encoded(halves(), "PNG")
    wrapped = base64.encodebytes(data).decode("ascii")  # a line break every 76 characters
    assert "\n" in wrapped
    for text in (
        "data:image/png;base64," + b64(data),
        "DATA:image/png;charset=binary;base64," + b64(data),
        f"  \n{wrapped}\t ",
        "data:image/png;base64,\n" + wrapped,
        base64.urlsafe_b64encode(data).decode("ascii").rstrip("="),  # base64url, padding left out
    ):
        assert decode_base64_image(text, "init_image").getpixel((4, 8)) == RED


def test_exif_orientation_6_is_applied_so_the_size_turns():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = decode_base64_image(b64(encoded(halves((40, 20)), "JPEG", quality=95, exif=exif)), "init_image")
    assert image.size == (20, 40)
    # The stored left (red) column is the top row once turned clockwise.
    assert close(image.getpixel((10, 4)), RED) and close(image.getpixel((10, 35)), BLUE)


def test_a_cmyk_jpeg_comes_out_in_its_colours():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in ink
    image = decode_base64_image(b64(encoded(cmyk, "JPEG", quality=95)), "init_image")
    assert image.mode == "RGB"
    assert close(image.getpixel((8, 8)), RED, 16)


def test_a_16_bit_grayscale_png_is_scaled_so_mid_gray_stays_mid_gray():
    gray16 = Image.new("I;16", (8, 8), 32768)
    gray16.putpixel((0, 0), 65535)
    data = encoded(gray16, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = decode_base64_image(b64(data), "init_image")
    assert image.getpixel((4, 4)) == (128, 128, 128)  # Pillow's own convert("L") would say 255
    assert image.getpixel((0, 0)) == WHITE


def test_transparent_rgba_pixels_become_white_and_half_alpha_is_blended():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    image = decode_base64_image(b64(encoded(rgba, "PNG")), "init_image")
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == WHITE
    assert image.getpixel((1, 1)) == RED
    assert close(image.getpixel((2, 2)), (127, 127, 127), 2)


def test_a_palette_png_with_a_transparent_index_becomes_white_there():
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 255, 0, *RED])  # index 0 green (transparent), index 1 red
    palette.putpixel((3, 3), 1)
    image = decode_base64_image(b64(encoded(palette, "PNG", transparency=0)), "init_image")
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((3, 3)) == RED


def test_grayscale_and_one_bit_become_rgb():
    assert decode_base64_image(b64(encoded(Image.new("L", (4, 4), 77), "PNG")), "x").getpixel((1, 1)) == (77, 77, 77)
    assert decode_base64_image(b64(encoded(Image.new("1", (4, 4), 1), "PNG")), "x").getpixel((1, 1)) == WHITE


def test_the_storage_path_takes_bytes():
    image = decode_image_bytes(encoded(halves(), "PNG"), "init_image_id")
    assert (image.mode, image.getpixel((4, 8))) == ("RGB", RED)


def test_a_mask_is_l_with_white_to_repaint_and_transparency_laid_over_black():
    rgb = Image.new("RGB", (8, 8), (0, 0, 0))
    rgb.paste(WHITE, (0, 0, 4, 8))
    mask = decode_base64_mask(b64(encoded(rgb, "PNG")), "mask_image")
    assert (mask.mode, mask.getpixel((1, 1)), mask.getpixel((6, 1))) == ("L", 255, 0)

    drawn = Image.new("RGBA", (8, 8), (255, 255, 255, 0))  # a transparent canvas, white underneath
    drawn.paste((255, 255, 255, 255), (0, 0, 4, 8))  # the stroke
    mask = decode_base64_mask("data:image/png;base64," + b64(encoded(drawn, "PNG")), "mask_image")
    assert (mask.getpixel((1, 1)), mask.getpixel((6, 1))) == (255, 0)

    with pytest.raises(BadInput, match=r"^mask_image: not an image"):
        decode_base64_mask(b64(b"plain text"), "mask_image")


def test_to_base64_png_round_trips():
    assert decode_base64_image(to_base64_png(halves()), "x").tobytes() == halves().tobytes()


# --- what is refused: every message starts with the column ---


@pytest.mark.parametrize("column", ["init_image", "reference_image"])
@pytest.mark.parametrize(("make", "expected"), [
    (lambda: "", "empty"),
    (lambda: " \n\t ", "empty"),
    (lambda: "data:image/png;base64,", "empty"),
    (lambda: "not base64 at all!", "not valid base64 (the character '!' at offset 17)"),
    (lambda: " \n QUJD\nQU%RA==", "not valid base64 (the character '%' at offset 10)"),
    (lambda: "data:image/png;base64,QUJD.", "not valid base64 (the character '.' at offset 26)"),
    (lambda: "QUJDRA==\x00", "not valid base64 (the character '\\x00' at offset 8)"),
    (lambda: "QUJDR", "not valid base64 (cut short: 5 characters cannot encode whole bytes)"),
    (lambda: "QU=JD", "not valid base64"),
    (lambda: "data:image/png,rawbytes", "a data URL must be base64"),
    (lambda: "https://example.com/cat.png", "a URL is not accepted"),
    (lambda: b64(random.Random(1).randbytes(4000)), "not an image (PNG, JPEG or WebP expected)"),
    (lambda: b64(b"# notes\nthis is a text file, not a picture\n" * 20), "not an image (PNG, JPEG or WebP expected)"),
    (lambda: b64(encoded(noise(), "BMP")), "BMP is not accepted (PNG, JPEG or WebP expected)"),
    (lambda: b64(encoded(noise(), "TIFF")), "TIFF is not accepted"),
])
def test_bad_base64_and_what_is_not_an_image_say_so(column, make, expected):
    assert expected in rejected(column, make())


@pytest.mark.parametrize(("fmt", "kind"), [("PNG", "PNG"), ("JPEG", "JPEG")])
def test_a_truncated_file_fails_instead_of_coming_back_half_gray(fmt, kind):
    data = encoded(noise(), fmt)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing in imagend turns Pillow's leniency on
    message = rejected("init_image", b64(data[: len(data) // 2]))
    assert message.startswith(f"init_image: the {kind} cannot be decoded, damaged or cut short"), message
    if fmt == "JPEG":  # a JPEG cut just before its end marker is refused too
        assert "cut short" in rejected("init_image", b64(data[:-2]))


def test_a_truncated_webp_fails():
    data = encoded(noise(), "WEBP")
    assert "cannot be decoded, damaged or cut short" in rejected("reference_image", b64(data[: len(data) // 2]))


def test_a_real_small_file_decompression_bomb_is_refused_from_its_header(monkeypatch):
    side = 5000  # 25 Mpx: above imagend's limit, below the 89 Mpx where Pillow would even warn
    assert side * side > MAX_INPUT_PIXELS
    bomb = encoded(Image.new("1", (side, side)), "PNG")
    assert len(bomb) < 50_000  # tiny on the wire, 75 MiB once decoded as RGB
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own check off: ours still holds
    message = rejected("init_image", b64(bomb))
    assert message == (f"init_image: 5000x5000 is too large, at most {MAX_INPUT_PIXELS} pixels "
                       f"and {MAX_INPUT_SIDE} on either side")


def test_a_header_claiming_huge_dimensions_is_refused_before_anything_is_decoded(monkeypatch):
    garbage = b"\x00" * 64  # not even a zlib stream: decoding it would fail differently
    assert "5000x5000 is too large" in rejected("init_image", b64(png_with_header(5000, 5000, garbage)))
    # Past twice Pillow's limit, Pillow refuses at open; it says the same kind of thing.
    assert "too many pixels" in rejected("init_image", b64(png_with_header(50_000, 50_000, garbage)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert "50000x50000 is too large" in rejected("init_image", b64(png_with_header(50_000, 50_000, garbage)))


def test_a_side_above_the_limit_is_refused_even_with_few_pixels():
    assert f"{MAX_INPUT_SIDE + 8}x8 is too large" in rejected(
        "init_image", b64(encoded(Image.new("L", (MAX_INPUT_SIDE + 8, 8)), "PNG"))
    )


@pytest.mark.parametrize(("fmt", "expected"), [
    ("GIF", "init_image: GIF is not accepted (PNG, JPEG or WebP expected)"),
    ("PNG", "init_image: an animated PNG (2 frames); a single still image is expected"),
    ("WEBP", "init_image: an animated WebP (2 frames); a single still image is expected"),
])
def test_gifs_and_animations_are_refused(fmt, expected):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert rejected("init_image", b64(data)) == expected


def test_a_huge_base64_input_is_refused_without_being_echoed():
    huge = "QUFB" * (MAX_INPUT_BYTES // 3 + 1000)  # valid base64, a little over the limit once decoded
    message = rejected("init_image", huge)
    assert "QUFB" not in message and message.endswith("at most 20 MiB"), message
    far = "%" * (3 * MAX_INPUT_BYTES)  # refused by its length alone, before it is even scanned
    message = rejected("reference_image", far)
    assert "%" not in message and "MiB of text" in message, message
    with pytest.raises(BadInput, match=r"^init_image_id: 20\.0 MiB, at most 20 MiB$"):
        decode_image_bytes(b"\x89PNG" + b"\x00" * MAX_INPUT_BYTES, "init_image_id")


def test_a_long_invalid_input_is_not_echoed():
    message = rejected("init_image", "QUJD" * 1000 + "!" + "QUJD" * 1000)
    assert message == "init_image: not valid base64 (the character '!' at offset 4000)"


# --- fit_size: "scaled down keeping its aspect ratio until the longer side is at most max_side
# (never scaled up), then each side rounded down to a multiple of `multiple` (at least `multiple`)" ---


@pytest.mark.parametrize(("size", "options", "fitted"), [
    ((1000, 750), {}, (1000, 744)),
    ((3000, 1000), {}, (2048, 680)),  # 1000 * 2048 / 3000 = 682.67 -> 682 -> 680
    ((1000, 3000), {}, (680, 2048)),
    ((4096, 4096), {}, (2048, 2048)),
    ((5, 5), {}, (8, 8)),
    ((2048, 3), {}, (2048, 8)),
    ((1023, 1023), {"multiple": 64}, (960, 960)),
    ((3000, 1000), {"max_side": 1024, "multiple": 64}, (1024, 320)),  # 341 -> 320
    ((513, 700), {"multiple": 1}, (513, 700)),
])
def test_fit_size(size, options, fitted):
    assert fit_size(*size, **options) == fitted


def test_fit_size_refuses_nonsense_arguments():
    for args in ((0, 10), (10, -1)):
        with pytest.raises(ValueError, match="at least one pixel"):
            fit_size(*args)
    with pytest.raises(ValueError, match="multiple"):
        fit_size(10, 10, multiple=64, max_side=32)
