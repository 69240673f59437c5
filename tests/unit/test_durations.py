"""Go durations as the Go service read them: imagend.config.durations against the cases of Go's own tests
(src/time/time_test.go, parseDurationTests and parseDurationErrorTests, expected values written here
in nanoseconds), then the settings that take them."""

from __future__ import annotations

import pytest

from imagend.config.durations import DurationSyntaxError, parse_go_duration
from imagend.config.settings import load_settings
from imagend.errors import ConfigError

S = 1_000_000_000
MS = 1_000_000
US = 1_000
MIN = 60 * S
H = 60 * MIN
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

GO_ACCEPTS = [
    # simple
    ("0", 0), ("5s", 5 * S), ("30s", 30 * S), ("1478s", 1478 * S),
    # sign
    ("-5s", -5 * S), ("+5s", 5 * S), ("-0", 0), ("+0", 0),
    # decimal
    ("5.0s", 5 * S), ("5.6s", 5 * S + 600 * MS), ("5.s", 5 * S), (".5s", 500 * MS), ("1.0s", S), ("1.00s", S),
    ("1.004s", S + 4 * MS), ("1.0040s", S + 4 * MS), ("100.00100s", 100 * S + MS),
    # units, both spellings of micro
    ("10ns", 10), ("11us", 11 * US), ("12\u00b5s", 12 * US), ("12\u03bcs", 12 * US), ("13ms", 13 * MS),
    ("14s", 14 * S), ("15m", 15 * MIN), ("16h", 16 * H),
    # composite
    ("3h30m", 3 * H + 30 * MIN), ("10.5s4m", 4 * MIN + 10 * S + 500 * MS), ("-2m3.4s", -(2 * MIN + 3 * S + 400 * MS)),
    ("1h2m3s4ms5us6ns", H + 2 * MIN + 3 * S + 4 * MS + 5 * US + 6),
    ("39h9m14.425s", 39 * H + 9 * MIN + 14 * S + 425 * MS),
    # large values, precision, the int64 limits
    ("52763797000ns", 52763797000), ("0.3333333333333333333h", 20 * MIN), ("9007199254740993ns", 2**53 + 1),
    ("9223372036854775807ns", INT64_MAX), ("9223372036854775.807us", INT64_MAX),
    ("9223372036s854ms775us807ns", INT64_MAX), ("-9223372036854775808ns", INT64_MIN),
    ("-9223372036854775.808us", INT64_MIN), ("-9223372036s854ms775us808ns", INT64_MIN),
    ("-2562047h47m16.854775808s", INT64_MIN), ("0.100000000000000000000h", 6 * MIN),
    ("0.830103483285477580700h", 49 * MIN + 48 * S + 372539827),
]

GO_REFUSES = [
    "", "3", "-", "s", ".", "-.", ".s", "+.s", "1d", "\x85\x85", "\xffff", "hello \xffff world", "\ufffd",
    "\ufffd hello \ufffd world",
    # overflow
    "9223372036854775810ns", "9223372036854775808ns", "-9223372036854775809ns", "9223372036854776us",
    "3000000h", "9223372036854775.808us", "9223372036854ms775us808ns",
]


@pytest.mark.parametrize(("text", "nanoseconds"), GO_ACCEPTS)
def test_what_go_accepts_gives_gos_nanoseconds(text, nanoseconds):
    assert parse_go_duration(text) == nanoseconds


@pytest.mark.parametrize("text", GO_REFUSES)
def test_what_go_refuses_is_refused(text):
    with pytest.raises(DurationSyntaxError):
        parse_go_duration(text)


def seconds(raw: str) -> float:
    return load_settings(environ={"IMAGEND_DRAIN_SECONDS": raw}, env_file=None).drain_seconds


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(".5s", 0.5), ("1\u03bcs", 1e-6), ("1\u00b5s", 1e-6), ("1h2m3.5s", 3723.5), ("1m30s", 90.0), ("250ms", 0.25),
     ("30", 30.0), ("0.5", 0.5), ("5.", 5.0), (".25", 0.25), ("0", 0.0), ("-0", 0.0)],
)
def test_settings_take_go_durations_and_plain_seconds(raw, expected):
    assert seconds(raw) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("raw", ["1e3", "5 m", "1h 30m", "5M", "1d", "inf", "nan", "1_000", "0x10", "s5", "5s."])
def test_what_neither_go_nor_plain_seconds_would_be_is_refused_naming_the_variable(raw):
    with pytest.raises(ConfigError, match="IMAGEND_DRAIN_SECONDS") as caught:
        seconds(raw)
    assert repr(raw) in str(caught.value)


@pytest.mark.parametrize("raw", ["-1s", "-1", "-0.5", "-1h2m"])
def test_a_negative_duration_is_refused_naming_the_variable(raw):
    with pytest.raises(ConfigError, match=r"IMAGEND_DRAIN_SECONDS.*negative"):
        seconds(raw)
