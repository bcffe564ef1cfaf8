"""Turning arbitrary image files into correctly oriented 8-bit sRGB, or a named reason why not.

The rules (the README's `hr_images` section states them for users):

- Frames: of a multi-frame file (animated GIF / PNG / WebP, AVIF sequence, multi-page TIFF,
  MPO) only frame 0 is kept, and the note says so ("animated GIF, 12 frames: frame 0 kept").
- Colour: an embedded ICC profile is applied with ImageCms (relative colorimetric, to sRGB).
  A profile that moves no sample by more than one level is taken as sRGB (no note); one that
  cannot be applied (unreadable, or not matching the image's colour space) is named in the
  notes with "not applied", and the samples are then read as sRGB.
- Depth: 16-bit samples are scaled by 65535; 32-bit integer samples by the maximum of the
  type the file declares (TIFF BitsPerSample / SampleFormat), else by 65535 (Pillow's
  16-bit scale for PGM/PPM); float samples must lie in [0, 1] (scaled by 255) or [0, 255]
  (rounded). The note names the scale.
- Quarantined (BadImageError): zero-byte files, non-images, formats this Pillow has no
  decoder for (HEIC, JPEG XL, ...), truncated files, images over the pixel limit
  (decompression bombs), zero-size images, and samples with no faithful 8-bit form: NaN or
  infinite floats, floats outside [0, 255], negative integers (including uint32 values above
  2**31 - 1, which Pillow reads as negative), integers above the declared maximum, signed
  8-bit TIFF samples (Pillow reads them as unsigned).
- Also handled: EXIF orientation, CMYK, CIELAB, palette (with or without transparency),
  alpha (composited over white), grayscale.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import PIL
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError


class BadImageError(ValueError):
    """The file cannot become an RGB image; the message is the reason, for the quarantine record."""


# Image.format -> (what a multi-frame file of that format is called, what its frames are called).
MULTI_FRAME_KINDS: dict[str, tuple[str, str]] = {
    "GIF": ("animated GIF", "frames"),
    "PNG": ("animated PNG", "frames"),
    "WEBP": ("animated WebP", "frames"),
    "AVIF": ("AVIF image sequence", "frames"),
    "TIFF": ("multi-page TIFF", "pages"),
    "MPO": ("MPO (multi-picture JPEG)", "images"),
}

TIFF_BITS_PER_SAMPLE, TIFF_SAMPLE_FORMAT = 258, 339
TIFF_SIGNED = 2  # SampleFormat: 1 unsigned integer, 2 signed integer, 3 float
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _isobmff_brands(data: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO-BMFF file's leading `ftyp` box (HEIF, AVIF)."""
    if data[4:8] != b"ftyp":
        return set()
    end = min(int.from_bytes(data[:4], "big"), len(data))
    return {data[8:12], *(data[offset:offset + 4] for offset in range(16, end - 3, 4))}


def _is_heif(data: bytes) -> bool:
    brands = _isobmff_brands(data)
    heif = brands & {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
    return bool(heif) and not brands & {b"avif", b"avis"}


# Files Pillow could not identify, recognised by their signature: the reason they are quarantined.
UNDECODED_SIGNATURES: dict[str, tuple[Callable[[bytes], bool], str]] = {
    "AVIF": (lambda data: bool(_isobmff_brands(data) & {b"avif", b"avis"}), "no decoder for AVIF"),
    "HEIC": (_is_heif, "no decoder for HEIC/HEIF"),
    "JPEG XL": (lambda data: data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n",
                "no decoder for JPEG XL"),
    "TIFF": (lambda data: data[:4] in (b"II*\x00", b"MM\x00*"),
             "no decoder for this TIFF's sample layout (e.g. float64 or multi-channel float)"),
}


def _unidentified_reason(data: bytes) -> str:
    for matches, reason in UNDECODED_SIGNATURES.values():
        if matches(data):
            return f"{reason} in this Pillow ({PIL.__version__}): convert the file to 8-bit PNG or JPEG"
    return "not an image (unrecognised format)"


@dataclass(frozen=True)
class DeclaredSamples:
    """The sample type a TIFF declares (BitsPerSample, SampleFormat); None for other formats.
    Read at open: a transposed or converted image no longer carries the tags."""

    bits: int | None = None
    sample_format: int | None = None

    @classmethod
    def of(cls, image: Image.Image) -> DeclaredSamples:
        tags = getattr(image, "tag_v2", {})

        def first(tag: int) -> int | None:
            value = tags.get(tag)
            return value[0] if isinstance(value, tuple) else value

        return cls(first(TIFF_BITS_PER_SAMPLE), first(TIFF_SAMPLE_FORMAT))


def _integer_peak(mode: str, array: np.ndarray, declared: DeclaredSamples) -> tuple[int, str]:
    """(the sample value that maps to 255, the note) of a 16/32-bit integer image;
    BadImageError for samples with no faithful 8-bit form."""
    if mode != "I":
        return 65535, f"{mode} -> 8-bit"
    bits, signed = declared.bits, declared.sample_format == TIFF_SIGNED
    name = f"{'int' if signed else 'uint'}{bits}" if bits else "I"
    low, high = int(array.min()), int(array.max())
    if low < 0:
        if bits == 32 and not signed:
            raise BadImageError("uint32 samples above 2147483647, which Pillow reads as negative: "
                                "no faithful 8-bit form")
        raise BadImageError(f"negative samples ({name}, down to {low}): no faithful 8-bit form")
    peak = (2 ** (bits - 1) - 1 if signed else 2 ** bits - 1) if bits else 65535
    if high > peak:
        raise BadImageError(f"samples up to {high} exceed the {name} maximum {peak}: no faithful 8-bit form")
    return peak, f"{name} -> 8-bit (scaled by {peak})"


def _float_scale(array: np.ndarray) -> tuple[float, str]:
    """(factor to 8-bit levels, the range the samples were read in) of a float image."""
    finite = np.isfinite(array)
    if not finite.all():
        raise BadImageError(f"float samples with {int((~finite).sum())} NaN/inf of {array.size}: "
                            "no faithful 8-bit form")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise BadImageError(f"float samples span [{low:.4g}, {high:.4g}], outside [0, 1] and [0, 255]: "
                            "no faithful 8-bit form (HDR or measurement data?)")
    return (255.0, "[0, 1]") if high <= 1 else (1.0, "[0, 255]")


def _to_8bit(image: Image.Image, declared: DeclaredSamples, notes: list[str]) -> Image.Image:
    """16/32-bit integer and float images as mode L, by the module's depth rules."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image).astype(np.int64)
        peak, note = _integer_peak(image.mode, array, declared)
        notes.append(note)
        return Image.fromarray((array.astype(np.float64) * (255.0 / peak)).round().astype(np.uint8), mode="L")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        factor, span = _float_scale(array)
        notes.append(f"float {span} -> 8-bit")
        return Image.fromarray((array * factor).round().clip(0, 255).astype(np.uint8), mode="L")
    if declared.sample_format == TIFF_SIGNED:
        raise BadImageError(f"signed {declared.bits}-bit samples (TIFF SampleFormat 2), which Pillow reads as "
                            "unsigned: no faithful 8-bit form")
    return image


def _probe_colours() -> dict[str, Image.Image]:
    levels = np.linspace(0, 255, 32).round().astype(np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(1, -1, 3)
    return {"RGB": Image.fromarray(cube), "L": Image.fromarray(np.arange(256, dtype=np.uint8)[None])}


# The colours on which a profile is compared with sRGB: a 32-level grid of the RGB cube, every gray.
SRGB_PROBES = _probe_colours()


def _apply_icc(image: Image.Image, icc: bytes, notes: list[str]) -> Image.Image:
    """`image` in sRGB ("RGB", or "RGBA" keeping its alpha) by its embedded profile; unchanged
    (with a note) when the profile cannot be applied, or (without one) when it maps every probe
    colour within one level of itself (the profile is sRGB, whatever its name)."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError) as exc:
        notes.append(f"ICC profile unreadable ({exc}), not applied: samples read as sRGB")
        return image
    name = (profile.profile.profile_description or "unnamed").strip()
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    colour = image.convert(image.mode[:-1]) if alpha is not None else image
    try:
        # Relative colorimetric keeps in-gamut colours exact, as browsers display them. A
        # transform per image: LCMS transforms are not safe to share between threads.
        transform = ImageCms.buildTransform(profile, SRGB, colour.mode, "RGB",
                                            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    except (ImageCms.PyCMSError, ValueError) as exc:
        space = profile.profile.xcolor_space.strip()
        notes.append(f"ICC profile '{name}' ({space}) not applied to the {colour.mode} samples ({exc}): "
                     "samples read as sRGB")
        return image
    probe = SRGB_PROBES.get(colour.mode)
    if probe is not None:
        in_srgb = np.asarray(ImageCms.applyTransform(probe, transform), dtype=np.int16)
        if np.abs(in_srgb - np.asarray(probe.convert("RGB"), dtype=np.int16)).max() <= 1:
            return image
    converted = ImageCms.applyTransform(colour, transform)
    notes.append(f"ICC profile '{name}' -> sRGB")
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _to_rgb(image: Image.Image, declared: DeclaredSamples, icc: bytes | None, notes: list[str]) -> Image.Image:
    image = _to_8bit(image, declared, notes)
    if image.mode in ("P", "PA", "RGBa", "La"):
        has_alpha = image.mode != "P" or "transparency" in image.info
        if image.mode.startswith("P"):
            notes.append("palette -> RGB")
        image = image.convert("RGBA" if has_alpha else "RGB")
    if icc:
        image = _apply_icc(image, icc, notes)
    mode = image.mode
    if mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
        notes.append("alpha composited over white")
    elif mode == "CMYK":
        notes.append("CMYK -> RGB")
    elif mode == "LAB":
        notes.append("CIELAB -> sRGB")
    elif mode in ("L", "1"):
        notes.append("grayscale -> RGB")
    elif mode != "RGB":
        notes.append(f"{mode} -> RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise BadImageError(f"{mode} image with no RGB conversion ({exc})") from None


def _open(data: bytes, max_pixels: int, notes: list[str]) -> tuple[Image.Image, int]:
    """(the file's first frame, loaded; its EXIF orientation, read before loading); notes a
    multi-frame file."""
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
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                kind, unit = MULTI_FRAME_KINDS.get(image.format, (f"{image.format} file", "frames"))
                notes.append(f"{kind}, {frames} {unit}: {unit[:-1]} 0 kept")
                image.seek(0)
            orientation = image.getexif().get(0x0112, 1)
            image.load()
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(_unidentified_reason(data)) from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(f"truncated or corrupt image: {exc}") from None
    return image, orientation


def decode_rgb(data: bytes, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """(HxWx3 uint8 sRGB array, conversion notes) of an encoded image file, by the module's rules.

    Raises BadImageError with the reason for the files the module docstring lists as quarantined.
    """
    if not data:
        raise BadImageError("zero-byte file")
    notes: list[str] = []
    image, orientation = _open(data, max_pixels, notes)
    icc, declared = image.info.get("icc_profile"), DeclaredSamples.of(image)
    if orientation != 1:
        # Pillow's libtiff reader turns some TIFFs itself while loading, and drops the tag.
        if image.getexif().get(0x0112, 1) == orientation:
            image = ImageOps.exif_transpose(image)
        notes.append(f"EXIF orientation {orientation} applied")
    return np.asarray(_to_rgb(image, declared, icc, notes)), notes
