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

from hashbench.api import RunRequest, run_grid
from hashbench.cli import app, expand_multi_value_options
from hashbench.model.trained import load_trained_network
from hashbench.report import leaderboard
from hashbench.store.digest import file_sha256
from hashbench.store.results import Cell, CellError, ResultsStore
from hashbench.training import engine

runner = CliRunner()
HASHBENCH = str(Path(sys.executable).with_name("hashbench"))

# A DSH that, when HASHBENCH_TEST_PAUSE names a marker file not yet there, creates it in the middle of its
# second epoch and sleeps HASHBENCH_TEST_PAUSE_SECONDS: a test then knows the process is mid-epoch.
PAUSING_PLUGIN = """
import os, time
from pathlib import Path
from hashbench.model.registry import REGISTRY, register_method

DSH = REGISTRY.get("dsh")


@register_method("pausing-dsh")
class PausingDSH(DSH):
    def schedule(self, model, info):
        super().schedule(model, info)
        marker = os.environ.get("HASHBENCH_TEST_PAUSE")
        if marker and info.epoch == 1 and info.step == info.steps_per_epoch + 1 and not Path(marker).exists():
            Path(marker).touch()
            deadline = time.monotonic() + float(os.environ.get("HASHBENCH_TEST_PAUSE_SECONDS", "600"))
            release = os.environ.get("HASHBENCH_TEST_RELEASE")  # ends the pause early once it exists
            while time.monotonic() < deadline and not (release and Path(release).exists()):
                time.sleep(0.1)
"""

# A DSH whose loss turns NaN at its second step.
NAN_PLUGIN = """
import torch
from hashbench.model.registry import REGISTRY, register_method

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
"""


def hashbench_command(plugin: Path, out: Path, methods: str, epochs: int = 3) -> list[str]:
    return [
        HASHBENCH,
        "run",
        "--plugin",
        str(plugin),
        "--methods",
        methods,
        "--bits",
        "8",
        "--epochs",
        str(epochs),
        "--dataset",
        "phantom-tiny-seed0",
        "--out",
        str(out),
    ]


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
    done = subprocess.run(
        hashbench_command(plugin, reference, "dpn,pausing-dsh"), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr

    marker = tmp_path / "paused"
    environment = {**os.environ, "HASHBENCH_TEST_PAUSE": str(marker)}
    process = subprocess.Popen(
        hashbench_command(plugin, swept, "dpn,pausing-dsh"),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for(marker, process)
    os.kill(process.pid, signal.SIGKILL)  # mid-epoch 2 of the second cell; the first cell is finished
    process.wait(timeout=60)
    finished_first = cell_of(swept, "dpn")
    stamp = finished_first.path("metrics.json").stat().st_mtime_ns
    interrupted = cell_of(swept, "pausing-dsh")
    assert interrupted.status() == "incomplete" and interrupted.path("checkpoint.pt").exists()
    assert len(interrupted.path("train_log.jsonl").read_text().splitlines()) == 1  # epoch 1 finished, epoch 2 cut

    again = subprocess.run(
        hashbench_command(plugin, swept, "dpn,pausing-dsh"),
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "skipped phantom-tiny-seed0/dpn" in again.stdout and "done phantom-tiny-seed0/pausing-dsh" in again.stdout
    assert finished_first.path("metrics.json").stat().st_mtime_ns == stamp  # the finished cell was not touched
    resumed, uninterrupted = cell_of(swept, "pausing-dsh"), cell_of(reference, "pausing-dsh")
    log = [json.loads(line) for line in resumed.path("train_log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2, 3]
    assert resumed.record["resumed_from_epoch"] == 1 and resumed.record["train_seconds"] == pytest.approx(
        sum(line["seconds"] for line in log), abs=0.01
    )
    assert resumed.record["metrics"] == uninterrupted.record["metrics"]  # identical, not close
    for name in ("query_codes", "database_codes", "database_embeddings"):
        np.testing.assert_array_equal(resumed.codes()[name], uninterrupted.codes()[name], err_msg=name)


def test_a_nan_loss_fails_that_cell_only_and_says_so_everywhere(tiny_phantom, tmp_path):
    plugin = tmp_path / "nan.py"
    plugin.write_text(NAN_PLUGIN)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        expand_multi_value_options(
            [
                "run",
                "--plugin",
                str(plugin),
                "--methods",
                "nan-dsh,dpn",
                "--bits",
                "8",
                "--epochs",
                "1",
                "--dataset",
                "phantom-tiny-seed0",
                "--out",
                str(out),
            ]
        ),
    )
    assert result.exit_code == 1, result.output
    assert "2 cells: 1 done, 0 skipped, 1 failed" in result.output and "FloatingPointError" in result.output
    failure = json.loads(cell_of(out, "nan-dsh").path("failed.json").read_text())
    assert (
        "loss is nan at epoch 0, step 1" in failure["error"]
        and "Traceback" in failure["traceback"]
        and "FloatingPointError" in failure["traceback"]
    )
    assert cell_of(out, "dpn").status() == "finished"
    table = leaderboard.build(ResultsStore(out).table(), ("map@10",))[0].table
    assert table.loc["nan-dsh", "8 bits"].startswith("failed: FloatingPointError: nan-dsh: loss is nan")
    assert re.match(
        r"0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\] \(n=1", table.loc["dpn", "8 bits"]
    )  # the other cell has its number


def test_two_processes_on_one_root_never_duplicate_or_corrupt_a_cell(tiny_phantom, tmp_path):
    plugin = tmp_path / "pausing.py"
    plugin.write_text(PAUSING_PLUGIN)
    out, marker, release = tmp_path / "shared", tmp_path / "paused", tmp_path / "release"
    environment = {
        **os.environ,
        "HASHBENCH_TEST_PAUSE": str(marker),
        "HASHBENCH_TEST_PAUSE_SECONDS": "120",
        "HASHBENCH_TEST_RELEASE": str(release),
    }
    command = hashbench_command(plugin, out, "pausing-dsh,dpn,hashnet", epochs=2)
    first = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(marker, first)  # the first process holds pausing-dsh, mid-epoch
    second = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(
        out / "phantom-tiny-seed0" / "dpn", second
    )  # the second's sweep has begun (it passed the held cell and took dpn) ...
    release.touch()  # ... however slow its start was: only now does the first go on
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
    assert (
        table.loc["truncated", "status"] == "damaged"
        and str(truncated / "metrics.json") in table.loc["truncated", "note"]
    )
    assert (
        table.loc["garbled", "status"] == "damaged"
        and "checksum" in table.loc["garbled", "note"]
        and str(garbled / "codes.npz") in table.loc["garbled", "note"]
    )
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


def test_a_checkpoint_is_loaded_as_weights_only_never_as_code(tmp_path, capfd):
    """A checkpoint that would run code is refused by the loader, and, like any unreadable checkpoint, costs the
    progress, not the cell: it is set aside, kept for whoever wants to look."""
    import torch

    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(pickle.dumps({"epochs_done": 1, "network": _RunsCode()}, protocol=2))
    network = torch.nn.Linear(2, 2)
    start = engine._resume(
        checkpoint,
        tmp_path / "log.jsonl",
        network,
        torch.nn.Module(),
        torch.optim.SGD(network.parameters(), lr=0.1),
    )
    (kept,) = tmp_path.glob("checkpoint.set-aside-*.pt")
    assert start.epoch == 0 and not checkpoint.exists()
    assert (
        start.set_aside == f"checkpoint.pt cannot be read (UnpicklingError): trained from the first epoch; kept {kept}"
    )
    assert "this must never run" not in capfd.readouterr().out


def test_a_forced_rerun_killed_mid_epoch_leaves_the_old_result_then_resumes(tiny_phantom, tmp_path):
    plugin = tmp_path / "pausing.py"
    plugin.write_text(PAUSING_PLUGIN)
    out, marker = tmp_path / "out", tmp_path / "paused"
    first = subprocess.run(
        hashbench_command(plugin, out, "pausing-dsh", epochs=2), capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stdout + first.stderr
    cell = cell_of(out, "pausing-dsh")
    old = {name: cell.path(name).read_bytes() for name in ("metrics.json", "codes.npz", "model.pt", "train_log.jsonl")}

    environment = {**os.environ, "HASHBENCH_TEST_PAUSE": str(marker)}
    forced = subprocess.Popen(
        hashbench_command(plugin, out, "pausing-dsh", epochs=2) + ["--force"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for(marker, forced)
    os.kill(forced.pid, signal.SIGKILL)  # mid-epoch 2 of the re-run
    forced.wait(timeout=60)
    assert {name: cell.path(name).read_bytes() for name in old} == old  # the old result, byte for byte
    assert Cell(cell.directory).status() == "finished" and (cell.directory / ".rerun" / "checkpoint.pt").exists()
    row = ResultsStore(out).table().iloc[0]
    assert (
        row["status"] == "finished"
        and "an interrupted re-run (--force) waits in .rerun/: this is the earlier result" in row["note"]
    )
    assert row["map@10"] == json.loads(old["metrics.json"])["metrics"]["map@10"]

    again = subprocess.run(
        hashbench_command(plugin, out, "pausing-dsh", epochs=2) + ["--force"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed an interrupted re-run" in again.stdout
    replaced = Cell(cell.directory)
    assert (
        replaced.record["resumed_from_epoch"] == 1
        and replaced.record["started"] != json.loads(old["metrics.json"])["started"]
    )
    assert [json.loads(line)["epoch"] for line in replaced.path("train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert replaced.record["metrics"] == json.loads(old["metrics.json"])["metrics"]  # same seed, same numbers
    assert not (cell.directory / ".rerun").exists()


class _KilledAfter:
    """Stands in for the os module inside results.py: the n-th os.replace raises, as if the process died there."""

    def __init__(self, calls: int):
        self.calls = calls

    def replace(self, source, target):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        os.replace(source, target)

    def __getattr__(self, name):
        return getattr(os, name)


@pytest.mark.parametrize("moved_before_the_kill", [0, 1, 3])
def test_a_replacement_cut_at_any_point_reads_as_one_result_and_completes_on_the_next_claim(
    five_cells, tiny_phantom, tmp_path, monkeypatch, moved_before_the_kill
):
    """0: nothing moved yet; 1: the log moved; 3: log, codes and weights moved, the record not."""
    import shutil

    from hashbench.store import results

    source, _, originals = five_cells
    shutil.copytree(source, tmp_path / "out")
    request = RunRequest(["dpn"], [8], dataset="phantom-tiny-seed0", epochs=1)
    cell = Cell(originals[0].config.directory(tmp_path / "out"))
    old_started = cell.record["started"]
    monkeypatch.setattr(results, "os", _KilledAfter(moved_before_the_kill))
    with pytest.raises(KeyboardInterrupt):
        run_grid(
            RunRequest(["dpn"], [8], dataset="phantom-tiny-seed0", epochs=1, force=True),
            tiny_phantom.dataset,
            tmp_path / "out",
        )
    monkeypatch.setattr(results, "os", os)
    cut = Cell(cell.directory)
    assert (
        cut.status() == "finished" and cut.problem(check_model=True) == ""
    )  # the new result, whole: staged files fill in for those not yet moved
    assert cut.record["started"] != old_started and cut.record["metrics"] == originals[0].metrics
    assert (cell.directory / ".rerun" / "metrics.json").exists()
    assert run_grid(request, tiny_phantom.dataset, tmp_path / "out")[0].status == "skipped"
    assert not (cell.directory / ".rerun").exists() and Cell(cell.directory).record["started"] == cut.record["started"]


@pytest.fixture(scope="module")
def five_cells(tiny_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("five-cells")
    request = RunRequest(["dpn"], [8], seeds=[0, 1, 2, 3, 4], dataset="phantom-tiny-seed0", epochs=1)
    outcomes = run_grid(request, tiny_phantom.dataset, out)
    return out, request, {o.config.seed: o for o in outcomes}


def damage(mode: str, path: Path, donor: Path) -> None:
    data = path.read_bytes()
    if mode == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "garble":
        path.write_bytes(
            data[: len(data) // 2]
            + bytes(b ^ 0x5A for b in data[len(data) // 2 : len(data) // 2 + 64])
            + data[len(data) // 2 + 64 :]
        )
    else:  # swap: the same file of another cell
        path.write_bytes(donor.read_bytes())


@pytest.mark.parametrize("mode", ["truncate", "garble", "swap"])
def test_each_damaged_cell_file_is_reported_by_readers_and_retrained_by_run(five_cells, tiny_phantom, tmp_path, mode):
    import shutil

    source, request, originals = five_cells
    out = tmp_path / "out"
    shutil.copytree(source, out)
    directory = {seed: o.config.directory(out) for seed, o in originals.items()}
    damaged = {0: "config.json", 1: "metrics.json", 2: "codes.npz", 3: "model.pt"}
    for seed, name in damaged.items():
        damage(mode, directory[seed] / name, directory[4] / name)

    table = ResultsStore(out).table().set_index("seed")
    for seed in (0, 1, 2):
        assert table.loc[seed, "status"] == "damaged", (seed, table.loc[seed, "note"])
        assert (
            str(directory[seed]) in table.loc[seed, "note"] and "run the same command again" in table.loc[seed, "note"]
        )
    assert (
        table.loc[4, "status"] == "finished" and table.loc[3, "status"] == "finished"
    )  # readers of metrics never need model.pt
    with pytest.raises(CellError, match=re.escape(str(directory[3] / "model.pt"))):
        load_trained_network(Cell(directory[3]))
    board = leaderboard.build(ResultsStore(out).table(), ("map@10",))[0].table
    assert "damaged" in board.loc["dpn", "8 bits"] or "(n=2" in board.loc["dpn", "8 bits"]

    if mode != "swap":
        return
    again = {o.config.seed: o for o in run_grid(request, tiny_phantom.dataset, out)}
    for seed in (0, 1, 2, 3):
        assert again[seed].status == "done" and again[seed].note.startswith("was damaged"), (seed, again[seed])
        assert again[seed].metrics == originals[seed].metrics  # trained again, to the same numbers
    assert again[4].status == "skipped"
    assert (ResultsStore(out).table()["status"] == "finished").all()


def test_a_config_key_from_a_newer_version_is_ignored_with_a_warning(five_cells, tmp_path):
    import shutil

    source, _, originals = five_cells
    out = tmp_path / "out"
    shutil.copytree(source, out)
    config_path = originals[0].config.directory(out) / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "calibration": "isotonic"}))
    record_path = config_path.with_name("metrics.json")  # as the newer version would have written it: with the checksum
    record_path.write_text(
        json.dumps({**json.loads(record_path.read_text()), "config_sha256": file_sha256(config_path)})
    )
    with pytest.warns(UserWarning, match=r"config.json: ignoring calibration \(written by a newer hashbench\?\)"):
        table = ResultsStore(out).table().set_index("seed")
    assert table.loc[0, "status"] == "finished" and table.loc[0, "map@10"] == originals[0].metrics["map@10"]


def test_a_rerun_folder_left_empty_by_a_kill_is_not_taken_for_a_pending_rerun(five_cells, tiny_phantom, tmp_path):
    """A kill after the record moved into place but before .rerun/ was removed: the result is whole and nothing is pending."""
    import shutil

    source, request, originals = five_cells
    shutil.copytree(source, tmp_path / "out")
    cell = Cell(originals[0].config.directory(tmp_path / "out"))
    (cell.directory / ".rerun").mkdir()
    (cell.directory / ".rerun" / "train_log.jsonl").write_text("")
    assert (
        not cell.rerun_pending()
        and "re-run" not in ResultsStore(tmp_path / "out").table().set_index("seed").loc[0, "note"]
    )
    outcomes = run_grid(
        RunRequest(["dpn"], [8], seeds=[0], dataset="phantom-tiny-seed0", epochs=1),
        tiny_phantom.dataset,
        tmp_path / "out",
    )
    assert outcomes[0].status == "skipped" and not (cell.directory / ".rerun").exists()
