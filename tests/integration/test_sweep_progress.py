"""A sweep says where it is: cell i of N, the time left from the epochs trained so far, after which epoch an
interrupted cell resumes; and --dry-run says which cells are finished already or would resume."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from hashbench.api import RunRequest, plan, run_grid, standings
from hashbench.cli import app, expand_multi_value_options
from hashbench.runner.cell import CellOutcome
from hashbench.runner.grid import Standing, SweepClock
from hashbench.training import engine

runner = CliRunner()


def request(methods, bits=(16,), epochs=2):
    return RunRequest(
        methods=list(methods),
        bits=list(bits),
        seeds=[0],
        dataset="phantom-tiny-seed0",
        backbones=["test_efficientnet"],
        epochs=epochs,
        overrides={"*": {"batch_size": 32}},
    )


def test_the_clock_spreads_the_seconds_of_trained_epochs_over_the_epochs_left():
    clock = SweepClock(epochs_left=30)
    assert clock.seconds_left() is None  # nothing measured on this machine yet
    clock.count(0, CellOutcome(None, "done"), 4.0)  # a training-free cell: no epochs, nothing learned
    assert clock.seconds_left() is None
    clock.count(10, CellOutcome(None, "done", epochs_trained=10), 25.0)  # 2.5 s per epoch
    assert clock.seconds_left() == pytest.approx(20 * 2.5)
    clock.count(5, CellOutcome(None, "skipped"), 0.01)  # finished by another process: its epochs leave the count
    assert clock.seconds_left() == pytest.approx(15 * 2.5)


def test_each_cell_that_trains_is_announced_with_its_place_and_the_time_left(tiny_phantom, tmp_path):
    heard = []
    outcomes = run_grid(request(["lsh", "dsh"], bits=(16, 32)), tiny_phantom.dataset, tmp_path, on_start=heard.append)
    assert [o.status for o in outcomes] == ["done"] * 4
    assert [(p.position, p.total) for p in heard] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [p.spec.config.method for p in heard] == ["lsh", "lsh", "dsh", "dsh"]
    assert [o.epochs_trained for o in outcomes] == [0, 0, 2, 2]
    # lsh trains no epochs, so no estimate until dsh 16 has trained; then dsh 32's two epochs are left
    assert [p.seconds_left is None for p in heard] == [True, True, True, False]
    assert heard[3].seconds_left > 0
    again = []
    skipped = run_grid(request(["lsh", "dsh"], bits=(16, 32)), tiny_phantom.dataset, tmp_path, on_start=again.append)
    assert [o.status for o in skipped] == ["skipped"] * 4 and again == []  # nothing trains: nothing announced


def test_an_interrupted_cell_is_shown_to_resume_after_its_last_epoch(tiny_phantom, tmp_path, monkeypatch):
    real_save = engine._save

    def save_then_stop(*args):
        real_save(*args)
        if args[4] == 2:  # epochs done
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_grid(request(["dsh"], epochs=4), tiny_phantom.dataset, tmp_path)
    monkeypatch.setattr(engine, "_save", real_save)

    planned = plan(request(["dsh"], epochs=4), tiny_phantom.dataset)
    (standing,) = standings(planned, tmp_path)
    assert standing == Standing("incomplete", 2)
    assert standing.describe(planned[0], force=False) == "resumes after epoch 2 of 4"
    assert standing.epochs_left(planned[0], force=False) == 2

    heard = []
    (outcome,) = run_grid(request(["dsh"], epochs=4), tiny_phantom.dataset, tmp_path, on_start=heard.append)
    assert heard[0].standing.epochs_done == 2
    assert "resumed after epoch 2 of 4" in outcome.note and outcome.epochs_trained == 2


def test_dry_run_marks_finished_cells_and_counts_them(tiny_phantom, tmp_path):
    out = tmp_path / "runs"
    run_grid(request(["lsh"]), tiny_phantom.dataset, out)
    flags = expand_multi_value_options(
        ["run", "--methods", "lsh,itq", "--bits", "16", "--dataset", "phantom-tiny-seed0", "--out", str(out)]
        + ["--backbone", "test_efficientnet", "--epochs", "2", "--set", "batch_size=32"]
    )
    shown = runner.invoke(app, [*flags, "--dry-run"])
    assert shown.exit_code == 0, shown.output
    lines = {line.split(":")[0]: line for line in shown.output.splitlines() if line.startswith("phantom-tiny-seed0/")}
    assert lines["phantom-tiny-seed0/lsh/16 bits/seed 0"].endswith("[finished: skipped]")
    assert lines["phantom-tiny-seed0/itq/16 bits/seed 0"].endswith("[to run]")
    assert "2 cells planned, 1 finished already (skipped); nothing was run" in shown.output
    as_json = runner.invoke(app, [*flags, "--dry-run", "--json", "--force"])
    assert [json.loads(line)["standing"] for line in as_json.output.splitlines()] == [
        "finished: re-run (--force)",
        "to run",
    ]
