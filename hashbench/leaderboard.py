"""Leaderboards from stored cells: rows = methods, columns = bits, one table per metric.

Cells are compared only within one protocol (dataset, split, backbone, pretrained
weights, epochs, image size): each protocol gets its own tables, and its caption
says what was run. A cell shows the mean over seeds, +/- their std where there are
several, the 95 % bootstrap interval over queries in brackets, and n seeds. Metrics a
cell did not store are computed from its codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hashbench.results import per_query
from hashbench.stats import bootstrap_interval
from hashbench.suites import Suite

COMPARISON_KEYS = ("dataset", "split", "validation", "backbone", "pretrained", "epochs", "image_size")


@dataclass
class Leaderboard:
    title: str
    caption: str
    table: pd.DataFrame  # index: method (or the paper's row), columns: "16 bits", ...; cells formatted


CELL_LEGEND = "cells: mean ± std over seeds [95 % bootstrap interval over queries] (n = seeds)"


def summarise(rows: pd.DataFrame, metric: str) -> str:
    """One leaderboard cell from the seeds in ``rows``: mean, spread over seeds, interval over queries."""
    if rows.empty:
        return "-"
    per_seed, means = [], []
    for directory, stored in zip(rows["directory"], rows[metric] if metric in rows else [np.nan] * len(rows)):
        try:
            values = per_query(directory, metric)
        except FileNotFoundError:  # codes not kept (e.g. a published results folder): the stored mean only
            values = None
        if values is not None:
            per_seed.append(values)
        means.append(values.mean() if values is not None else stored)
    means = np.array(means, dtype=np.float64)
    if np.isnan(means).all():
        return "-"
    spread = f" ± {np.nanstd(means, ddof=1):.3f}" if len(means) > 1 else ""
    interval = ""
    if per_seed:
        same_queries = len({len(v) for v in per_seed}) == 1
        low, high = bootstrap_interval(np.stack(per_seed) if same_queries else np.concatenate(per_seed)[None])
        interval = f" [{low:.3f}, {high:.3f}]"
    return f"{np.nanmean(means):.3f}{spread}{interval} (n={len(means)})"


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
        bits = sorted(rows["bits"].unique())
        for metric in metrics:
            table = pd.DataFrame(
                {f"{b} bits": {row: summarise(group[group["bits"] == b], metric) for row, group in rows.groupby("row", sort=True)} for b in bits}
            )
            boards.append(Leaderboard(metric.upper(), f"{caption(rows)}; {CELL_LEGEND}", table.rename_axis("method")))
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
                line[name] = summarise(mine[mine["bits"] == bits], metric)
                paper = suite.paper.get((label, metric, bits))
                line[f"{name} paper"] = "-" if paper is None else f"{paper:.3f}"
            table[f"{label} ({method})"] = line
        frame = pd.DataFrame.from_dict(table, orient="index").rename_axis("model")
        note = "Paper: TCIA collections, slice-level split, 224 px, 50 epochs, EfficientNet-B0 (presumably ImageNet weights)."
        boards.append(Leaderboard(suite.title, f"{caption(rows)}; {CELL_LEGEND}. {note}", frame))
    return boards


def figures(cells: pd.DataFrame, metrics: tuple[str, ...], markdown: Path) -> str:
    """Write each protocol's figures next to ``markdown`` and return the markdown that shows them."""
    from hashbench.plots import leaderboard_figures

    parts = []
    if cells.empty:
        return ""
    for number, (_, rows) in enumerate(cells.groupby(list(COMPARISON_KEYS), sort=True, dropna=False), start=1):
        rows = rows.assign(row=_row_names(rows))
        stem = markdown.with_suffix("") if number == 1 else markdown.with_name(f"{markdown.stem}-{number}")
        described = caption(rows)
        paths = leaderboard_figures(rows, metrics, described, stem)
        if paths:
            links = "\n\n".join(f"![{p.stem}]({p.name})" for p in paths)
            parts.append(f"### Figures: {'; '.join(described.split('; ')[:2])}\n\nPR curves by Hamming radius, P@k (stable ties), metrics against code length; computed from the stored codes.\n\n{links}")
    return "\n\n".join(parts) + ("\n" if parts else "")


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
