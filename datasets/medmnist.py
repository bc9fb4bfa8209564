"""MedMNIST v2/v3 ``.npz`` files (2-D sets of 28, 64, 128 or 224 px; 3-D sets of 28 or 64 voxels) with their official split.

An ``.npz`` holds ``train_images``/``train_labels``, ``val_*`` and ``test_*``. Each part
is ingested as one source unit, so an interrupted ingest resumes part by part. The
official split is the default protocol: test = queries, train = database, val = the
held-out validation side. Labels are the class numbers as stored; each image is its
own patient. Multi-label sets (ChestMNIST: a 0/1 column per finding) keep every
label, and an image is relevant to a query when they share one; an image with no
finding gets the label ``none``, so normal images retrieve normal images.

A 3-D set (OrganMNIST3D, NoduleMNIST3D, AdrenalMNIST3D, FractureMNIST3D, VesselMNIST3D,
SynapseMNIST3D: images (n, depth, height, width)) is ingested as the stack of each
volume's depth slices: a volume is one patient, study and series (``test-000012``: the
12th volume of the test part), its slices carry its label and fall on its part's side.

Attributes (body part, sex, age, ...) are read from ``<stem>.attributes.csv`` beside the
file when there is one, with columns ``part`` (train, val or test), ``index`` (the image's
or volume's row in that part, from 0) and any of the attribute columns.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hashbench.data.manifest import Manifest
from hashbench.data.sources import Source, argument, register_source
from hashbench.model.options import option
from hashbench.store.paths import sources_dir

if TYPE_CHECKING:  # pandas, pydicom and PIL load where files are read, not where sources are listed
    from hashbench.data.dicom import DicomSlices, ImageOptions
    from hashbench.data.ingest import IngestResult

PARTS = ("train", "val", "test")
SIDES = {"train": "database", "val": "validation", "test": "query"}  # the official split in hashbench's sides
NO_FINDING = "none"
KEYS = tuple(f"{part}_{kind}" for part in PARTS for kind in ("images", "labels"))
ATTRIBUTES_SUFFIX = ".attributes.csv"  # beside pathmnist.npz: pathmnist.attributes.csv


def is_volumes(shape: tuple[int, ...]) -> bool:
    """Whether an images array holds 3-D volumes (n, depth, height, width) rather than colour images (n, height, width, 3)."""
    return len(shape) == 4 and shape[3] != 3


def item_id(part: str, index: int) -> str:
    """The patient (and for a volume also study and series) of a part's ``index``-th image or volume."""
    return f"{part}-{index:06d}"


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
    volumes = is_volumes(shapes["train_images"])
    for part in PARTS:
        images, labels = shapes[f"{part}_images"], shapes[f"{part}_labels"]
        if len(images) not in (3, 4):
            raise ValueError(
                f"{path}: {part}_images has shape {images}; expected (n, height, width), (n, height, width, 3) or, in a 3-D set, (n, depth, height, width)"
            )
        if is_volumes(images) != volumes:
            raise ValueError(
                f"{path}: {part}_images has shape {images} but train_images {shapes['train_images']}: one file holds either images or volumes"
            )
        if len(labels) != 2 or labels[0] != images[0] or labels[1] != shapes["train_labels"][1]:
            raise ValueError(
                f"{path}: {part}_labels has shape {labels} for {images[0]} images; expected ({images[0]}, 1), or ({images[0]}, findings) for a multi-label set"
            )
    return shapes


def decode_part(data: bytes, part: str, options: ImageOptions) -> DicomSlices:
    """One part's images as uint8 ``size x size`` images (colour kept with colour='rgb', else grey by BT.601 luma) and a
    label per image; a 3-D part's volumes as their depth slices, each volume one series."""
    from hashbench.data.dicom import DicomSlices, SkippedFile, resize
    from hashbench.data.images import colour_pixels

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise SkippedFile("unreadable npz", f"{part}: {type(exc).__name__}: {exc}") from None
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8) if images.dtype != np.uint8 else images
    if is_volumes(images.shape):
        return _volume_slices(images, labels, part, options)
    frames = [
        {"label": _label(row), "label_source": "npz", "patient": item_id(part, i), "series": part}
        for i, row in enumerate(labels)
    ]
    return DicomSlices(
        {"collection_tag": "", "patient_tag": "", "study_tag": "", "series_tag": "", "modality": "MEDMNIST"},
        [resize(colour_pixels(image, options) if image.ndim == 3 else image, options) for image in images],
        frames,
    )


def _volume_slices(volumes: np.ndarray, labels: np.ndarray, part: str, options: ImageOptions) -> DicomSlices:
    """Every depth slice of every volume, in order; a volume's slices share its patient, study, series and label."""
    from hashbench.data.dicom import DicomSlices, resize

    frames = []
    for i, row in enumerate(labels):
        volume = item_id(part, i)
        frame = {"label": _label(row), "label_source": "npz", "patient": volume, "study": volume, "series": volume}
        frames.extend([frame] * volumes.shape[1])
    return DicomSlices(
        {"collection_tag": "", "patient_tag": "", "study_tag": "", "series_tag": "", "modality": "MEDMNIST3D"},
        [resize(image, options) for volume in volumes for image in volume],
        frames,
    )


def _label(row: np.ndarray) -> str:
    """A class number, or the findings of a multi-label row joined (``none`` for an image with none)."""
    from hashbench.data.dataset import LABEL_SEPARATOR

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
    from hashbench.data.attributes import read_attributes
    from hashbench.data.dicom import ImageOptions
    from hashbench.data.ingest import IngestJob, SourceFile, build_dataset

    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path} (a MedMNIST .npz, e.g. pathmnist.npz or pathmnist_64.npz)")
    shapes = check_npz(path)
    volumes = is_volumes(shapes["train_images"])
    native = shapes["train_images"][2 if volumes else 1]
    in_colour = len(shapes["train_images"]) == 4 and not volumes
    options = ImageOptions(size=size or native, colour=colour or ("rgb" if in_colour else "luma"))
    counts = {part: shapes[f"{part}_images"][0] for part in PARTS}

    def stated_item(key: tuple[str, str]) -> str | None:
        part, index = key
        return item_id(part, int(index)) if part in counts and index.isdecimal() and int(index) < counts[part] else None

    attributes = read_attributes(
        path.with_name(path.stem + ATTRIBUTES_SUFFIX), ("part", "index"), "patient", stated_item
    )
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
    official = {
        "parts": SIDES,
        "description": "the dataset's official split (test = queries, train = database, val held out)",
    }
    if volumes:  # each volume is its own series: the part is read from the path (file#part)
        official.update(parts={f"{path.name}#{part}": side for part, side in SIDES.items()}, by="path")
    extra = {
        "layout": "MedMNIST npz, 3-D volumes as depth slices" if volumes else "MedMNIST npz",
        "file": str(path),
        "native_size": native,
        "colour": in_colour,
        "protocols": {"official": official},
        "default_split": "official",
        "patients": "one per volume" if volumes else "one per image",
        "multi_label": shapes["train_labels"][1] > 1,
        "parts": counts,
        **({"depth": shapes["train_images"][1]} if volumes else {}),
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
            attributes=attributes,
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
    if info is None:
        raise ValueError(f"{flag}: not a MedMNIST set; valid: {', '.join(sorted(medmnist.INFO))}")
    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(medmnist, info["python_class"])(split="test", download=True, root=str(root), size=size)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{flag}: the download failed ({type(exc).__name__}: {exc}); offline? {manual}") from None
    return root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


@dataclass(frozen=True, kw_only=True)
class MedmnistOptions:
    source: str = argument(
        "A MedMNIST .npz (e.g. pathmnist_64.npz, organmnist3d.npz), or a set's name (pathmnist) to fetch it with the medmnist package."
    )
    size: int | None = option(None, "Images are resized to SIZE x SIZE (default: the file's own size).")
    colour: str | None = option(
        None, "rgb: keep colour; luma: store grey (default: the file's own, rgb for colour sets)."
    )

    def __post_init__(self) -> None:
        from hashbench.data.dicom import ImageOptions

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
        "a MedMNIST .npz (2-D sets, multi-label ChestMNIST included, and 3-D sets as slices), with its official split"
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
