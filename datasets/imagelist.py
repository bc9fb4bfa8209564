"""The list files of the hashing literature: ``path/to/image.jpg 0 1 0 ...`` rows, one list per role.

NUS-WIDE, MS-COCO and ImageNet-100 are shared as image folders plus a query list, a
database list and a training list, each row an image path and a 0/1 column per class
(multi-hot; one 1 per row for ImageNet-100). The lists are the protocol (``lists``):
query rows are the queries, database rows the database and training rows the training
set (the database itself when no training list is given). An image listed in two
roles is stored once per role. The metric each set is published with (MAP@5000 for
NUS-WIDE and MS-COCO, MAP@1000 for ImageNet-100) is computed beside the rest.

Published lists are not always clean: some place queries in the database or in the
training set. The ingest measures both overlaps and reports them; it never drops or
hides them, so a result on the lists is a result on the lists as published.

Attributes (body part, sex, age, ...) are read from an ``attributes.csv`` beside the query
list when there is one: a ``path`` column (the image's path as the lists write it) and any
of the attribute columns; an image listed in several roles has them in each.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass
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
    reading_flags,
    register_source,
)
from hashbench.model.options import option

if TYPE_CHECKING:  # pandas, pydicom and PIL load where files are read, not where sources are listed
    from hashbench.data.dicom import ImageOptions
    from hashbench.data.ingest import IngestResult

PRESETS = {  # the published MAP@k of each set's standard lists
    "nus-wide": 5_000,
    "ms-coco": 5_000,
    "imagenet-100": 1_000,
}
ROLES = ("query", "database", "train")
EXAMPLES = 3


@dataclass(frozen=True)
class ListRow:
    image: str  # as written in the list
    labels: tuple[int, ...]  # the classes marked 1


def read_list(path: Path) -> list[ListRow]:
    """The rows of one list file; ValueError naming the file and line of a malformed row."""
    rows, width = [], None
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read as a list file ({type(exc).__name__}: {exc})") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        flags = fields[1:]
        if not flags or any(flag not in ("0", "1") for flag in flags):
            raise ValueError(
                f"{path}:{number}: expected 'IMAGE 0 1 0 ...' (an image path, then a 0 or 1 per class), got {line.strip()[:80]!r}"
            )
        if width is not None and len(flags) != width:
            raise ValueError(f"{path}:{number}: {len(flags)} label columns where the rows above have {width}")
        width = len(flags)
        rows.append(ListRow(fields[0], tuple(i for i, flag in enumerate(flags) if flag == "1")))
    if not rows:
        raise ValueError(f"{path}: no rows; a list file holds 'IMAGE 0 1 0 ...' lines")
    return rows


def overlaps(lists: dict[str, list[ListRow]]) -> dict[str, dict]:
    """Images listed both as queries and in the database or training list: how many, and a few of them."""
    queries = {row.image for row in lists["query"]}
    found = {}
    for role in ("database", "train"):
        if role in lists:
            shared = sorted(queries & {row.image for row in lists[role]})
            found[f"query_{role}"] = {"images": len(shared), "queries": len(queries), "examples": shared[:EXAMPLES]}
    return found


def ingest_lists(
    lists: dict[str, Path],
    images: Path,
    name: str,
    destination: Path,
    top_k: int | None = None,
    class_names: list[str] | None = None,
    options: ImageOptions | None = None,
    workers: int | None = None,
    progress: bool = False,
    max_pixels: int = MAX_PIXELS,
    follow_symlinks: bool = False,
) -> IngestResult:
    """Ingest the images a query and a database list (and optionally a training list) name, under ``images``.

    A listed path that is not a regular file (a device, a FIFO, a symbolic link unless ``follow_symlinks`` and it leads
    to a regular file under ``images``) is skipped unread and reported, as is a file declaring more than ``max_pixels``."""
    from hashbench.data.attributes import ATTRIBUTES_FILE, read_attributes
    from hashbench.data.dataset import LABEL_SEPARATOR
    from hashbench.data.dicom import ImageOptions
    from hashbench.data.ingest import IngestJob, SourceFile, build_dataset

    if "query" not in lists or "database" not in lists:
        raise ValueError("a list-file set needs a query list and a database list (--query FILE --database FILE)")
    images = Path(images).resolve()
    if not images.is_dir():
        raise FileNotFoundError(f"no such folder: {images} (the folder the list files' image paths are relative to)")
    rows = {role: read_list(Path(path)) for role, path in lists.items()}
    widths = {role: max((max(r.labels, default=-1) for r in role_rows), default=-1) for role, role_rows in rows.items()}
    n_classes = max(widths.values()) + 1
    names = list(class_names) if class_names else [f"{i:0{len(str(n_classes - 1))}d}" for i in range(n_classes)]
    if len(names) < n_classes:
        raise ValueError(f"--classes names {len(names)} classes but the lists use {n_classes}")
    multi_label = any(len(row.labels) != 1 for role_rows in rows.values() for row in role_rows)
    files, missing, unlabelled, seen = [], [], 0, set()
    for role, role_rows in rows.items():
        for row in role_rows:
            path = Path(row.image) if Path(row.image).is_absolute() else images / row.image
            if (role, row.image) in seen:
                raise ValueError(f"{lists[role]}: {row.image} is listed twice; a list names each image once")
            seen.add((role, row.image))
            if not row.labels:
                unlabelled += 1
            elif not os.path.lexists(path):  # a link or a FIFO is there: the ingest reports why it is not read
                missing.append(f"{role}: {row.image}")
            else:
                label = LABEL_SEPARATOR.join(names[i] for i in row.labels)
                files.append(
                    SourceFile(
                        path=path,
                        relpath=f"{role}:{row.image}",
                        collection="",
                        patient=row.image,
                        study="",
                        series=role,
                        label=label,
                    )
                )
    if not files:
        raise ValueError(
            f"none of the {sum(map(len, rows.values()))} listed images is under {images}{_missing_text(missing)}; image paths in the lists are read relative to --images"
        )
    listed = {row.image for role_rows in rows.values() for row in role_rows}
    attributes = read_attributes(  # an image's patient is its path as listed
        Path(lists["query"]).resolve().parent / ATTRIBUTES_FILE,
        ("path",),
        "patient",
        lambda key: key[0] if key[0] in listed else None,
    )
    found = overlaps(rows)
    sides = {"query": "query", "database": "gallery" if "train" in rows else "database", "train": "train"}
    metric = f"map@{top_k}" if top_k else None
    sizes = ", ".join(f"{len(rows[role]):,} {role}" for role in ROLES if role in rows) + " rows listed"
    extra = {
        "layout": "list files",
        "lists": {role: str(Path(path).resolve()) for role, path in lists.items()},
        "patients": "one per image",
        "multi_label": multi_label,
        "class_names": names,
        "overlap": found,
        "missing_files": {"count": len(missing), "examples": missing[:EXAMPLES]},
        "unlabelled_rows": unlabelled,
        "notices": _notices(found, missing, unlabelled),
        "protocols": {
            "lists": {
                "parts": {role: sides[role] for role in rows},
                **({"metric": metric} if metric else {}),
                "description": f"the published lists ({sizes})",
            }
        },
        "default_split": "lists",
    }
    return build_dataset(
        IngestJob(
            name,
            "lists",
            images,
            files,
            destination,
            options=options or ImageOptions(),
            clean=False,
            workers=workers,
            progress=progress,
            extra_manifest=extra,
            attributes=attributes,
            max_pixels=max_pixels,
            follow_symlinks=follow_symlinks,
        )
    )


def _missing_text(missing: list[str]) -> str:
    return f" ({len(missing):,} missing, e.g. {'; '.join(missing[:EXAMPLES])})" if missing else ""


def _notices(found: dict[str, dict], missing: list[str], unlabelled: int) -> list[str]:
    """What a user must know about these lists, said at ingest and kept in the manifest."""
    notices = []
    for key, overlap in found.items():
        if overlap["images"]:
            role = key.removeprefix("query_")
            share = overlap["images"] / overlap["queries"]
            notices.append(
                f"{overlap['images']:,} of {overlap['queries']:,} queries ({share:.1%}) are also in the {role} list (e.g. {', '.join(overlap['examples'])}): they are kept as listed"
            )
    if missing:
        notices.append(f"{len(missing):,} listed images are not on disk and were left out{_missing_text(missing)}")
    if unlabelled:
        notices.append(f"{unlabelled:,} rows carry no label and were left out (nothing could be relevant to them)")
    return notices


@dataclass(frozen=True, kw_only=True)
class ListsOptions:
    query: Path = option(MISSING, "The query list: one 'IMAGE 0 1 0 ...' row per image (a 0/1 per class).")
    database: Path = option(MISSING, "The database list, same format.")
    train: Path | None = option(None, "The training list (default: train on the database list).")
    images: Path | None = option(
        None, "The folder the lists' image paths are relative to (default: the query list's folder)."
    )
    preset: str | None = option(None, "nus-wide, ms-coco or imagenet-100: their published MAP@k (5000, 5000, 1000).")
    top_k: int | None = option(
        None, "The k of the MAP@k these lists are published with (overrides --preset).", at_least=1
    )
    classes: Path | None = option(None, "A text file with one class name per line, in column order.")
    size: int = option(224, SIZE_HELP)
    colour: str = option("luma", COLOUR_HELP)
    aspect: str = option("pad", ASPECT_HELP)
    max_pixels: int = option(MAX_PIXELS, MAX_PIXELS_HELP, at_least=1)
    follow_symlinks: bool = option(False, FOLLOW_SYMLINKS_HELP)

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        self.image_options()
        missing = [f"--{role} {path}" for role, path in self.lists().items() if not path.is_file()]
        if self.classes is not None and not Path(self.classes).is_file():
            missing.append(f"--classes {self.classes}")
        if missing:
            raise ValueError(f"no such file: {', '.join(missing)}")

    def image_options(self) -> ImageOptions:
        from hashbench.data.dicom import ImageOptions

        return ImageOptions(size=self.size, window="minmax", colour=self.colour, aspect=self.aspect)

    def lists(self) -> dict[str, Path]:
        """The list file of each role given."""
        return {
            "query": Path(self.query),
            "database": Path(self.database),
            **({"train": Path(self.train)} if self.train else {}),
        }


@register_source("lists")
class Lists(Source):
    """Ingest a list-file set (NUS-WIDE, MS-COCO, ImageNet-100 style); query / database overlap is measured and reported."""

    summary = (
        "list files of the hashing literature (NUS-WIDE, MS-COCO, ImageNet-100): image paths with multi-hot labels"
    )
    Options = ListsOptions

    def ingest(
        self, options: ListsOptions, name: str, destination: Path, workers: int | None = None, progress: bool = False
    ) -> IngestResult:
        classes = Path(options.classes).read_text().splitlines() if options.classes else []
        names = [line.strip() for line in classes if line.strip()] or None
        top_k = options.top_k or (PRESETS[options.preset] if options.preset else None)
        images = Path(options.images) if options.images else Path(options.query).parent
        return ingest_lists(
            options.lists(),
            images,
            name,
            destination,
            top_k,
            names,
            options.image_options(),
            workers,
            progress,
            options.max_pixels,
            options.follow_symlinks,
        )

    def rebuild_command(self, manifest: Manifest, name: str) -> str:
        lists = " ".join(f"--{role} '{path}'" for role, path in manifest.stored.get("lists", {}).items())
        metric = next((spec.get("metric") for spec in manifest.protocols.values() if spec.get("metric")), None)
        top_k = f" --top-k {metric.removeprefix('map@')}" if metric else ""
        options = manifest.options
        return f"hashbench ingest lists {lists} --images '{manifest.source}' --name {name}{top_k} --size {options.get('size', 224)} --colour {options.get('colour', 'luma')}{reading_flags(manifest)}"
