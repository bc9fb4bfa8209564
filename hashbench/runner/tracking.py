"""Experiment trackers, optional and off by default: a copy of each cell's training for the tools researchers watch
runs with. The results store stays the record; a tracker only mirrors it.

- ``tensorboard``: event files in the cell's ``tensorboard/`` folder (loss terms and learning rate per epoch, the
  final metrics, the configuration as text); ``tensorboard --logdir RESULTS_ROOT`` shows every cell.
- ``mlflow``: one MLflow run per attempt at a cell, in the experiment ``hashbench/<dataset>`` of the tracking URI
  given (``sqlite:///PATH.db``, a server's ``http://...``; default ``$MLFLOW_TRACKING_URI``, else the SQLite
  database ``mlflow.db`` in the results root): the configuration as parameters, provenance and the cell's identity as
  tags, loss terms and learning rate per epoch, the final metrics. A resumed attempt is a new run of the same cell,
  its steps the epochs it trained.

A tracker that fails (a server gone, a full disk) warns once and is dropped: it never fails a cell.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from hashbench.store.results import CellConfig

TRACKERS = {  # name -> the packages it needs and the extra that installs them
    "tensorboard": (("tensorboard",), "tensorboard"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),
}
NOT_LOGGED = ("cell", "epoch", "seconds")  # a log line's bookkeeping, not a curve


@dataclass(frozen=True)
class Tracking:
    """Which trackers a run feeds (resolved once, by the plan) and where MLflow writes."""

    trackers: tuple[str, ...] = ()
    mlflow_uri: str = ""

    def __post_init__(self) -> None:
        for name in self.trackers:
            if name not in TRACKERS:
                raise ValueError(f"--track {name!r} is not a tracker; valid: {', '.join(TRACKERS)}")
            packages, extra = TRACKERS[name]
            missing = [package for package in packages if importlib.util.find_spec(package) is None]
            if missing:
                raise ValueError(f"--track {name} needs {', '.join(missing)}: pip install 'hashbench[{extra}]'")
        if self.mlflow_uri and "mlflow" not in self.trackers:
            raise ValueError("--mlflow-uri is given but MLflow is not tracked: add --track mlflow")

    def open(self, config: CellConfig, directory: Path, root: Path, tags: dict[str, str]) -> CellTracking:
        """The trackers of one attempt at a cell (``directory``: where the attempt writes; ``root``: the results root)."""
        uri = self.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve()}/mlflow.db"
        opened = []
        for name in self.trackers:
            opener = _TensorBoard if name == "tensorboard" else _MLflow
            try:
                opened.append(opener(config, directory, tags, uri))
            except Exception as exc:  # a tracker is a copy: losing it must not lose the cell
                _warn(name, exc)
        return CellTracking(opened)


class CellTracking:
    """Every tracker of one attempt, fed together; each one that fails is dropped with a warning."""

    def __init__(self, trackers: list[Any]):
        self.trackers = trackers

    def epoch(self, line: dict[str, Any]) -> None:
        """One epoch's log line: its loss terms, learning rate and validation numbers."""
        values = {k: float(v) for k, v in line.items() if k not in NOT_LOGGED and isinstance(v, (int, float))}
        self._each(lambda tracker: tracker.epoch(int(line["epoch"]), values))

    def finish(self, metrics: dict[str, float], step: int) -> None:
        self._each(lambda tracker: tracker.finish(metrics, step))

    def fail(self, error: str) -> None:
        self._each(lambda tracker: tracker.fail(error))

    def _each(self, call: Callable[[Any], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # a tracker is a copy: losing it must not lose the cell
                _warn(tracker.name, exc)
                self.trackers.remove(tracker)


def _warn(name: str, exc: Exception) -> None:
    warnings.warn(f"--track {name} stopped: {type(exc).__name__}: {exc}", stacklevel=3)


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, config: CellConfig, directory: Path, tags: dict[str, str], _uri: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(asdict(config), indent=2, default=str) + "\n```")
        self.writer.add_text("provenance", "\n\n".join(f"{k}: {v}" for k, v in tags.items()))

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, epoch)
        self.writer.flush()

    def finish(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"metrics/{key}", value, step)
        self.writer.close()

    def fail(self, error: str) -> None:
        self.writer.add_text("failed", error)
        self.writer.close()


class _MLflow:
    name = "mlflow"

    def __init__(self, config: CellConfig, directory: Path, tags: dict[str, str], uri: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment_name = f"hashbench/{config.dataset}"
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        run = self.client.create_run(
            experiment_id, run_name=config.label(), tags={**tags, "hashbench.cell": config.identity()}
        )
        self.run_id = run.info.run_id
        for key, value in _flat(asdict(config)).items():
            self.client.log_param(self.run_id, key, value)

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, mlflow_key(f"train/{key}"), value, step=epoch)

    def finish(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, mlflow_key(key), value, step=step)
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, error: str) -> None:
        self.client.set_tag(self.run_id, "hashbench.error", error[:5000])
        self.client.set_terminated(self.run_id, "FAILED")


def mlflow_key(name: str) -> str:
    """A metric's name as MLflow takes it (letters, digits, ``_ - . / space``): map@10 -> map_at_10."""
    return re.sub(r"[^\w\-./ ]", "_", name.replace("@", "_at_"))


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested configuration as ``options.alpha``-style parameters, values as text."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, default=str) if not isinstance(value, str) else value
    return flat
