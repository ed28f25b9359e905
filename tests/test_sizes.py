"""Tests of byte-size parsing and printing (``150MB``, ``8GiB``, ``253.1 MB``)."""

from __future__ import annotations

import pytest

from meshp2p._errors import ConfigError
from meshp2p._sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("150MB", 150_000_000),
        ("8GiB", 8 * 1024**3),
        ("1.5GB", 1_500_000_000),
        ("1024", 1024),
        ("1024B", 1024),
        ("2kB", 2000),
        ("3KiB", 3 * 1024),
        ("1TB", 10**12),
        ("2TiB", 2 * 1024**4),
        ("512M", 512_000_000),
        (" 10 MB ", 10_000_000),
    ],
)
def test_parse_size_reads_decimal_and_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["150mb", "150Mb", "150mB", "150MB"])
def test_parse_size_units_are_case_insensitive(text: str) -> None:
    assert parse_size(text) == 150_000_000


@pytest.mark.parametrize("text", ["8gib", "8GIB", "8GiB"])
def test_parse_size_binary_units_are_case_insensitive(text: str) -> None:
    assert parse_size(text) == 8 * 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.01kB", 2010), ("4.35GB", 4_350_000_000), ("8.03kB", 8030), ("0.29MB", 290_000)],
)
def test_parse_size_decimal_fractions_are_exact(text: str, expected: int) -> None:
    # Binary floating point made "2.01kB" 2009 bytes.
    assert parse_size(text) == expected


def test_parse_size_keeps_precision_of_huge_integers() -> None:
    assert parse_size("99999999999999999999TB") == 99999999999999999999 * 10**12


@pytest.mark.parametrize(
    "text", ["", "   ", "abc", "10XB", "0", "0MB", "0.0GB", "-5MB", "MB", "1.5.5MB", "0.5", "1e3"]
)
def test_parse_size_rejects_bad_sizes_with_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(text)
    # One line a person can act on, naming what they typed.
    assert repr(text) in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_size_unknown_unit_error_lists_known_units() -> None:
    with pytest.raises(ConfigError, match=r"unknown size unit 'XB'.*GiB"):
        parse_size("10XB")


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1536, "1.5 kB"),
        (150_000_000, "150.0 MB"),
        (253_113_024, "253.1 MB"),
        (8 * 1024**3, "8.6 GB"),
        (5 * 10**12, "5.0 TB"),
        (5 * 10**15, "5000.0 TB"),
    ],
)
def test_format_size_uses_decimal_units_with_one_decimal(n: int, expected: str) -> None:
    assert format_size(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"), [(999_949, "999.9 kB"), (999_950, "1.0 MB"), (999_999_999, "1.0 GB")]
)
def test_format_size_rounding_up_moves_to_the_next_unit(n: int, expected: str) -> None:
    # Printed "1000.0 kB" before.
    assert format_size(n) == expected


@pytest.mark.parametrize("n", [1, 999, 1000, 150_000_000, 8 * 1024**3, 3 * 10**12])
def test_format_size_output_parses_back_to_the_same_printed_size(n: int) -> None:
    printed = format_size(n)
    assert format_size(parse_size(printed.replace(" ", ""))) == printed
