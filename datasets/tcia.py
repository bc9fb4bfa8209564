"""A TCIA download as the NBIA Data Retriever lays it out, turned into a dataset.

Both layouts have the same depth, ``<Collection>/<Subject>/<Study>/<Series>/<file>.dcm``:
descriptive folder names (``12-01-1998-NA-PETCT HEAD-59359``, ``5.000000-PET NO AC-52932``,
the default since NBIA 4.4.1) or classic UIDs (``-cd``). The root may be the folder
holding the collections or the one above it (``manifest-*/``), or a single
collection's folder. ``metadata.csv`` beside the data is read when present.

Label = collection: TCIA's CTP private tag in the file, else metadata.csv, else the
top folder. Patient, study and series likewise come from the tags, else the folders.
"""

from __future__ import annotations

import csv
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hashbench.config.limits import MAX_PIXELS
from hashbench.data.manifest import Manifest
from hashbench.data.sources import (
    ASPECT_HELP,
    COLOUR_HELP,
    FOLLOW_SYMLINKS_HELP,
    MAX_PIXELS_HELP,
    SIZE_HELP,
    WINDOW_HELP,
    Source,
    argument,
    reading_flags,
    register_source,
)
from hashbench.model.options import option

if TYPE_CHECKING:  # pandas, pydicom and PIL load where files are read, not where sources are listed
    from hashbench.data.dicom import ImageOptions
    from hashbench.data.ingest import IngestResult, SourceFile

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
UID_FOLDER = re.compile(r"^\d+(\.\d+){2,}$")


def scan(root: Path) -> tuple[list[SourceFile], dict[str, dict[str, str]], dict[str, int]]:
    """Source files under ``root``, metadata.csv by Series UID, and counts per layout."""
    from hashbench.data.ingest import SourceFile

    root = root.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    by_location, by_series = _read_metadata(root)
    files, layouts = [], Counter()
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(folder) / filename
            if filename.startswith(".") or not _looks_like_dicom(path):
                continue
            parts = PurePosixPath(path.relative_to(root).as_posix()).parts
            series_folder = "/".join(parts[:-1])
            csv_fields = by_location.get(series_folder, {})
            files.append(
                SourceFile(
                    path=path,
                    relpath="/".join(parts),
                    collection=parts[-5] if len(parts) >= 5 else root.name,
                    patient=parts[-4] if len(parts) >= 4 else "",
                    study=parts[-3] if len(parts) >= 3 else "",
                    series=parts[-2] if len(parts) >= 2 else "",
                    csv_collection=csv_fields.get("collection", ""),
                    csv_modality=csv_fields.get("modality", ""),
                )
            )
            layouts[_layout(parts)] += 1
    return files, by_series, dict(layouts)


def _looks_like_dicom(path: Path) -> bool:
    """By suffix; files without one are taken when they carry the DICM preamble, links to let the ingest say why it
    skips them (only a regular file is opened here: opening a FIFO blocks)."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix:
        return False
    try:
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            return stat.S_ISLNK(mode)
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _layout(parts: tuple[str, ...]) -> str:
    if len(parts) < 5:
        return "flat"
    return "classic" if UID_FOLDER.match(parts[-2]) and UID_FOLDER.match(parts[-3]) else "descriptive"


def _read_metadata(root: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """metadata.csv files at the root or one level down, keyed by series folder and by UID."""
    by_location, by_series = {}, {}
    for csv_path in sorted(p for p in [*root.glob("metadata.csv"), *root.glob("*/metadata.csv")] if p.is_file()):
        base = csv_path.parent.relative_to(root).as_posix()
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                fields = {
                    "collection": (row.get("Collection") or "").strip(),
                    "modality": (row.get("Modality") or "").strip().upper(),
                }
                location = (row.get("File Location") or "").replace("\\", "/").strip()
                if location:
                    relative = PurePosixPath(base, location.removeprefix("./")).as_posix().removeprefix("./")
                    by_location[relative] = fields
                if row.get("Series UID"):
                    by_series[row["Series UID"].strip()] = fields
    return by_location, by_series


def ingest_tcia(
    root: Path,
    name: str,
    destination: Path,
    options: ImageOptions | None = None,
    clean: bool = True,
    workers: int | None = None,
    progress: bool = False,
    kind: str = "tcia",
    extra_manifest: dict | None = None,
    max_pixels: int = MAX_PIXELS,
    follow_symlinks: bool = False,
) -> IngestResult:
    """Scan a TCIA tree and ingest it as dataset ``name``; files that are not regular files (symbolic links unless
    ``follow_symlinks``) or declare more than ``max_pixels`` pixels are skipped unread, and reported."""
    from hashbench.data.dicom import ImageOptions
    from hashbench.data.ingest import IngestJob, build_dataset

    files, by_series, layouts = scan(root)
    if not files:
        raise FileNotFoundError(f"no DICOM files under {root} (looked for *.dcm and files with a DICM preamble)")
    extra = {"layouts": layouts, **(extra_manifest or {})}
    return build_dataset(
        IngestJob(
            name,
            kind,
            root.resolve(),
            files,
            destination,
            options=options or ImageOptions(),
            clean=clean,
            series_metadata=by_series,
            workers=workers,
            progress=progress,
            extra_manifest=extra,
            max_pixels=max_pixels,
            follow_symlinks=follow_symlinks,
        )
    )


@dataclass(frozen=True, kw_only=True)
class TciaOptions:
    path: Path = argument("A TCIA download: the folder holding the collections (or manifest-*/), or one collection.")
    size: int = option(224, SIZE_HELP)
    window: str = option("auto", WINDOW_HELP)
    colour: str = option("luma", COLOUR_HELP)
    aspect: str = option("pad", ASPECT_HELP)
    clean: bool = option(True, "Drop IQR outlier images (the paper's cleaning).")
    max_pixels: int = option(MAX_PIXELS, MAX_PIXELS_HELP, at_least=1)
    follow_symlinks: bool = option(False, FOLLOW_SYMLINKS_HELP)

    def __post_init__(self) -> None:
        self.image_options()  # a bad window, colour, aspect or size is refused before anything is read

    def image_options(self) -> ImageOptions:
        from hashbench.data.dicom import ImageOptions

        return ImageOptions(size=self.size, window=self.window, colour=self.colour, aspect=self.aspect)


@register_source("tcia")
class Tcia(Source):
    """Ingest a TCIA download (NBIA descriptive or classic layout, with or without metadata.csv)."""

    summary = "a TCIA download on disk (NBIA Data Retriever, descriptive or classic layout)"
    Options = TciaOptions

    def dataset_name(self, options: TciaOptions) -> str:
        return "tcia"

    def ingest(
        self, options: TciaOptions, name: str, destination: Path, workers: int | None = None, progress: bool = False
    ) -> IngestResult:
        return ingest_tcia(
            Path(options.path),
            name,
            destination,
            options.image_options(),
            options.clean,
            workers,
            progress,
            max_pixels=options.max_pixels,
            follow_symlinks=options.follow_symlinks,
        )

    def rebuild_command(self, manifest: Manifest, name: str) -> str:
        flags = " ".join(
            f"--{key} {manifest.options[key]}"
            for key in ("size", "window", "colour", "aspect")
            if key in manifest.options
        )
        clean = "" if manifest.clean else " --no-clean"
        return f"hashbench ingest tcia '{manifest.source}' --name {name} {flags}{clean}{reading_flags(manifest)}"
