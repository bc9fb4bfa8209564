"""`run --shard I/N`: every cell in exactly one share, shares balanced by estimated cost, the same on every machine."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from hashbench.cli import app, expand_multi_value_options
from hashbench.run import RunRequest, estimated_cost, plan

runner = CliRunner()
GRID = dict(methods=["hashnet", "dpsh", "dafh", "lsh", "itq"], bits=[16, 32, 48], seeds=[0, 1], dataset="phantom-tiny-seed0", profile="quick")


def identities(cells):
    return [cell.config.directory(Path("out")) for cell in cells]


def test_shards_cover_the_grid_once_and_balance_its_cost(tiny_phantom):
    cpu = torch.device("cpu")
    everything = plan(RunRequest(**GRID), tiny_phantom.dataset, cpu)
    assert len(everything) == 30
    heaviest = max(estimated_cost(cell.config) for cell in everything)
    for count in (1, 3, 7):
        shares = [plan(RunRequest(**GRID, shard=(index, count)), tiny_phantom.dataset, cpu) for index in range(1, count + 1)]
        listed = [path for share in shares for path in identities(share)]
        assert sorted(listed) == sorted(identities(everything))  # each cell once: none lost, none twice
        loads = [sum(estimated_cost(cell.config) for cell in share) for share in shares]
        assert max(loads) - min(loads) <= heaviest  # no share waits on another by more than one cell
        again = [plan(RunRequest(**GRID, shard=(index, count)), tiny_phantom.dataset, cpu) for index in range(1, count + 1)]
        assert [identities(s) for s in again] == [identities(s) for s in shares]  # deterministic


def test_the_cli_runs_a_share_and_refuses_a_shard_outside_the_grid(tiny_phantom):
    argv = ["run", "--methods", "hashnet,lsh,itq", "--bits", "16", "32", "--dataset", "phantom-tiny-seed0", "--profile", "quick", "--dry-run", "--json"]
    counts = []
    for index in (1, 2):
        result = runner.invoke(app, expand_multi_value_options([*argv, "--shard", f"{index}/2"]))
        assert result.exit_code == 0, result.output
        counts.append(sum(1 for line in result.output.splitlines() if line.startswith("{") and json.loads(line)["method"]))
    assert sum(counts) == 6 and min(counts) >= 1
    for bad in ("3/2", "0/2", "2", "a/b"):
        result = runner.invoke(app, ["run", "--methods", "lsh", "--dataset", "phantom-tiny-seed0", "--dry-run", "--shard", bad])
        assert result.exit_code == 2 and "expected I/N with 1 <= I <= N" in " ".join(result.output.split()) and "Traceback" not in result.output
