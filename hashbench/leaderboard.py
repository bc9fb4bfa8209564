"""Leaderboards from stored cells: rows = methods, columns = bits, one table per metric.

Cells are compared only within one protocol (dataset, split, backbone, pretrained
weights, epochs, image size): each protocol gets its own tables, and its caption
says what was run. A cell shows mean +/- std over seeds, with n.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from hashbench.suites import Suite

COMPARISON_KEYS = ("dataset", "split", "validation", "backbone", "pretrained", "epochs", "image_size")


@dataclass
class Leaderboard:
    title: str
    caption: str
    table: pd.DataFrame  # index: method (or the paper's row), columns: "16 bits", ...; cells formatted


def format_cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f} (n=1)"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f} (n={len(values)})"


def caption(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    data = f"{first['dataset']} (synthetic phantom data)" if bool(rows["synthetic"].any()) else first["dataset"]
    weights = "ImageNet weights" if first["pretrained"] else "random init"
    seeds = ", ".join(str(s) for s in sorted(rows["seed"].unique()))
    optimisers = sorted({f"{t['optimizer']} lr {t['lr']:g}" for t in rows["train"]})
    held_out = f" ({first['validation']:.0%} of training held out for validation)" if first["validation"] else ""
    changed = _changed_options(rows)
    return f"{data}; {first['split']}-level split{held_out}; backbone {first['backbone']} ({weights}); {first['epochs']} epochs; {first['image_size']} px; seeds {seeds}; optimiser {' / '.join(optimisers)}{changed}"


def _changed_options(rows: pd.DataFrame) -> str:
    """Method options that differ from the registered defaults, so a table says what really ran."""
    from hashbench.registry import REGISTRY

    notes = []
    for method, options in rows.drop_duplicates("method")[["method", "options"]].itertuples(index=False):
        try:
            defaults = REGISTRY.get(method).options
        except (LookupError, RuntimeError):  # a plugin not loaded here, or broken: nothing to compare with
            continue
        changed = [f"{k}={v}" for k, v in sorted(options.items()) if defaults.get(k) != v]
        if changed:
            notes.append(f"{method} {', '.join(changed)}")
    return f"; options changed: {'; '.join(notes)}" if notes else ""


def build(cells: pd.DataFrame, metrics: tuple[str, ...]) -> list[Leaderboard]:
    boards = []
    if cells.empty:
        return boards
    for _, rows in cells.groupby(list(COMPARISON_KEYS), sort=True, dropna=False):
        rows = rows.assign(row=_row_names(rows))
        for metric in metrics:
            if metric not in rows:
                continue
            table = rows.pivot_table(index="row", columns="bits", values=metric, aggfunc=format_cell).fillna("-")  # a bit length not run
            table.columns = [f"{b} bits" for b in table.columns]
            boards.append(Leaderboard(metric.upper(), caption(rows), table.rename_axis("method")))
    return boards


def build_suite(cells: pd.DataFrame, suite: Suite) -> list[Leaderboard]:
    """The paper's table layout: its rows, and beside each measured value the paper's."""
    boards = []
    cells = cells[cells["method"].isin(suite.methods)] if not cells.empty else cells
    if cells.empty:
        return boards
    for _, rows in cells.groupby(list(COMPARISON_KEYS), sort=True, dropna=False):
        columns = [(metric, bits) for metric in suite.metrics for bits in suite.bits]
        table = {}
        for label, method in suite.rows:
            mine = rows[rows["method"] == method]
            line = {}
            for metric, bits in columns:
                name = f"{bits} bits" if len(suite.metrics) == 1 else metric.upper()
                line[name] = format_cell(mine.loc[mine["bits"] == bits, metric]) if metric in mine else "-"
                paper = suite.paper.get((label, metric, bits))
                line[f"{name} paper"] = "-" if paper is None else f"{paper:.3f}"
            table[f"{label} ({method})"] = line
        frame = pd.DataFrame.from_dict(table, orient="index").rename_axis("model")
        note = "Paper: TCIA collections, slice-level split, 224 px, 50 epochs, EfficientNet-B0 (presumably ImageNet weights)."
        boards.append(Leaderboard(suite.title, f"{caption(rows)}. {note}", frame))
    return boards


def _row_names(rows: pd.DataFrame) -> pd.Series:
    """The method's name, with its option hash when one method ran with several option sets."""
    variants = rows.groupby("method")["protocol"].transform("nunique")
    return rows["method"].where(variants == 1, rows["method"] + " [" + rows["protocol"] + "]")


def to_markdown(boards: list[Leaderboard]) -> str:
    parts = []
    for board in boards:
        table = board.table.reset_index()
        header = "| " + " | ".join(table.columns) + " |"
        rule = "|" + "|".join("---" for _ in table.columns) + "|"
        lines = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
        parts.append(f"### {board.title}\n\n{board.caption}\n\n" + "\n".join([header, rule, *lines]))
    return "\n\n".join(parts) + "\n"
