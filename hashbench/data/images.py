"""Plain image files (PNG, JPEG, TIFF, BMP) decoded like DICOM slices, so every source shares one cache format.

A colour image becomes grey by the same ITU-R BT.601 luma as colour DICOM; a 16-bit
image is scaled by its own range (it carries no window); a multi-page TIFF gives one
image per page. Failures are skip reasons, never exceptions that end an ingest; so is a
header declaring more pixels than the limit (checked before any pixel is read).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from hashbench.config.limits import MAX_PIXELS
from hashbench.data.dicom import DicomSlices, ImageOptions, SkippedFile, check_pixels, decode, resize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as for colour DICOM
NO_TAGS = {"collection_tag": "", "patient_tag": "", "study_tag": "", "series_tag": "", "modality": ""}


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def decode_file(
    path: str | Path,
    data: bytes,
    options: ImageOptions,
    part: str = "",
    decoder: str = "",
    max_pixels: int = MAX_PIXELS,
) -> DicomSlices:
    """One source file: through the ``decode_part`` of the source named ``decoder`` (with the ``part`` of the file it reads),
    else an image file or DICOM by suffix, skipped unread when its header declares more than ``max_pixels`` pixels."""
    if decoder:
        from hashbench.data.sources import source  # sources build on this module

        return source(decoder).decode_part(data, part, options)
    return decode_image(data, options, max_pixels) if is_image_file(path) else decode(data, options, max_pixels)


def decode_image(data: bytes, options: ImageOptions, max_pixels: int = MAX_PIXELS) -> DicomSlices:
    """Every page of an image file as uint8 ``size x size`` grey images, or :class:`SkippedFile`.

    Each page's declared size is checked (as if every page had it) before its pixels are read: Image.open reads
    the header only.
    """
    if not data:
        raise SkippedFile("empty file")
    try:
        with _pillow_limit_lifted(), Image.open(io.BytesIO(data)) as image:
            if (
                image.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA")
                and options.colour == "skip"
            ):
                raise SkippedFile("colour image", f"mode {image.mode}; --colour luma keeps it as grey")
            pages, frames = getattr(image, "n_frames", 1), []
            for page in ImageSequence.Iterator(image):
                check_pixels(page.width, page.height, pages, len(page.getbands()), max_pixels, "pages")
                frames.append(_pixels(page, options.colour == "rgb"))
            header = {**NO_TAGS, "modality": image.format or ""}  # PNG, JPEG, TIFF, BMP: what the file is
    except UnidentifiedImageError:
        raise SkippedFile("not an image", "no PNG, JPEG, TIFF or BMP content") from None
    except (OSError, EOFError, SyntaxError, ValueError) as exc:
        text = str(exc)
        if isinstance(exc, EOFError) or "truncated" in text.lower() or "end of file" in text.lower():
            raise SkippedFile("truncated image", f"{text}; copy or download it again") from None
        raise SkippedFile("undecodable image", f"{type(exc).__name__}: {text}") from None
    return DicomSlices(header, [resize(frame, options) for frame in frames])


@contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Pillow's own bomb check off while a file is read: it counts a first page against a fixed limit below ours, and
    :func:`check_pixels` applies the one limit every decoder shares, on every page, raised with --max-pixels."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def colour_pixels(image: np.ndarray, options: ImageOptions) -> np.ndarray:
    """A uint8 (h, w, 3) colour image as stored: kept with colour='rgb', else grey by BT.601 luma."""
    if options.colour == "rgb":
        return np.ascontiguousarray(image, np.uint8)
    return np.clip(np.rint(image.astype(np.float64) @ LUMA), 0, 255).astype(np.uint8)


def _pixels(page: Image.Image, rgb: bool) -> np.ndarray:
    """uint8 grey (or RGB when asked, for colour pages): 8-bit modes by luma, deeper ones scaled by their own range."""
    if page.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(page, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        return (
            np.zeros(values.shape, np.uint8)
            if high <= low
            else np.rint((values - low) / (high - low) * 255).astype(np.uint8)
        )
    if page.mode in ("RGBA", "LA", "PA") or (page.mode == "P" and "transparency" in page.info):
        page = page.convert("RGBA")
        flattened = Image.new("RGB", page.size)  # transparent parts on black, like the padding
        flattened.paste(page, mask=page.getchannel("A"))
        page = flattened
    if rgb and page.mode not in ("L", "1"):
        return np.asarray(page.convert("RGB"), dtype=np.uint8)
    return np.asarray(page.convert("L"), dtype=np.uint8)
