"""One DICOM file to training images: decode, rescale, window, invert, grey, resize.

The order follows the DICOM pixel pipeline (PS3.3 C.11): modality LUT (rescale to
e.g. Hounsfield units) -> VOI (window) -> presentation (MONOCHROME1 is displayed
inverted; pydicom does not invert, we do) -> 8-bit -> resize. Every way a file
can fail becomes a :class:`SkippedFile` with a reason a user can act on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset as DicomHeader  # pydicom's parsed file (hashbench's own Dataset is a cache)
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, iter_pixels
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from hashbench.config.limits import MAX_PIXELS
from hashbench.data import attributes

# Objects that carry no image slice to learn from (masks, contours, reports, plans).
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "KO", "PR", "REG", "DOC", "FID", "RWV"}

# Window (centre, width) used for CT when the file carries none: the abdominal
# soft-tissue window, since the paper's collections are abdominal/thoracic cancers.
CT_DEFAULT_WINDOW = (40.0, 400.0)
# Percentiles used to window modalities without a natural unit (MR, PT, ...).
PERCENTILE_WINDOW = (0.5, 99.5)
TOO_MANY_PIXELS = "too many pixels"  # the skip reason of a file above the pixel limit (redone when the limit is raised)


@dataclass(frozen=True)
class ImageOptions:
    """How DICOM pixels become training images. Part of a cache's identity."""

    size: int = 224
    window: str = "auto"  # auto: file's window, else modality default; percentile; minmax
    colour: str = "luma"  # luma: ITU-R BT.601 grey; skip: report colour images as skipped; rgb: keep three channels (grey ones repeated)
    aspect: str = "pad"  # pad: keep aspect ratio, pad to square; stretch: resize directly

    def __post_init__(self) -> None:
        choices = {
            "window": ("auto", "percentile", "minmax"),
            "colour": ("luma", "skip", "rgb"),
            "aspect": ("pad", "stretch"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r}; valid: {', '.join(valid)}")
        if self.size < 8:
            raise ValueError(f"size={self.size}: images must be at least 8 px")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def channels(self) -> int:
        return 3 if self.colour == "rgb" else 1


class SkippedFile(Exception):
    """A file that gives no slice; ``reason`` is a short category, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class DicomSlices:
    """What one file contributes: its identifiers and one uint8 image per frame.

    ``frames``: per-frame identifiers (label, patient, series) for sources that hold many
    labelled images in one file (an ``.npz``); empty when the file's identifiers hold for every frame.
    """

    header: dict[str, str]
    images: list[np.ndarray]
    frames: list[dict[str, str]] = field(default_factory=list)


def check_pixels(
    width: int, height: int, frames: int, samples: int, max_pixels: int, frame_word: str = "frames"
) -> None:
    """:class:`SkippedFile` when a file's header declares more decoded pixels than ``max_pixels``.

    Called on the header, before any pixel is read: a file of under a kilobyte declaring 65535 x 65535 pixels would
    otherwise cost 4 GB and seconds of decoding, or abort a process under a memory cap.
    """
    count = width * height * frames * samples
    if count > max_pixels:
        declared = f"{width} x {height} pixels" + (f" x {samples} samples" if samples > 1 else "")
        declared += f" x {frames} {frame_word}" if frames > 1 else ""
        raise SkippedFile(
            TOO_MANY_PIXELS,
            f"declares {declared} ({_short(count)}), above the limit {_limit_text(max_pixels)}; raise it with --max-pixels",
        )


def _short(count: int) -> str:
    """4294836225 as 4.3e9."""
    mantissa, exponent = f"{count:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _limit_text(limit: int) -> str:
    """A power of two as 2^28, any other limit in full."""
    return f"2^{limit.bit_length() - 1}" if limit & (limit - 1) == 0 else f"{limit:,}"


def read_dataset(data: bytes) -> DicomHeader:
    """Parse DICOM bytes, turning parser failures into skip reasons."""
    if not data:
        raise SkippedFile("empty file")
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        headerless = _without_file_header(data)
        if headerless is None:
            raise SkippedFile("not DICOM", str(exc)) from None
        return headerless
    except Exception as exc:  # truncated headers raise a variety of errors
        raise SkippedFile("unreadable DICOM header", f"{type(exc).__name__}: {exc}") from None


def _without_file_header(data: bytes) -> DicomHeader | None:
    """A DICOM data set stored without the Part-10 preamble and file meta (older writers do this), or None.

    Read with ``force``: taken only when it parses to an image (rows, columns and pixel data), so
    random bytes are never taken for DICOM.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "PixelData" in ds and "Rows" in ds and "Columns" in ds:
            if (
                "TransferSyntaxUID" not in ds.file_meta
            ):  # without file meta the pixels are native: the encoding the parser found
                implicit, little = ds.original_encoding
                ds.file_meta.TransferSyntaxUID = (
                    ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
                )
            return ds
    except Exception:  # not DICOM after all: the caller reports it so
        pass
    return None


def ctp_collection(ds: DicomHeader) -> str:
    """TCIA's collection name from the CTP private block (0013,xx10), or ''."""
    try:
        value = ds.get_private_item(0x0013, 0x10, "CTP").value
    except (KeyError, ValueError):
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip(" \x00")


def header_fields(ds: DicomHeader) -> dict[str, str]:
    """The identifiers and attributes a slice keeps (empty where the file lacks them or holds no valid value)."""
    return {
        "collection_tag": ctp_collection(ds),
        "patient_tag": str(ds.get("PatientID", "") or "").strip(),
        "study_tag": str(ds.get("StudyInstanceUID", "") or ""),
        "series_tag": str(ds.get("SeriesInstanceUID", "") or ""),
        "modality": str(ds.get("Modality", "") or "").upper(),
        "body_part": _tag_text(ds, "BodyPartExamined").upper(),
        "sex": attributes.sex(_tag_text(ds, "PatientSex")),
        "age": attributes.dicom_age(_tag_text(ds, "PatientAge")),
        "manufacturer": _tag_text(ds, "Manufacturer"),
        "slice_thickness": attributes.millimetres(_tag_text(ds, "SliceThickness")),
    }


def _tag_text(ds: DicomHeader, keyword: str) -> str:
    """A tag's value as stored, stripped ('' when absent or unreadable); the values of a multi-valued one joined by \\."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value that pydicom refuses to convert: as good as absent
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(map(str, value))
    return "" if value is None else str(value).strip()


def decode(data: bytes, options: ImageOptions, max_pixels: int = MAX_PIXELS) -> DicomSlices:
    """All frames of one DICOM file as uint8 ``size x size`` images, or :class:`SkippedFile`.

    The parser's warnings are caught, never printed: what they say ends up in the skip reason. A file whose header
    declares more than ``max_pixels`` pixels (rows x columns x frames x samples) is skipped before its pixels are read.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        return _decode(data, options, max_pixels, caught)


def _decode(data: bytes, options: ImageOptions, max_pixels: int, caught: list[warnings.WarningMessage]) -> DicomSlices:
    ds = read_dataset(data)
    ended_early = any("End of file" in str(w.message) for w in caught)  # the parser ran out of bytes inside an element
    if len(ds) == 0 and not ended_early:  # a file meta header at most: nothing of the object itself
        raise SkippedFile(
            "truncated header", f"the file ends inside its header ({len(data):,} bytes); download it again"
        )
    header = header_fields(ds)
    if header["modality"] in NON_IMAGE_MODALITIES:
        raise SkippedFile("non-image object", f"modality {header['modality']}")
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        # the meta's, if the file ends before the data set's
        sop_class = pydicom.uid.UID(
            str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
        )
        if ended_early and PIXEL_DATA_TAG in data:
            raise SkippedFile(
                "truncated pixel data", f"the file ends inside its pixel data ({len(data):,} bytes); download it again"
            )
        if ended_early:
            raise SkippedFile(
                "truncated header",
                f"the file ends inside a sequence of its header ({len(data):,} bytes); download it again",
            )
        if _is_image_class(sop_class):
            raise SkippedFile(
                "truncated file",
                f"an image object ({sop_class.name}) that ends before its pixel data ({len(data):,} bytes); download it again",
            )
        raise SkippedFile("no pixel data", f"SOP class {sop_class.name if sop_class else '?'}")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    if colour and options.colour == "skip":
        raise SkippedFile("colour image", f"{photometric} (colour='skip')")
    _check_declared_pixels(ds, max_pixels)
    images = []
    try:
        for index, frame in enumerate(iter_pixels(ds)):
            if colour:
                grey = _to_grey(ds, frame, photometric)
            else:
                grey = _window(ds, index, frame, header["modality"], options)
                if photometric == "MONOCHROME1":
                    grey = 255 - grey
            images.append(resize(grey, options))
    except SkippedFile:
        raise
    except RuntimeError as exc:
        if "missing dependencies" in str(exc):
            raise SkippedFile("missing decoder", f"{ds.file_meta.get('TransferSyntaxUID', '?')}: {exc}") from None
        raise _undecodable(exc, ended_early) from None
    except Exception as exc:
        raise _undecodable(exc, ended_early) from None
    if not images:
        raise SkippedFile("no frames")
    return DicomSlices(header, images)


def _check_declared_pixels(ds: DicomHeader, max_pixels: int) -> None:
    """:func:`check_pixels` on Rows x Columns x NumberOfFrames x SamplesPerPixel, as the header states them."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, KeyError, TypeError, ValueError):  # missing or malformed: the decoder says what is wrong
        return
    check_pixels(columns, rows, frames, samples, max_pixels)


PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as it is written little-endian


def _is_image_class(sop_class: str) -> bool:
    """An image storage class, or the start of one's UID (a file cut inside that very tag)."""
    return bool(sop_class) and any(
        uid.startswith(sop_class) and "Image Storage" in entry[0] for uid, entry in pydicom.uid.UID_dictionary.items()
    )


def _undecodable(exc: Exception, ended_early: bool) -> SkippedFile:
    if ended_early or "less than expected" in str(exc):
        return SkippedFile("truncated pixel data", f"{type(exc).__name__}: {exc}; download it again")
    return SkippedFile("undecodable pixel data", f"{type(exc).__name__}: {exc}")


def _frame_item(ds: DicomHeader, index: int, sequence: str) -> DicomHeader | None:
    """Enhanced multi-frame objects keep rescale/window per frame in functional groups."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if not groups:
            continue
        group = groups[min(index, len(groups) - 1)]
        if sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def _first(value: Any) -> float:
    """Window tags may be multi-valued (several presets): the first is the primary one."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def _rescaled(ds: DicomHeader, index: int, frame: np.ndarray) -> np.ndarray:
    """Modality LUT: stored values to physical units (HU for CT) via slope and intercept."""
    source = (
        ds
        if "RescaleSlope" in ds or "RescaleIntercept" in ds
        else _frame_item(ds, index, "PixelValueTransformationSequence")
    )
    slope = float(source.get("RescaleSlope", 1.0) or 1.0) if source is not None else 1.0
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0) if source is not None else 0.0
    return frame.astype(np.float64) * slope + intercept


def _window_tags(ds: DicomHeader, index: int) -> tuple[float, float] | None:
    source = ds if "WindowCenter" in ds and "WindowWidth" in ds else _frame_item(ds, index, "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    try:
        centre, width = _first(source.WindowCenter), _first(source.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    return (centre, width) if width >= 1 else None


def window_linear(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM's LINEAR VOI function (PS3.3 C.11.2.1.2.1) onto 0..255."""
    scaled = ((values - (centre - 0.5)) / max(width - 1.0, 1.0) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.clip(np.rint((values - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def _window(ds: DicomHeader, index: int, frame: np.ndarray, modality: str, options: ImageOptions) -> np.ndarray:
    values = _rescaled(ds, index, frame)
    if options.window == "minmax":
        return _stretch(values, float(values.min()), float(values.max()))
    if options.window == "auto":
        tags = _window_tags(ds, index)
        if tags is not None:
            return window_linear(values, *tags)
        if modality == "CT":
            return window_linear(values, *CT_DEFAULT_WINDOW)
    low, high = np.percentile(values, PERCENTILE_WINDOW)
    return _stretch(values, float(low), float(high))


def _to_grey(ds: DicomHeader, frame: np.ndarray, photometric: str) -> np.ndarray:
    """Colour frames to grey with BT.601 luma (pydicom already turned YBR into RGB)."""
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise SkippedFile("unsupported photometric interpretation", photometric)
    rgb = frame.astype(np.float64)
    top = float(2 ** int(ds.get("BitsStored", 8)) - 1) if photometric != "PALETTE COLOR" else float(max(rgb.max(), 1))
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(luma / top * 255.0), 0, 255).astype(np.uint8)


def resize(image: np.ndarray, options: ImageOptions) -> np.ndarray:
    """To ``size x size`` (x 3 with colour='rgb', a grey image repeated); with aspect='pad' the image is centred on black first."""
    if options.colour == "rgb" and image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if options.aspect == "pad" and image.shape[0] != image.shape[1]:
        side = max(image.shape[:2])
        square = np.zeros((side, side, *image.shape[2:]), np.uint8)
        top, left = (side - image.shape[0]) // 2, (side - image.shape[1]) // 2
        square[top : top + image.shape[0], left : left + image.shape[1]] = image
        image = square
    if image.shape[:2] == (options.size, options.size):
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((options.size, options.size), Image.Resampling.BILINEAR))
