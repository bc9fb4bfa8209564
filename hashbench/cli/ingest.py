"""Commands that build datasets: ingest SOURCE (one command per registered source, made from its Options), and datasets.

Each source's command is generated from its ``Options`` (:mod:`hashbench.data.sources`): a field marked with
``argument()`` is the positional argument, every other field a flag (``top_k`` -> ``--top-k``, a bool ->
``--clean/--no-clean``), with the field's help; every command adds ``--name``, ``--workers`` and ``--plugin FILE``
(a local source plugin, loaded before the command is looked up: ``hashbench ingest csv PATH --plugin my_source.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import MISSING, fields
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from hashbench.cli.app import app, console, fail, in_range, ingest_app
from hashbench.data.sources import RANGED_OPTIONS, SOURCES, Source, ingest
from hashbench.model.options import type_hints

if TYPE_CHECKING:
    from hashbench.data.ingest import IngestResult

COMMON_PARAMETERS = ("name", "workers", "plugin")  # every ingest command's own, beside its source's options


class SourceCommands(TyperGroup):
    """``hashbench ingest``: a command per registered source, made when asked for; ``--plugin`` files load first."""

    def resolve_command(self, ctx, args):
        load_source_plugins(plugin_files(args))
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(self.commands) | set(SOURCES.names()))

    def get_command(self, ctx, name: str):
        if name not in self.commands and name in SOURCES.names():
            self.commands[name] = source_command(name)
        return self.commands.get(name)


@ingest_app.callback(cls=SourceCommands)
def _ingest_group() -> None:
    """Turn DICOM data into a dataset once: decoded, cleaned, split."""


def plugin_files(args: list[str]) -> list[Path]:
    """The values of ``--plugin FILE`` and ``--plugin=FILE`` in a command line, read before click parses it."""
    found = [Path(value) for flag, value in pairwise(args) if flag == "--plugin"]
    return found + [Path(arg.split("=", 1)[1]) for arg in args if arg.startswith("--plugin=")]


def load_source_plugins(paths: list[Path]) -> None:
    """Load local source plugin files (each once per process); a broken one is reported and the command goes on."""
    loaded = {entry.origin for entry in SOURCES.entries.values()}
    for path in paths:
        if f"file:{path.resolve()}" in loaded:
            continue
        for name in SOURCES.load_file(path):
            if SOURCES.entries[name].error:
                console.print(
                    f"[yellow]plugin {escape(str(path))} is broken[/yellow]: {escape(SOURCES.entries[name].error)}"
                )


def source_command(name: str):
    """The click command of source ``name``: its Options as arguments and flags; a broken plugin's says why."""
    entry = SOURCES.entry(name)
    if entry.error:

        def broken() -> None:
            fail(f"source {name!r} ({entry.origin}) failed to load: {entry.error}")

        return _click_command(name, broken, f"Broken plugin ({entry.origin}): {entry.error}")

    def run(**values: Any) -> None:
        dataset, workers = values.pop("name"), values.pop("workers")
        values.pop("plugin")
        with _resumable(dataset or name):
            result = ingest(name, name=dataset, workers=workers, progress=True, **values)
        _print_report(result)

    run.__signature__ = inspect.Signature(_parameters(entry.plugin))
    run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
    return _click_command(name, run, inspect.getdoc(entry.plugin) or entry.plugin.summary)


def _click_command(name: str, function: Callable[..., None], help: str):
    single = typer.Typer(add_completion=False)
    single.command(name, help=help)(function)
    return typer.main.get_command(single)


def _parameters(source: type[Source]) -> list[inspect.Parameter]:
    """The command's parameters: one per Options field (see the module's docstring), then --name, --workers, --plugin."""
    hints = type_hints(source.Options)
    parameters = []
    for field in fields(source.Options):
        if field.name in COMMON_PARAMETERS:
            raise TypeError(
                f"source {source.name!r}: option {field.name!r} would hide the common --{field.name}; rename it"
            )
        help, flag = field.metadata.get("help", ""), f"--{field.name.replace('_', '-')}"
        default = ... if field.default is MISSING and field.default_factory is MISSING else field.default
        if field.metadata.get("argument"):
            declared = typer.Argument(default, help=help, show_default=default is not ...)
        elif hints[field.name] is bool:
            declared = typer.Option(default, f"{flag}/--no-{field.name.replace('_', '-')}", help=help)
        elif field.name in RANGED_OPTIONS:
            declared = typer.Option(default, flag, help=help, callback=in_range(RANGED_OPTIONS[field.name]))
        else:
            at_least = field.metadata.get("at_least")
            declared = typer.Option(default, flag, help=help, **({"min": at_least} if at_least is not None else {}))
        parameters.append(
            inspect.Parameter(
                field.name, inspect.Parameter.KEYWORD_ONLY, default=declared, annotation=hints[field.name]
            )
        )
    name_help = (
        "Dataset name to create or update"
        + (f" (default: {source.name}'s own)" if source.dataset_name is not Source.dataset_name else "")
        + "."
    )
    common = {
        "name": (str | None, typer.Option(None, "--name", help=name_help)),
        "workers": (
            int | None,
            typer.Option(
                None, "--workers", help="Decoding processes (default: all cores).", callback=in_range("workers")
            ),
        ),
        "plugin": (
            list[Path] | None,
            typer.Option(None, "--plugin", help="A local source plugin file, loaded before the command is read."),
        ),
    }
    return parameters + [
        inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=value, annotation=hint)
        for key, (hint, value) in common.items()
    ]


@contextmanager
def _resumable(name: str):
    """Ctrl-C ends an ingest with a word on what was kept, not a traceback; bad input (a missing folder, an unsafe name,
    a source without usable slices) ends it with the message and exit code 2."""
    try:
        yield
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print(
            f"\n[yellow]interrupted[/yellow]: the files finished so far are kept; run the same command again to resume {name}."
        )
        raise typer.Exit(130) from None


def _print_report(result: IngestResult) -> None:
    """What was kept, what was skipped and why, and where the full report lives."""
    dataset = result.dataset
    summary = dataset.summary()
    if result.up_to_date:
        console.print(
            f"[green]{dataset.name}[/green] is up to date ({summary['files']} files unchanged): nothing to do."
        )
    else:
        done = f"{result.decoded} decoded, {result.reused} unchanged and reused" + (
            f", {result.resumed} from an interrupted run" if result.resumed else ""
        )
        console.print(f"[green]{dataset.name}[/green]: {summary['files']} files in {result.seconds:.1f} s ({done}).")
    kept_files = summary["files"] - summary["skipped"]
    clean = "dropped" if dataset.info.clean else "flagged only (--no-clean)"
    console.print(
        f"kept {kept_files} files -> {len(dataset.index)} slices of {summary['patients']} patients in {summary['classes']} classes; "
        f"{summary['outliers']} IQR outliers {clean}; {summary['slices']} slices in use"
    )
    loose = dataset.info.unlabelled_files
    if loose:
        console.print(
            f"[yellow]left out {len(loose)} image(s) directly under the source folder[/yellow]: no class folder (e.g. {escape(str(loose[0]))})"
        )
    for notice in dataset.info.notices:
        console.print(f"[yellow]note:[/yellow] {escape(notice)}")
    table = Table(
        title="classes" + (" (multi-label: an image counts in each of its classes)" if dataset.multi_label else ""),
        show_edge=False,
    )
    classes = dataset.class_table()
    for column in classes.columns:
        table.add_column(column, justify="right" if column in ("slices", "patients") else "left")
    for row in classes.itertuples(index=False):
        table.add_row(*(escape(str(value)) for value in row))
    console.print(table)
    skipped = dataset.skip_table()
    if len(skipped):
        report = Table(title=f"skipped {skipped['files'].sum()} files", show_edge=False)
        for column in ("reason", "files", "for example"):
            report.add_column(column)
        for row in skipped.itertuples(index=False):
            example = f"{row.example} ({row.detail})" if row.detail else row.example
            report.add_row(escape(row.reason), str(row.files), escape(example))
        console.print(report)
    for protocol, sizes in dataset.protocol_sizes().items():
        shown = (
            sizes
            if isinstance(sizes, str)
            else f"{sizes['query']:,} queries, {sizes['train']:,} training, {sizes['database']:,} database"
        )
        console.print(f"split {protocol}{' (default)' if protocol == dataset.default_split else ''}: {shown}")
    console.print(
        f"ingest report (every file, kept or skipped, with its reason): {escape(str(dataset.root / 'files.csv'))}"
    )


@app.command("datasets")
def datasets_command() -> None:
    """List datasets with their sizes once ingested, and the sources datasets are ingested from."""
    from hashbench.data.sources import list_sources
    from hashbench.datasets import DEFAULT_DATASET, list_datasets
    from hashbench.store.paths import datasets_dir

    table = Table(title=f"datasets in {escape(str(datasets_dir()))}")
    for column in ("name", "kind", "slices", "outliers", "patients", "classes", "skipped", "px", "MiB"):
        table.add_column(column, justify="left" if column in ("name", "kind") else "right", no_wrap=column == "name")
    listings = list_datasets()
    for listing in listings:
        s = listing.summary
        if s is None:
            table.add_row(listing.name, "damaged" if listing.error else "phantom", *["-"] * 7)
            continue
        cells = (
            s["slices"],
            s["outliers"],
            s["patients"],
            s["classes"],
            s["skipped"],
            s["image_size"],
            f"{s['bytes'] / 2**20:.1f}",
        )
        table.add_row(listing.name, s["kind"], *map(str, cells))
    console.print(table)
    for listing in listings:
        if listing.error:
            console.print(f"[red]damaged:[/red] {escape(listing.error)}")
    console.print(
        "slices: in use after cleaning; skipped: source files that gave no image (see the dataset's files.csv)."
    )
    if any(listing.name == DEFAULT_DATASET and listing.summary is None and not listing.error for listing in listings):
        console.print(
            f"{DEFAULT_DATASET} is generated and ingested on first use, or now with `hashbench ingest phantom`."
        )
    sources = [
        f"[red]{source.name}[/red]: broken plugin ({escape(source.origin)}): {escape(source.error)}"
        if source.error
        else f"[bold]{source.name}[/bold]: {escape(source.summary)}"
        + ("" if source.origin == "built-in" else f" ({escape(source.origin)})")
        for source in list_sources()
    ]
    console.print("sources: " + "; ".join(sources))
