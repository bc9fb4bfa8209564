"""Commands that build datasets: ingest SOURCE, and datasets (what is ingested)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.table import Table

from hashbench.cli.app import app, console, ingest_app
from hashbench.data.dataset import LABEL_SEPARATOR
from hashbench.data.dicom import ImageOptions
from hashbench.data.ingest import IngestResult

SizeOption = typer.Option(224, "--size", help="Images are resized to SIZE x SIZE pixels.")
WindowOption = typer.Option("auto", "--window", help="auto (the file's window, else CT 40/400, else percentiles), percentile, or minmax.")
ColourOption = typer.Option("luma", "--colour", help="luma: colour images to grey; rgb: keep colour (grey images repeated); skip: leave colour images out (reported).")
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
    _ingest_and_report(name, lambda: ingest_tcia(path, name, options, clean, workers, progress=True))


@ingest_app.command("folder")
def ingest_folder_command(
    path: Path = typer.Argument(..., help="A folder with one subfolder of images per class (PNG, JPEG, TIFF, BMP; any depth below the class folder)."),
    name: str = typer.Option(..., "--name", help="Dataset name to create or update."),
    size: int = SizeOption,
    colour: str = ColourOption,
    aspect: str = AspectOption,
    clean: bool = typer.Option(False, "--clean/--no-clean", help="Drop IQR outlier images (the paper's cleaning, meant for CT slices; off by default here)."),
    workers: Optional[int] = WorkersOption,
) -> None:
    """Ingest a class-per-folder image tree: each top-level folder is a class, each image its own patient."""
    from hashbench.datasets import ingest_folder

    options = _options(size, "minmax", colour, aspect)
    _ingest_and_report(name, lambda: ingest_folder(path, name, options, clean, workers, progress=True))


@ingest_app.command("medmnist")
def ingest_medmnist_command(
    source: str = typer.Argument(..., help="A MedMNIST .npz (e.g. pathmnist_64.npz), or a set's name (pathmnist) to fetch it with the medmnist package."),
    name: Optional[str] = typer.Option(None, "--name", help="Dataset name (default: the file's stem)."),
    size: Optional[int] = typer.Option(None, "--size", help="Images are resized to SIZE x SIZE (default: the file's own size)."),
    colour: Optional[str] = typer.Option(None, "--colour", help="rgb: keep colour; luma: store grey (default: the file's own, rgb for colour sets)."),
    workers: Optional[int] = WorkersOption,
) -> None:
    """Ingest a MedMNIST set; its official split (test = queries, train = database) becomes the default protocol."""
    from hashbench.datasets import ingest_medmnist

    if size is not None:
        _options(size, "auto", colour or "luma", "pad")
    if colour is not None and colour not in ("rgb", "luma"):
        raise typer.BadParameter(f"colour={colour!r}; valid: rgb, luma", param_hint="--colour")
    _ingest_and_report(name or Path(source).stem, lambda: ingest_medmnist(source, name, size, colour, workers, progress=True))


@ingest_app.command("cifar")
def ingest_cifar_command(
    path: Path = typer.Argument(..., help="The cifar-10-batches-py folder of CIFAR-10's python version (or the folder holding it)."),
    name: str = typer.Option("cifar10", "--name", help="Dataset name to create or update."),
    colour: str = typer.Option("rgb", "--colour", help="rgb: keep colour (as published); luma: store grey."),
    workers: Optional[int] = WorkersOption,
) -> None:
    """Ingest CIFAR-10 with the literature's protocols: 1k-5k-54k (the default), 1k-5k-59k, official (10,000 / 50,000)."""
    from hashbench.datasets import ingest_cifar

    if colour not in ("rgb", "luma"):
        raise typer.BadParameter(f"colour={colour!r}; valid: rgb, luma", param_hint="--colour")
    _ingest_and_report(name, lambda: ingest_cifar(path, name, colour, workers, progress=True))


@ingest_app.command("lists")
def ingest_lists_command(
    query: Path = typer.Option(..., "--query", help="The query list: one 'IMAGE 0 1 0 ...' row per image (a 0/1 per class)."),
    database: Path = typer.Option(..., "--database", help="The database list, same format."),
    train: Optional[Path] = typer.Option(None, "--train", help="The training list (default: train on the database list)."),
    images: Optional[Path] = typer.Option(None, "--images", help="The folder the lists' image paths are relative to (default: the query list's folder)."),
    name: str = typer.Option(..., "--name", help="Dataset name to create or update."),
    preset: Optional[str] = typer.Option(None, "--preset", help="nus-wide, ms-coco or imagenet-100: their published MAP@k (5000, 5000, 1000)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1, help="The k of the MAP@k these lists are published with (overrides --preset)."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="A text file with one class name per line, in column order."),
    size: int = SizeOption,
    colour: str = ColourOption,
    aspect: str = AspectOption,
    workers: Optional[int] = WorkersOption,
) -> None:
    """Ingest a list-file set (NUS-WIDE, MS-COCO, ImageNet-100 style); query / database overlap is measured and reported."""
    from hashbench.datasets import ingest_lists
    from hashbench.datasets.imagelist import PRESETS

    if preset is not None and preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}", param_hint="--preset")
    options = _options(size, "minmax", colour, aspect)
    lists = {"query": query, "database": database, **({"train": train} if train else {})}
    missing = [f"--{role} {path}" for role, path in lists.items() if not path.is_file()]
    if classes is not None and not classes.is_file():
        missing.append(f"--classes {classes}")
    if missing:
        raise typer.BadParameter(f"no such file: {', '.join(missing)}")
    names = [line.strip() for line in classes.read_text().splitlines() if line.strip()] if classes else None
    k = top_k or (PRESETS[preset] if preset else None)
    _ingest_and_report(name, lambda: ingest_lists(lists, images or query.parent, name, k, names, options, workers, progress=True))


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
    _ingest_and_report(name or "phantom", lambda: ingest_phantom(profile, seed, name, _options(size, "auto", "luma", "pad"), True, workers, progress=True))


@contextmanager
def _resumable(name: str):
    """Ctrl-C ends an ingest with a word on what was kept, not a traceback; bad input (a missing folder, an unsafe name,
    a source without usable slices) ends it with the message and exit code 2."""
    try:
        yield
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted[/yellow]: the files finished so far are kept; run the same command again to resume {name}.")
        raise typer.Exit(130) from None


def _ingest_and_report(name: str, build: Callable[[], IngestResult]) -> None:
    """Run one ingest under the interrupt and bad-input handling, then print its report."""
    with _resumable(name):
        result = build()
    _print_report(result)


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
    loose = dataset.manifest.get("unlabelled_files", [])
    if loose:
        console.print(f"[yellow]left out {len(loose)} image(s) directly under the source folder[/yellow]: no class folder (e.g. {loose[0]})")
    for notice in dataset.manifest.get("notices", []):
        console.print(f"[yellow]note:[/yellow] {notice}")
    table = Table(title="classes" + (" (multi-label: an image counts in each of its classes)" if dataset.multi_label else ""), show_edge=False)
    for column in ("label", "slices", "patients", "modalities", "label from"):
        table.add_column(column, justify="right" if column in ("slices", "patients") else "left")
    usable = dataset.usable()
    if dataset.multi_label:
        usable = usable.assign(label=usable["label"].str.split(LABEL_SEPARATOR)).explode("label")
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
    for protocol, sizes in dataset.protocol_sizes().items():
        shown = sizes if isinstance(sizes, str) else f"{sizes['query']:,} queries, {sizes['train']:,} training, {sizes['database']:,} database"
        console.print(f"split {protocol}{' (default)' if protocol == dataset.default_split else ''}: {shown}")
    console.print(f"ingest report (every file, kept or skipped, with its reason): {dataset.root / 'files.csv'}")


@app.command("datasets")
def datasets_command() -> None:
    """List datasets with their sizes once ingested."""
    from hashbench.datasets import DEFAULT_DATASET, SOURCES, dataset_names
    from hashbench.files.paths import datasets_dir

    from hashbench.data.dataset import Dataset, DatasetError

    table = Table(title=f"datasets in {datasets_dir()}")
    for column in ("name", "kind", "slices", "outliers", "patients", "classes", "skipped", "px", "MiB"):
        table.add_column(column, justify="left" if column in ("name", "kind") else "right", no_wrap=column == "name")
    damaged = []
    for name in dataset_names():
        folder = datasets_dir() / name
        if not (folder / "manifest.json").exists():
            table.add_row(name, "phantom", *["-"] * 7)
            continue
        try:
            s = Dataset(folder).verify().summary()
        except DatasetError as exc:
            table.add_row(name, "damaged", *["-"] * 7)
            damaged.append(str(exc))
            continue
        cells = (s["slices"], s["outliers"], s["patients"], s["classes"], s["skipped"], s["image_size"], f"{s['bytes'] / 2**20:.1f}")
        table.add_row(name, s["kind"], *map(str, cells))
    console.print(table)
    for message in damaged:
        console.print(f"[red]damaged:[/red] {message}")
    console.print("slices: in use after cleaning; skipped: source files that gave no image (see the dataset's files.csv).")
    if not (datasets_dir() / DEFAULT_DATASET / "manifest.json").exists():
        console.print(f"{DEFAULT_DATASET} is generated and ingested on first use, or now with `hashbench ingest phantom`.")
    console.print("sources: " + "; ".join(f"[bold]{k}[/bold]: {v}" for k, v in SOURCES.items()))


