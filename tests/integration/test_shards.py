"""`run --shard I/N`: every cell in exactly one share, shares balanced by estimated cost, the same on every machine."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from hashbench.api import RunRequest, plan, run_grid
from hashbench.cli import app, expand_multi_value_options
from hashbench.report import leaderboard
from hashbench.store.results import ResultsStore

runner = CliRunner()
GRID = dict(
    methods=["hashnet", "dpsh", "dafh", "lsh", "itq"],
    bits=[16, 32, 48],
    seeds=[0, 1],
    dataset="phantom-tiny-seed0",
    profile="quick",
)


def identities(cells):
    return [cell.config.directory(Path("out")) for cell in cells]


def test_shards_cover_the_grid_once_and_balance_its_cost(tiny_phantom):
    cpu = torch.device("cpu")
    everything = plan(RunRequest(**GRID), tiny_phantom.dataset, cpu)
    assert len(everything) == 30
    heaviest = max(cell.estimated_cost() for cell in everything)
    for count in (1, 3, 7):
        shares = [plan(RunRequest(**GRID, shard=(index, count)), tiny_phantom.dataset, cpu) for index in range(count)]
        listed = [path for share in shares for path in identities(share)]
        assert sorted(listed) == sorted(identities(everything))  # each cell once: none lost, none twice
        loads = [sum(cell.estimated_cost() for cell in share) for share in shares]
        assert max(loads) - min(loads) <= heaviest  # no share waits on another by more than one cell
        again = [plan(RunRequest(**GRID, shard=(index, count)), tiny_phantom.dataset, cpu) for index in range(count)]
        assert [identities(s) for s in again] == [identities(s) for s in shares]  # deterministic


def test_shards_0_and_1_of_2_list_the_whole_grid_once_and_a_shard_outside_it_is_refused(tiny_phantom):
    argv = [
        "run",
        "--methods",
        "hashnet,dpsh,lsh,itq",
        "--bits",
        "16",
        "32",
        "48",
        "--dataset",
        "phantom-tiny-seed0",
        "--profile",
        "quick",
        "--dry-run",
        "--json",
    ]
    listed = []
    for shard in ("0/2", "1/2"):
        result = runner.invoke(app, expand_multi_value_options([*argv, "--shard", shard]))
        assert result.exit_code == 0, result.output
        cells = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        assert cells, f"share {shard} is empty"
        listed += [(cell["method"], cell["bits"], cell["seed"]) for cell in cells]
    everything = {(method, bits, 0) for method in ("hashnet", "dpsh", "lsh", "itq") for bits in (16, 32, 48)}
    assert len(listed) == len(set(listed)) == 12 and set(listed) == everything
    for bad in ("2/2", "3/2", "-1/2", "2", "a/b"):
        result = runner.invoke(
            app, ["run", "--methods", "lsh", "--dataset", "phantom-tiny-seed0", "--dry-run", "--shard", bad]
        )
        assert (
            result.exit_code == 2
            and "expected I/N with 0 <= I < N" in " ".join(result.output.split())
            and "Traceback" not in result.output
        )


def test_two_shards_into_one_root_give_the_unsharded_leaderboard(tiny_phantom, tmp_path):
    grid = dict(methods=["dpsh", "lsh", "itq"], bits=[8, 16], dataset="phantom-tiny-seed0", profile="quick", epochs=2)
    run_grid(RunRequest(**grid), tiny_phantom.dataset, tmp_path / "whole")
    for index in (0, 1):
        outcomes = run_grid(RunRequest(**grid, shard=(index, 2)), tiny_phantom.dataset, tmp_path / "sharded")
        assert outcomes and all(outcome.status == "done" for outcome in outcomes)
    whole, sharded = (ResultsStore(tmp_path / name).table() for name in ("whole", "sharded"))
    assert len(sharded) == len(whole) == 6
    boards = [leaderboard.to_markdown(leaderboard.build(table, ("map@1", "map@10"))) for table in (whole, sharded)]
    assert boards[0] == boards[1] and "dpsh" in boards[0] and "itq" in boards[0]
