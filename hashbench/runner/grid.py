"""Running a planned grid, one cell at a time, so that nothing finished is ever lost.

- a finished cell is skipped; ``force`` re-runs it beside the finished result, which is
  replaced only once the new one is complete (an interrupted re-run resumes on the next
  ``force``); an interrupted cell resumes from its last epoch and ends as an
  uninterrupted run would;
- a cell that fails (a NaN loss, out of memory, a bug in a plugin) records why and the
  grid goes on;
- a cell being run by another process is left to it (a lock per cell), and waited for at
  the end, so several processes can share one sweep.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from hashbench.data.dataset import Dataset
from hashbench.model.weights import ensure_available
from hashbench.runner.cell import run_cell
from hashbench.runner.plan import CellSpec, RunRequest, plan
from hashbench.runner.provenance import git_state
from hashbench.store.results import FAILURE, RECORD, Cell, CellConfig, ResultsStore
from hashbench.training import distributed


@dataclass
class CellOutcome:
    config: CellConfig
    status: str  # done | skipped | failed
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    note: str = ""


def run_grid(
    request: RunRequest,
    dataset: Dataset,
    out: Path,
    progress: bool = False,
    on_cell: Callable[[CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    """Plan, make sure every backbone's weights are at hand, then run each cell; returns the outcomes in plan order."""
    sweep_start = time.time()
    git_state.cache_clear()  # the code as this sweep starts is what its cells record
    git_state()
    planned = plan(request, dataset)
    if distributed.launched() and request.shard:
        raise ValueError(
            "--shard spreads cells over machines, torchrun spreads one cell over processes: use one or the other"
        )
    return run_planned(planned, dataset, Path(out), request.force, progress, on_cell, sweep_start)


def run_planned(
    planned: list[CellSpec],
    dataset: Dataset,
    out: Path,
    force: bool = False,
    progress: bool = False,
    on_cell: Callable[[CellOutcome], None] | None = None,
    sweep_start: float | None = None,
) -> list[CellOutcome]:
    """Run the cells of a plan into the results root ``out``: cells another process holds are taken last, waiting for them."""
    if not planned:  # an empty share of a sharded grid
        return []
    sweep_start = time.time() if sweep_start is None else sweep_start
    if (
        not distributed.follower()
    ):  # under torchrun the first process downloads; the others wait for it to join the group below
        ensure_available({source for spec in planned for source in spec.weights.values()})
    _check_writable(out)
    device = distributed.start(planned[0].device)  # under torchrun: this process's own device of that type
    store = ResultsStore(out)
    outcomes: dict[int, CellOutcome] = {}

    def try_cell(position: int, wait: bool) -> bool:
        spec = planned[position]
        outcome = _attempt(spec, store.cell(spec.config), dataset, device, force, progress, wait, sweep_start)
        if outcome is not None:
            outcomes[position] = outcome
            if on_cell:
                on_cell(outcome)
        return outcome is not None

    try:
        held_elsewhere = [position for position in range(len(planned)) if not try_cell(position, wait=False)]
        for position in held_elsewhere:
            try_cell(position, wait=True)
    finally:
        distributed.stop()
    return [outcomes[i] for i in range(len(planned))]


def _check_writable(out: Path) -> None:
    """The results root can take files: found before the first epoch, not after it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=out, prefix=".write-test-"
        ):  # a unique name: several sweeps may share a root
            pass
    except OSError as exc:
        raise ValueError(
            f"--out {out} cannot be written ({exc.strerror or exc}); choose a folder you can write to"
        ) from None


def _attempt(
    spec: CellSpec,
    cell: Cell,
    dataset: Dataset,
    device: torch.device,
    force: bool,
    progress: bool,
    wait: bool,
    sweep_start: float,
) -> CellOutcome | None:
    """Run one cell under its lock; None when another process holds it and ``wait`` is off.

    A cell that another process finished or failed since this sweep started is left as it is, even
    with ``force``: two processes sharing a sweep never train a cell twice.
    """
    config = spec.config
    with cell.claim(wait=wait) if distributed.is_main() else nullcontext(True) as claimed:
        # process 0 decides; the others follow it
        decision = distributed.broadcast(
            _decide(config, cell, claimed, force, sweep_start) if distributed.is_main() else None
        )
        if decision is None or isinstance(decision, CellOutcome):
            return decision
        replace, note = decision
        try:
            metrics, collapse = run_cell(spec, dataset.images, device, cell, progress, replace)
            failure = None
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # this cell only: record why and go on
            failure = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            if distributed.is_main():
                cell.fail(failure, traceback.format_exc())
    if failure is not None:
        if device.type == "cuda":  # after the except block, so the traceback no longer holds the cell's tensors
            torch.cuda.empty_cache()
        return CellOutcome(config, "failed", error=failure, note=note)
    return CellOutcome(
        config,
        "done",
        metrics,
        note="; ".join(filter(None, [note, collapse])),
    )


def _decide(
    config: CellConfig, cell: Cell, claimed: bool, force: bool, sweep_start: float
) -> CellOutcome | tuple[bool, str] | None:
    """What to do with a cell: None (another process holds it), an outcome (nothing to train), or (replace, note) to train it."""
    if not claimed:
        return None
    status = cell.status(check_model=True)
    if status == "finished" and cell.changed_since(RECORD, sweep_start):
        return CellOutcome(config, "skipped", note="finished by another process")
    if status == "failed" and cell.changed_since(FAILURE, sweep_start):
        return CellOutcome(config, "failed", error=cell.failure()["error"], note="failed in another process")
    if status == "finished" and not force:
        return CellOutcome(config, "skipped", note="finished earlier (--force to re-run)")
    note = f"was damaged ({cell.problem(check_model=True)}); trained it again" if status == "damaged" else ""
    # with --force: trained beside the finished result, which stays until the new one is complete
    replace = status == "finished"
    if replace and cell.rerun_pending():
        note = "resumed an interrupted re-run"
    return replace, note
