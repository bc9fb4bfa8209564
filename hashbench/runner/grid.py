"""Running a planned grid, one cell at a time, so that nothing finished is ever lost.

- a finished cell is skipped; ``force`` re-runs it beside the finished result, which is
  replaced only once the new one is complete (an interrupted re-run resumes on the next
  ``force``); an interrupted cell resumes from its last epoch and ends as an
  uninterrupted run would;
- a cell that fails (a NaN loss, out of memory, a bug in a plugin) records why and the
  grid goes on (:mod:`hashbench.runner.cell`); a cell whose method could not even be
  built fails as the plan found it, unrun and unwritten (:class:`UnbuildableOutcome`);
- a cell being run by another process is left to it (a lock per cell), and waited for at
  the end, so several processes can share one sweep.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hashbench import distributed
from hashbench.data.dataset import Dataset
from hashbench.model.weights import ensure_available
from hashbench.runner.cell import CellOutcome, attempt
from hashbench.runner.plan import CellSpec, RunRequest, plan
from hashbench.runner.provenance import git_state
from hashbench.store.results import ResultsStore


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
    if distributed.launched() and request.shard:
        raise ValueError(
            "--shard spreads cells over machines, torchrun spreads one cell over processes: use one or the other"
        )
    planned = plan(request, dataset)
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
    if not distributed.follower():  # under torchrun the first process downloads; the others wait for it in start()
        ensure_available({source for spec in planned for source in spec.weights.values()})
    _check_writable(out)  # after the weights: a run that cannot start leaves no folder behind
    device = distributed.start(planned[0].device)  # under torchrun: this process's own device of that type
    store = ResultsStore(out)
    outcomes: dict[int, CellOutcome] = {}
    try:
        for wait in (False, True):  # first every cell that is free; then, waiting, those another process held
            for position, spec in enumerate(planned):
                if position in outcomes:
                    continue
                outcome = (
                    UnbuildableOutcome.of(spec)
                    if spec.unbuildable
                    else attempt(spec, store, dataset.images, device, force, progress, wait, sweep_start)
                )
                if outcome is not None:
                    outcomes[position] = outcome
                    if on_cell:
                        on_cell(outcome)
    finally:
        distributed.stop()
    return [outcomes[i] for i in range(len(planned))]


UNBUILDABLE = "the method could not be built"  # the note of such a cell


@dataclass
class UnbuildableOutcome(CellOutcome):
    """A failed cell whose method raised while the plan built it: the runner never saw it and nothing was written (its
    directory is named by the backbones the method would have declared), so its traceback travels here."""

    traceback: str = ""

    @classmethod
    def of(cls, spec: CellSpec) -> UnbuildableOutcome:
        return cls(
            spec.config, "failed", error=spec.unbuildable.reason, note=UNBUILDABLE, traceback=spec.unbuildable.traceback
        )


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
