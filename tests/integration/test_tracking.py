"""Trackers mirror a cell's training: TensorBoard event files in the cell, an MLflow run in a local SQLite store.

Each test reads what was written back with the tracker's own reader, as a researcher's tool would.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from hashbench.runner import tracking
from hashbench.runner.tracking import Tracking, mlflow_key
from hashbench.store.results import CellConfig

CONFIG = CellConfig("phantom", "dsh", 16, 0, "test_efficientnet", 2, 32, "patient", options={"alpha": 0.1})
EPOCHS = [
    {"cell": CONFIG.identity(), "epoch": 1, "seconds": 1.5, "lr": 1e-3, "loss": 0.5, "validation map@10": 0.2},
    {"cell": CONFIG.identity(), "epoch": 2, "seconds": 1.4, "lr": 5e-4, "loss": 0.25, "validation map@10": 0.3},
]
METRICS = {"map@10": 0.375, "map@1": 0.5}


def _feed(trackers: Tracking, directory, root):
    opened = trackers.open(CONFIG, directory, root, {"git.commit": "abc123", "device": "cpu"})
    for line in EPOCHS:
        opened.epoch(line)
    opened.finish(METRICS, step=2)
    return opened


def scalars(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_losses_per_epoch_and_the_final_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    _feed(Tracking(("tensorboard",)), tmp_path, tmp_path)
    logged = scalars(tmp_path)
    assert logged["train/loss"] == [(1, 0.5), (2, 0.25)]
    assert logged["train/lr"] == [(1, pytest.approx(1e-3)), (2, pytest.approx(5e-4))]
    assert logged["train/validation map@10"] == [(1, pytest.approx(0.2)), (2, pytest.approx(0.3))]
    assert logged["metrics/map@10"] == [(2, 0.375)] and logged["metrics/map@1"] == [(2, 0.5)]
    assert not any(tag.endswith(("seconds", "epoch")) for tag in logged)  # bookkeeping, not curves


def test_an_mlflow_run_in_a_sqlite_store_holds_config_provenance_losses_and_metrics(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _feed(Tracking(("mlflow",), uri), tmp_path, tmp_path)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hashbench/phantom").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == CONFIG.label()
    assert run.data.tags["hashbench.cell"] == CONFIG.identity() and run.data.tags["git.commit"] == "abc123"
    assert run.data.params["options.alpha"] == "0.1" and run.data.params["image_size"] == "32"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    assert run.data.metrics["map_at_10"] == 0.375 and run.data.metrics["map_at_1"] == 0.5


def test_the_default_mlflow_store_is_a_sqlite_database_in_the_results_root(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _feed(Tracking(("mlflow",)), tmp_path / "cell", tmp_path)
    assert (tmp_path / "mlflow.db").stat().st_size > 0


def test_a_failing_tracker_is_dropped_with_a_warning_and_never_fails_the_cell(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")

    def broken(self, epoch, values):
        raise ConnectionError("tracking server gone")

    monkeypatch.setattr(tracking._TensorBoard, "epoch", broken)
    with pytest.warns(UserWarning, match="--track tensorboard stopped: ConnectionError: tracking server gone"):
        opened = _feed(Tracking(("tensorboard",)), tmp_path, tmp_path)
    assert opened.trackers == []


def test_unknown_or_uninstalled_trackers_and_a_stray_uri_are_refused_with_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="--track 'wandb' is not a tracker; valid: tensorboard, mlflow"):
        Tracking(("wandb",))
    with pytest.raises(ValueError, match="add --track mlflow"):
        Tracking((), "sqlite:///x.db")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "alembic" else real(name))
    with pytest.raises(ValueError, match=r"--track mlflow needs alembic: pip install 'hashbench\[mlflow\]'"):
        Tracking(("mlflow",))


def test_metric_names_become_valid_mlflow_keys():
    assert mlflow_key("map@10") == "map_at_10" and mlflow_key("train/validation map@10") == "train/validation map_at_10"
    assert mlflow_key("p@r2") == "p_at_r2" and mlflow_key("ndcg(graded)") == "ndcg_graded_"


def test_a_run_mirrors_each_cells_epochs_and_final_metrics_to_both_trackers(tiny_phantom, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from hashbench.api import RunRequest, run_grid

    uri = f"sqlite:///{tmp_path / 'tracked.db'}"
    request = RunRequest(
        ["dsh"], [8], dataset=tiny_phantom.dataset.name, epochs=2, tracking=Tracking(("tensorboard", "mlflow"), uri)
    )
    (outcome,) = run_grid(request, tiny_phantom.dataset, tmp_path / "out")
    assert outcome.status == "done", outcome.error
    directory = outcome.config.directory(tmp_path / "out")
    logged = scalars(directory)
    log = [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]
    terms = [key for key in log[0] if key not in ("cell", "epoch", "seconds")]
    assert terms and all(logged[f"train/{key}"] == [(e["epoch"], pytest.approx(e[key])) for e in log] for key in terms)
    assert logged["metrics/map@10"] == [(2, pytest.approx(outcome.metrics["map@10"]))]
    assert "metrics/search-ms" in logged and "metrics/bytes" in logged  # the retrieval cost beside the metrics
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(f"hashbench/{tiny_phantom.dataset.name}").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["hashbench.cell"] == outcome.config.identity()
    assert run.data.metrics["map_at_10"] == pytest.approx(outcome.metrics["map@10"])
    assert len(client.get_metric_history(run.info.run_id, "train/lr")) == 2


def test_the_run_command_refuses_an_unknown_tracker_before_anything_loads():
    from typer.testing import CliRunner

    from hashbench.cli import app, expand_multi_value_options

    argv = ["run", "--methods", "lsh", "--track", "wandb", "--dataset", "never-ingested"]
    result = CliRunner().invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 2 and "--track 'wandb' is not a tracker; valid: tensorboard, mlflow" in result.output
