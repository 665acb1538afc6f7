"""Pixel formats → grayscale, with values worked out by hand (not by calling the code under test twice)."""

from __future__ import annotations

import numpy as np
import pytest

from linewatch.acquisition.pixels import SUPPORTED_PIXEL_FORMATS, to_gray
from linewatch.errors import UnsupportedPixelFormatError


def test_mono8_is_copied_unchanged() -> None:
    data = np.array([0, 255, 10, 20, 30, 40], dtype=np.uint8)
    gray = to_gray(data, "Mono8", 2, 3)
    assert gray.dtype == np.uint8
    assert gray.tolist() == [[0, 255, 10], [20, 30, 40]]
    assert not np.shares_memory(gray, data)  # the camera buffer may be reused as soon as we return


@pytest.mark.parametrize(
    ("pixel_format", "raw", "expected"),
    [
        ("Mono10", [0, 1, 512, 1023], [0, 64, 32768, 65472]),  # << 6
        ("Mono12", [0, 1, 2048, 4095], [0, 16, 32768, 65520]),  # << 4
        ("Mono14", [0, 1, 8192, 16383], [0, 4, 32768, 65532]),  # << 2
        ("Mono16", [0, 1, 32768, 65535], [0, 1, 32768, 65535]),
    ],
)
def test_high_bit_mono_is_shifted_to_full_range(
    pixel_format: str, raw: list[int], expected: list[int]
) -> None:
    values = np.array(raw, dtype=np.uint16)
    gray = to_gray(values, pixel_format, 2, 2)
    assert gray.dtype == np.uint16
    assert gray.ravel().tolist() == expected
    assert not np.shares_memory(gray, values)
    # The same pixels as raw little-endian bytes (2 per pixel), the way a GenTL buffer holds them.
    from_bytes = to_gray(values.astype("<u2").view(np.uint8), pixel_format, 2, 2)
    assert from_bytes.ravel().tolist() == expected


def test_mono12p_bytes_are_unpacked_lsb_first() -> None:
    # PFNC Mono12p: p0 = 0xABC, p1 = 0x123 → byte0 = p0 low 8 bits,
    # byte1 = p1 low nibble << 4 | p0 high nibble, byte2 = p1 high 8 bits.
    raw = np.array([0xBC, 0x3A, 0x12], dtype=np.uint8)
    assert to_gray(raw, "Mono12p", 1, 2).ravel().tolist() == [0xABC << 4, 0x123 << 4]


def test_mono12packed_bytes_are_unpacked_gige_style() -> None:
    # GigE Vision Mono12Packed: byte0 = p0 high 8 bits, byte1 = p1 low nibble << 4 | p0 low nibble,
    # byte2 = p1 high 8 bits.
    raw = np.array([0xAB, 0x3C, 0x12], dtype=np.uint8)
    assert to_gray(raw, "Mono12Packed", 1, 2).ravel().tolist() == [0xABC << 4, 0x123 << 4]


def test_mono10p_bytes_are_a_little_endian_bit_stream() -> None:
    pixels = [0x3FF, 0x000, 0x155, 0x2AA]
    stream = sum(p << (10 * i) for i, p in enumerate(pixels))
    raw = np.frombuffer(stream.to_bytes(5, "little"), dtype=np.uint8)
    assert to_gray(raw, "Mono10p", 2, 2).ravel().tolist() == [p << 6 for p in pixels]


def test_mono10packed_bytes_are_unpacked_gige_style() -> None:
    # p0 = 0x2D5, p1 = 0x1A6: byte0 = p0 >> 2, byte1 = (p1 & 3) << 4 | (p0 & 3), byte2 = p1 >> 2.
    raw = np.array([0xB5, 0x21, 0x69], dtype=np.uint8)
    assert to_gray(raw, "Mono10Packed", 1, 2).ravel().tolist() == [0x2D5 << 6, 0x1A6 << 6]


def test_packed_formats_already_expanded_to_uint16_are_only_shifted() -> None:
    # harvesters hands packed formats over as uint16 values.
    values = np.array([4095, 1], dtype=np.uint16)
    assert to_gray(values, "Mono12p", 1, 2).ravel().tolist() == [65520, 16]


# BT.601 luma of pure red, green and blue at 255: 0.299·255, 0.587·255, 0.114·255 (rounded).
RED, GREEN, BLUE = 76, 150, 29


@pytest.mark.parametrize(
    ("pixel_format", "pixel", "expected"),
    [
        ("RGB8", (255, 0, 0), RED),
        ("RGB8", (0, 255, 0), GREEN),
        ("BGR8", (0, 0, 255), RED),
        ("BGR8", (255, 0, 0), BLUE),
        ("RGBa8", (255, 0, 0, 0), RED),  # alpha ignored
        ("RGBa8", (0, 0, 255, 255), BLUE),
        ("BGRa8", (0, 0, 255, 7), RED),
        ("BGRa8", (0, 255, 0, 7), GREEN),
    ],
)
def test_colour_formats_give_bt601_luma(pixel_format: str, pixel: tuple[int, ...], expected: int) -> None:
    data = np.tile(np.array(pixel, dtype=np.uint8), 3 * 4)  # 3×4 image, interleaved components
    gray = to_gray(data, pixel_format, 3, 4)
    assert gray.shape == (3, 4)
    assert gray.dtype == np.uint8
    assert np.all(gray == expected)


def _mosaic(pattern: str, rgb: dict[str, int], height: int = 8, width: int = 8) -> np.ndarray:
    """A Bayer mosaic of a uniformly coloured scene; ``pattern`` is the GenICam name's 2×2 tile, row-major."""
    tile = [pattern[0:2], pattern[2:4]]
    mosaic = np.empty((height, width), dtype=np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            mosaic[dy::2, dx::2] = rgb[tile[dy][dx]]
    return mosaic


@pytest.mark.parametrize(
    ("pixel_format", "tile"),
    [("BayerRG8", "RGGB"), ("BayerGR8", "GRBG"), ("BayerGB8", "GBRG"), ("BayerBG8", "BGGR")],
)
def test_bayer_formats_demosaic_with_the_genicam_pattern(pixel_format: str, tile: str) -> None:
    # R ≠ B, so a pattern read the wrong way round gives 93 or 159 instead of 123.
    rgb = {"R": 200, "G": 100, "B": 40}
    expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 40)  # 123
    gray = to_gray(_mosaic(tile, rgb).ravel(), pixel_format, 8, 8)
    assert gray.shape == (8, 8)
    inner = gray[2:-2, 2:-2].astype(int)
    assert np.all(np.abs(inner - expected) <= 1), inner


def test_every_advertised_format_converts() -> None:
    for pixel_format in sorted(SUPPORTED_PIXEL_FORMATS):
        if pixel_format.startswith(("RGB", "BGR")):
            components = 4 if pixel_format.lower().endswith("a8") else 3
            data = np.zeros(4 * 6 * components, dtype=np.uint8)
        elif pixel_format in ("Mono8",) or pixel_format.startswith("Bayer"):
            data = np.zeros(4 * 6, dtype=np.uint8)
        else:
            data = np.zeros(4 * 6, dtype=np.uint16)
        gray = to_gray(data, pixel_format, 4, 6)
        assert gray.shape == (4, 6), pixel_format


def test_unknown_format_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedPixelFormatError, match=r"YUV422_8.*supported: .*Mono8"):
        to_gray(np.zeros(8, dtype=np.uint8), "YUV422_8", 2, 2)


def test_wrong_size_says_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"RGB8 image of 4×2 needs 24 values, the buffer holds 23"):
        to_gray(np.zeros(23, dtype=np.uint8), "RGB8", 2, 4)
    with pytest.raises(ValueError, match="needs 2 bytes"):
        to_gray(np.zeros(1, dtype=np.uint8), "Mono12p", 1, 1)
