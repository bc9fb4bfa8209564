"""The ``hashbench`` command line."""

from __future__ import annotations

from contextlib import contextmanager
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from hashbench.data.dataset import LABEL_SEPARATOR
from hashbench.data.dicom import ImageOptions
from hashbench.evaluation.evaluate import DEFAULT_METRICS
from hashbench.data.ingest import IngestResult

app = typer.Typer(help="hashbench: benchmark deep hashing methods for medical image retrieval.", no_args_is_help=True, add_completion=False)
ingest_app = typer.Typer(help="Turn DICOM data into a dataset once: decoded, cleaned, split.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")


def _print_version(value: bool) -> None:
    if value:
        import hashbench

        print(f"hashbench {hashbench.__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")) -> None:
    """hashbench: benchmark deep hashing methods for medical image retrieval."""
# On a terminal, rich fits its width; in a log (a pipe, a file, a batch job) 80 columns would wrap every table.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)
DEFAULT_OUT = Path("runs")  # beside the user's work; a repository's curated results/ is written only when asked for

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


# --- methods, runs and leaderboards ---------------------------------------------------

MULTI_VALUE_OPTIONS = {"--methods", "--bits", "--seeds", "--plugin", "--set", "--metrics", "--weights", "--backbones", "--image-sizes"}
COMMA_LISTS = {"--methods", "--bits", "--seeds", "--metrics", "--backbones", "--image-sizes"}
INTEGER_LISTS = {"--bits", "--seeds", "--image-sizes"}  # a value's shape is known: several may follow one flag in any command
INTEGERS = re.compile(r"-?\d+(,-?\d+)*")


def expand_multi_value_options(argv: list[str]) -> list[str]:
    """Several values after one flag, as click wants them: ``--bits 16 32 48`` or ``--bits 16,32,48`` -> ``--bits 16 --bits 32 --bits 48``.

    A positional argument is never taken for a value: after one flag, further values are taken only where their
    shape is declared (integers, for ``--bits`` and ``--seeds``) or where the command has no positional arguments
    (``leaderboard --metrics map@1 map@10``). Elsewhere repeat the flag or use commas: ``--methods dafh,hashnet``.
    """
    free_values = not _takes_positionals(argv)
    expanded, position = [], 0
    while position < len(argv):
        token = argv[position]
        name, has_value, inline = token.partition("=")
        position += 1
        if token == "--":
            return expanded + argv[position - 1 :]
        if name not in MULTI_VALUE_OPTIONS:
            expanded.append(token)
            continue
        values = [inline] if has_value else argv[position : position + 1]  # the first value, whatever its shape
        position += 0 if has_value else len(values)
        while not has_value and position < len(argv) and not argv[position].startswith("--") and (
            (name in INTEGER_LISTS and INTEGERS.fullmatch(argv[position])) or (free_values and not argv[position].startswith("-"))
        ):
            values.append(argv[position])
            position += 1
        expanded += [x for value in values for x in _values(name, value)] or [name]
    return expanded


def _takes_positionals(argv: list[str]) -> bool:
    """Whether the (sub)command that argv names declares positional arguments (list, compare, search, confusion, ingest tcia)."""
    command = typer.main.get_command(app)
    for token in argv:
        if not hasattr(command, "commands") or token.startswith("-"):
            break
        command = command.commands.get(token)
        if command is None:
            return True  # unknown: click reports it; take no risk meanwhile
    return any(param.param_type_name == "argument" for param in command.params)


def _values(flag: str, value: str) -> list[str]:
    parts = [v for v in value.split(",") if v] if flag in COMMA_LISTS else [value]
    return [x for part in parts for x in (flag, part)]


def main() -> None:
    """Console entry point."""
    app(args=expand_multi_value_options(sys.argv[1:]), prog_name="hashbench")


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``method.key=value`` (one method) or ``key=value`` (every method); values stay text until the option's type reads them."""
    overrides: dict[str, dict] = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{item!r}: expected method.key=value or key=value", param_hint="--set")
        key, value = item.split("=", 1)
        method, _, option = key.rpartition(".")
        overrides.setdefault(method or "*", {})[option] = value
    return overrides


def _load_plugins(plugins: list[Path]) -> None:
    from hashbench.model.registry import REGISTRY

    for path in plugins:
        for name in REGISTRY.load_file(path):
            entry = REGISTRY.entries.get(name)
            if entry is not None and entry.error:
                console.print(f"[yellow]plugin {path} is broken[/yellow]: {entry.error}")


@app.command("list")
def list_command(
    pattern: str = typer.Argument("*", help="Wildcard, e.g. 'dafh*'."),
    plugin: List[Path] = typer.Option([], "--plugin", help="Also load a local plugin file."),
) -> None:
    """List methods: name, origin, status, paper."""
    from hashbench.model.registry import REGISTRY

    _load_plugins(plugin)
    table = Table(title="methods")
    for column in ("name", "origin", "status", "paper"):
        table.add_column(column, overflow="fold")
    names = REGISTRY.names(pattern)
    if not names:
        hint = "; the paper suites are listed by `hashbench suites`" if pattern == "suites" or pattern.startswith("paper-") else ""
        console.print(f"[red]error:[/red] no method matches {pattern!r}; methods: {', '.join(REGISTRY.names('*'))}{hint}")
        raise typer.Exit(2)
    for entry in (REGISTRY.entry(name) for name in names):
        status = f"[red]broken[/red]: {entry.error}" if entry.error else entry.status
        table.add_row(entry.name, entry.origin, status, entry.method.paper if entry.method else "")
    console.print(table)


@app.command("options")
def options_command(
    method: str = typer.Argument(..., help="A method name (see `hashbench list`)."),
    plugin: List[Path] = typer.Option([], "--plugin", help="Also load a local plugin file."),
) -> None:
    """A method's options and train settings: type, default, meaning (change them with --set METHOD.KEY=VALUE)."""
    from hashbench.model import options
    from hashbench.model.method import TrainSettings
    from hashbench.model.registry import REGISTRY
    from hashbench.runner.run import PROFILES

    _load_plugins(plugin)
    try:
        method_cls = REGISTRY.get(method)
    except (LookupError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    profiles = "; ".join(f"{name} sets " + ", ".join(f"{k}={v}" for k, v in profile.train.items()) for name, profile in PROFILES.items() if profile.train)
    tables = {f"{method}: method options": (options.rows(method_cls.Options), None)}
    if getattr(method_cls, "fitted", False):
        console.print(f"{method} is training-free: fitted in closed form to the training features, so no optimiser or train settings apply.")
    else:
        tables[f"{method}: train settings"] = (options.rows(TrainSettings, method_cls.train), f"the method's defaults; a profile may replace some ({profiles}); --dry-run shows what a run will use")
    for title, (rows, caption) in tables.items():
        table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
        for column in ("option", "type", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table if rows else f"{title}: none")


@app.command("run")
def run_command(
    methods: List[str] = typer.Option([], "--methods", help="Methods to run: --methods hashnet dpsh, or hashnet,dpsh."),
    bits: List[int] = typer.Option([], "--bits", help="Code lengths: --bits 16 32 48, or 16,32,48 (default 16 32 48, or the suite's)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Run a paper table: paper-table3, paper-table4, paper-table5 (its methods and bits)."),
    with_baselines: bool = typer.Option(False, "--with-baselines", help="Also run the training-free floor (lsh, pcah, itq, sh) on the same split."),
    seeds: List[int] = typer.Option([0], "--seeds", help="Training seeds; the leaderboard shows mean +/- std over them."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the database/query split; vary it to measure split variance."),
    dataset: str = typer.Option("phantom", "--dataset", help="An ingested dataset (see `hashbench datasets`); phantom is built on first use."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Any timm model name, the same for every method. Default: the profile's (quick: test_efficientnet, full: tf_efficientnet_b6.aa_in1k, full-b0: efficientnet_b0)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Start from ImageNet weights (default: the profile's; full: yes, quick: no)."),
    weights: List[str] = typer.Option([], "--weights", help="Local weights: FILE (the run's backbone), MODEL=FILE, or DIR of MODEL.safetensors/.pth files. For machines without internet."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Default: the profile's (quick: 30, full: 50)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Default: the profile's (quick: 64, full: 224)."),
    split: Optional[str] = typer.Option(None, "--split", help="patient, slice (the paper's), or a protocol the dataset declares (official for MedMNIST; 1k-5k-54k, 1k-5k-59k, official for CIFAR-10; lists for list files). Default: the dataset's own, else patient."),
    validation: float = typer.Option(0.0, "--validation", help="Share of the training side held out; its MAP@10 is logged each epoch (never used to pick an epoch)."),
    augment: Optional[str] = typer.Option(None, "--augment", help="Training-image augmentation: none, paper, or e.g. rotation=10,scale=0.1,brightness=0.1,noise=0.02,blur=1 (default: the profile's)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ..."),
    profile: Optional[str] = typer.Option(None, "--profile", help="full (the paper's training protocol), full-b0 (cheaper backbone) or quick (CPU budget); default: quick for the phantom on a CPU, else full."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Results root; finished cells there are skipped (default: ./runs)."),
    plugin: List[Path] = typer.Option([], "--plugin", help="A local plugin file registering methods."),
    overrides: List[str] = typer.Option([], "--set", help="Option override: method.key=value, or key=value for every method."),
    metrics: List[str] = typer.Option(list(DEFAULT_METRICS), "--metrics", help="Metrics to compute and show."),
    force: bool = typer.Option(False, "--force", help="Re-run finished cells: the old result stays until the new one is complete; an interrupted re-run resumes on the next --force."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved plan, one line per cell with its full configuration, and run nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: one JSON object per cell."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 autocast on CUDA, fp16 with a gradient scaler where bf16 is missing, fp32 on a CPU), fp32, bf16 or fp16."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC memory layout; default: on CUDA."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the training forward pass (inductor): slower first epoch, faster later ones."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: run only share I (counted from 0) of N shares of the grid (balanced by estimated cost; every cell in one share), e.g. --shard $SLURM_ARRAY_TASK_ID/8."),
) -> None:
    """Train and evaluate every (method, bits, seed) cell, then print the leaderboard."""
    from hashbench.training import engine
    from hashbench.datasets import UnknownDatasetError, load_dataset
    from hashbench.model.registry import BrokenMethodError, UnknownMethodError
    from hashbench.runner.run import RunRequest, plan, run_grid
    from hashbench.config.suites import TRAINING_FREE
    from hashbench.model.weights import WeightsUnavailableError

    from hashbench.training import distributed
    console.quiet = distributed.follower()  # under torchrun, the first process speaks for all
    _load_plugins(plugin)
    _check_metrics(metrics)
    chosen = _suite(suite, with_baselines)
    methods = list(methods) or (chosen.methods if chosen else [])
    bits = list(bits) or (list(chosen.bits) if chosen else [16, 32, 48])
    if not methods:
        raise typer.BadParameter("name methods (--methods hashnet,dpsh) or a suite (--suite paper-table3)", param_hint="--methods")
    if with_baselines:
        methods = list(dict.fromkeys([*methods, *TRAINING_FREE]))
    request = RunRequest(
        methods=methods, bits=bits, seeds=list(seeds), dataset=dataset, backbone=backbone, pretrained=pretrained, weights=list(weights),
        epochs=epochs, image_size=image_size, split=split, split_seed=split_seed, validation=validation, device=device, profile=profile,
        augment=augment, overrides=parse_overrides(overrides), metrics=tuple(metrics), force=force, shard=_parse_shard(shard),
        execution=_execution(precision, channels_last, compile_model),
    )
    try:
        data = load_dataset(dataset, progress=not console.quiet)
        if dry_run:
            planned = plan(request, data, engine.resolve_device(device))
            _print_plan(planned, out, as_json)
            return
        outcomes = run_grid(request, data, out, progress=not console.quiet, on_cell=lambda outcome: _report_cell(outcome, metrics))
    except (UnknownMethodError, BrokenMethodError, UnknownDatasetError, WeightsUnavailableError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc.args[0] if exc.args else exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted[/yellow]: finished cells are kept and the current one resumes from its last epoch; run the same command again.")
        raise typer.Exit(130) from None
    directories = {str(o.config.directory(out)) for o in outcomes}
    _print_boards(_boards(out, tuple(metrics), None, chosen, directories))
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    console.print(f"{len(outcomes)} cells: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    if failed:
        for outcome in failed:
            console.print(f"  [red]failed[/red] {outcome.config.label()}: {outcome.error.splitlines()[-1]}  ({outcome.config.directory(out) / 'failed.json'})")
        raise typer.Exit(1)


def _execution(precision: str, channels_last: bool | None, compile_model: bool):
    from hashbench.training.engine import Execution

    try:
        return Execution(precision, channels_last, "inductor" if compile_model else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--precision "), param_hint="--precision") from None


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip()) if text is not None else None
    if text is not None and (match is None or not 0 <= int(match[1]) < int(match[2])):
        raise typer.BadParameter(f"{text!r}: expected I/N with 0 <= I < N (shares are counted from 0), e.g. --shard 0/8 ... --shard 7/8", param_hint="--shard")
    return (int(match[1]), int(match[2])) if match else None


def _report_cell(outcome, metrics: List[str]) -> None:
    label = outcome.config.label()
    note = f" [yellow]({outcome.note})[/yellow]" if outcome.note and outcome.status != "skipped" else ""  # collapse, damage, another process
    if outcome.status == "done":
        console.print(f"[green]done[/green] {label}: " + ", ".join(f"{k} {outcome.metrics[k]:.3f}" for k in metrics if k in outcome.metrics) + note)
    elif outcome.status == "skipped":
        console.print(f"[dim]skipped {label}: {outcome.note}[/dim]")
    else:
        console.print(f"[red]failed[/red] {label}: {outcome.error}{note}")


def _print_plan(planned, out: Path, as_json: bool) -> None:
    """One line per cell: its full configuration and where it would be written."""
    from hashbench.runner.run import PROFILES

    for cell in planned:
        described = cell.describe(out)
        if as_json:
            print(json.dumps(described, default=str))
            continue
        flat = {k: v for k, v in described.items() if k not in ("cell", "directory")}
        print(f"{described['cell']}: " + " ".join(f"{k}={json.dumps(v, default=str, ensure_ascii=False)}" for k, v in flat.items()) + f" -> {described['directory']}")
    if not as_json:
        profiles = {cell.config.profile for cell in planned}
        for name in sorted(profiles):
            console.print(f"profile {name}: {PROFILES[name].description}")
        console.print(f"{len(planned)} cells planned; nothing was run (--dry-run).")


def _suite(name: str | None, with_baselines: bool = False):
    from hashbench.config.suites import get_suite

    try:
        chosen = get_suite(name) if name else None
    except KeyError as exc:
        raise typer.BadParameter(exc.args[0], param_hint="--suite") from None
    return chosen.with_baselines() if chosen and with_baselines else chosen


def _cells(out: Path, dataset: str | None, suite=None, directories: set[str] | None = None):
    from hashbench.store.results import ResultsStore

    cells = ResultsStore(out).table(dataset, suite.methods if suite else None)
    if directories is not None and not cells.empty:
        cells = cells[cells["directory"].isin(directories)]
    return cells


def _boards(out: Path, metrics: tuple[str, ...], dataset: str | None, suite=None, directories: set[str] | None = None) -> list:
    from hashbench.report import leaderboard
    cells = _cells(out, dataset, suite, directories)
    return leaderboard.build_suite(cells, suite) if suite else leaderboard.build(cells, metrics)


def _print_boards(boards: list) -> None:
    for board in boards:
        table = Table(title=board.title, caption=f"{board.caption}; {board.legend}", caption_justify="left")
        table.add_column(board.table.index.name or "method")
        for column in board.table.columns:
            table.add_column(column, justify="right")
        for method, row in board.table.iterrows():
            table.add_row(str(method), *(str(value) for value in row))
        console.print(table)


@app.command("bench")
def bench_command(
    dataset: str = typer.Option("phantom", "--dataset", help="Whose cache the loader reads."),
    backbones: List[str] = typer.Option(["tf_efficientnet_b6.aa_in1k"], "--backbones", help="timm models, e.g. --backbones efficientnet_b0,tf_efficientnet_b6.aa_in1k (random weights: rates do not depend on them)."),
    image_sizes: List[int] = typer.Option([224], "--image-sizes", help="Training image sizes, e.g. --image-sizes 224 384."),
    method: str = typer.Option("dafh", "--method", help="The method whose network and loss are trained."),
    bits: int = typer.Option(32, "--bits"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default: the method's."),
    steps: int = typer.Option(5, "--steps", help="Training steps per epoch; the second of two epochs is timed."),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16 (as for run)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last"),
    compile_model: bool = typer.Option(False, "--compile"),
    slices: int = typer.Option(372_004, "--slices", help="Projection: slices to train on (default: the paper's 372,004)."),
    epochs: int = typer.Option(50, "--epochs", help="Projection: epochs (default: the paper's 50)."),
    as_json: Optional[Path] = typer.Option(None, "--json", help="Also write the rates to this file."),
) -> None:
    """Images/s for loading, training and encoding on this device, peak memory, and the projected time of a full run."""
    from hashbench.training import bench, engine
    from hashbench.datasets import UnknownDatasetError, load_dataset
    from hashbench.model.registry import UnknownMethodError

    execution = _execution(precision, channels_last, compile_model)
    if steps < 1 or min(image_sizes) < 16:
        raise typer.BadParameter("--steps takes at least 1 and --image-sizes at least 16", param_hint="--steps/--image-sizes")
    try:
        data = load_dataset(dataset, progress=True)
        where = engine.resolve_device(device)
        rates = []
        for backbone in dict.fromkeys(backbones):
            for size in dict.fromkeys(image_sizes):
                console.print(f"[dim]measuring {method} on {backbone} at {size} px on {where}...[/dim]")
                rates.append(bench.measure(data, backbone, size, where, method, bits, batch_size, steps, execution))
    except (UnknownDatasetError, UnknownMethodError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc.args[0] if exc.args else exc}")
        raise typer.Exit(2) from None
    table = Table(box=box.SIMPLE_HEAD, title=f"{rates[0].device}; {rates[0].execution['precision']}; images/s")
    for column in ("backbone", "px", "batch", "loading", "training", "encoding", "loader / training", "peak memory (MiB)", f"{slices:,} x {epochs} epochs"):
        table.add_column(column, justify="left" if column == "backbone" else "right")
    for rate in rates:
        memory = rate.peak_memory_mib.get("cuda_allocated_mib", rate.peak_memory_mib.get("process_rss_peak_so_far_mib"))
        table.add_row(rate.backbone, str(rate.image_size), str(rate.batch_size), f"{rate.loading:,.0f}", f"{rate.training:,.1f}", f"{rate.encoding:,.1f}",
                      f"{rate.loader_margin:,.0f}x", f"{memory:,.0f}", f"{rate.projected_hours(slices, epochs):,.1f} h")
    console.print(table)
    console.print(f"{data.name}{' (synthetic)' if data.manifest.get('synthetic') else ''}, stored at {data.image_size} px; loading: memory-mapped cache (warm page cache) "
                  f"to augmented device tensors; training: {method}, {bits} bits, the engine's loop, second epoch timed; peak memory: "
                  f"{'GPU allocated' if 'cuda_allocated_mib' in rates[0].peak_memory_mib else 'process resident so far'}; projection: training plus one encoding pass.")
    if as_json:
        as_json.write_text(bench.to_json(rates, data, slices, epochs))


@app.command("suites")
def suites_command() -> None:
    """List the paper suites: what each runs and which table of the paper it reproduces."""
    from hashbench.config.suites import SUITES

    table = Table(title="suites (hashbench run --suite NAME)")
    for column in ("name", "methods", "bits", "paper table"):
        table.add_column(column, overflow="fold")
    for suite in SUITES.values():
        table.add_row(suite.name, ", ".join(suite.methods), " ".join(map(str, suite.bits)), suite.title)
    console.print(table)


@app.command("leaderboard")
def leaderboard_command(
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Results root to read (default: ./runs)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Only this dataset."),
    metrics: List[str] = typer.Option(list(DEFAULT_METRICS), "--metrics", help="Metrics to show."),
    output_format: str = typer.Option("rich", "--format", help="rich (terminal) or md (markdown)."),
    output: Optional[Path] = typer.Option(None, "--output", help="With --format md: write here (default: <out>/leaderboard.md, or <out>/<suite>.md)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Show a paper table (paper-table3/4/5) in the paper's layout, the paper's numbers beside ours."),
    with_baselines: bool = typer.Option(False, "--with-baselines", help="With --suite: the training-free floor as reference rows below the paper's."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="With --format md: also write PR, P@k and metric-vs-bits PNGs beside the markdown."),
) -> None:
    """Print the leaderboard of stored cells, or write it as markdown (with its figures)."""
    from hashbench.report import leaderboard
    if output_format not in ("rich", "md"):
        raise typer.BadParameter(f"{output_format!r}; valid: rich, md", param_hint="--format")
    _check_metrics(metrics)
    chosen = _suite(suite, with_baselines)
    boards = _boards(out, tuple(metrics), dataset, chosen)
    if not boards:
        console.print(f"[red]error:[/red] no finished cells under {out}{' for ' + dataset if dataset else ''}: run `hashbench run ...` first, or point --out at a results root")
        raise typer.Exit(2)
    if output_format == "rich":
        _print_boards(boards)
        return
    text = leaderboard.to_markdown(boards)
    target = output or out / (f"{suite}.md" if suite else "leaderboard.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    if figures:
        text += "\n" + leaderboard.figures(_cells(out, dataset, chosen), tuple(chosen.metrics if chosen else metrics), target)
    target.write_text(text)
    console.print(f"wrote {target}" + (" and its figures beside it" if figures else ""))


@app.command("compare")
def compare_command(
    a: str = typer.Argument(..., help="A method name (all its seeds) or a cell directory."),
    b: str = typer.Argument(..., help="The other side, the same way."),
    bits: Optional[int] = typer.Option(None, "--bits", help="Code length, where a method ran several."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset, where a method ran on several."),
    metrics: List[str] = typer.Option(["map@1", "map@10", "map@tie"], "--metrics", help="Per-query metrics to compare."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Results root to read (default: ./runs)."),
) -> None:
    """Is A better than B? Paired test on the same queries (and across seeds), with the difference's interval."""
    from hashbench.store.results import ResultsStore
    from hashbench.evaluation.stats import compare_cells

    _check_metrics(metrics)
    store = ResultsStore(out)
    try:
        sides = [store.select(name, bits, dataset) for name in (a, b)]
        rows, warnings = compare_cells(*sides, tuple(metrics))
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table(
        title=f"A = {a}, B = {b}: A - B on the same {len(sides[0][0].query_ids())} queries",
        caption="interval: paired bootstrap over queries, 95 %; p (queries): paired sign-flip randomisation test, 10,000 rounds; p (seeds): Welch t-test on per-seed means (needs two seeds a side)"
        + "".join(f"\n[yellow]warning:[/yellow] {w}" for w in warnings),
        caption_justify="left",
    )
    for column in ("metric", "A", "B", "A - B", "95 % interval", "p (queries)", "p (seeds)"):
        table.add_column(column, justify="right")
    for row in rows:
        result = row.result
        p_seeds = "n/a (one seed)" if result.p_seeds is None else f"{result.p_seeds:.3g}"
        table.add_row(row.metric, f"{row.mean_a:.3f} (n={result.seeds[0]})", f"{row.mean_b:.3f} (n={result.seeds[1]})", f"{result.difference:+.3f}", f"[{result.interval[0]:+.3f}, {result.interval[1]:+.3f}]", f"{result.p_queries:.3g}", p_seeds)
    console.print(table)


def _check_metrics(metrics: List[str]) -> None:
    from hashbench.evaluation.evaluate import parse_metric

    for name in metrics:
        try:
            parse_metric(name)
        except ValueError as exc:
            raise typer.BadParameter(exc.args[0], param_hint="--metrics") from None


@app.command("ties")
def ties_command(
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Results root to read (default: ./runs)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Only this dataset."),
) -> None:
    """How much each cell's score is tie luck: bounds over tie orders, tie sizes, bucket use, bit balance."""
    from hashbench.store.results import Cell

    cells = _cells(out, dataset)
    if cells.empty:
        console.print(f"no finished cells under {out}")
        return
    columns = {
        "map@1-best": "MAP@1\nbest", "map@1-worst": "MAP@1\nworst", "map@tie": "mAP\ntie", "map@tie-best": "mAP\nbest", "map@tie-worst": "mAP\nworst",
        "nearest_tie_size": "tie", "occupied_buckets": "buckets", "largest_bucket_share": "largest", "bit_balance": "balance", "dead_bits": "dead",
    }
    caption = (
        "best / worst: relevant items first / last in every group of equal Hamming distance; tie: items at the nearest distance; "
        "largest: the fullest bucket's share of the database; balance 1 = every bit halves the database; dead: bits that never change"
    )
    table = Table(title="tie diagnostics", caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False)
    for column in ("method", "bits", "seed", "split", *columns.values()):
        table.add_column(column, justify="left" if column in ("method", "split") else "right", no_wrap=column == "method")
    several_datasets = cells["dataset"].nunique() > 1
    for row in cells.sort_values(["dataset", "method", "bits", "seed"]).itertuples():
        method = f"{row.dataset}/{row.method}" if several_datasets else row.method
        cell = (method, str(row.bits), str(row.seed), row.split)
        if row.status != "finished":
            table.add_row(*cell, row.note, *[""] * (len(columns) - 1))
            continue
        found = Cell(row.directory).tie_diagnostics()
        table.add_row(*cell, *(f"{found[k]:.1f}" if k == "nearest_tie_size" else f"{found[k]:.3f}" if isinstance(found[k], float) else str(found[k]) for k in columns))
    console.print(table)


@app.command("search")
def search_command(
    cell: Path = typer.Argument(..., help="A finished cell's directory: its model encodes the queries, its database codes are searched."),
    queries: List[Path] = typer.Argument(..., help="DICOM files or images (PNG, JPEG, TIFF, BMP) to search with."),
    k: int = typer.Option(10, "--k", min=1, help="Neighbours per query (the database's size at most)."),
    tie_break: str = typer.Option("embedding", "--tie-break", help="Order within one Hamming distance: embedding (continuous-code distance) or index."),
    faiss: Optional[bool] = typer.Option(None, "--faiss/--no-faiss", help="Rank with faiss IndexBinaryFlat (default: when installed)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON lines instead of tables."),
) -> None:
    """The nearest database images of a trained cell for new images or DICOM files."""
    from dataclasses import asdict

    from hashbench.store.results import CellError
    from hashbench.evaluation.search import CellIndex

    try:
        index = CellIndex(cell, device, faiss)
        images, names, skipped = index.load_images(queries)
        results = index.search(index.embed(images), k, tie_break) if len(images) else []
    except (FileNotFoundError, ImportError, ValueError, LookupError, CellError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    for path, reason in skipped:
        console.print(f"[yellow]skipped[/yellow] {path}: {reason}")
    for name, hits in zip(names, results):
        if as_json:
            print(json.dumps({"query": name, "hits": [asdict(hit) for hit in hits]}))
            continue
        flag = f"; [yellow]{index.collapse}[/yellow]" if index.collapse else ""
        table = Table(title=f"{name}", caption=f"{index.config.method}, {index.config.bits} bits, {index.config.dataset}; {index.backend}; ties by {tie_break}{flag}", caption_justify="left")
        for column in ("rank", "distance", "slice", "label", "patient", "path"):
            table.add_column(column, overflow="fold")
        for hit in hits:
            table.add_row(str(hit.rank), str(hit.distance), str(hit.slice_id), hit.label, hit.patient, hit.path)
        console.print(table)
    if skipped and not results:
        raise typer.Exit(1)


@app.command("confusion")
def confusion_command(
    cell: Path = typer.Argument(..., help="A finished cell's directory (it holds codes.npz and metrics.json)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where to write confusion.png and confusion.md (default: the cell's directory)."),
    metrics: List[str] = typer.Option(["map@1", "map@10", "map@tie"], "--metrics", help="Per-class metrics to tabulate beside the matrix."),
) -> None:
    """The MAP@1 confusion matrix of a stored cell (the paper's Figure 3) and per-class metrics, as PNG and markdown."""
    from hashbench.report import plots
    from hashbench.store.results import Cell

    _check_metrics(metrics)
    stored = Cell(cell)
    if stored.status() != "finished":
        console.print(f"[red]error:[/red] {cell} is not a finished cell ({stored.problem() or stored.status()})")
        raise typer.Exit(2)
    target = output_dir or cell
    by_class, written = plots.write_confusion(stored, target, tuple(metrics))
    table = Table(title="per-class metrics (mean over the class's queries)")
    for column in ("class", *metrics):
        table.add_column(column, justify="right")
    for name in stored.class_names:
        table.add_row(name, *(f"{by_class[m][name]:.3f}" if name in by_class[m] else "-" for m in metrics))
    console.print(table)
    console.print(f"wrote {' and '.join(map(str, written))}")
