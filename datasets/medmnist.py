"""MedMNIST v2/v3 ``.npz`` files (2-D sets; 28, 64, 128 or 224 px) with their official split as the protocol.

An ``.npz`` holds ``train_images``/``train_labels``, ``val_*`` and ``test_*``. Each part
is ingested as one source unit, so an interrupted ingest resumes part by part. The
official split is the default protocol: test = queries, train = database, val = the
held-out validation side. Labels are the class numbers as stored; each image is its
own patient. Multi-label sets (ChestMNIST: a 0/1 column per finding) keep every
label, and an image is relevant to a query when they share one; an image with no
finding gets the label ``none``, so normal images retrieve normal images.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashbench.data.dataset import LABEL_SEPARATOR
from hashbench.data.dicom import DicomSlices, ImageOptions, SkippedFile, resize
from hashbench.data.images import colour_pixels
from hashbench.data.ingest import IngestJob, IngestResult, SourceFile, build_dataset
from hashbench.data.manifest import Manifest
from hashbench.data.sources import Source, argument, register_source
from hashbench.model.options import option
from hashbench.store.paths import sources_dir

PARTS = ("train", "val", "test")
SIDES = {"train": "database", "val": "validation", "test": "query"}  # the official split in hashbench's sides
NO_FINDING = "none"
KEYS = tuple(f"{part}_{kind}" for part in PARTS for kind in ("images", "labels"))


def check_npz(path: Path) -> dict[str, tuple[int, ...]]:
    """The array shapes of a MedMNIST file; ValueError naming what is missing or malformed."""
    try:
        with np.load(path, mmap_mode="r", allow_pickle=False) as arrays:
            shapes = {key: arrays[key].shape for key in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    missing = [key for key in KEYS if key not in shapes]
    if missing:
        raise ValueError(
            f"{path}: missing {', '.join(missing)}; a MedMNIST file holds {', '.join(KEYS)} (found: {', '.join(sorted(shapes)) or 'nothing'})"
        )
    for part in PARTS:
        images, labels = shapes[f"{part}_images"], shapes[f"{part}_labels"]
        if len(images) not in (3, 4) or (len(images) == 4 and images[3] != 3):
            raise ValueError(
                f"{path}: {part}_images has shape {images}; expected (n, height, width) or (n, height, width, 3) (3-D MedMNIST sets are not images)"
            )
        if len(labels) != 2 or labels[0] != images[0] or labels[1] != shapes["train_labels"][1]:
            raise ValueError(
                f"{path}: {part}_labels has shape {labels} for {images[0]} images; expected ({images[0]}, 1), or ({images[0]}, findings) for a multi-label set"
            )
    return shapes


def decode_part(data: bytes, part: str, options: ImageOptions) -> DicomSlices:
    """One part's images as uint8 ``size x size`` images (colour kept with colour='rgb', else grey by BT.601 luma) and a label per image."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise SkippedFile("unreadable npz", f"{part}: {type(exc).__name__}: {exc}") from None
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8) if images.dtype != np.uint8 else images
    frames = [
        {"label": _label(row), "label_source": "npz", "patient": f"{part}-{i:06d}", "series": part}
        for i, row in enumerate(labels)
    ]
    return DicomSlices(
        {"collection_tag": "", "patient_tag": "", "study_tag": "", "series_tag": "", "modality": "MEDMNIST"},
        [resize(colour_pixels(image, options) if image.ndim == 3 else image, options) for image in images],
        frames,
    )


def _label(row: np.ndarray) -> str:
    """A class number, or the findings of a multi-label row joined (``none`` for an image with none)."""
    if len(row) == 1:
        return str(int(row[0]))
    return LABEL_SEPARATOR.join(str(i) for i in np.flatnonzero(row)) or NO_FINDING


def ingest_medmnist(
    path: Path,
    name: str,
    destination: Path,
    size: int | None = None,
    colour: str | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> IngestResult:
    """Ingest a MedMNIST ``.npz``; the image size defaults to the file's own, colour to the file's (rgb for colour sets, else grey)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path} (a MedMNIST .npz, e.g. pathmnist.npz or pathmnist_64.npz)")
    shapes = check_npz(path)
    native, in_colour = shapes["train_images"][1], len(shapes["train_images"]) == 4
    options = ImageOptions(size=size or native, colour=colour or ("rgb" if in_colour else "luma"))
    files = [
        SourceFile(
            path=path,
            relpath=f"{path.name}#{part}",
            collection=path.stem,
            patient="",
            study=path.stem,
            series=part,
            part=part,
            decoder="medmnist",
        )
        for part in PARTS
    ]
    extra = {
        "layout": "MedMNIST npz",
        "file": str(path),
        "native_size": native,
        "colour": in_colour,
        "protocols": {
            "official": {
                "parts": SIDES,
                "description": "the dataset's official split (test = queries, train = database, val held out)",
            }
        },
        "default_split": "official",
        "patients": "one per image",
        "multi_label": shapes["train_labels"][1] > 1,
        "parts": {part: shapes[f"{part}_images"][0] for part in PARTS},
    }
    return build_dataset(
        IngestJob(
            name,
            "medmnist",
            path.parent,
            files,
            destination,
            options=options,
            clean=False,
            workers=workers,
            progress=progress,
            extra_manifest=extra,
        )
    )


def download(flag: str, size: int, root: Path) -> Path:
    """Fetch ``flag`` (e.g. pathmnist) at ``size`` px through the medmnist package; a message with the fix when that cannot work."""
    manual = f"download {flag}{'' if size == 28 else f'_{size}'}.npz (zenodo.org, MedMNIST) on a machine with internet and pass its path"
    try:
        import medmnist
    except ImportError:
        raise ValueError(
            f"{flag}: no such file, and the medmnist package that downloads it is not installed: pip install medmnist, or {manual}"
        ) from None
    info = medmnist.INFO.get(flag)
    if info is None or "3d" in flag:
        sets = ", ".join(sorted(k for k in medmnist.INFO if "3d" not in k))
        raise ValueError(f"{flag}: not a 2-D MedMNIST set; valid: {sets}")
    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(medmnist, info["python_class"])(split="test", download=True, root=str(root), size=size)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{flag}: the download failed ({type(exc).__name__}: {exc}); offline? {manual}") from None
    return root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


@dataclass(frozen=True, kw_only=True)
class MedmnistOptions:
    source: str = argument(
        "A MedMNIST .npz (e.g. pathmnist_64.npz), or a set's name (pathmnist) to fetch it with the medmnist package."
    )
    size: int | None = option(None, "Images are resized to SIZE x SIZE (default: the file's own size).")
    colour: str | None = option(
        None, "rgb: keep colour; luma: store grey (default: the file's own, rgb for colour sets)."
    )

    def __post_init__(self) -> None:
        if self.size is not None:
            ImageOptions(size=self.size, colour=self.colour or "luma")
        if self.colour is not None and self.colour not in ("rgb", "luma"):
            raise ValueError(f"colour={self.colour!r}; valid: rgb, luma")

    @property
    def set_name(self) -> str | None:
        """The MedMNIST set to fetch when ``source`` names one rather than a file (no such path, no suffix)."""
        path = Path(self.source)
        return None if path.exists() or path.suffix else str(self.source)


@register_source("medmnist")
class MedMNIST(Source):
    """Ingest a MedMNIST set; its official split (test = queries, train = database) becomes the default protocol."""

    summary = (
        "a MedMNIST .npz (2-D sets, any size, multi-label ChestMNIST included), with its official train/val/test split"
    )
    Options = MedmnistOptions

    def dataset_name(self, options: MedmnistOptions) -> str:
        """The file's stem; a fetched set's file name (pathmnist, pathmnist_64)."""
        size = options.size or 28
        return (
            Path(options.source).stem
            if options.set_name is None
            else f"{options.set_name}{'' if size == 28 else f'_{size}'}"
        )

    def ingest(
        self, options: MedmnistOptions, name: str, destination: Path, workers: int | None = None, progress: bool = False
    ) -> IngestResult:
        path = (
            Path(options.source)
            if options.set_name is None
            else download(options.set_name, options.size or 28, sources_dir() / "medmnist")
        )
        return ingest_medmnist(path, name, destination, options.size, options.colour, workers, progress)

    def rebuild_command(self, manifest: Manifest, name: str) -> str:
        options = manifest.options
        return f"hashbench ingest medmnist '{manifest.stored.get('file', 'FILE.npz')}' --name {name} --size {options.get('size', 28)} --colour {options.get('colour', 'luma')}"

    def decode_part(self, data: bytes, part: str, image_options: ImageOptions) -> DicomSlices:
        return decode_part(data, part, image_options)
