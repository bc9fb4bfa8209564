"""Results out: the stored cells as one tidy table, a row per cell and metric with the provenance that says what the
number is of, for pandas, R, DuckDB or a spreadsheet to analyse without knowing the results store's layout."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Any, Callable

import pandas as pd

from hashbench.store import atomic
from hashbench.store.results import Cell, CellError, ResultsStore

COLUMNS = (
    "method",
    "bits",
    "seed",
    "metric",
    "value",
    "dataset",
    "split",
    "split_seed",
    "dataset_fingerprint",
    "profile",
    "backbone",  # what the method built and ran (a Table 4 variant's own), checked against the network when stored
    "weights",  # where each backbone's initial weights came from: model=random, model=hub:REPO, model=file:sha256:...
    "epochs",
    "image_size",
    "identity",  # the hash of everything that determines the result: the cell directory's suffix
    "status",
    "git_commit",
    "git_dirty",
    "wall_seconds",  # the attempt that finished the cell: training the epochs left, encoding, evaluating
    "synthetic",
    "device",
    "note",  # collapse, a later failed re-run; for a failed or damaged cell, why
)
CONFIGURATION = (  # the columns every cell has, from its configuration and its table row; the rest come from its record
    "method",
    "bits",
    "seed",
    "dataset",
    "split",
    "split_seed",
    "dataset_fingerprint",
    "profile",
    "backbone",
    "epochs",
    "image_size",
    "identity",
    "status",
    "note",
)
CELL = ("dataset", "method", "bits", "seed", "identity")  # the columns that name one cell
STATUSES = ("finished", "failed", "damaged")  # an incomplete cell (being trained, or interrupted) has nothing to export
PARQUET_MISSING = "--format parquet needs pyarrow: pip install 'hashbench[parquet]'"


def results_table(root: Path | str, statuses: tuple[str, ...] = ("finished",)) -> pd.DataFrame:
    """The cells under ``root`` with one of ``statuses``: a finished cell gives one row per stored metric, a failed or
    damaged one a single row whose metric and value are empty and whose note says why. ValueError for an unknown
    status."""
    unknown = [status for status in statuses if status not in STATUSES]
    if unknown:
        raise ValueError(f"--status {', '.join(unknown)} is not valid; valid: {', '.join(STATUSES)}")
    found = ResultsStore(Path(root)).table(statuses=tuple(statuses))
    rows = [row for cell in ([] if found.empty else found.to_dict("records")) for row in _rows(cell)]
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype({"value": "float64", "wall_seconds": "float64"})
    return table.sort_values(list(CELL), kind="stable", ignore_index=True)  # bits as numbers; metrics as stored


def _rows(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """One cell's rows, from its table row (configuration, status, note) and its record (metrics, provenance)."""
    base = {
        **dict.fromkeys(COLUMNS),
        **{name: cell[name] for name in CONFIGURATION},
        "weights": ", ".join(f"{model}={source}" for model, source in cell["weights"].items()),
    }
    if cell["status"] != "finished":
        return [{**base, "metric": None, "value": None}]
    try:
        record = Cell(cell["directory"]).record
    except (CellError, FileNotFoundError) as exc:  # replaced or damaged by a writer since the table read it
        return [{**base, "status": "damaged", "note": f"damaged: {exc}", "metric": None, "value": None}]
    git = record.get("git") or {}
    provenance = {
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "wall_seconds": record.get("seconds"),
        "synthetic": record.get("synthetic"),
        "device": record.get("device"),
    }
    return [{**base, **provenance, "metric": name, "value": value} for name, value in record["metrics"].items()]


def write_table(table: pd.DataFrame, target: Path, output_format: str) -> None:
    """``table`` written to ``target`` as csv, jsonl or parquet, atomically (a reader sees the old file or the new);
    ValueError for another format, ImportError naming the extra to install when parquet's writer is missing."""
    if output_format not in WRITERS:
        raise ValueError(f"--format {output_format} is not valid; valid: {', '.join(WRITERS)}")
    if output_format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(PARQUET_MISSING) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(target, lambda handle: WRITERS[output_format](table, handle))


def _json_lines(table: pd.DataFrame, handle: IO[bytes]) -> None:
    """One JSON object per row; floats written in full (pandas' own JSON writer rounds them to 15 digits)."""
    for row in table.to_dict("records"):
        plain = {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in row.items()}
        handle.write((json.dumps(plain, ensure_ascii=False) + "\n").encode())


WRITERS: dict[str, Callable[[pd.DataFrame, IO[bytes]], Any]] = {
    "csv": lambda table, handle: table.to_csv(handle, index=False),
    "jsonl": _json_lines,
    "parquet": lambda table, handle: table.to_parquet(handle, index=False),
}
