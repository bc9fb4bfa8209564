"""A cell knows who it is: files of another cell, typed garbage, a checkpoint or log that cannot be resumed, a full disk.

Each case is what a hand merge of shard outputs, a copy gone wrong or a bad day leaves behind; none may be read as
data, none may stop a later run.
"""

from __future__ import annotations

import errno
import json
import shutil
import sys

import pytest

from hashbench.api import RunRequest, run_grid
from hashbench.report import leaderboard
from hashbench.store import locks
from hashbench.store.digest import file_sha256
from hashbench.store.results import Cell, ResultsStore

DATASET = "phantom-tiny-seed0"
CELL_FILES = ("metrics.json", "codes.npz", "model.pt", "train_log.jsonl")


def _run(tiny_phantom, out, methods, **fields):
    request = RunRequest(methods, fields.pop("bits", [16]), dataset=DATASET, epochs=fields.pop("epochs", 1), **fields)
    return run_grid(request, tiny_phantom.dataset, out)


def _swap(first: Cell, second: Cell, names) -> None:
    for name in names:
        a, b = first.path(name), second.path(name)
        a_bytes = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(a_bytes)


@pytest.fixture(scope="module")
def lsh_and_itq(tiny_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("two-methods")
    outcomes = _run(tiny_phantom, out, ["lsh", "itq"])
    assert outcomes[0].metrics["map@10"] != outcomes[1].metrics["map@10"]
    return out, {o.config.method: o for o in outcomes}


def test_a_whole_cell_swapped_with_another_is_foreign_and_retrained(lsh_and_itq, tiny_phantom, tmp_path):
    """Record, codes, weights and log of two cells exchanged together agree with each other: only their identity
    tells that each sits in the other's directory."""
    out = tmp_path / "out"
    shutil.copytree(lsh_and_itq[0], out)
    originals = lsh_and_itq[1]
    lsh, itq = (Cell(originals[m].config.directory(out)) for m in ("lsh", "itq"))
    _swap(lsh, itq, CELL_FILES)

    table = ResultsStore(out).table().set_index("method")
    assert list(table["status"]) == ["damaged", "damaged"]
    assert f"metrics.json belongs to another cell ({itq.identity})" in table.loc["lsh", "note"]
    board = leaderboard.build(ResultsStore(out).table(), ("map@10",))[0].table.to_csv()
    assert board.count("damaged: ") == 2  # neither score is shown, under either name
    assert not [o for o in originals.values() if f"{o.metrics['map@10']:.3f}" in board]

    again = {o.config.method: o for o in _run(tiny_phantom, out, ["lsh", "itq"])}
    for method, outcome in again.items():
        assert outcome.status == "done" and outcome.note.startswith("was damaged"), outcome
        assert outcome.metrics == originals[method].metrics


def test_each_file_of_another_cell_is_told_by_its_identity(lsh_and_itq, tmp_path):
    """The codes and the weights carry the identity too: each is foreign on its own, checksums aside."""
    from hashbench.model.trained import load_trained_network
    from hashbench.store.results import CellError

    out = tmp_path / "out"
    shutil.copytree(lsh_and_itq[0], out)
    lsh, itq = (Cell(lsh_and_itq[1][m].config.directory(out)) for m in ("lsh", "itq"))

    def take_from_itq(name: str, checksum: str) -> None:
        shutil.copy(itq.path(name), lsh.path(name))
        record = json.loads(lsh.path("metrics.json").read_text())  # as if the record had been rewritten to match
        lsh.path("metrics.json").write_text(json.dumps({**record, checksum: file_sha256(lsh.path(name))}))

    take_from_itq("model.pt", "model_sha256")
    with pytest.raises(CellError, match=f"model.pt belongs to another cell \\({itq.identity}\\)"):
        load_trained_network(lsh)
    take_from_itq("codes.npz", "codes_sha256")
    assert lsh.status() == "damaged" and f"it belongs to another cell ({itq.identity})" in lsh.problem()


def test_a_swapped_config_is_foreign_and_its_cell_is_trained_again(tiny_phantom, tmp_path):
    """Two cells differing by image size: each config in the other's directory would put each result under the
    other's caption, and `run` would skip the cell as finished."""
    out = tmp_path / "out"
    small, large = (_run(tiny_phantom, out, ["lsh"], image_size=size)[0] for size in (32, 48))
    cells = [Cell(o.config.directory(out)) for o in (small, large)]
    _swap(*cells, ["config.json"])

    table = ResultsStore(out).table().set_index("image_size")
    assert list(table["status"]) == ["damaged", "damaged"] and "belongs to another cell" in table["note"].iloc[0]
    (again,) = _run(tiny_phantom, out, ["lsh"], image_size=32)
    assert again.status == "done" and again.note.startswith("was damaged") and again.metrics == small.metrics
    assert cells[0].config.image_size == 32 and cells[0].status() == "finished"


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"metrics": {"map@1": "abc"}}, "no codes_sha256"),
        ({"metrics": {"map@1": "abc"}, "codes_sha256": "CODES"}, 'metrics map@1 is "abc", not a number'),
        ({"metrics": {"map@1": 0.5}, "codes_sha256": "CODES", "n_query": "12"}, "n_query is str"),
        ({"metrics": {"map@1": 0.5}, "codes_sha256": "not a digest"}, "is not a SHA-256 checksum"),
    ],
)
def test_a_record_of_the_wrong_types_is_damaged_never_finished(lsh_and_itq, tiny_phantom, tmp_path, record, reason):
    out = tmp_path / "out"
    shutil.copytree(lsh_and_itq[0], out)
    cell = Cell(lsh_and_itq[1]["lsh"].config.directory(out))
    if record.get("codes_sha256") == "CODES":
        record["codes_sha256"] = file_sha256(cell.path("codes.npz"))
    cell.path("metrics.json").write_text(json.dumps(record))
    assert cell.status() == "damaged" and reason in cell.problem()
    (again,) = _run(tiny_phantom, out, ["lsh"])
    assert again.status == "done" and again.metrics == lsh_and_itq[1]["lsh"].metrics


@pytest.fixture(scope="module")
def interrupted(tiny_phantom, tmp_path_factory):
    """DSH seeds 0 and 1 stopped after training, before encoding (a failure there keeps the checkpoint, as a kill
    does), and the metrics each reaches when trained without interruption."""
    import hashbench.runner.cell as cell_module

    clean = _run(tiny_phantom, tmp_path_factory.mktemp("clean"), ["dsh"], bits=[8], seeds=[0, 1], epochs=2)
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as patch:

        def stop(*args, **kwargs):
            raise RuntimeError("stopped before encoding")

        patch.setattr(cell_module.engine, "encode", stop)
        stopped = _run(tiny_phantom, out, ["dsh"], bits=[8], seeds=[0, 1], epochs=2)
    assert [o.status for o in stopped] == ["failed", "failed"]
    for outcome in stopped:
        cell = Cell(outcome.config.directory(out))
        assert cell.path("checkpoint.pt").exists() and len(cell.path("train_log.jsonl").read_text().splitlines()) == 2
    return out, {o.config.seed: o for o in clean}


def _resumed_once(tiny_phantom, out, seed, expected_note, metrics):
    """The cell trains from the first epoch, says so naming the kept files, reaches the uninterrupted metrics, and a
    second run skips it as finished."""
    (outcome,) = _run(tiny_phantom, out, ["dsh"], bits=[8], seeds=[seed], epochs=2)
    assert outcome.status == "done", outcome.error
    assert expected_note in outcome.note and "trained from the first epoch; kept " in outcome.note
    cell = Cell(outcome.config.directory(out))
    kept = sorted(p.name for p in cell.directory.glob("*.set-aside-*"))
    assert all(name in outcome.note for name in kept) and kept
    assert cell.record["resumed_from_epoch"] == 0 and outcome.metrics == metrics
    (again,) = _run(tiny_phantom, out, ["dsh"], bits=[8], seeds=[seed], epochs=2)
    assert again.status == "skipped"
    return kept


def test_a_checkpoint_of_another_cell_is_set_aside_not_resumed(interrupted, tiny_phantom, tmp_path):
    """Seed 1's checkpoint fits seed 0's network exactly: resuming it would give seed 0 seed 1's weights, silently."""
    out = tmp_path / "out"
    shutil.copytree(interrupted[0], out)
    clean = interrupted[1]
    seed0, seed1 = (Cell(clean[s].config.directory(out)) for s in (0, 1))
    shutil.copy(seed1.path("checkpoint.pt"), seed0.path("checkpoint.pt"))
    kept = _resumed_once(
        tiny_phantom, out, 0, f"checkpoint.pt belongs to another cell ({seed1.identity})", clean[0].metrics
    )
    assert kept == sorted(kept) and any(name.startswith("checkpoint.set-aside-") for name in kept)


def test_a_checkpoint_of_another_shape_is_set_aside_not_a_failure_forever(interrupted, tiny_phantom, tmp_path):
    """A checkpoint without an identity (an older hashbench's) whose network has another code length: loading it
    fails with a size mismatch, on every run, unless it is set aside."""
    import torch

    from hashbench.model.method import MethodContext
    from hashbench.model.registry import create_method
    from hashbench.training import engine

    out = tmp_path / "out"
    shutil.copytree(interrupted[0], out)
    cell = Cell(interrupted[1][0].config.directory(out))
    network, loss = create_method("dsh", MethodContext(16, 3, 10)).build(cell.config.run_backbone)
    legacy = torch.load(cell.path("checkpoint.pt"), weights_only=True)
    engine._save(cell.path("checkpoint.pt"), network, loss, torch.optim.SGD(network.parameters(), lr=0.1), 2)
    state = torch.load(cell.path("checkpoint.pt"), weights_only=True)
    state = {**state, "cell": ""}  # no identity, as before identities were written
    torch.save(state, cell.path("checkpoint.pt"))
    assert set(legacy["network"]) == set(state["network"])  # the same layers: only a shape differs
    _resumed_once(tiny_phantom, out, 0, "checkpoint.pt holds a network of another shape", interrupted[1][0].metrics)


def test_a_garbled_log_line_is_set_aside_with_its_checkpoint(interrupted, tiny_phantom, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(interrupted[0], out)
    cell = Cell(interrupted[1][1].config.directory(out))
    log = cell.path("train_log.jsonl")
    log.write_text('{"epoch": 1, "seconds": 0.4, "lr"\n' + log.read_text().splitlines()[1] + "\n")
    kept = _resumed_once(tiny_phantom, out, 1, "train_log.jsonl line 1 is not JSON", interrupted[1][1].metrics)
    assert {name.split(".set-aside-")[0] for name in kept} == {"checkpoint", "train_log"}


def test_a_full_disk_while_taking_a_cell_lock_is_one_line_naming_it(tiny_phantom, tmp_path, monkeypatch, capsys):
    from hashbench.cli import main

    real_open = open

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks, "open", lambda path, mode: FullDisk(real_open(path, mode)), raising=False)
    argv = ["hashbench", "run", "--methods", "lsh", "--bits", "16", "--dataset", DATASET, "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_code:
        main()
    err = capsys.readouterr().err
    assert exit_code.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and ".lock: No space left on device; free space there" in err
    assert not list(tmp_path.rglob("metrics.json"))
