"""Go's duration syntax (`time.ParseDuration`), so the Go service's `.env` values keep their meaning.

`[-+]?([0-9]*(\\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+`, or `0`: `300ms`, `-1.5h`, `2h45m`, `.5s`,
`1μs` (Greek mu) and `1µs` (micro sign). The value is exact in nanoseconds and bounded by
int64, as in Go; the algorithm is Go's (digits before and after the point kept as integers, a
fraction of a unit through one float64 multiplication), so every value Go accepts gives the
same nanoseconds here and every string Go refuses is refused. tests/unit/test_durations.py
holds this module to the cases of Go's own tests.

Python's number syntax is no part of it: no exponent (`1e3`), no spaces (`5 m`), no `inf`, no
`_`, no other units (`1d`).
"""

from __future__ import annotations

NANOSECONDS_PER_SECOND = 1_000_000_000
_INT64_LIMIT = 1 << 63  # |duration| in nanoseconds: at most 2**63 - 1, or exactly 2**63 when negative

UNIT_NANOSECONDS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # µ: MICRO SIGN
    "\u03bcs": 1_000,  # μ: GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": NANOSECONDS_PER_SECOND,
    "m": 60 * NANOSECONDS_PER_SECOND,
    "h": 3600 * NANOSECONDS_PER_SECOND,
}


class DurationSyntaxError(ValueError):
    """The text is not a Go duration; the message says why, as Go's does."""


def _is_digit(char: str) -> bool:
    return "0" <= char <= "9"  # ASCII only: str.isdigit() would take other scripts' digits


def _leading_int(text: str) -> tuple[int, str]:
    """The leading [0-9]* as an integer, and the rest; raises when it passes 2**63."""
    value = 0
    index = 0
    while index < len(text) and _is_digit(text[index]):
        value = value * 10 + ord(text[index]) - ord("0")
        if value > _INT64_LIMIT:
            raise OverflowError
        index += 1
    return value, text[index:]


def _leading_fraction(text: str) -> tuple[int, float, str]:
    """The digits after the point as (integer, scale, rest), value = integer / scale. Digits past
    int64 precision are consumed but ignored, as Go does."""
    value = 0
    scale = 1.0
    overflow = False
    index = 0
    while index < len(text) and _is_digit(text[index]):
        if not overflow:
            if value > (_INT64_LIMIT - 1) // 10:
                overflow = True
            else:
                candidate = value * 10 + ord(text[index]) - ord("0")
                if candidate > _INT64_LIMIT:
                    overflow = True
                else:
                    value = candidate
                    scale *= 10
        index += 1
    return value, scale, text[index:]


def parse_go_duration(text: str) -> int:
    """Nanoseconds of a Go duration string; DurationSyntaxError as Go's ParseDuration would fail."""
    original = text
    negative = False
    if text and text[0] in "+-":
        negative = text[0] == "-"
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise DurationSyntaxError(f"invalid duration {original!r}")
    total = 0
    while text:
        if not (text[0] == "." or _is_digit(text[0])):
            raise DurationSyntaxError(f"invalid duration {original!r}")
        before = len(text)
        try:
            whole, text = _leading_int(text)
        except OverflowError:
            raise DurationSyntaxError(f"invalid duration {original!r} (out of range)") from None
        digits_before = before != len(text)
        fraction, scale, digits_after = 0, 1.0, False
        if text.startswith("."):
            text = text[1:]
            before = len(text)
            fraction, scale, text = _leading_fraction(text)
            digits_after = before != len(text)
        if not (digits_before or digits_after):
            raise DurationSyntaxError(f"invalid duration {original!r}")
        end = 0
        while end < len(text) and not (text[end] == "." or _is_digit(text[end])):
            end += 1
        if end == 0:
            raise DurationSyntaxError(f"missing unit in duration {original!r}")
        unit_name, text = text[:end], text[end:]
        unit = UNIT_NANOSECONDS.get(unit_name)
        if unit is None:
            raise DurationSyntaxError(
                f"unknown unit {unit_name!r} in duration {original!r} (units: ns, us, µs, ms, s, m, h)"
            )
        if whole > _INT64_LIMIT // unit:
            raise DurationSyntaxError(f"invalid duration {original!r} (out of range)")
        whole *= unit
        if fraction > 0:
            # A float64 multiplication keeps fractions of an hour exact to the nanosecond, as in Go.
            whole += int(float(fraction) * (float(unit) / scale))
            if whole > _INT64_LIMIT:
                raise DurationSyntaxError(f"invalid duration {original!r} (out of range)")
        total += whole
        if total > _INT64_LIMIT:
            raise DurationSyntaxError(f"invalid duration {original!r} (out of range)")
    if negative:
        return -total
    if total > _INT64_LIMIT - 1:
        raise DurationSyntaxError(f"invalid duration {original!r} (out of range)")
    return total
