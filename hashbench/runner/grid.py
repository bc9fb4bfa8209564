"""Running a planned grid, one cell at a time, so that nothing finished is ever lost.

- a finished cell is skipped; ``force`` re-runs it beside the finished result, which is
  replaced only once the new one is complete (an interrupted re-run resumes on the next
  ``force``); an interrupted cell resumes from its last epoch and ends as an
  uninterrupted run would;
- a cell that fails (a NaN loss, out of memory, a bug in a plugin) records why and the
  grid goes on (:mod:`hashbench.runner.cell`); a cell whose method could not even be
  built fails as the plan found it, unrun and unwritten (:class:`UnbuildableOutcome`);
- a cell being run by another process is left to it (a lock per cell), and waited for at
  the end, so several processes can share one sweep;
- as each cell starts, the sweep says where it is (cell i of N) and how long the rest should
  take, from the seconds per epoch of the cells trained so far (:class:`SweepProgress`).
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
from hashbench.store.results import CONFIG, Cell, ResultsStore


def run_grid(
    request: RunRequest,
    dataset: Dataset,
    out: Path,
    progress: bool = False,
    on_cell: Callable[[CellOutcome], None] | None = None,
    on_start: Callable[[SweepProgress], None] | None = None,
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
    return run_planned(planned, dataset, Path(out), request.force, progress, on_cell, sweep_start, on_start)


def run_planned(
    planned: list[CellSpec],
    dataset: Dataset,
    out: Path,
    force: bool = False,
    progress: bool = False,
    on_cell: Callable[[CellOutcome], None] | None = None,
    sweep_start: float | None = None,
    on_start: Callable[[SweepProgress], None] | None = None,
) -> list[CellOutcome]:
    """Run the cells of a plan into the results root ``out``: cells another process holds are taken last, waiting for
    them. ``on_start`` hears, as this process starts training (or fitting) a cell, where the sweep is and the time
    left."""
    if not planned:  # an empty share of a sharded grid
        return []
    sweep_start = time.time() if sweep_start is None else sweep_start
    if not distributed.follower():  # under torchrun the first process downloads; the others wait for it in start()
        ensure_available({source for spec in planned for source in spec.weights.values()})
    _check_writable(out)  # after the weights: a run that cannot start leaves no folder behind
    device = distributed.start(planned[0].device)  # under torchrun: this process's own device of that type
    store = ResultsStore(out)
    found = standings(planned, out)
    clock = SweepClock(sum(stand.epochs_left(spec, force) for spec, stand in zip(planned, found)))
    outcomes: dict[int, CellOutcome] = {}
    try:
        for wait in (False, True):  # first every cell that is free; then, waiting, those another process held
            for position, spec in enumerate(planned):
                if position in outcomes:
                    continue
                where = SweepProgress(position + 1, len(planned), spec, found[position], clock.seconds_left())
                started = time.perf_counter()
                outcome = (
                    UnbuildableOutcome.of(spec)
                    if spec.unbuildable
                    else attempt(
                        spec,
                        store,
                        dataset.images,
                        device,
                        force,
                        progress,
                        wait,
                        sweep_start,
                        (lambda: on_start(where)) if on_start else None,
                    )
                )
                if outcome is not None:
                    outcomes[position] = outcome
                    clock.count(found[position].epochs_left(spec, force), outcome, time.perf_counter() - started)
                    if on_cell:
                        on_cell(outcome)
    finally:
        distributed.stop()
    return [outcomes[i] for i in range(len(planned))]


@dataclass(frozen=True)
class Standing:
    """What a planned cell's directory holds before the sweep reaches it, read without claiming it."""

    status: str  # new | finished | failed | damaged | incomplete
    epochs_done: int = 0  # logged by an interrupted attempt beside its checkpoint: training resumes after them

    def runs(self, force: bool) -> bool:
        """Whether the sweep will train (or fit) the cell: all but a finished one, which only ``force`` runs again."""
        return self.status != "finished" or force

    def epochs_left(self, spec: CellSpec, force: bool) -> int:
        """Epochs the cell still has to train in this sweep (none for a training-free method)."""
        if not self.runs(force) or spec.training_free or spec.unbuildable:
            return 0
        return max(spec.config.epochs - self.epochs_done, 0)

    def describe(self, spec: CellSpec, force: bool) -> str:
        """What running the sweep will do with the cell, in a few words (``--dry-run`` prints it)."""
        resumes = f"resumes after epoch {self.epochs_done} of {spec.config.epochs}" if self.epochs_done else ""
        if self.status == "finished" and not force:
            return "finished: skipped"
        if self.status == "finished":
            return "finished: re-run (--force)" + (f", {resumes}" if resumes else "")
        return {
            "failed": "failed earlier: runs again",
            "damaged": "damaged: runs again",
        }.get(self.status, resumes or "to run")


def standings(planned: list[CellSpec], out: Path) -> list[Standing]:
    """Each planned cell's standing in the results root ``out``."""

    def standing(spec: CellSpec) -> Standing:
        cell = Cell(spec.config.directory(out))
        if spec.unbuildable or not cell.path(CONFIG).exists():
            return Standing("new")
        status = cell.status()
        return Standing(status, cell.epochs_logged(replace=status == "finished"))

    return [standing(spec) for spec in planned]


@dataclass(frozen=True)
class SweepProgress:
    """Where a sweep stands as a cell starts: cell ``position`` of ``total``, and the seconds the rest of the sweep
    should take (None until a cell has trained: an estimate needs epochs measured on this machine)."""

    position: int
    total: int
    spec: CellSpec
    standing: Standing
    seconds_left: float | None


@dataclass
class SweepClock:
    """The time a sweep's remaining epochs should take, at the wall seconds per epoch of the cells it has trained
    (encoding and evaluation included; cells trained elsewhere or not at all teach it nothing)."""

    epochs_left: int
    epochs_trained: int = 0
    seconds_training: float = 0.0

    def count(self, planned_epochs: int, outcome: CellOutcome, seconds: float) -> None:
        self.epochs_left -= planned_epochs
        if outcome.epochs_trained:
            self.epochs_trained += outcome.epochs_trained
            self.seconds_training += seconds

    def seconds_left(self) -> float | None:
        if not self.epochs_trained:
            return None
        return self.epochs_left * self.seconds_training / self.epochs_trained


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
