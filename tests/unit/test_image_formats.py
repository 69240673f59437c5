"""image_formats: what a row may ask for, recognising formats, thumbnails, parameters across formats."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage

from imagend.backends.placeholder import placeholder_png
from imagend.errors import BadInput
from imagend.images.formats import OutputFormat, encode, parse_output_format, read_parameters, sniff, thumbnail


def test_the_default_is_none_and_passes_bytes_through_untouched():
    png = placeholder_png("a fox", 1)
    assert parse_output_format(None, None) is None
    assert parse_output_format("  ", None) is None
    assert encode(png, None).data is png
    assert encode(png, OutputFormat("png", 50)).data is png  # PNG is lossless: quality means nothing


@pytest.mark.parametrize(("written", "parsed"), [("PNG", "png"), ("jpg", "jpeg"), ("JPEG", "jpeg"), ("WebP", "webp")])
def test_format_names_are_read_leniently(written, parsed):
    assert parse_output_format(written, None) == OutputFormat(parsed, None)


@pytest.mark.parametrize(("fmt", "quality", "message"), [
    ("gif", None, "format must be one of: png, webp, jpeg; got 'gif'"),
    ("png", 0, "quality must be between 1 and 100, got 0"),
    (None, 101, "quality must be between 1 and 100, got 101"),
    ("x" * 50, None, "format must be one of: png, webp, jpeg; got 'xxxxxxxxxxxxxxxxxxxx…'"),
])
def test_bad_values_say_what_is_wrong(fmt, quality, message):
    with pytest.raises(BadInput) as caught:
        parse_output_format(fmt, quality)
    assert str(caught.value) == message


def test_sniffing_and_parameters_survive_every_conversion():
    png = placeholder_png("a fox", 42, "blurry", parameters=True)
    parameters = read_parameters(png)
    assert parameters is not None and parameters.startswith("a fox\nNegative prompt: blurry\nSeed: 42")
    for fmt in ("webp", "jpeg", "png"):
        once = encode(png, OutputFormat(fmt, 70))
        assert sniff(once.data) == fmt == once.format
        assert read_parameters(once.data) == parameters
        back = encode(once.data, OutputFormat("png"))
        assert read_parameters(back.data) == parameters


def test_quality_changes_the_size():
    buffer = io.BytesIO()
    PILImage.effect_noise((256, 256), 64).convert("RGB").save(buffer, format="PNG")
    low = encode(buffer.getvalue(), OutputFormat("jpeg", 10)).data
    high = encode(buffer.getvalue(), OutputFormat("jpeg", 95)).data
    assert len(low) < len(high) / 2


def test_thumbnails_keep_the_aspect_and_are_never_enlarged():
    buffer = io.BytesIO()
    PILImage.new("RGB", (1024, 640), (10, 20, 30)).save(buffer, format="PNG")
    with PILImage.open(io.BytesIO(thumbnail(buffer.getvalue(), 256))) as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (256, 160))
    with PILImage.open(io.BytesIO(thumbnail(placeholder_png("tiny"), 256))) as thumb:
        assert thumb.size == (16, 16)
