"""One cell on two processes (gloo on the CPU): the one-process result, kills survived, the CLI under torchrun.

The two-process runs are the code torchrun starts (the same environment variables, the same
``run_grid``), forked from the test process so they need not import torch again.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hashbench import distributed
from hashbench.api import RunRequest, run_grid
from hashbench.store.results import Cell

GRID = dict(methods=["dpsh", "dafh"], bits=[8], dataset="phantom-tiny-seed0", profile="quick", epochs=3)
LOSS_TOLERANCE = 1e-4  # relative, per logged epoch mean
EMBEDDING_TOLERANCE = 2e-3  # stored as float16 (spacing 2.4e-4 near 1)
METRIC_TOLERANCE = (
    0.05  # bits whose embedding is within EMBEDDING_TOLERANCE of zero may flip sign, and reorder a few ties
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PROCESS = Path(__file__).with_name("ddp_process.py")


def start_processes(
    request: RunRequest, out: Path, world: int = 2, plugin: Path | None = None, pause: str | None = None
) -> list[multiprocessing.Process]:
    """The processes torchrun would start, forked from a server that imported hashbench once (this process has used OpenMP: no fork)."""
    context, port = multiprocessing.get_context("forkserver"), free_port()
    context.set_forkserver_preload(["hashbench.api", "hashbench.cli", "hashbench.datasets"])
    processes = []
    for rank in range(world):
        arguments = dict(
            rank=rank,
            world=world,
            port=port,
            request=request,
            out=out,
            home=os.environ["HASHBENCH_HOME"],
            plugin=plugin,
            pause=pause,
        )
        processes.append(
            context.Process(target=runpy.run_path, args=(str(PROCESS),), kwargs={"init_globals": arguments})
        )
    for process in processes:
        process.start()
    return processes


def run_on_processes(request: RunRequest, out: Path, world: int = 2) -> None:
    processes = start_processes(request, out, world)
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0] * world


def cell_of(out: Path, method: str) -> Cell:
    (directory,) = (out / "phantom-tiny-seed0" / method / "8bits").iterdir()
    return Cell(directory)


def log_of(cell: Cell) -> list[dict]:
    return [json.loads(line) for line in cell.path("train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_and_two_processes(tiny_phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    run_grid(RunRequest(**GRID), tiny_phantom.dataset, root / "one")
    run_on_processes(RunRequest(**GRID), root / "two")
    return root


@pytest.mark.parametrize("method", ["dpsh", "dafh"])
def test_two_processes_train_the_one_process_cell(one_and_two_processes, method):
    one, two = (cell_of(one_and_two_processes / name, method) for name in ("one", "two"))
    assert one.record["processes"] == 1 and two.record["processes"] == 2
    for single, shared in zip(
        log_of(one), log_of(two), strict=True
    ):  # the whole-batch loss: the same gradient every step
        for term in single.keys() - {"cell", "epoch", "seconds", "lr"}:
            assert shared[term] == pytest.approx(single[term], rel=LOSS_TOLERANCE), (single["epoch"], term)
    codes_one, codes_two = one.codes(), two.codes()
    embeddings_one, embeddings_two = (
        codes["database_embeddings"].astype(np.float32) for codes in (codes_one, codes_two)
    )
    np.testing.assert_allclose(embeddings_two, embeddings_one, atol=EMBEDDING_TOLERANCE)
    flipped = np.unpackbits(codes_one["database_codes"], axis=1) != np.unpackbits(codes_two["database_codes"], axis=1)
    assert np.all(
        np.abs(embeddings_one[flipped[:, : embeddings_one.shape[1]]]) < EMBEDDING_TOLERANCE
    )  # only bits on the fence
    for metric, value in one.record["metrics"].items():
        assert two.record["metrics"][metric] == pytest.approx(value, abs=METRIC_TOLERANCE), metric
    np.testing.assert_array_equal(codes_two["query_ids"], codes_one["query_ids"])


PAUSING_DPSH = '''
import os, time
from pathlib import Path
from hashbench.model.registry import REGISTRY, register_method


@register_method("pausing-dpsh")
class PausingDPSH(REGISTRY.get("dpsh")):
    """DPSH that, in the middle of its second epoch, marks HASHBENCH_TEST_PAUSE and sleeps: the test then kills it."""

    def schedule(self, model, info):
        super().schedule(model, info)
        marker = os.environ.get("HASHBENCH_TEST_PAUSE")
        if marker and info.step == info.steps_per_epoch + 1 and not Path(marker).exists():
            Path(f"{marker}.{os.environ['RANK']}").touch()
            if os.environ["RANK"] == "0":
                time.sleep(600)
'''


def test_a_killed_two_process_cell_resumes_under_torchrun_to_the_uninterrupted_result(
    one_and_two_processes, tiny_phantom, tmp_path
):
    plugin = tmp_path / "pausing.py"
    plugin.write_text(PAUSING_DPSH)
    out, marker = tmp_path / "out", tmp_path / "paused"
    processes = start_processes(
        RunRequest(**{**GRID, "methods": ["pausing-dpsh"]}), out, plugin=plugin, pause=str(marker)
    )
    deadline = time.monotonic() + 120
    while not Path(f"{marker}.0").exists():
        assert time.monotonic() < deadline and all(process.is_alive() for process in processes), (
            "never reached the second epoch"
        )
        time.sleep(0.1)
    for process in processes:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    killed = cell_of(out, "pausing-dpsh")
    assert killed.status() == "incomplete" and len(log_of(killed)) == 1 and killed.path("checkpoint.pt").exists()

    marker.touch()  # no pause this time
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "hashbench",
        "run",
        "--plugin",
        str(plugin),
        "--methods",
        "pausing-dpsh",
        "--bits",
        "8",
        "--epochs",
        "3",
        "--dataset",
        "phantom-tiny-seed0",
        "--profile",
        "quick",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("done phantom-tiny-seed0/pausing-dpsh") == 1  # one process speaks
    resumed, uninterrupted = cell_of(out, "pausing-dpsh"), cell_of(one_and_two_processes / "two", "dpsh")
    assert resumed.record["resumed_from_epoch"] == 1 and resumed.record["processes"] == 2
    assert [line["epoch"] for line in log_of(resumed)] == [1, 2, 3]
    assert resumed.record["metrics"] == uninterrupted.record["metrics"]
    np.testing.assert_array_equal(resumed.codes()["database_embeddings"], uninterrupted.codes()["database_embeddings"])


def test_a_batch_is_cut_into_disjoint_pieces_that_cover_it():
    batch = np.random.default_rng(0).permutation(37)
    for world in (1, 2, 3, 8):
        pieces = [distributed.my_piece(batch, process, world) for process in range(world)]
        assert np.array_equal(np.concatenate(pieces), batch)  # in order: gathered rows line up with the batch's labels
        assert [len(piece) for piece in pieces] == distributed.piece_sizes(len(batch), world)
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_shards_and_torchrun_are_not_mixed(tiny_phantom, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="use one or the other"):
        run_grid(RunRequest(**{**GRID, "shard": (0, 2)}), tiny_phantom.dataset, tmp_path)
