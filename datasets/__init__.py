"""Datasets: ingested caches by name, and the sources they are built from.

Sources: ``tcia`` (a TCIA download on disk), ``folder`` (a class-per-folder tree of
images), ``medmnist`` (a MedMNIST ``.npz``), ``cifar`` (CIFAR-10's python batches),
``lists`` (the list files of NUS-WIDE, MS-COCO, ImageNet-100) and ``phantom`` (the
embedded synthetic collection, generated and ingested on first use). Every dataset,
whatever its source, is read through :class:`hashbench.data.dataset.Dataset`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hashbench.files import locks
from hashbench.data.dataset import MANIFEST, Dataset
from hashbench.data.dicom import ImageOptions
from hashbench.data.ingest import IngestResult
from hashbench.files.paths import SAFE_NAME, checked_name, datasets_dir, sources_dir

SOURCES = {
    "tcia": "a TCIA download on disk (NBIA Data Retriever, descriptive or classic layout)",
    "folder": "a class-per-folder tree of PNG, JPEG, TIFF or BMP images",
    "medmnist": "a MedMNIST .npz (2-D sets, any size, multi-label ChestMNIST included), with its official train/val/test split",
    "cifar": "CIFAR-10's python batches, with the literature's three protocols (1k-5k-54k, 1k-5k-59k, official)",
    "lists": "list files of the hashing literature (NUS-WIDE, MS-COCO, ImageNet-100): image paths with multi-hot labels",
    "phantom": "synthetic TCIA-like collection, generated locally; the embedded default",
}
DEFAULT_DATASET = "phantom"


class UnknownDatasetError(LookupError):
    """Raised with the valid names, so the user can pick one."""


def dataset_names() -> list[str]:
    """Ingested datasets, plus 'phantom' which is built on first use (builds in progress are hidden folders, not listed)."""
    root = datasets_dir()
    names = {p.parent.name for p in root.glob(f"*/{MANIFEST}") if SAFE_NAME.fullmatch(p.parent.name)} if root.exists() else set()
    return sorted(names | {DEFAULT_DATASET})


def load_dataset(name: str = DEFAULT_DATASET, progress: bool = False) -> Dataset:
    """An ingested dataset by name, verified (:class:`DatasetError` names the rebuild command); the phantom is generated and ingested if missing."""
    folder = datasets_dir() / checked_name(name)
    if (folder / MANIFEST).exists():
        return Dataset(folder).verify()
    if name == DEFAULT_DATASET:
        if progress:
            print("building the phantom collection (first use): generating its DICOM files, then ingesting them", file=sys.stderr, flush=True)
        return ingest_phantom(progress=progress).dataset
    raise UnknownDatasetError(f"unknown dataset {name!r}; valid: {', '.join(dataset_names())} (ingest a TCIA download with `hashbench ingest tcia PATH --name {name}`, or a folder of images per class with `hashbench ingest folder PATH --name {name}`)")


def ingest_tcia(root: Path, name: str = "tcia", options: ImageOptions = ImageOptions(), clean: bool = True, workers: int | None = None, progress: bool = False) -> IngestResult:
    """Ingest (or update) a TCIA download as dataset ``name``."""
    from hashbench.datasets import tcia

    return tcia.ingest_tcia(Path(root), name, datasets_dir(), options, clean, workers, progress)


def ingest_folder(root: Path, name: str, options: ImageOptions = ImageOptions(), clean: bool = False, workers: int | None = None, progress: bool = False) -> IngestResult:
    """Ingest (or update) a class-per-folder image tree as dataset ``name``."""
    from hashbench.datasets import folder

    return folder.ingest_folder(Path(root), name, datasets_dir(), options, clean, workers, progress)


def ingest_medmnist(source: str | Path, name: str | None = None, size: int | None = None, colour: str | None = None, workers: int | None = None, progress: bool = False) -> IngestResult:
    """Ingest a MedMNIST ``.npz`` (or fetch a set by name, e.g. pathmnist, through the medmnist package) as dataset ``name`` (default: the file's stem)."""
    from hashbench.datasets import medmnist

    path = Path(source)
    if not path.exists() and not path.suffix:
        path = medmnist.download(str(source), size or 28, sources_dir() / "medmnist")
    return medmnist.ingest_medmnist(path, checked_name(name or path.stem), datasets_dir(), size, colour, workers, progress)


def ingest_cifar(root: Path, name: str = "cifar10", colour: str = "rgb", workers: int | None = None, progress: bool = False) -> IngestResult:
    """Ingest CIFAR-10's python batches with the literature's three protocols (colour kept unless ``colour='luma'``)."""
    from hashbench.datasets import cifar

    return cifar.ingest_cifar(Path(root), checked_name(name), datasets_dir(), ImageOptions(size=32, colour=colour), workers, progress)


def ingest_lists(
    lists: dict[str, Path], images: Path, name: str, top_k: int | None = None, class_names: list[str] | None = None,
    options: ImageOptions = ImageOptions(), workers: int | None = None, progress: bool = False,
) -> IngestResult:
    """Ingest a list-file set (query, database and optionally train lists of ``image 0 1 0 ...`` rows) as dataset ``name``."""
    from hashbench.datasets import imagelist

    return imagelist.ingest_lists(lists, Path(images), checked_name(name), datasets_dir(), top_k, class_names, options, workers, progress)


def ingest_phantom(profile: str = "default", seed: int = 0, name: str | None = None, options: ImageOptions = ImageOptions(), clean: bool = True, workers: int | None = None, progress: bool = False) -> IngestResult:
    """Generate the phantom download (once) and ingest it through the TCIA loader."""
    from hashbench.datasets import phantom, tcia

    name = checked_name(name or (DEFAULT_DATASET if profile == "default" and seed == 0 else f"phantom-{profile}-seed{seed}"))
    source = sources_dir() / f"phantom-{profile}-seed{seed}"
    with locks.exclusive(sources_dir() / f".{source.name}.lock", wait=True):  # two first runs at once generate it once
        phantom.generate(source, profile, seed)
    extra = {"synthetic": True, "phantom": {"profile": profile, "seed": seed}}
    return tcia.ingest_tcia(source, name, datasets_dir(), options, clean, workers, progress, kind="phantom", extra_manifest=extra)
