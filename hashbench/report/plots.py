"""Figures written next to the results: PNG (matplotlib, no display needed) and markdown.

The leaderboard's figures (PR curves by Hamming radius, P@k curves, metrics against code
length) are computed from each cell's stored codes through the evaluator's counts, so
they use the same ranking and the same metric registry as the tables.

Every report file is written atomically (:mod:`hashbench.store.atomic`): a full disk or a killed
command leaves the previous file or none, never an empty or half-written one.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hashbench.store.atomic import atomic_write, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hashbench.evaluation.view import View


def save_png(figure: Figure, path: Path, dpi: int) -> None:
    """The figure as a PNG at ``path``, written atomically; the figure is closed either way."""
    try:
        atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=dpi))
    finally:
        _pyplot().close(figure)


def confusion_markdown(matrix: np.ndarray, names: list[str], title: str) -> str:
    """Row-normalised shares; the diagonal is each class's MAP@1."""
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    header = "| query class \\ top-1 class | " + " | ".join(names) + " | queries |"
    rule = "|" + "---|" * (len(names) + 2)
    rows = [
        f"| {name} | "
        + " | ".join(f"**{v:.2f}**" if i == j else f"{v:.2f}" for j, v in enumerate(shares[i]))
        + f" | {matrix[i].sum()} |"
        for i, name in enumerate(names)
    ]
    overall = np.trace(matrix) / max(matrix.sum(), 1)
    return (
        f"### {title}\n\nMAP@1 = {overall:.3f} over {matrix.sum()} queries.\n\n"
        + "\n".join([header, rule, *rows])
        + "\n"
    )


def per_class_markdown(by_class: dict[str, dict[str, float]], names: list[str]) -> str:
    """Per-class metric table: one row per query class."""
    metrics = list(by_class)
    header = "| class | " + " | ".join(m.upper() for m in metrics) + " |"
    rule = "|" + "---|" * (len(metrics) + 1)
    rows = [
        f"| {name} | " + " | ".join(f"{by_class[m][name]:.3f}" if name in by_class[m] else "-" for m in metrics) + " |"
        for name in names
    ]
    return "### Per-class metrics (mean over each class's queries)\n\n" + "\n".join([header, rule, *rows]) + "\n"


PRECISION_CUTOFFS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
COST_FIGURE = "-cost.png"  # the file name's end of the figure of accuracy against retrieval cost
COST_AXES = (("search-ms", "ms per query, exact scan"), ("bytes", "bytes per database item"))
FIGURE_KINDS = {  # a leaderboard figure's file name ends in -KIND.png; what it shows
    "pr": "PR curves by Hamming radius",
    "precision-at-k": "P@k curves",
    "cost": "MAP against retrieval cost",
    "metrics-vs-bits": "metrics against code length",
}
# Figures are saved at the size they are shown (at most PANEL_COLUMNS panels, 880 pixels, side by side: a page shows
# them unscaled), so the smallest text a reader sees is FONT_SIZE pt.
FONT_SIZE = 10
DPI = 100
PANEL = (4.4, 3.4)  # inches
PANEL_COLUMNS = 2
STYLE = {
    "font.size": FONT_SIZE,
    "axes.titlesize": FONT_SIZE + 1,
    "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE,
    "ytick.labelsize": FONT_SIZE,
    "legend.fontsize": FONT_SIZE,
    "legend.title_fontsize": FONT_SIZE,
    "figure.titlesize": FONT_SIZE + 2,
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _styled(draw):
    """``draw`` with the text sizes of :data:`STYLE`, whatever the user's matplotlibrc says."""

    @functools.wraps(draw)
    def styled(*args, **kwargs):
        with _pyplot().rc_context(STYLE):
            return draw(*args, **kwargs)

    return styled


def _panels(count: int):
    """A figure of ``count`` panels, at most :data:`PANEL_COLUMNS` side by side (spare slots hidden), laid out to keep
    room below them for a legend that covers none."""
    columns = min(count, PANEL_COLUMNS)
    rows = -(-count // columns)
    figure, axes = _pyplot().subplots(
        rows, columns, figsize=(PANEL[0] * columns, PANEL[1] * rows), squeeze=False, layout="constrained"
    )
    panels = list(axes.flat)
    for spare in panels[count:]:
        spare.set_visible(False)
    return figure, panels[:count]


def _finish(figure, panels, title: str, path: Path) -> None:
    """One legend for every panel (each label once, sorted) below them, the title above, and the PNG."""
    shown: dict = {}
    for axis in panels:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            shown.setdefault(label, handle)
    columns = panels[0].get_gridspec().ncols
    labels = sorted(shown)
    figure.legend([shown[label] for label in labels], labels, loc="outside lower center", ncols=columns, frameon=False)
    figure.suptitle(title, wrap=True)
    save_png(figure, path, dpi=DPI)


def _looks(methods: list[str]) -> dict[str, dict]:
    """One colour per method (and, past ten methods, another marker), the same in every panel and figure."""
    return {method: {"color": f"C{i % 10}", "marker": "os^vD"[i // 10 % 5]} for i, method in enumerate(methods)}


@_styled
def confusion_png(matrix: np.ndarray, names: list[str], title: str, path: Path) -> None:
    plt = _pyplot()
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.55 * len(names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("class of the top-1 retrieved image")
    axes.set_ylabel("query class")
    for i in range(len(names)):
        for j in range(len(names)):
            axes.text(
                j,
                i,
                f"{shares[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
            )
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_title(title, wrap=True)
    figure.tight_layout()
    save_png(figure, path, dpi=DPI)


@_styled
def leaderboard_figures(rows, metrics: tuple[str, ...], group: str, stem: Path, view: View) -> list[Path]:
    """PR curves, P@k curves (one panel per code length), metric vs bits and, where cells recorded their retrieval
    cost, MAP against it (:func:`cost_figure`), for one group's finished cells, each titled with the group's name.

    ``rows``: results-table rows with a ``row`` column (the method label). Returns the PNG paths written
    (``<stem>-pr.png`` and so on: :data:`FIGURE_KINDS`).
    """
    from hashbench.evaluation.evaluate import mean_over_queries, parse_metric
    from hashbench.evaluation.stored import cell_curves, cell_per_query
    from hashbench.store.results import NO_CODE, Cell

    if rows.empty:
        return []
    bits = sorted(b for b in rows["bits"].unique() if b != NO_CODE) or [NO_CODE]
    methods = sorted(rows["row"].unique())
    looks = _looks(methods)
    if view.case_distance != "code":  # closest slices by Hamming distance: a float reference has no code to compare
        rows = rows[rows["bits"] != NO_CODE]
    floats = set(rows.loc[rows["bits"] == NO_CODE, "row"])  # float references: one curve, drawn dashed in every panel
    flagged = {method for method, note in zip(rows["row"], rows["note"]) if note}
    label = {
        method: f"{method} (degenerate codes)" if method in flagged else method for method in methods
    }  # a collapsed model's curve is not the model's
    curves = {
        (m, b): [cell_curves(Cell(d), PRECISION_CUTOFFS, view) for d in group_rows["directory"]]
        for (m, b), group_rows in rows.groupby(["row", "bits"])
    }
    written = []

    def panels(kind: str, draw, with_floats: bool) -> None:
        figure, axes = _panels(len(bits))
        for axis, b in zip(axes, bits):
            for method in methods:
                if method in floats and with_floats:
                    draw(axis, method, curves[(method, NO_CODE)], "--")
                elif (method, b) in curves and method not in floats:
                    draw(axis, method, curves[(method, b)], "-")
            axis.set_title(f"{b} bits" if b != NO_CODE else "float features")
            axis.grid(alpha=0.3)
        path = stem.with_name(f"{stem.name}-{kind}.png")
        _finish(figure, axes, f"{FIGURE_KINDS[kind]}: {group}", path)
        written.append(path)

    def pr(axis, method, seeds, style) -> None:
        recall = np.mean([c["recall"] for c in seeds], axis=0)
        precision = np.mean([c["precision"] for c in seeds], axis=0)
        axis.plot(recall, precision, style, markersize=3, label=label[method], **looks[method])
        axis.set_xlabel("recall (within Hamming radius r = 0..bits)")
        axis.set_ylabel("precision")

    def p_at_k(axis, method, seeds, style) -> None:
        p = np.mean([c["p_at_k"] for c in seeds], axis=0)
        axis.plot(seeds[0]["ks"], p, style, markersize=3, label=label[method], **looks[method])
        axis.set_xscale("log")
        axis.set_xlabel("k (top k, seeded tie order" + ("; dashed: float features)" if floats else ")"))
        axis.set_ylabel("P@k")

    panels("pr", pr, with_floats=False)  # a float ranking has no Hamming radius
    panels("precision-at-k", p_at_k, with_floats=True)
    accuracy = next((m for m in metrics if m.startswith("map@")), "map@10")
    drawn = cost_figure(rows, accuracy, label, group, stem.with_name(stem.name + COST_FIGURE), view)
    written += [drawn] if drawn else []
    if not metrics:
        return written

    figure, axes = _panels(len(metrics))
    for axis, metric in zip(axes, metrics):
        for method in methods:
            mine = rows[rows["row"] == method]
            if method in floats:  # no code length: the level every code of its features is measured against
                if parse_metric(metric).radius:
                    continue
                level = np.mean([mean_over_queries(cell_per_query(Cell(d), metric, view)) for d in mine["directory"]])
                axis.axhline(
                    level, linestyle="--", color=looks[method]["color"], label=f"{label[method]} (float, no code)"
                )
                continue
            present = [b for b in bits if (mine["bits"] == b).any()]
            per_run = [
                [
                    mean_over_queries(cell_per_query(Cell(d), metric, view))
                    for d in mine.loc[mine["bits"] == b, "directory"]
                ]
                for b in present
            ]
            means, spread = [np.mean(v) for v in per_run], [np.std(v) for v in per_run]
            axis.errorbar(present, means, yerr=spread, capsize=3, label=label[method], **looks[method])
        axis.set_xticks(bits)
        axis.set_xlabel("bits")
        axis.set_ylabel(metric.upper())
        axis.grid(alpha=0.3)
    path = stem.with_name(f"{stem.name}-metrics-vs-bits.png")
    _finish(figure, axes, f"{FIGURE_KINDS['metrics-vs-bits']} (error bars: std over runs): {group}", path)
    written.append(path)
    return written


@_styled
def cost_figure(rows, metric: str, label: dict[str, str], group: str, path: Path, view: View) -> Path | None:
    """``metric`` (a MAP) against what a query costs, each method one line through its code lengths (each point
    labelled with its bits; a float reference one star), from what each cell recorded when it ran: the exact scan's
    median ms per query, and the bytes of a database item. None (nothing drawn) when no cell recorded a cost."""
    from matplotlib.ticker import MaxNLocator

    from hashbench.evaluation.cost import cost_value
    from hashbench.evaluation.evaluate import mean_over_queries
    from hashbench.evaluation.stored import cell_per_query
    from hashbench.store.results import NO_CODE, Cell

    points = {}  # (method, bits) -> (accuracy, search ms, bytes), each the mean over the runs that recorded a cost
    for (method, bits), group_rows in rows.groupby(["row", "bits"]):
        runs = []
        for directory in group_rows["directory"]:
            cell = Cell(directory)
            costs = [cost_value(name, cell.record.get("cost"))[0] for name, _ in COST_AXES]
            if None not in costs:
                runs.append([mean_over_queries(cell_per_query(cell, metric, view)), *costs])
        if runs:
            points[(method, bits)] = np.mean(runs, axis=0)
    if not points:
        return None
    looks = _looks(sorted(label))
    figure, axes = _panels(len(COST_AXES))
    for column, (axis, (_, text)) in enumerate(zip(axes, COST_AXES), start=1):
        spread = [point[column] for point in points.values()]
        logarithmic = max(spread) > 10 * min(spread) > 0  # within a decade a log axis labels only its minor ticks
        for method in sorted({method for method, _ in points}):
            mine = sorted((bits, point) for (m, bits), point in points.items() if m == method)
            x, y = [point[column] for _, point in mine], [point[0] for _, point in mine]
            if [bits for bits, _ in mine] == [NO_CODE]:
                axis.plot(
                    x, y, "*", markersize=11, color=looks[method]["color"], label=f"{label[method]} (float features)"
                )
                continue
            axis.plot(x, y, "-", label=label[method], **looks[method])
            for (bits, _), x_at, y_at in zip(mine, x, y):
                axis.annotate(str(bits), (x_at, y_at), textcoords="offset points", xytext=(4, 4))
        axis.set_xscale("log" if logarithmic else "linear")
        if not logarithmic:  # a few round ticks: labels of small times are long
            axis.xaxis.set_major_locator(MaxNLocator(4, steps=[1, 2, 5, 10]))
        axis.margins(0.15)  # room for the code lengths beside the outer points
        axis.set_xlabel(text + (" (log)" if logarithmic else ""))
        axis.set_ylabel(metric.upper())
        axis.grid(alpha=0.3)
    _finish(figure, axes, f"{metric.upper()} against retrieval cost (points: code lengths in bits): {group}", path)
    return path


def write_confusion(cell, directory: Path, metrics: tuple[str, ...]) -> tuple[dict[str, dict[str, float]], list[Path]]:
    """The paper's Figure 3 for one cell as ``confusion.png`` and ``confusion.md`` (with per-class metrics); returns those metrics and the files.

    Multi-label cells get the per-class table alone: a top-1 item may share several classes with its query.
    """
    from hashbench.evaluation.stored import cell_confusion, cell_per_class

    names, config = cell.class_names, cell.config
    which = config.label().split("/", 1)[1].replace("/", ", ")  # method, code length, seed
    synthetic = " (synthetic phantom data)" if cell.record.get("synthetic") else ""
    collapse = cell.collapse()
    flag = f" [{collapse}]" if collapse else ""
    directory.mkdir(parents=True, exist_ok=True)
    by_class = cell_per_class(cell, metrics)
    if cell.multi_label:
        title = f"Per-class metrics: {which}, {config.dataset}{synthetic}{flag} (multi-label: a query counts in each of its classes; no confusion matrix)"
        write_text(directory / "confusion.md", f"**{title}**\n\n" + per_class_markdown(by_class, names))
        return by_class, [directory / "confusion.md"]
    matrix = cell_confusion(cell)
    title = f"MAP@1 confusion: {which}, {config.dataset}{synthetic}{flag}"
    confusion_png(matrix, names, title, directory / "confusion.png")
    write_text(
        directory / "confusion.md",
        confusion_markdown(matrix, names, title) + "\n" + per_class_markdown(by_class, names),
    )
    return by_class, [directory / "confusion.png", directory / "confusion.md"]
