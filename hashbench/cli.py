"""The ``hashbench`` command line."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from hashbench.dicom import ImageOptions
from hashbench.ingest import IngestResult

app = typer.Typer(help="hashbench: benchmark deep hashing methods for medical image retrieval.", no_args_is_help=True, add_completion=False)
ingest_app = typer.Typer(help="Turn DICOM data into a dataset once: decoded, cleaned, split.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
console = Console()

SizeOption = typer.Option(224, "--size", help="Images are resized to SIZE x SIZE pixels.")
WindowOption = typer.Option("auto", "--window", help="auto (the file's window, else CT 40/400, else percentiles), percentile, or minmax.")
ColourOption = typer.Option("luma", "--colour", help="luma: colour images to grey; skip: leave them out (reported).")
AspectOption = typer.Option("pad", "--aspect", help="pad: keep the aspect ratio; stretch: resize directly.")
CleanOption = typer.Option(True, "--clean/--no-clean", help="Drop IQR outlier images (the paper's cleaning).")
WorkersOption = typer.Option(None, "--workers", help="Decoding processes (default: all cores).")


def _options(size: int, window: str, colour: str, aspect: str) -> ImageOptions:
    try:
        return ImageOptions(size=size, window=window, colour=colour, aspect=aspect)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@ingest_app.command("tcia")
def ingest_tcia_command(
    path: Path = typer.Argument(..., help="A TCIA download: the folder holding the collections (or manifest-*/), or one collection."),
    name: str = typer.Option("tcia", "--name", help="Dataset name to create or update."),
    size: int = SizeOption,
    window: str = WindowOption,
    colour: str = ColourOption,
    aspect: str = AspectOption,
    clean: bool = CleanOption,
    workers: Optional[int] = WorkersOption,
) -> None:
    """Ingest a TCIA download (NBIA descriptive or classic layout, with or without metadata.csv)."""
    from hashbench.datasets import ingest_tcia

    options = _options(size, window, colour, aspect)
    try:
        with _resumable(name):
            result = ingest_tcia(path, name, options, clean, workers, progress=True)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _print_report(result)


@ingest_app.command("phantom")
def ingest_phantom_command(
    profile: str = typer.Option("default", "--profile", help="tiny, default or large."),
    seed: int = typer.Option(0, "--seed", help="Generator seed: same seed, same files."),
    name: Optional[str] = typer.Option(None, "--name", help="Dataset name (default: phantom, or phantom-PROFILE-seedN)."),
    size: int = SizeOption,
    workers: Optional[int] = WorkersOption,
) -> None:
    """Generate the synthetic phantom download (once) and ingest it through the TCIA loader."""
    from hashbench.datasets import ingest_phantom
    from hashbench.datasets.phantom import PROFILES

    if profile not in PROFILES:
        raise typer.BadParameter(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}", param_hint="--profile")
    with _resumable(name or "phantom"):
        result = ingest_phantom(profile, seed, name, _options(size, "auto", "luma", "pad"), True, workers, progress=True)
    _print_report(result)


@contextmanager
def _resumable(name: str):
    """Ctrl-C ends an ingest with a word on what was kept, not a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted[/yellow]: the files finished so far are kept; run the same command again to resume {name}.")
        raise typer.Exit(130) from None


def _print_report(result: IngestResult) -> None:
    """What was kept, what was skipped and why, and where the full report lives."""
    dataset = result.dataset
    summary = dataset.summary()
    if result.up_to_date:
        console.print(f"[green]{dataset.name}[/green] is up to date ({summary['files']} files unchanged): nothing to do.")
    else:
        done = f"{result.decoded} decoded, {result.reused} unchanged and reused" + (f", {result.resumed} from an interrupted run" if result.resumed else "")
        console.print(f"[green]{dataset.name}[/green]: {summary['files']} files in {result.seconds:.1f} s ({done}).")
    kept_files = summary["files"] - summary["skipped"]
    clean = "dropped" if dataset.manifest["clean"] else "flagged only (--no-clean)"
    console.print(
        f"kept {kept_files} files -> {len(dataset.index)} slices of {summary['patients']} patients in {summary['classes']} classes; "
        f"{summary['outliers']} IQR outliers {clean}; {summary['slices']} slices in use"
    )
    table = Table(title="classes", show_edge=False)
    for column in ("label", "slices", "patients", "modalities", "label from"):
        table.add_column(column, justify="right" if column in ("slices", "patients") else "left")
    usable = dataset.usable()
    for label, rows in usable.groupby("label"):
        modalities = ", ".join(f"{m or '?'} {n}" for m, n in rows["modality"].value_counts().items())
        table.add_row(label, str(len(rows)), str(rows["patient"].nunique()), modalities, ", ".join(sorted(rows["label_source"].unique())))
    console.print(table)
    skipped = dataset.skipped
    if len(skipped):
        report = Table(title=f"skipped {len(skipped)} files", show_edge=False)
        for column in ("reason", "files", "for example"):
            report.add_column(column)
        for reason, rows in skipped.groupby("reason"):
            first = rows.iloc[0]
            report.add_row(reason, str(len(rows)), f"{first['path']} ({first['detail']})" if first["detail"] else first["path"])
        console.print(report)
    console.print(f"ingest report (every file, kept or skipped, with its reason): {dataset.root / 'files.csv'}")


@app.command("datasets")
def datasets_command() -> None:
    """List datasets with their sizes once ingested."""
    from hashbench.datasets import DEFAULT_DATASET, SOURCES, dataset_names
    from hashbench.paths import datasets_dir

    from hashbench.dataset import Dataset

    table = Table(title=f"datasets in {datasets_dir()}")
    for column in ("name", "kind", "slices", "outliers", "patients", "classes", "skipped", "px", "MiB"):
        table.add_column(column, justify="left" if column in ("name", "kind") else "right", no_wrap=column == "name")
    for name in dataset_names():
        folder = datasets_dir() / name
        if not (folder / "manifest.json").exists():
            table.add_row(name, "phantom", *["-"] * 7)
            continue
        s = Dataset(folder).summary()
        cells = (s["slices"], s["outliers"], s["patients"], s["classes"], s["skipped"], s["image_size"], f"{s['bytes'] / 2**20:.1f}")
        table.add_row(name, s["kind"], *map(str, cells))
    console.print(table)
    console.print("slices: in use after cleaning; skipped: source files that gave no image (see the dataset's files.csv).")
    if not (datasets_dir() / DEFAULT_DATASET / "manifest.json").exists():
        console.print(f"{DEFAULT_DATASET} is generated and ingested on first use, or now with `hashbench ingest phantom`.")
    console.print("sources: " + "; ".join(f"[bold]{k}[/bold]: {v}" for k, v in SOURCES.items()))
