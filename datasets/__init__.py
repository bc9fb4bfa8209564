"""Datasets: ingested caches by name, and the sources they are built from.

Each source is a registered :class:`hashbench.data.sources.Source` in its own module here: ``tcia`` (a TCIA
download on disk), ``folder`` (a class-per-folder tree of images), ``medmnist`` (a MedMNIST ``.npz``), ``cifar``
(CIFAR-10's python batches), ``lists`` (the list files of NUS-WIDE, MS-COCO, ImageNet-100) and ``phantom`` (the
embedded synthetic collection, generated and ingested on first use); plugins add more. Every dataset, whatever
its source, is read through :class:`hashbench.data.dataset.Dataset`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hashbench.data.sources import ingest
from hashbench.store.paths import SAFE_NAME, checked_name, datasets_dir

# The dataset reader loads pandas, the builder pydicom too: each is imported where a dataset is read or built, not
# where the sources this package holds are listed (`hashbench ingest --help`).
if TYPE_CHECKING:
    from hashbench.data.dataset import Dataset
    from hashbench.data.ingest import IngestResult

__all__ = [
    "DEFAULT_DATASET",
    "DatasetListing",
    "UnknownDatasetError",
    "dataset_names",
    "ingest",
    "ingest_phantom",
    "list_datasets",
    "load_dataset",
]
DEFAULT_DATASET = "phantom"


class UnknownDatasetError(LookupError):
    """Raised with the valid names, so the user can pick one."""


def dataset_names() -> list[str]:
    """Ingested datasets, plus 'phantom' which is built on first use (builds in progress are hidden folders, not listed)."""
    from hashbench.data.dataset import MANIFEST, settle_swaps

    root = datasets_dir()
    if root.exists():
        settle_swaps(root)  # a dataset whose swap a kill cut is listed, not unknown until its next ingest
    names = (
        {p.parent.name for p in root.glob(f"*/{MANIFEST}") if SAFE_NAME.fullmatch(p.parent.name)}
        if root.exists()
        else set()
    )
    return sorted(names | {DEFAULT_DATASET})


def load_dataset(name: str = DEFAULT_DATASET, progress: bool = False) -> Dataset:
    """An ingested dataset by name, verified (:class:`DatasetError` names the rebuild command); the phantom is generated and ingested if missing."""
    from hashbench.data.dataset import MANIFEST, Dataset, settle_swap

    folder = datasets_dir() / checked_name(name)
    settle_swap(folder)
    if (folder / MANIFEST).exists():
        return Dataset(folder).verify()
    if name == DEFAULT_DATASET:
        if progress:
            print(
                "building the phantom collection (first use): generating its DICOM files, then ingesting them",
                file=sys.stderr,
                flush=True,
            )
        return ingest_phantom(progress=progress).dataset
    raise UnknownDatasetError(
        f"unknown dataset {name!r}; valid: {', '.join(dataset_names())} (ingest a TCIA download with `hashbench ingest tcia PATH --name {name}`, or a folder of images per class with `hashbench ingest folder PATH --name {name}`)"
    )


def ingest_phantom(
    profile: str = "default",
    seed: int = 0,
    name: str | None = None,
    size: int = 224,
    workers: int | None = None,
    progress: bool = False,
) -> IngestResult:
    """Generate the phantom download (once) and ingest it through the TCIA loader (the default dataset, and test fixtures)."""
    return ingest("phantom", profile=profile, seed=seed, size=size, name=name, workers=workers, progress=progress)


@dataclass(frozen=True)
class DatasetListing:
    """One dataset as ``hashbench datasets`` lists it: its summary, why it is damaged, or neither (not built yet)."""

    name: str
    summary: dict | None = None
    error: str = ""


def list_datasets() -> list[DatasetListing]:
    """Every dataset name, each verified: a summary, or the damage with the command that rebuilds it."""
    from hashbench.data.dataset import MANIFEST, Dataset, DatasetError

    found = []
    for name in dataset_names():
        folder = datasets_dir() / name
        if not (folder / MANIFEST).exists():
            found.append(DatasetListing(name))
            continue
        try:
            found.append(DatasetListing(name, Dataset(folder).verify().summary()))
        except DatasetError as exc:
            found.append(DatasetListing(name, error=str(exc)))
    return found
