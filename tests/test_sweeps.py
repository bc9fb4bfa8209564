"""Sweeps that survive anything: kill -9 mid-epoch, a NaN loss, two processes on one root, damaged files."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench import engine, leaderboard
from hashbench.cli import app, expand_multi_value_options
from hashbench.results import Cell, ResultsStore
from hashbench.run import RunRequest, run_grid

runner = CliRunner()
HASHBENCH = str(Path(sys.executable).with_name("hashbench"))

# A DSH that, when HASHBENCH_TEST_PAUSE names a marker file not yet there, creates it in the middle of its
# second epoch and sleeps HASHBENCH_TEST_PAUSE_SECONDS: a test then knows the process is mid-epoch.
PAUSING_PLUGIN = '''
import os, time
from pathlib import Path
from hashbench.registry import REGISTRY, register_method

DSH = REGISTRY.get("dsh")


@register_method("pausing-dsh")
class PausingDSH(DSH):
    def schedule(self, model, info):
        super().schedule(model, info)
        marker = os.environ.get("HASHBENCH_TEST_PAUSE")
        if marker and info.epoch == 1 and info.step == info.steps_per_epoch + 1 and not Path(marker).exists():
            Path(marker).touch()
            time.sleep(float(os.environ.get("HASHBENCH_TEST_PAUSE_SECONDS", "600")))
'''

# A DSH whose loss turns NaN at its second step.
NAN_PLUGIN = '''
import torch
from hashbench.registry import REGISTRY, register_method

DSH = REGISTRY.get("dsh")


class NanAtSecondStep(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, output, labels, indices, info):
        terms = self.inner(output, labels, indices, info)
        if info.step == 1:
            terms["pairs"] = terms["pairs"] * float("nan")
        return terms


@register_method("nan-dsh")
class NanDSH(DSH):
    def build_loss(self):
        return NanAtSecondStep(super().build_loss())
'''


def hashbench_command(plugin: Path, out: Path, methods: str, epochs: int = 3) -> list[str]:
    return [HASHBENCH, "run", "--plugin", str(plugin), "--methods", methods, "--bits", "8", "--epochs", str(epochs), "--dataset", "phantom-tiny-seed0", "--out", str(out)]


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"exited early: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def cell_of(out: Path, method: str) -> Cell:
    (directory,) = (out / "phantom-tiny-seed0" / method / "8bits").iterdir()
    return Cell(directory)


def test_kill_9_mid_epoch_then_rerun_gives_the_uninterrupted_metrics(tiny_phantom, tmp_path):
    plugin = tmp_path / "pausing.py"
    plugin.write_text(PAUSING_PLUGIN)
    reference, swept = tmp_path / "reference", tmp_path / "swept"
    done = subprocess.run(hashbench_command(plugin, reference, "dpn,pausing-dsh"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    marker = tmp_path / "paused"
    environment = {**os.environ, "HASHBENCH_TEST_PAUSE": str(marker)}
    process = subprocess.Popen(hashbench_command(plugin, swept, "dpn,pausing-dsh"), env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(marker, process)
    os.kill(process.pid, signal.SIGKILL)  # mid-epoch 2 of the second cell; the first cell is finished
    process.wait(timeout=60)
    finished_first = cell_of(swept, "dpn")
    stamp = finished_first.path("metrics.json").stat().st_mtime_ns
    interrupted = cell_of(swept, "pausing-dsh")
    assert interrupted.status() == "incomplete" and interrupted.path("checkpoint.pt").exists()
    assert len(interrupted.path("train_log.jsonl").read_text().splitlines()) == 1  # epoch 1 finished, epoch 2 cut

    again = subprocess.run(hashbench_command(plugin, swept, "dpn,pausing-dsh"), env=environment, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "skipped phantom-tiny-seed0/dpn" in again.stdout and "done phantom-tiny-seed0/pausing-dsh" in again.stdout
    assert finished_first.path("metrics.json").stat().st_mtime_ns == stamp  # the finished cell was not touched
    resumed, uninterrupted = cell_of(swept, "pausing-dsh"), cell_of(reference, "pausing-dsh")
    log = [json.loads(line) for line in resumed.path("train_log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2, 3]
    assert resumed.record["resumed_from_epoch"] == 1 and resumed.record["train_seconds"] == pytest.approx(sum(line["seconds"] for line in log), abs=0.01)
    assert resumed.record["metrics"] == uninterrupted.record["metrics"]  # identical, not close
    for name in ("query_codes", "database_codes", "database_embeddings"):
        np.testing.assert_array_equal(resumed.codes()[name], uninterrupted.codes()[name], err_msg=name)


def test_a_nan_loss_fails_that_cell_only_and_says_so_everywhere(tiny_phantom, tmp_path):
    plugin = tmp_path / "nan.py"
    plugin.write_text(NAN_PLUGIN)
    out = tmp_path / "out"
    result = runner.invoke(app, expand_multi_value_options(["run", "--plugin", str(plugin), "--methods", "nan-dsh,dpn", "--bits", "8", "--epochs", "1", "--dataset", "phantom-tiny-seed0", "--out", str(out)]))
    assert result.exit_code == 1, result.output
    assert "2 cells: 1 done, 0 skipped, 1 failed" in result.output and "FloatingPointError" in result.output
    failure = json.loads(cell_of(out, "nan-dsh").path("failed.json").read_text())
    assert "loss is nan at epoch 0, step 1" in failure["error"] and "Traceback" in failure["traceback"] and "FloatingPointError" in failure["traceback"]
    assert cell_of(out, "dpn").status() == "finished"
    table = leaderboard.build(ResultsStore(out).table(), ("map@10",))[0].table
    assert table.loc["nan-dsh", "8 bits"].startswith("failed: FloatingPointError: nan-dsh: loss is nan")
    assert re.match(r"0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\] \(n=1", table.loc["dpn", "8 bits"])  # the other cell has its number


def test_two_processes_on_one_root_never_duplicate_or_corrupt_a_cell(tiny_phantom, tmp_path):
    plugin = tmp_path / "pausing.py"
    plugin.write_text(PAUSING_PLUGIN)
    out, marker = tmp_path / "shared", tmp_path / "paused"
    environment = {**os.environ, "HASHBENCH_TEST_PAUSE": str(marker), "HASHBENCH_TEST_PAUSE_SECONDS": "8"}
    command = hashbench_command(plugin, out, "pausing-dsh,dpn,hashnet", epochs=2)
    first = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(marker, first)  # the first process holds pausing-dsh, mid-epoch
    second = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    for method in ("pausing-dsh", "dpn", "hashnet"):
        assert sum(o.count(f"done phantom-tiny-seed0/{method}/") for o in outputs) == 1, (method, outputs)
        cell = cell_of(out, method)
        assert cell.status() == "finished"
        assert [json.loads(line)["epoch"] for line in cell.path("train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert "skipped phantom-tiny-seed0/pausing-dsh/8 bits/seed 0: finished by another process" in outputs[1]


def test_two_forced_sweeps_at_once_still_train_each_cell_once(tiny_phantom, tmp_path):
    """--force re-runs what was finished before the sweep, never what another sweep finished during it (flock conflicts across threads too)."""
    import threading

    request = RunRequest(["dpn", "dsh", "hashnet"], [8], dataset=tiny_phantom.dataset.name, epochs=1, force=True)
    start, outcomes = threading.Barrier(2), [None, None]

    def sweep(number: int) -> None:
        start.wait()
        outcomes[number] = run_grid(request, tiny_phantom.dataset, tmp_path)

    threads = [threading.Thread(target=sweep, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for position, method in enumerate(request.methods):
        pair = [outcomes[0][position], outcomes[1][position]]
        assert sorted(o.status for o in pair) == ["done", "skipped"], method
        assert next(o for o in pair if o.status == "skipped").note == "finished by another process"
        assert len(Cell(pair[0].config.directory(tmp_path)).path("train_log.jsonl").read_text().splitlines()) == 1


def test_a_truncated_or_garbled_cell_file_is_reported_never_read(tmp_path, cell_writer):
    rng = np.random.default_rng(0)
    codes = lambda n: rng.random((n, 16)) < 0.5  # noqa: E731
    cell_writer(tmp_path, "good", codes(20), rng.integers(0, 3, 20), codes(80), rng.integers(0, 3, 80))
    truncated = cell_writer(tmp_path, "truncated", codes(20), rng.integers(0, 3, 20), codes(80), rng.integers(0, 3, 80))
    garbled = cell_writer(tmp_path, "garbled", codes(20), rng.integers(0, 3, 20), codes(80), rng.integers(0, 3, 80))
    text = (truncated / "metrics.json").read_text()
    (truncated / "metrics.json").write_text(text[: len(text) // 2])
    data = bytearray((garbled / "codes.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (garbled / "codes.npz").write_bytes(bytes(data))

    table = ResultsStore(tmp_path).table().set_index("method")
    assert table.loc["good", "status"] == "finished"
    assert table.loc["truncated", "status"] == "damaged" and str(truncated / "metrics.json") in table.loc["truncated", "note"]
    assert table.loc["garbled", "status"] == "damaged" and "checksum" in table.loc["garbled", "note"] and str(garbled / "codes.npz") in table.loc["garbled", "note"]
    board = leaderboard.build(ResultsStore(tmp_path).table(), ("map@10",))[0].table
    assert board.loc["truncated", "16 bits"].startswith("damaged: ") and board.loc["good", "16 bits"].endswith("(n=1)")
    listing = runner.invoke(app, ["ties", "--out", str(tmp_path)])
    assert listing.exit_code == 0 and "damaged" in listing.output
    refused = runner.invoke(app, ["compare", "truncated", "good", "--out", str(tmp_path)])
    assert refused.exit_code == 2 and "no finished cells of 'truncated'" in refused.output


def test_run_reruns_a_cell_whose_record_is_damaged(tiny_phantom, tmp_path):
    request = RunRequest(["dpn"], [8], dataset="phantom-tiny-seed0", epochs=1)
    first = run_grid(request, tiny_phantom.dataset, tmp_path)[0]
    record = first.config.directory(tmp_path) / "metrics.json"
    record.write_text(record.read_text()[:40])
    again = run_grid(request, tiny_phantom.dataset, tmp_path)[0]
    assert again.status == "done" and again.note.startswith("was damaged") and str(record) in again.note
    assert Cell(record.parent).status() == "finished" and again.metrics == first.metrics


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_a_checkpoint_is_loaded_as_weights_only_never_as_code(tmp_path):
    import torch

    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(pickle.dumps({"epochs_done": 1, "network": _RunsCode()}, protocol=2))
    network = torch.nn.Linear(2, 2)
    with pytest.raises(pickle.UnpicklingError):
        engine._resume(checkpoint, tmp_path / "log.jsonl", network, torch.nn.Module(), torch.optim.SGD(network.parameters(), lr=0.1))
