"""hashbench from Python: the calls the command line makes, for scripts, notebooks and tests.

import hashbench as hb

dataset = hb.load_dataset("phantom")
request = hb.RunRequest(methods=["dpsh", "lsh"], bits=[16, 32])
cells = hb.plan(request, dataset)           # every cell resolved, nothing written
outcomes = hb.run_grid(request, dataset, "runs")
boards = hb.leaderboard("runs")
print(hb.to_markdown(boards))
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from hashbench.config import sweep
from hashbench.config.limits import check_range
from hashbench.config.suites import TRAINING_FREE, Suite, get_suite
from hashbench.data.dataset import Dataset
from hashbench.data.sources import ingest, list_sources
from hashbench.datasets import UnknownDatasetError, load_dataset
from hashbench.evaluation.evaluate import DEFAULT_METRICS
from hashbench.evaluation.stats import CellComparison, compare_cells
from hashbench.evaluation.stored import SUBGROUPS
from hashbench.evaluation.view import EXCLUSIONS, HAMMING, LEVELS, RELEVANCE_ATTRIBUTES, View
from hashbench.model.registry import (
    BrokenMethodError,
    UnknownMethodError,
    create_method,
    list_methods,
    listed_methods,
    load_plugin,
    method_class,
)
from hashbench.model.weights import WeightsUnavailableError
from hashbench.report import export as exported
from hashbench.report import leaderboard as boards
from hashbench.report.leaderboard import Leaderboard, to_markdown
from hashbench.report.plots import write_confusion
from hashbench.runner.bench import PAPER_SLICES, Rates, SearchRates, Skipped, check_memory, measure, measure_search
from hashbench.runner.bench import search_json as search_rates_json
from hashbench.runner.bench import to_json as rates_json
from hashbench.runner.cell import CellOutcome
from hashbench.runner.grid import Standing, SweepProgress, UnbuildableOutcome, run_grid, run_planned, standings
from hashbench.runner.plan import CellSpec, RunRequest, resolve_device
from hashbench.runner.plan import plan as plan_cells
from hashbench.runner.plan import with_defaults as fill_defaults
from hashbench.runner.search import CellIndex, Hit
from hashbench.store.atomic import write_text
from hashbench.store.results import Cell, CellError, ResultsStore, group_notes, pick
from hashbench.training.engine import Execution

USER_ERRORS = (
    UnknownMethodError,
    BrokenMethodError,
    UnknownDatasetError,
    WeightsUnavailableError,
    ValueError,
)  # bad input: the message says what to change

__all__ = [
    "SEARCH_ERRORS",
    "USER_ERRORS",
    "CellOutcome",
    "confusion",
    "CellSpec",
    "EXCLUSIONS",
    "LEVELS",
    "RELEVANCE_ATTRIBUTES",
    "SUBGROUPS",
    "View",
    "Dataset",
    "Leaderboard",
    "RunRequest",
    "Standing",
    "Suite",
    "SweepProgress",
    "UnbuildableOutcome",
    "bench",
    "bench_search",
    "cells",
    "compare",
    "create_method",
    "export",
    "group_notes",
    "leaderboard",
    "ingest",
    "keep_sweep",
    "list_methods",
    "listed_methods",
    "list_sources",
    "load_dataset",
    "load_plugin",
    "method_class",
    "methods_and_bits",
    "plan",
    "rates_json",
    "run_grid",
    "run_planned",
    "search",
    "search_rates_json",
    "standings",
    "suite",
    "to_markdown",
    "with_defaults",
    "with_suite_settings",
    "write_leaderboard",
]


def methods_and_bits(
    methods: list[str], bits: list[int], suite: Suite | None = None, with_baselines: bool = False
) -> tuple[list[str], list[int]]:
    """What a run covers: the methods and code lengths named, else the suite's (bits default to 16, 32, 48); the training-free floor added when asked."""
    methods = list(methods) or (list(suite.methods) if suite else [])
    bits = list(bits) or (list(suite.bits) if suite else [16, 32, 48])
    if with_baselines:
        methods = list(dict.fromkeys([*methods, *TRAINING_FREE]))
    return methods, bits


def with_suite_settings(request: RunRequest, suite: Suite | None) -> RunRequest:
    """The request with the options a suite runs its methods with (the user's own win) and its frozen backbone."""
    if suite is None:
        return request
    overrides = {
        name: {**values, **request.overrides.get("*", {}), **request.overrides.get(name, {})}
        for name, values in suite.overrides.items()
        if name in request.methods  # a suite's method the user left out takes nothing
    }
    return replace(
        request,
        overrides={**request.overrides, **overrides},
        freeze_backbone=request.freeze_backbone or suite.freeze_backbone,
    )


def plan(request: RunRequest, dataset: Dataset, device: torch.device | str | None = None) -> list[CellSpec]:
    """Every cell of ``request`` resolved and validated (ValueError on anything invalid); nothing is written."""
    return plan_cells(request, dataset, None if device is None else resolve_device(str(device)))


def with_defaults(request: RunRequest, dataset: Dataset, device: torch.device | str | None = None) -> RunRequest:
    """``request`` with every default decided as :func:`plan` decides it (profile, epochs, image size, split,
    backbones, weights, augmentation, device): the sweep that would run, every value resolved."""
    return fill_defaults(request, dataset, resolve_device(request.device if device is None else str(device)))


def keep_sweep(path: str | Path, out: str | Path) -> Path:
    """Keep the sweep file a run was given beside its results, as ``<out>/sweeps/<name>-<content hash>.toml`` (a changed
    file is kept beside the earlier one, never over it); returns the copy."""
    return sweep.keep_copy(Path(path), Path(out))


def export(
    out: str | Path,
    target: str | Path | None = None,
    output_format: str = "csv",
    statuses: tuple[str, ...] = ("finished",),
) -> tuple[Path, pd.DataFrame]:
    """The cells under ``out`` as a tidy table, one row per cell and metric with its provenance (failed and damaged
    cells, when ``statuses`` names them, as one row each with an empty metric and the reason in ``note``), written
    atomically as csv, jsonl or parquet to ``target`` (default ``<out>/results.<format>``): (the file, the table).
    ValueError for an unknown format or status, or when no cell matches; ImportError for parquet without pyarrow."""
    table = exported.results_table(out, tuple(statuses))
    if table.empty:
        raise ValueError(
            f"no {' or '.join(statuses)} cells under {out}: run `hashbench run ...` first, or point --out at a results root"
        )
    target = Path(target) if target else Path(out) / f"results.{output_format}"
    exported.write_table(table, target, output_format)
    return target, table


def suite(name: str | None, with_baselines: bool = False) -> Suite | None:
    """A paper suite by name (KeyError names the valid ones); ``with_baselines`` adds the training-free floor."""
    chosen = get_suite(name) if name else None
    return chosen.with_baselines() if chosen and with_baselines else chosen


def cells(
    out: str | Path,
    dataset: str | None = None,
    suite: Suite | None = None,
    directories: set[str] | None = None,
    picks: list[str] | None = None,
) -> pd.DataFrame:
    """The cells under a results root, one row each (finished or not), optionally narrowed to a dataset, a suite's
    methods, given directories or the groups ``picks`` name (``METHOD``, ``METHOD@HASH``, ``METHOD@OPTION=VALUE``)."""
    table = ResultsStore(Path(out)).table(dataset, suite.methods if suite else None)
    if directories is not None and not table.empty:
        table = table[table["directory"].isin(directories)]
    if picks and not table.empty:
        table = pd.concat([pick(table, name) for name in picks]).drop_duplicates("directory")
    return table


def leaderboard(
    out: str | Path,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    dataset: str | None = None,
    suite: Suite | None = None,
    directories: set[str] | None = None,
    view: View = View(),
    by: str | None = None,
) -> list[Leaderboard]:
    """The leaderboards of the finished cells under ``out``: one per comparable group, or a paper suite's layout with the
    paper's numbers; ``view``: how the stored codes are judged (:class:`View`); ``by``: one table per subgroup of the
    queries (:data:`SUBGROUPS`)."""
    if by is not None and by not in SUBGROUPS:
        raise ValueError(f"--by {by!r} is not valid; valid: {', '.join(SUBGROUPS)}")
    if by is not None and suite is not None:
        raise ValueError(
            "--by breaks a leaderboard down by subgroup; a paper suite's layout has none: drop --suite or --by"
        )
    found = cells(out, dataset, suite, directories)
    return boards.build_suite(found, suite, view) if suite else boards.build(found, tuple(metrics), view, by)


def write_leaderboard(
    out: str | Path,
    target: str | Path | None = None,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    dataset: str | None = None,
    suite: Suite | None = None,
    figures: bool = True,
    view: View = View(),
    by: str | None = None,
) -> Path | None:
    """The leaderboards as markdown (and their figures beside it); None when no cell has finished. Returns the file written."""
    found = leaderboard(out, metrics, dataset, suite, view=view, by=by)
    if not found:
        return None
    target = Path(target) if target else Path(out) / (f"{suite.name}.md" if suite else "leaderboard.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    text = to_markdown(found)
    if figures and view.ranking == HAMMING:  # the curves are by Hamming radius
        shown = tuple(suite.metrics if suite else metrics)
        text += "\n" + boards.figures(cells(out, dataset, suite), shown, target, view)
    write_text(target, text)
    return target


def compare(
    a: str,
    b: str,
    out: str | Path,
    bits: int | None = None,
    dataset: str | None = None,
    metrics: tuple[str, ...] = ("map@1", "map@10", "map@tie"),
    view: View = View(),
) -> tuple[list[CellComparison], list[str]]:
    """Is A better than B (a method name, all its seeds, or a cell directory each)? Per metric: the paired comparison
    (with its number of queries, and of patients where it resampled them), and warnings; ``view``: how the stored
    codes are judged."""
    store = ResultsStore(Path(out))
    sides = [_select(store, name, bits, dataset) for name in (a, b)]
    return compare_cells(*sides, tuple(metrics), view)


def _select(store: ResultsStore, name: str, bits: int | None, dataset: str | None) -> list[Cell]:
    """One side of a comparison; a name the results root does not hold says which root was searched and how to name
    another (cells written with --out elsewhere are not under ./runs)."""
    try:
        return store.select(name, bits, dataset)
    except ValueError as exc:
        if _under(store, name):
            raise
        raise ValueError(
            f"{exc}; searched {store.root.resolve()}: pass --out with the results root {name} was written to"
        ) from None


def _under(store: ResultsStore, name: str) -> bool:
    """Whether ``name`` (a cell directory or a method) is in the results root at all, finished or not."""
    if Path(name).is_dir():
        return store.root.resolve() in Path(name).resolve().parents
    return not store.table(methods=[name.partition("@")[0]]).empty  # a method, or a group of it


def bench(
    dataset: Dataset,
    backbones: list[str],
    image_sizes: list[int],
    device: str = "auto",
    method: str = "dafh",
    bits: int = 32,
    batch_size: int | None = None,
    steps: int = 5,
    execution: Execution = Execution(),
    on_measure: Callable | None = None,
    slices: int = PAPER_SLICES,
    on_result: Callable[[Rates | Skipped], None] | None = None,
    memory_check: bool = True,
) -> list[Rates | Skipped]:
    """Loading, training and encoding rates for each backbone and image size on ``device``, and the images a training
    epoch takes from ``slices`` slices (for the projection). A backbone and size whose training would not fit in the
    free memory is skipped, with the reason, not measured (:func:`hashbench.runner.bench.check_memory`), unless
    ``memory_check`` is off.
    ``on_measure(backbone, size, device)`` before each; ``on_result(result)`` as each is done, so that what is
    finished can be kept before a later one fails."""
    for size in image_sizes:
        check_range("image_size", size, "--image-sizes")
    check_range("bits", bits)
    where = resolve_device(device)
    results = []
    for backbone in dict.fromkeys(backbones):
        for size in dict.fromkeys(image_sizes):
            if on_measure:
                on_measure(backbone, size, where)
            arguments = (dataset, backbone, size, where, method, bits, batch_size, steps, execution)
            result = (memory_check and check_memory(*arguments)) or measure(*arguments, slices)
            results.append(result)
            if on_result:
                on_result(result)
    return results


def bench_search(
    n_items: int, bits: int, queries: int = 200, device: str = "auto", seed: int = 0, flips: int = 2
) -> SearchRates:
    """Each search backend's ms per query and index bytes over ``n_items`` random ``bits``-bit codes, its speed-up over
    the exact popcount scan and the hash indexes' recall@10 (:mod:`hashbench.evaluation.cost`); on a CUDA ``device``
    the torch ranking too. ValueError names a size, count or probe depth it cannot run."""
    check_range("bits", bits)
    return measure_search(n_items, bits, queries, seed, resolve_device(device), flips)


SEARCH_ERRORS = (
    FileNotFoundError,
    ImportError,
    ValueError,
    LookupError,
    CellError,
)  # what `search` reports as bad input


def search(
    cell: str | Path,
    queries: list[Path],
    k: int = 10,
    tie_break: str = "embedding",
    faiss: bool | None = None,
    device: str = "auto",
) -> tuple[CellIndex, list[str], list[list[Hit]], list[tuple[Path, str]]]:
    """The ``k`` nearest database items of a finished cell for each readable query file: (index, query names, hits, skipped files with reasons)."""
    index = CellIndex(Path(cell), device, faiss)
    images, names, skipped = index.load_images(queries)
    return index, names, index.search(index.embed(images), k, tie_break) if len(images) else [], skipped


def confusion(cell: str | Path, directory: str | Path, metrics: tuple[str, ...] = ("map@1", "map@10", "map@tie")):
    """Write a finished cell's MAP@1 confusion matrix and per-class metrics into ``directory``: (the cell, per-class values, files written)."""
    stored = Cell(Path(cell))
    if stored.status() != "finished":
        raise ValueError(f"{cell} is not a finished cell ({stored.problem() or stored.status()})")
    by_class, written = write_confusion(stored, Path(directory), tuple(metrics))
    return stored, by_class, written
