"""Retrieval cost end to end: every new cell records it beside its metrics, leaderboards and figures show it, and
`hashbench bench --search` measures each backend against the exact scan."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench import api
from hashbench.cli import app, expand_multi_value_options
from hashbench.evaluation import cost
from hashbench.runner import cell as cell_runner
from hashbench.store.results import NO_CODE, Cell

runner = CliRunner()
COST_COLUMNS = ("search-ms", "bytes", "encode-ips", "recall@10-hash", "search-ms-multihash")


@pytest.fixture(scope="module")
def costed_runs(tiny_phantom, tmp_path_factory):
    """LSH and HashNet at 16 and 32 bits and the float reference on the tiny phantom; the seconds each cell spent
    measuring its cost."""
    out = tmp_path_factory.mktemp("runs")
    spent = []
    measure = cell_runner.cell_cost

    def timed(*args, **kwargs):
        started = time.perf_counter()
        recorded = measure(*args, **kwargs)
        spent.append(time.perf_counter() - started)
        return recorded

    request = api.RunRequest(
        methods=["lsh", "hashnet", "float-cosine"],
        bits=[16, 32],
        epochs=1,
        dataset=tiny_phantom.dataset.name,
        backbones=["test_efficientnet"],
        device="cpu",
        overrides={"*": {"batch_size": 32}},
    )
    patcher = pytest.MonkeyPatch()
    patcher.setattr(cell_runner, "cell_cost", timed)
    try:
        outcomes = api.run_grid(request, tiny_phantom.dataset, out)
    finally:
        patcher.undo()
    assert [o.status for o in outcomes] == ["done"] * 5, [o.error for o in outcomes]
    return out, outcomes, spent


def test_every_new_cell_records_its_retrieval_cost_beside_its_metrics(costed_runs):
    out, outcomes, spent = costed_runs
    for outcome in outcomes:
        directory = outcome.config.directory(out)
        record = json.loads((directory / "metrics.json").read_text())
        recorded, bits = record["cost"], outcome.config.bits
        assert recorded["encoded_images"] == record["n_query"] + record["n_database"]
        assert recorded["encode_images_per_s"] > 0 and recorded["encoded_from"] == "images"
        assert recorded["queries_timed"] == min(cost.TIMED_QUERIES, record["n_query"]) and recorded["threads"] == 1
        assert recorded["database_items"] == record["n_database"] and recorded["k"] == cost.K
        if bits == NO_CODE:  # the float reference: its features, float32
            dims = Cell(directory).codes()["database_embeddings"].shape[1]
            assert recorded["bytes_per_item"] == 4 * dims
            assert set(recorded["search"]) == {"float-scan", "faiss-float-flat"}
            assert recorded["not_run"]["faiss-multihash"] == "float features: no binary code to hash"
            continue
        assert recorded["bytes_per_item"] == bits // 8
        assert set(recorded["search"]) == {"popcount", "faiss-flat", "faiss-hash", "faiss-multihash"}
        assert recorded["not_run"] == {"torch": "no GPU: the torch matmul ranking runs on CUDA"}
        for name, timed in recorded["search"].items():
            assert 0 < timed["median_ms"] <= timed["p95_ms"], name
            assert timed["recall@10"] == 1.0 if timed["exact"] else 0 <= timed["recall@10"] <= 1, name
    print(f"\nretrieval cost measured in {', '.join(f'{s:.3f}' for s in spent)} s per cell (the first imports faiss)")


def test_a_leaderboard_shows_the_cost_columns_and_older_cells_as_not_measured(costed_runs, tmp_path):
    out, outcomes, _ = costed_runs
    text = api.to_markdown(api.leaderboard(out, ("map@10", *COST_COLUMNS)))
    assert "### SEARCH-MS: median ms per query, exact linear scan by hashbench's popcount ranker" in text

    def row(table: str, method: str) -> list[str]:
        lines = text.split(f"### {table}", 1)[1].splitlines()
        return next(line for line in lines if line.startswith(f"| {method}")).split(" | ")[1:]

    assert row("BYTES", "lsh")[:2] == ["2 (n=1)", "4 (n=1)"]  # 16 and 32 bits, packed
    assert row("BYTES", "float-cosine")[2].endswith("(n=1) |")
    assert row("RECALL@10-HASH", "float-cosine")[2] == "- (not run: float features: no binary code to hash) |"
    assert all(float(value.split(" ")[0]) > 0 for value in row("SEARCH-MS:", "hashnet")[:2])
    # a cell from before costs were recorded: shown as such, never a crash
    older = tmp_path / "runs"
    shutil.copytree(out, older)
    lsh_16 = outcomes[0].config.directory(older) / "metrics.json"
    record = json.loads(lsh_16.read_text())
    del record["cost"]
    lsh_16.write_text(json.dumps(record))
    text = api.to_markdown(api.leaderboard(older, ("map@10", *COST_COLUMNS)))
    assert row("SEARCH-MS:", "lsh")[0] == "- (not measured)" and row("BYTES", "lsh")[1] == "4 (n=1)"


def test_the_markdown_leaderboard_draws_map_against_search_time_beside_it(costed_runs, tmp_path):
    out, _, _ = costed_runs
    target = api.write_leaderboard(out, tmp_path / "board.md", ("map@10", "search-ms", "bytes"))
    text = target.read_text()
    assert (tmp_path / "board-cost.png").stat().st_size > 0
    assert "![MAP against retrieval cost, phantom-tiny-seed0](board-cost.png)" in text
    assert "MAP against the search time per query and the bytes per item each cell recorded" in text
    assert (tmp_path / "board-metrics-vs-bits.png").exists()  # drawn for map@10 alone: cost columns have no curve
    assert "### SEARCH-MS" in text and "### BYTES" in text


def test_bench_search_prints_each_backends_speedup_over_the_scan_and_the_hash_recall(tmp_path):
    written = tmp_path / "search.json"
    argv = ["bench", "--search", "20000", "--bits", "64", "--queries", "50", "--json", str(written)]
    result = runner.invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    assert "search over 20,000 random 64-bit codes; 50 queries, one at a time" in result.output
    rates = json.loads(written.read_text())
    backends = {b["name"]: b for b in rates["backends"]}
    assert list(backends) == ["popcount", "faiss-flat", "faiss-hash", "faiss-multihash"]
    assert rates["n_items"] == 20_000 and rates["threads"] == 1 and rates["not_run"].keys() == {"torch"}
    assert backends["popcount"]["speedup_over_scan"] == 1.0
    assert backends["popcount"]["index_bytes"] == backends["faiss-flat"]["index_bytes"] == 20_000 * 8
    # log2(20,000) = 14.3: a 14-bit key; 64 / 14 = 4.6 substrings of 12 bits for multi-index hashing
    assert backends["faiss-hash"]["parameters"] == {"key_bits": 14, "flips": 2}
    assert backends["faiss-multihash"]["parameters"] == {"tables": 5, "key_bits": 12, "flips": 2}
    for name, backend in backends.items():
        line = next(line for line in result.output.splitlines() if line.strip().startswith(name + " "))
        assert f"{backend['speedup_over_scan']:,.2f}x" in line and f"{backend['recall@10']:.3f}" in line
        assert backend["recall@10"] == 1.0 if backend["exact"] else 0 <= backend["recall@10"] <= 1
        assert backend["speedup_over_scan"] == pytest.approx(
            backends["popcount"]["median_ms"] / backend["median_ms"], rel=1e-9
        )
    assert "torch not run" in result.output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--search", "0"], "--search 0: give the number of database codes"),
        (["--search", "1000", "--queries", "0"], "--queries 0: time at least one query"),
        (["--search", "1000", "--flips", "9"], "--flips 9: bits flipped per hash key"),
        (["--search", "1000", "--bits", "2000"], "2000 is outside the valid range 1 to 1024"),
    ],
)
def test_bench_search_refuses_what_it_cannot_run_with_the_fix(argv, message):
    result = runner.invoke(app, ["bench", *argv])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_a_code_length_that_is_not_whole_bytes_searches_exactly():
    """12-bit codes in two bytes, their last four bits zero on every code: exact backends find the exact top 10."""
    rates = api.bench_search(3000, 12, queries=20)
    by_name = {b.name: b for b in rates.backends}
    assert by_name["popcount"].recall == by_name["faiss-flat"].recall == 1.0
    assert by_name["popcount"].index_bytes == 3000 * 8 and np.isclose(rates.speedup(by_name["popcount"]), 1.0)


def test_the_leaderboard_command_takes_cost_columns_beside_metrics_and_run_does_not(costed_runs):
    out, _, _ = costed_runs
    argv = ["leaderboard", "--out", str(out), "--metrics", "map@10", "search-ms", "bytes", "--format", "md"]
    shown = runner.invoke(app, expand_multi_value_options(argv))
    assert shown.exit_code == 0, shown.output
    written = (out / "leaderboard.md").read_text()
    assert "### SEARCH-MS" in written and "### BYTES" in written
    unknown = runner.invoke(app, expand_multi_value_options(["leaderboard", "--out", str(out), "--metrics", "speed"]))
    assert unknown.exit_code == 2 and "search-ms" in unknown.output  # the message lists the recorded costs
    run = runner.invoke(app, expand_multi_value_options(["run", "--methods", "lsh", "--metrics", "search-ms"]))
    assert run.exit_code == 2  # a run evaluates its metrics: a cost is recorded, never asked for
