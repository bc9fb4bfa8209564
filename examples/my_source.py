"""A data source plugin: a CSV file that lists images with their labels (``path,label[,patient]``).

    hashbench ingest csv images.csv --plugin examples/my_source.py --name my-images --size 32
    hashbench run --dataset my-images --methods lsh --bits 8

Image paths are relative to the CSV file's folder. Without a patient column each image is its own patient.
Ship it as a package with ``[project.entry-points."hashbench.datasets"]`` ``csv = "my_package.my_source"``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from hashbench.data.dicom import ImageOptions
from hashbench.data.ingest import IngestJob, IngestResult, SourceFile, build_dataset
from hashbench.data.manifest import Manifest
from hashbench.data.sources import COLOUR_HELP, SIZE_HELP, Source, argument, register_source
from hashbench.model.options import option


@dataclass(frozen=True, kw_only=True)
class CsvOptions:
    table: Path = argument("A CSV file with a header row path,label[,patient]; image paths are relative to its folder.")
    size: int = option(224, SIZE_HELP)
    colour: str = option("luma", COLOUR_HELP)

    def __post_init__(self) -> None:
        self.image_options()  # a bad size or colour is refused before anything is read

    def image_options(self) -> ImageOptions:
        return ImageOptions(size=self.size, window="minmax", colour=self.colour)


@register_source("csv")
class CsvSource(Source):
    """Ingest the images a CSV file lists, each labelled by its row."""

    summary = "a CSV file of image paths with a label (and optionally a patient) per row"
    Options = CsvOptions

    def ingest(
        self, options: CsvOptions, name: str, destination: Path, workers: int | None = None, progress: bool = False
    ) -> IngestResult:
        table = Path(options.table).resolve()
        if not table.is_file():
            raise FileNotFoundError(f"no such file: {table} (a CSV file with a header row path,label[,patient])")
        with open(table, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"path", "label"} <= set(rows[0]):
            raise ValueError(f"{table}: expected a header row path,label[,patient] and one row per image")
        with_patients = "patient" in rows[0]
        files = [
            SourceFile(
                path=table.parent / row["path"],
                relpath=row["path"],
                collection="",
                patient=row.get("patient") or row["path"],
                study="",
                series="",
                label=row["label"],
            )
            for row in rows
        ]
        extra = {
            "layout": "CSV list",
            "table": str(table),
            "patients": "from the patient column" if with_patients else "one per image",
        }
        return build_dataset(
            IngestJob(
                name,
                self.name,
                table.parent,
                files,
                destination,
                options=options.image_options(),
                clean=False,
                workers=workers,
                progress=progress,
                extra_manifest=extra,
            )
        )

    def rebuild_command(self, manifest: Manifest, name: str) -> str:
        options = manifest.options
        return f"hashbench ingest csv '{manifest.stored.get('table', 'TABLE.csv')}' --plugin {__file__} --name {name} --size {options.get('size', 224)} --colour {options.get('colour', 'luma')}"
