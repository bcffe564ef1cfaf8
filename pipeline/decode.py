"""Turning arbitrary image files into correctly oriented 8-bit RGB, or a named reason why not.

Handled: EXIF orientation, CMYK, 16-bit and 32-bit integer grayscale, palette (with or
without transparency), alpha (composited over white), grayscale. Rejected with a reason:
zero-byte files, files that are not images, truncated files, images over the pixel limit
(decompression bombs), zero-size images.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class BadImageError(ValueError):
    """The file cannot become an RGB image; the message is the reason, for the quarantine record."""


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.uint32 if mode == "I" else np.uint16)
        peak = 65535 if mode != "I" or array.max() <= 65535 else np.iinfo(np.uint32).max
        notes.append(f"{mode} -> 8-bit")
        image = Image.fromarray((array.astype(np.float64) * (255.0 / peak)).round().astype(np.uint8), mode="L")
        mode = "L"
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = float(array.max() - array.min()) or 1.0
        notes.append("float -> 8-bit (min-max)")
        image = Image.fromarray(((array - array.min()) / span * 255).round().astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        notes.append("palette -> RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
        notes.append("alpha composited over white")
    elif mode == "CMYK":
        notes.append("CMYK -> RGB")
    elif mode in ("L", "1"):
        notes.append("grayscale -> RGB")
    elif mode != "RGB":
        notes.append(f"{mode} -> RGB")
    return image.convert("RGB")


def decode_rgb(data: bytes, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """(HxWx3 uint8 RGB array, conversion notes) of an encoded image file.

    Raises BadImageError with the reason for files that are empty, not images, truncated,
    zero-size, or larger than `max_pixels` pixels.
    """
    if not data:
        raise BadImageError("zero-byte file")
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # Our own `max_pixels` check below decides; PIL's global default must not.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadImageError(f"{width}x{height} exceeds the pixel limit of {max_pixels} (decompression bomb?)")
            if width == 0 or height == 0:
                raise BadImageError("zero-size image")
            image.load()
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"truncated or corrupt image: {exc}") from None
    orientation = image.getexif().get(0x0112, 1)
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {orientation} applied")
    return np.asarray(_to_rgb(image, notes)), notes
