"""A class-per-folder tree of images: ``ROOT/<class>/.../<image>.png`` (PNG, JPEG, TIFF, BMP; grey or colour, any size).

Each top-level folder is a class; images may sit at any depth below it. Images carry
no patient, so each image is its own "patient": the patient-level split is then an
image-level split, and the manifest says so. The paper's IQR cleaning is meant for CT
slices and is off unless asked for.

Attributes (body part, sex, age, ...) are read from ``ROOT/attributes.csv`` when there is
one: a ``path`` column (the image's path below ROOT, as ``<class>/<image>.png``) and any
of the attribute columns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hashbench.config.limits import MAX_PIXELS
from hashbench.data.manifest import Manifest
from hashbench.data.sources import (
    ASPECT_HELP,
    COLOUR_HELP,
    FOLLOW_SYMLINKS_HELP,
    MAX_PIXELS_HELP,
    SIZE_HELP,
    Source,
    argument,
    reading_flags,
    register_source,
)
from hashbench.model.options import option

if TYPE_CHECKING:  # pandas, pydicom and PIL load where files are read, not where sources are listed
    from hashbench.data.dicom import ImageOptions
    from hashbench.data.ingest import IngestResult, SourceFile


def scan(root: Path) -> tuple[list[SourceFile], list[str]]:
    """The images under ``root``, labelled by their top-level folder, and the files that could not be labelled (directly under ``root``)."""
    from hashbench.data.images import is_image_file
    from hashbench.data.ingest import SourceFile

    root = root.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    files, loose = [], []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(folder) / filename
            if filename.startswith(".") or not is_image_file(path):
                continue
            relpath = path.relative_to(root).as_posix()
            if "/" not in relpath:
                loose.append(relpath)
                continue
            files.append(
                SourceFile(
                    path=path,
                    relpath=relpath,
                    collection=relpath.split("/", 1)[0],
                    patient=relpath.rsplit(".", 1)[0],
                    study="",
                    series="",
                )
            )
    return files, loose


def ingest_folder(
    root: Path,
    name: str,
    destination: Path,
    options: ImageOptions | None = None,
    clean: bool = False,
    workers: int | None = None,
    progress: bool = False,
    max_pixels: int = MAX_PIXELS,
    follow_symlinks: bool = False,
) -> IngestResult:
    """Scan a class-per-folder tree and ingest it as dataset ``name``; a tree with fewer than two classes is refused.

    Only regular files are read: devices, FIFOs, sockets and symbolic links (unless ``follow_symlinks`` and they lead
    to a regular file inside ``root``) are skipped and reported, as are files declaring more than ``max_pixels``."""
    from hashbench.data.attributes import ATTRIBUTES_FILE, read_attributes
    from hashbench.data.dicom import ImageOptions
    from hashbench.data.images import IMAGE_SUFFIXES
    from hashbench.data.ingest import IngestJob, build_dataset

    files, loose = scan(root)
    images = {f.relpath for f in files} | set(loose)
    attributes = read_attributes(
        Path(root).resolve() / ATTRIBUTES_FILE, ("path",), "path", lambda key: key[0] if key[0] in images else None
    )
    classes = sorted({f.collection for f in files})
    where = f" ({len(loose)} image(s) directly under it have no class folder, e.g. {loose[0]})" if loose else ""
    if not files:
        raise ValueError(
            f"{root}: no images in class folders{where}; expected ROOT/<class>/<image> with suffixes {', '.join(IMAGE_SUFFIXES)}"
        )
    if len(classes) < 2:
        raise ValueError(
            f"{root}: one class folder ({classes[0]}); retrieval by class needs at least two, one folder per class"
        )
    extra = {
        "layout": "one folder per class",
        "classes": len(classes),
        "patients": "one per image (no patient identifiers in image files)",
        "unlabelled_files": loose,
    }
    return build_dataset(
        IngestJob(
            name,
            "folder",
            root.resolve(),
            files,
            destination,
            options=options or ImageOptions(),
            clean=clean,
            workers=workers,
            progress=progress,
            extra_manifest=extra,
            attributes=attributes,
            max_pixels=max_pixels,
            follow_symlinks=follow_symlinks,
        )
    )


@dataclass(frozen=True, kw_only=True)
class FolderOptions:
    path: Path = argument(
        "A folder with one subfolder of images per class (PNG, JPEG, TIFF, BMP; any depth below the class folder)."
    )
    size: int = option(224, SIZE_HELP)
    colour: str = option("luma", COLOUR_HELP)
    aspect: str = option("pad", ASPECT_HELP)
    clean: bool = option(
        False, "Drop IQR outlier images (the paper's cleaning, meant for CT slices; off by default here)."
    )
    max_pixels: int = option(MAX_PIXELS, MAX_PIXELS_HELP, at_least=1)
    follow_symlinks: bool = option(False, FOLLOW_SYMLINKS_HELP)

    def __post_init__(self) -> None:
        self.image_options()  # refuses a bad size, colour or aspect before anything is read

    def image_options(self) -> ImageOptions:
        from hashbench.data.dicom import ImageOptions

        return ImageOptions(size=self.size, window="minmax", colour=self.colour, aspect=self.aspect)


@register_source("folder")
class Folder(Source):
    """Ingest a class-per-folder image tree: each top-level folder is a class, each image its own patient."""

    summary = "a class-per-folder tree of PNG, JPEG, TIFF or BMP images"
    Options = FolderOptions

    def ingest(
        self, options: FolderOptions, name: str, destination: Path, workers: int | None = None, progress: bool = False
    ) -> IngestResult:
        return ingest_folder(
            Path(options.path),
            name,
            destination,
            options.image_options(),
            options.clean,
            workers,
            progress,
            options.max_pixels,
            options.follow_symlinks,
        )

    def rebuild_command(self, manifest: Manifest, name: str) -> str:
        flags = " ".join(
            f"--{key} {manifest.options[key]}" for key in ("size", "colour", "aspect") if key in manifest.options
        )
        clean = " --clean" if manifest.clean else ""
        return f"hashbench ingest folder '{manifest.source}' --name {name} {flags}{clean}{reading_flags(manifest)}"
