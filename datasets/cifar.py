"""CIFAR-10 from its python batches (``cifar-10-batches-py``) with the hashing literature's protocols by name.

The folder holds ``data_batch_1`` .. ``data_batch_5`` (50,000 training images),
``test_batch`` (10,000) and ``batches.meta`` (the class names). Each batch is one
ingest unit. The files are pickles; they are read by an unpickler that builds only
plain containers and numpy arrays, so a file can never run code.

Three protocols circulate under the one name "CIFAR-10" and give different numbers;
each is a protocol of its own here, seeded and saved like every split:

- ``1k-5k-54k``: 100 queries and 500 training images per class drawn from all 60,000;
  the database is the other 54,000 (training images excluded);
- ``1k-5k-59k``: the same draw, the database the 59,000 non-queries (training included);
- ``official``: the test batch as the 10,000 queries, the 50,000 training images as
  training set and database.

On the full set their sizes are checked whenever a split is drawn; all three report
mAP over the whole ranking (``map@all``), as published. A partial set (fewer images
per batch) keeps the protocols' rules without their sizes, and says so in captions.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hashbench.data.manifest import Manifest
from hashbench.data.sources import Source, argument, register_source
from hashbench.model.options import option

if TYPE_CHECKING:  # pandas, pydicom and PIL load where files are read, not where sources are listed
    from hashbench.data.dicom import DicomSlices, ImageOptions
    from hashbench.data.ingest import IngestResult

BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
SIDES = {**{f"data_batch_{i}": "database" for i in range(1, 6)}, "test_batch": "query"}
IMAGES_PER_BATCH, PIXELS = 10_000, 32 * 32 * 3
PROTOCOLS = {
    "1k-5k-54k": {
        "per_class": {"query": 100, "train": 500},
        "train_in_database": False,
        "sizes": {"query": 1_000, "train": 5_000, "database": 54_000},
        "metric": "map@all",
        "description": "CIFAR-10 1k-5k-54k: 1,000 queries, 5,000 training images, the other 54,000 the database (training excluded)",
    },
    "1k-5k-59k": {
        "per_class": {"query": 100, "train": 500},
        "train_in_database": True,
        "sizes": {"query": 1_000, "train": 5_000, "database": 59_000},
        "metric": "map@all",
        "description": "CIFAR-10 1k-5k-59k: 1,000 queries, 5,000 training images, database the 59,000 non-queries (training included)",
    },
    "official": {
        "parts": SIDES,
        "sizes": {"query": 10_000, "train": 50_000, "database": 50_000},
        "metric": "map@all",
        "description": "CIFAR-10 official: the test batch's 10,000 queries, the 50,000 training images as training set and database",
    },
}


class _ArraysOnly(pickle.Unpickler):
    """Builds dicts, lists, strings, bytes and numpy arrays; refuses every other global (a pickle that would run code)."""

    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds only arrays and lists")


def load_batch(data: bytes) -> dict[str, object]:
    """A batch (or batches.meta) as a dict with text keys; ValueError saying what is wrong."""
    try:
        loaded = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as exc:
        raise ValueError(f"not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"not a CIFAR python batch (a pickled {type(loaded).__name__}, not a dict)")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in loaded.items()}


def _arrays(batch: dict[str, object], name: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels")
    if data is None or labels is None:
        raise ValueError(
            f"{name}: no {'data' if data is None else 'labels'} entry (found: {', '.join(map(str, batch)) or 'nothing'})"
        )
    data, labels = np.asarray(data), np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != PIXELS or data.dtype != np.uint8 or labels.shape != (len(data),):
        raise ValueError(
            f"{name}: data of shape {data.shape} ({data.dtype}) with {labels.shape} labels; expected (n, {PIXELS}) uint8 and n labels"
        )
    return data, labels


def decode_part(data: bytes, part: str, options: ImageOptions) -> DicomSlices:
    """One batch as 32 x 32 images (grey by luma, or colour with colour='rgb') and a class number per image."""
    from hashbench.data.dicom import DicomSlices, SkippedFile, resize
    from hashbench.data.images import NO_TAGS, colour_pixels

    try:
        pixels, labels = _arrays(load_batch(data), part)
    except ValueError as exc:
        raise SkippedFile("unreadable CIFAR batch", str(exc)) from None
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    frames = [
        {"label": str(int(label)), "label_source": "batch", "patient": f"{part}-{i:05d}", "series": part}
        for i, label in enumerate(labels)
    ]
    return DicomSlices(
        {**NO_TAGS, "modality": "CIFAR"}, [resize(colour_pixels(image, options), options) for image in images], frames
    )


def class_names(root: Path) -> tuple[str, ...]:
    """The ten names of batches.meta (airplane, automobile, ...); the class numbers when it is missing."""
    meta = root / "batches.meta"
    if not meta.is_file():  # missing, or a FIFO or device that would never end a read
        return ()
    try:
        names = load_batch(meta.read_bytes()).get("label_names", [])
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except (OSError, ValueError):
        return ()


def ingest_cifar(
    root: Path,
    name: str,
    destination: Path,
    options: ImageOptions | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> IngestResult:
    """Ingest a ``cifar-10-batches-py`` folder (or its parent); missing or malformed batches are refused before anything is written."""
    from hashbench.data.dicom import ImageOptions
    from hashbench.data.ingest import IngestJob, SourceFile, build_dataset

    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"no such folder: {root} (the cifar-10-batches-py folder of the python version of CIFAR-10)"
        )
    if not (root / "test_batch").exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    missing = [batch for batch in BATCHES if not (root / batch).is_file()]
    if missing:
        raise ValueError(
            f"{root}: missing {', '.join(missing)}; the python version of CIFAR-10 holds {', '.join(BATCHES)} and batches.meta"
        )
    sizes = {}
    for batch in BATCHES:
        try:
            sizes[batch] = len(_arrays(load_batch((root / batch).read_bytes()), batch)[1])
        except ValueError as exc:
            raise ValueError(f"{root / batch}: {exc}") from None
    names = class_names(root)
    full = all(n == IMAGES_PER_BATCH for n in sizes.values())
    files = [
        SourceFile(
            path=(root / batch).resolve(),  # named by the user as the folder's batches: a link to one is read
            relpath=batch,
            collection="",
            patient="",
            study="cifar-10",
            series=batch,
            part=batch,
            decoder="cifar",
            label_names=names,
        )
        for batch in BATCHES
    ]
    protocols = (
        PROTOCOLS
        if full
        else {
            name: {
                **{k: v for k, v in spec.items() if k != "sizes"},
                "description": f"{spec['description'].split(':')[0]} on a partial CIFAR-10 ({sum(sizes.values()):,} images)",
            }
            for name, spec in PROTOCOLS.items()
        }
    )
    extra = {
        "layout": "CIFAR-10 python batches",
        "parts": sizes,
        "full_set": full,
        "patients": "one per image",
        "protocols": protocols,
        "default_split": "1k-5k-54k" if full else "official",
        "native_size": 32,
    }
    return build_dataset(
        IngestJob(
            name,
            "cifar",
            root,
            files,
            destination,
            options=options or ImageOptions(size=32, colour="rgb"),
            clean=False,
            workers=workers,
            progress=progress,
            extra_manifest=extra,
        )
    )


@dataclass(frozen=True, kw_only=True)
class CifarOptions:
    path: Path = argument("The cifar-10-batches-py folder of CIFAR-10's python version (or the folder holding it).")
    colour: str = option("rgb", "rgb: keep colour (as published); luma: store grey.")

    def __post_init__(self) -> None:
        if self.colour not in ("rgb", "luma"):
            raise ValueError(f"colour={self.colour!r}; valid: rgb, luma")


@register_source("cifar")
class Cifar(Source):
    """Ingest CIFAR-10 with the literature's protocols: 1k-5k-54k (the default), 1k-5k-59k, official (10,000 / 50,000)."""

    summary = "CIFAR-10's python batches, with the literature's three protocols (1k-5k-54k, 1k-5k-59k, official)"
    Options = CifarOptions

    def dataset_name(self, options: CifarOptions) -> str:
        return "cifar10"

    def ingest(
        self, options: CifarOptions, name: str, destination: Path, workers: int | None = None, progress: bool = False
    ) -> IngestResult:
        from hashbench.data.dicom import ImageOptions

        return ingest_cifar(
            Path(options.path), name, destination, ImageOptions(size=32, colour=options.colour), workers, progress
        )

    def rebuild_command(self, manifest: Manifest, name: str) -> str:
        return (
            f"hashbench ingest cifar '{manifest.source}' --name {name} --colour {manifest.options.get('colour', 'rgb')}"
        )

    def decode_part(self, data: bytes, part: str, image_options: ImageOptions) -> DicomSlices:
        return decode_part(data, part, image_options)
