"""Commands that read stored cells: leaderboard, compare, ties, search, confusion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from hashbench.cli.app import (
    AP_NORM_OPTION,
    CASE_CODE_OPTION,
    CASE_DISTANCE_OPTION,
    EMPTY_OPTION,
    EXCLUDE_OPTION,
    LEVEL_OPTION,
    RANKING_OPTION,
    RELEVANCE_OPTION,
    app,
    check_metrics,
    chosen_suite,
    console,
    fail,
    in_range,
    out_option,
    parse_view,
    print_boards,
    results_folder,
)
from hashbench.evaluation.metrics import DEFAULT_METRICS


@app.command("leaderboard")
def leaderboard_command(
    out: Path = out_option("Results root to read (default: ./runs)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Only this dataset."),
    metrics: List[str] = typer.Option(list(DEFAULT_METRICS), "--metrics", help="Metrics to show."),
    output_format: str = typer.Option("rich", "--format", help="rich (terminal) or md (markdown)."),
    output: Optional[Path] = typer.Option(
        None, "--output", help="With --format md: write here (default: <out>/leaderboard.md, or <out>/<suite>.md)."
    ),
    suite: Optional[str] = typer.Option(
        None,
        "--suite",
        help="Show a paper table (paper-table3/4/5) in the paper's layout, the paper's numbers beside ours.",
    ),
    with_baselines: bool = typer.Option(
        False, "--with-baselines", help="With --suite: the training-free floor as reference rows below the paper's."
    ),
    figures: bool = typer.Option(
        True,
        "--figures/--no-figures",
        help="With --format md: also write PR, P@k and metric-vs-bits PNGs beside the markdown.",
    ),
    exclude: str = EXCLUDE_OPTION,
    level: str = LEVEL_OPTION,
    case_code: str = CASE_CODE_OPTION,
    case_distance: str = CASE_DISTANCE_OPTION,
    relevance: str = RELEVANCE_OPTION,
    ap_norm: str = AP_NORM_OPTION,
    empty: str = EMPTY_OPTION,
    ranking: str = RANKING_OPTION,
    by: Optional[str] = typer.Option(
        None,
        "--by",
        help="One table per subgroup of the queries, with its n: modality, collection, body_part, sex, age (bands), "
        "manufacturer, slice_thickness.",
    ),
) -> None:
    """Print the leaderboard of stored cells, or write it as markdown (with its figures)."""
    from hashbench import api

    if output_format not in ("rich", "md"):
        raise typer.BadParameter(f"{output_format!r}; valid: rich, md", param_hint="--format")
    check_metrics(metrics, with_costs=True)
    view = parse_view(exclude, level, case_code, case_distance, relevance, ap_norm, empty, ranking)
    chosen = chosen_suite(suite, with_baselines)
    nothing = f"no finished cells under {out}{' for ' + dataset if dataset else ''}: run `hashbench run ...` first, or point --out at a results root"
    try:
        if output_format == "rich":
            boards = api.leaderboard(out, tuple(metrics), dataset, chosen, view=view, by=by)
            if not boards:
                fail(nothing)
            print_boards(boards)
            return
        target = api.write_leaderboard(out, output, tuple(metrics), dataset, chosen, figures, view, by)
    except ValueError as exc:  # an unknown --by, or cells stored without what the view needs
        fail(exc)
    if target is None:
        fail(nothing)
    console.print(f"wrote {target}" + (" and its figures beside it" if figures else ""))


@app.command("compare")
def compare_command(
    a: str = typer.Argument(..., help="A method name (all its seeds) or a cell directory."),
    b: str = typer.Argument(..., help="The other side, the same way."),
    bits: Optional[int] = typer.Option(
        None, "--bits", help="Code length, where a method ran several.", callback=in_range("bits")
    ),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset, where a method ran on several."),
    metrics: List[str] = typer.Option(
        ["map@1", "map@10", "map@tie"], "--metrics", help="Per-query metrics to compare."
    ),
    out: Path = out_option("Results root to read (default: ./runs)."),
    exclude: str = EXCLUDE_OPTION,
    level: str = LEVEL_OPTION,
    case_code: str = CASE_CODE_OPTION,
    case_distance: str = CASE_DISTANCE_OPTION,
    relevance: str = RELEVANCE_OPTION,
    ap_norm: str = AP_NORM_OPTION,
    empty: str = EMPTY_OPTION,
    ranking: str = RANKING_OPTION,
) -> None:
    """Is A better than B? Paired test on the same queries (and across seeds), with the difference's interval."""
    from hashbench import api

    check_metrics(metrics)
    view = parse_view(exclude, level, case_code, case_distance, relevance, ap_norm, empty, ranking)
    try:
        rows, warnings = api.compare(a, b, out, bits, dataset, tuple(metrics), view)
    except ValueError as exc:
        fail(exc)
    first = rows[0].result
    tested = "queries" if first.patients is None else "patients"
    unit = "queries" if first.patients is None else f"patients ({first.patients}), whose slices are not independent"
    table = Table(
        title=f"A = {a}, B = {b}: A - B on the same {first.n_queries} queries",
        caption=f"interval: paired bootstrap over {unit}, 95 %; p ({tested}): paired sign-flip randomisation test over "
        f"{tested}, 10,000 rounds; p (seeds): Welch t-test on per-seed means (needs two seeds a side)"
        + view.caption()
        + "".join(f"\n[yellow]warning:[/yellow] {w}" for w in warnings),
        caption_justify="left",
    )
    for column in ("metric", "A", "B", "A - B", "95 % interval", f"p ({tested})", "p (seeds)"):
        table.add_column(column, justify="right")
    for row in rows:
        result = row.result
        p_seeds = "n/a (one seed)" if result.p_seeds is None else f"{result.p_seeds:.3g}"
        table.add_row(
            row.metric,
            f"{row.mean_a:.3f} (n={result.seeds[0]})",
            f"{row.mean_b:.3f} (n={result.seeds[1]})",
            f"{result.difference:+.3f}",
            f"[{result.interval[0]:+.3f}, {result.interval[1]:+.3f}]",
            f"{result.p_queries:.3g}",
            p_seeds,
        )
    console.print(table)


@app.command("ties")
def ties_command(
    picks: Optional[List[str]] = typer.Argument(
        None,
        help="Only these: METHOD, or one group of it, METHOD@HASH or METHOD@OPTION=VALUE (e.g. hashnet@epochs=30).",
    ),
    out: Path = out_option("Results root to read (default: ./runs)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Only this dataset."),
) -> None:
    """How much each cell's score is tie luck: bounds over tie orders, tie sizes, bucket use, bit balance."""
    from hashbench import api
    from hashbench.evaluation.stored import cell_tie_diagnostics
    from hashbench.store.results import NO_CODE, Cell

    try:
        cells = api.cells(out, dataset, picks=picks)
    except ValueError as exc:
        fail(exc)
    if cells.empty:
        console.print(f"no finished cells under {out}" + (f" named by {' '.join(picks)}" if picks else ""))
        return
    groups = api.group_notes(cells)
    columns = {
        "map@1-best": "MAP@1\nbest",
        "map@1-worst": "MAP@1\nworst",
        "map@tie": "mAP\ntie",
        "map@tie-best": "mAP\nbest",
        "map@tie-worst": "mAP\nworst",
        "nearest_tie_size": "tie",
        "occupied_buckets": "buckets",
        "largest_bucket_share": "largest",
        "bit_balance": "balance",
        "dead_bits": "dead",
    }
    caption = (
        "best / worst: relevant items first / last in every group of equal Hamming distance; tie: items at the nearest distance; "
        "largest: the fullest bucket's share of the database; balance 1 = every bit halves the database; dead: bits that never change"
    )
    table = Table(
        title="tie diagnostics",
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
        pad_edge=False,
    )
    for column in ("method", "bits", "seed", "split", *columns.values()):
        table.add_column(
            column, justify="left" if column in ("method", "split") else "right", no_wrap=column == "method"
        )
    several_datasets = cells["dataset"].nunique() > 1
    ordered = cells.sort_values(["dataset", "method", "bits", "seed"])
    for row in ordered.itertuples():
        method = f"{row.dataset}/{row.method}" if several_datasets else row.method
        if groups[row.Index]:  # one of several groups of the method: named as `ties` and `compare` pick it
            method += f"@{row.identity}"
        cell = (escape(method), str(row.bits), str(row.seed), row.split)
        if row.status != "finished" or row.bits == NO_CODE:
            float_note = "float features: no code, no ties" if row.bits == NO_CODE else ""
            note = escape("; ".join(filter(None, [row.note, float_note])))
            table.add_row(*cell, note, *[""] * (len(columns) - 1))
            continue
        found = cell_tie_diagnostics(Cell(row.directory))
        table.add_row(
            *cell,
            *(
                f"{found[k]:.1f}"
                if k == "nearest_tie_size"
                else f"{found[k]:.3f}"
                if isinstance(found[k], float)
                else str(found[k])
                for k in columns
            ),
        )
    console.print(table)
    told_apart = dict.fromkeys(  # once per group, in the table's order
        f"{method}@{groups[index]}" for index, method in zip(ordered.index, ordered["method"]) if groups[index]
    )
    if told_apart:
        console.print("groups told apart by their settings:\n  " + "\n  ".join(told_apart), highlight=False)


@app.command("search")
def search_command(
    cell: Path = typer.Argument(
        ..., help="A finished cell's directory: its model encodes the queries, its database codes are searched."
    ),
    queries: List[Path] = typer.Argument(..., help="DICOM files or images (PNG, JPEG, TIFF, BMP) to search with."),
    k: int = typer.Option(10, "--k", min=1, help="Neighbours per query (the database's size at most)."),
    tie_break: str = typer.Option(
        "embedding",
        "--tie-break",
        help="Order within one Hamming distance: embedding (continuous-code distance) or index.",
    ),
    faiss: Optional[bool] = typer.Option(
        None, "--faiss/--no-faiss", help="Rank with faiss IndexBinaryFlat (default: when installed)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON lines instead of tables."),
) -> None:
    """The nearest database images of a trained cell for new images or DICOM files."""
    from dataclasses import asdict

    from hashbench import api

    try:
        index, names, results, skipped = api.search(cell, queries, k, tie_break, faiss, device)
    except api.SEARCH_ERRORS as exc:
        fail(exc)
    for path, reason in skipped:
        console.print(f"[yellow]skipped[/yellow] {path}: {reason}")
    for name, hits in zip(names, results):
        if as_json:
            print(json.dumps({"query": name, "hits": [asdict(hit) for hit in hits]}))
            continue
        flag = f"; [yellow]{index.collapse}[/yellow]" if index.collapse else ""
        table = Table(
            title=f"{name}",
            caption=f"{index.config.method}, {index.config.bits} bits, {index.config.dataset}; {index.backend}; ties by {tie_break}{flag}",
            caption_justify="left",
        )
        for column in ("rank", "distance", "slice", "label", "patient", "path"):
            table.add_column(column, overflow="fold")
        for hit in hits:
            shown = (escape(str(text)) for text in (hit.label, hit.patient, hit.path))  # a '[...]' in them is text
            table.add_row(str(hit.rank), str(hit.distance), str(hit.slice_id), *shown)
        console.print(table)
    if skipped and not results:
        raise typer.Exit(1)


@app.command("confusion")
def confusion_command(
    cell: Path = typer.Argument(..., help="A finished cell's directory (it holds codes.npz and metrics.json)."),
    output_dir: Optional[Path] = typer.Option(
        None,
        "--output-dir",
        help="Where to write confusion.png and confusion.md (default: the cell's directory).",
        callback=results_folder,
    ),
    metrics: List[str] = typer.Option(
        ["map@1", "map@10", "map@tie"], "--metrics", help="Per-class metrics to tabulate beside the matrix."
    ),
) -> None:
    """The MAP@1 confusion matrix of a stored cell (the paper's Figure 3) and per-class metrics, as PNG and markdown."""
    from hashbench import api

    check_metrics(metrics)
    try:
        stored, by_class, written = api.confusion(cell, output_dir or cell, tuple(metrics))
    except ValueError as exc:
        fail(exc)
    table = Table(title="per-class metrics (mean over the class's queries)")
    for column in ("class", *metrics):
        table.add_column(column, justify="right")
    for name in stored.class_names:
        table.add_row(escape(name), *(f"{by_class[m][name]:.3f}" if name in by_class[m] else "-" for m in metrics))
    console.print(table)
    console.print(f"wrote {' and '.join(map(str, written))}")


@app.command("export")
def export_command(
    output_format: str = typer.Option(
        "csv", "--format", help="csv, jsonl (a JSON object per line) or parquet (needs pyarrow: the parquet extra)."
    ),
    out: Path = out_option("Results root to read (default: ./runs)."),
    output: Optional[Path] = typer.Option(
        None, "--output", help="The file to write (default: <out>/results.<format>)."
    ),
    status: str = typer.Option(
        "finished",
        "--status",
        help="Cells to export, comma-separated: finished, failed, damaged. A failed or damaged cell is one row with "
        "an empty metric and value, its note saying why.",
    ),
) -> None:
    """The stored cells as one tidy table for pandas, R or a spreadsheet: a row per cell and metric (method, bits,
    seed, metric, value) with its provenance (data and its fingerprint, split, profile, backbone, weights, epochs,
    image size, identity hash, status, git commit and dirty flag, wall time, synthetic, device, note)."""
    from hashbench import api
    from hashbench.report.export import CELL

    try:
        target, table = api.export(out, output, output_format, tuple(s.strip() for s in status.split(",") if s.strip()))
    except (ValueError, ImportError) as exc:
        fail(exc)
    cells = len(table.drop_duplicates(list(CELL)))
    console.print(f"wrote {target}: {len(table)} rows, one per cell and metric, from {cells} cells")
