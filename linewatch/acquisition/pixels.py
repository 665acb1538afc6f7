"""GenICam pixel formats → the 2-D grayscale image a ``Frame`` carries.

``to_gray(data, pixel_format, height, width)`` takes the pixel data of one image as the camera delivered it
and returns a new array (never a view of ``data``, so the camera buffer can be given back at once):

- ``Mono8``                                    → uint8, as is.
- ``Mono10``, ``Mono12``, ``Mono14``, ``Mono16`` (unpacked: one pixel per little-endian 16-bit container,
  value in the low bits, as PFNC defines them) → uint16 shifted up so the format's maximum lands near 65535
  (Mono10 ``<< 6``, Mono12 ``<< 4``, Mono14 ``<< 2``); preprocessing then divides by 65535 for every depth.
  ``data`` may be uint16 values or the raw bytes (uint8, 2 per pixel).
- ``Mono10p``, ``Mono12p`` (PFNC, LSB-first bit stream) and ``Mono10Packed``, ``Mono12Packed`` (GigE Vision
  groups of 2 pixels in 3 bytes): as raw bytes (uint8) they are unpacked here; as uint16 values (harvesters
  already expands packed formats that way) they are only shifted, like their unpacked cousins.
- ``RGB8``, ``BGR8``, ``RGBa8``, ``BGRa8`` (also spelled ``RGBA8``/``BGRA8``) → uint8 BT.601 luma (OpenCV).
- ``BayerRG8``, ``BayerGR8``, ``BayerGB8``, ``BayerBG8`` → uint8 luma after OpenCV demosaicing. GenICam
  names a Bayer pattern by its first two pixels, OpenCV by the second row's: GenICam ``BayerRG`` is OpenCV's
  ``BayerBG``.

Anything else raises ``UnsupportedPixelFormatError``; a size that does not match height × width raises
``ValueError`` (the caller decides whether that is one bad frame or a broken camera).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from linewatch.errors import UnsupportedPixelFormatError

# Significant bits of each monochrome format with more than 8 bits.
_MONO_BITS: dict[str, int] = {
    "Mono10": 10,
    "Mono12": 12,
    "Mono14": 14,
    "Mono16": 16,
    "Mono10p": 10,
    "Mono12p": 12,
    "Mono10Packed": 10,
    "Mono12Packed": 12,
}
_PACKED = frozenset({"Mono10p", "Mono12p", "Mono10Packed", "Mono12Packed"})

# Colour formats: (components per pixel, OpenCV conversion to gray).
_COLOUR: dict[str, tuple[int, int]] = {
    "RGB8": (3, cv2.COLOR_RGB2GRAY),
    "BGR8": (3, cv2.COLOR_BGR2GRAY),
    "RGBa8": (4, cv2.COLOR_RGBA2GRAY),
    "BGRa8": (4, cv2.COLOR_BGRA2GRAY),
    "RGBA8": (4, cv2.COLOR_RGBA2GRAY),
    "BGRA8": (4, cv2.COLOR_BGRA2GRAY),
}

# GenICam Bayer name → OpenCV code (OpenCV names the pattern one row and one column further on).
_BAYER: dict[str, int] = {
    "BayerRG8": cv2.COLOR_BayerBG2GRAY,
    "BayerGR8": cv2.COLOR_BayerGB2GRAY,
    "BayerGB8": cv2.COLOR_BayerGR2GRAY,
    "BayerBG8": cv2.COLOR_BayerRG2GRAY,
}

SUPPORTED_PIXEL_FORMATS: frozenset[str] = frozenset({"Mono8", *_MONO_BITS, *_COLOUR, *_BAYER})


def is_supported(pixel_format: str) -> bool:
    return pixel_format in SUPPORTED_PIXEL_FORMATS


def to_gray(data: npt.NDArray[Any], pixel_format: str, height: int, width: int) -> npt.NDArray[Any]:
    """One image's pixel data in ``pixel_format`` → a new H×W uint8 or uint16 array (see module doc)."""
    if pixel_format == "Mono8":
        return _shaped(_as_uint8(data, pixel_format), height, width, 1, pixel_format).copy()
    if pixel_format in _MONO_BITS:
        return _mono_high(data, pixel_format, height, width)
    if pixel_format in _COLOUR:
        components, code = _COLOUR[pixel_format]
        image = _shaped(_as_uint8(data, pixel_format), height, width, components, pixel_format)
        return np.asarray(cv2.cvtColor(image, code))
    if pixel_format in _BAYER:
        mosaic = _shaped(_as_uint8(data, pixel_format), height, width, 1, pixel_format)
        return np.asarray(cv2.cvtColor(mosaic, _BAYER[pixel_format]))
    raise UnsupportedPixelFormatError(
        f"pixel format {pixel_format!r} cannot be converted to grayscale; supported: "
        + ", ".join(sorted(SUPPORTED_PIXEL_FORMATS))
    )


def _as_uint8(data: npt.NDArray[Any], pixel_format: str) -> npt.NDArray[np.uint8]:
    if data.dtype != np.uint8:
        raise ValueError(f"{pixel_format} data must be uint8, got {data.dtype}")
    return data


def _shaped(
    data: npt.NDArray[Any], height: int, width: int, components: int, pixel_format: str
) -> npt.NDArray[Any]:
    expected = height * width * components
    if data.size != expected:
        raise ValueError(
            f"{pixel_format} image of {width}×{height} needs {expected} values, the buffer holds {data.size}"
        )
    flat = np.ascontiguousarray(data).reshape(-1)
    return flat.reshape((height, width) if components == 1 else (height, width, components))


def _mono_high(data: npt.NDArray[Any], pixel_format: str, height: int, width: int) -> npt.NDArray[np.uint16]:
    bits = _MONO_BITS[pixel_format]
    count = height * width
    values: npt.NDArray[Any]
    if data.dtype == np.uint16:
        values = data
    elif data.dtype == np.uint8 and pixel_format in _PACKED:
        values = _unpack(data.reshape(-1), pixel_format, height, width)
    elif data.dtype == np.uint8:
        if data.size != 2 * count:
            raise ValueError(
                f"{pixel_format} image of {width}×{height} needs {2 * count} bytes, "
                f"the buffer holds {data.size}"
            )
        values = np.ascontiguousarray(data).reshape(-1).view("<u2")
    else:
        raise ValueError(f"{pixel_format} data must be uint16 values or uint8 bytes, got {data.dtype}")
    image = _shaped(values, height, width, 1, pixel_format)
    # A left shift of a uint16 array makes a new array; Mono16 needs an explicit copy.
    return (image << np.uint16(16 - bits)) if bits < 16 else image.copy()


def _unpack(raw: npt.NDArray[np.uint8], pixel_format: str, height: int, width: int) -> npt.NDArray[np.uint16]:
    """Packed bytes → height·width uint16 values (low bits), for the four packed mono formats."""
    count = height * width
    group_pixels, group_bytes = (4, 5) if pixel_format == "Mono10p" else (2, 3)
    groups = -(-count // group_pixels)
    needed = -(-count * group_bytes // group_pixels)
    if raw.size < needed:
        raise ValueError(
            f"{pixel_format} image of {width}×{height} needs {needed} bytes, the buffer holds {raw.size}"
        )
    padded = np.zeros(groups * group_bytes, dtype=np.uint16)
    take = min(raw.size, padded.size)
    padded[:take] = raw[:take]
    b = padded.reshape(groups, group_bytes)
    out = np.empty((groups, group_pixels), dtype=np.uint16)
    if pixel_format == "Mono12p":  # LSB-first: p0 = b0 | low nibble of b1 << 8; p1 = b1 >> 4 | b2 << 4
        out[:, 0] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
        out[:, 1] = (b[:, 1] >> 4) | (b[:, 2] << 4)
    elif pixel_format == "Mono12Packed":  # GigE Vision: high 8 bits in b0/b2, the low nibbles share b1
        out[:, 0] = (b[:, 0] << 4) | (b[:, 1] & 0x0F)
        out[:, 1] = (b[:, 2] << 4) | (b[:, 1] >> 4)
    elif pixel_format == "Mono10Packed":  # GigE Vision: low 2 bits of each pixel in b1 (bits 0-1, 4-5)
        out[:, 0] = (b[:, 0] << 2) | (b[:, 1] & 0x03)
        out[:, 1] = (b[:, 2] << 2) | ((b[:, 1] >> 4) & 0x03)
    else:  # Mono10p: a little-endian stream of 10-bit values, 4 pixels in 5 bytes
        out[:, 0] = b[:, 0] | ((b[:, 1] & 0x03) << 8)
        out[:, 1] = (b[:, 1] >> 2) | ((b[:, 2] & 0x0F) << 6)
        out[:, 2] = (b[:, 2] >> 4) | ((b[:, 3] & 0x3F) << 4)
        out[:, 3] = (b[:, 3] >> 6) | (b[:, 4] << 2)
    return out.reshape(-1)[:count]
