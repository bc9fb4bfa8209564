"""Bootstrap intervals, paired tests and `hashbench compare` on cells with known codes."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.cli import app
from hashbench.evaluation import stats


def test_bootstrap_interval_of_a_constant_is_a_point_and_of_coin_flips_has_the_normal_width():
    assert stats.bootstrap_interval(np.full(50, 0.3)) == pytest.approx((0.3, 0.3))
    flips = np.random.default_rng(0).random(400) < 0.5
    low, high = stats.bootstrap_interval(flips.astype(float))
    half_width = 1.96 * np.sqrt(flips.mean() * (1 - flips.mean()) / 400)  # ~0.049
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert low < flips.mean() < high


def test_identical_sides_give_p_one_and_a_zero_interval():
    values = np.random.default_rng(1).random((3, 200))
    result = stats.compare(values, values.copy())
    assert result.difference == 0 and result.interval == (0.0, 0.0)
    assert result.p_queries == 1.0 and result.p_seeds == 1.0


def test_clearly_different_sides_give_small_p_on_queries_and_seeds():
    rng = np.random.default_rng(2)
    b = rng.random((3, 200))
    a = b + 0.1 + rng.normal(0, 0.05, b.shape)
    result = stats.compare(a, b)
    assert result.p_queries < 0.01 and result.p_seeds < 0.01
    assert result.interval[0] < result.difference < result.interval[1] and result.interval[0] > 0.05


def test_noise_alone_is_rarely_significant():
    rng = np.random.default_rng(3)
    p_values = [
        stats.compare(rng.random((1, 100)), rng.random((1, 100)), rounds=500, seed=i).p_queries for i in range(40)
    ]
    assert 0.0 <= np.mean(np.array(p_values) < 0.05) <= 0.15  # about 5 % false positives under the null


def test_sides_on_other_queries_are_refused():
    with pytest.raises(ValueError, match="same dataset and split"):
        stats.compare(np.zeros((1, 10)), np.zeros((1, 11)))


@pytest.fixture
def toy_results(tmp_path, cell_writer):
    """Three methods on the same queries: class-coded, an exact copy of it, and random codes (three seeds each)."""
    rng = np.random.default_rng(0)
    classes = np.eye(4, 16, dtype=bool).repeat(4, axis=1)[:, :16]  # one 4-bit block per class
    query_labels, database_labels = rng.integers(0, 4, 120), rng.integers(0, 4, 600)

    def noisy(labels):
        return classes[labels] ^ (rng.random((len(labels), 16)) < 0.08)

    for seed in (0, 1, 2):
        query, database = noisy(query_labels), noisy(database_labels)
        cell_writer(tmp_path, "coded", query, query_labels, database, database_labels, seed)
        cell_writer(tmp_path, "copy", query, query_labels, database, database_labels, seed)
        cell_writer(
            tmp_path,
            "random",
            rng.random((120, 16)) < 0.5,
            query_labels,
            rng.random((600, 16)) < 0.5,
            database_labels,
            seed,
        )
    return tmp_path


def test_compare_cli_identical_methods_p_one_different_methods_p_small(toy_results):
    runner = CliRunner()
    same = runner.invoke(app, ["compare", "coded", "copy", "--out", str(toy_results), "--metrics", "map@10"])
    assert same.exit_code == 0, same.output
    cells = [c.strip() for c in next(line for line in same.output.splitlines() if " map@10 " in line).split("│")]
    assert cells[4] == "+0.000" and float(cells[6]) == 1.0 and float(cells[7]) == 1.0
    different = runner.invoke(
        app, ["compare", "coded", "random", "--out", str(toy_results), "--metrics", "map@10", "--metrics", "map@tie"]
    )
    assert different.exit_code == 0, different.output
    for metric in ("map@10", "map@tie"):
        cells = [
            c.strip() for c in next(line for line in different.output.splitlines() if f" {metric} " in line).split("│")
        ]
        assert float(cells[4]) > 0.3  # A - B
        assert float(cells[6]) < 0.01 and float(cells[7]) < 0.01  # p (queries), p (seeds)


def test_compare_cli_errors_name_what_exists(toy_results):
    result = CliRunner().invoke(app, ["compare", "coded", "nosuch", "--out", str(toy_results)])
    assert result.exit_code == 2 and "coded, copy, random" in result.output
    result = CliRunner().invoke(app, ["compare", "coded", "copy", "--out", str(toy_results), "--metrics", "rbp@3"])
    assert result.exit_code == 2 and "map@tie" in result.output


def test_leaderboard_cells_carry_bootstrap_intervals_and_metrics_computed_on_demand(toy_results):
    result = CliRunner().invoke(
        app, ["leaderboard", "--out", str(toy_results), "--metrics", "map@10", "--metrics", "p@5"]
    )
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("coded"))
    assert "[" in line and "(n=3)" in line and "±" in line
    assert "P@5" in result.output  # not stored by the cells: computed from their codes


def test_markdown_leaderboard_writes_its_figures_beside_it(toy_results, tmp_path):
    target = tmp_path / "board" / "leaderboard.md"
    result = CliRunner().invoke(
        app,
        [
            "leaderboard",
            "--out",
            str(toy_results),
            "--format",
            "md",
            "--output",
            str(target),
            "--metrics",
            "map@10",
            "--metrics",
            "map@tie",
        ],
    )
    assert result.exit_code == 0, result.output
    text = target.read_text()
    for name in ("leaderboard-pr.png", "leaderboard-precision-at-k.png", "leaderboard-metrics-vs-bits.png"):
        assert (target.parent / name).stat().st_size > 10_000 and f"]({name})" in text


def test_ties_command_reports_bounds_buckets_and_balance(toy_results):
    result = CliRunner().invoke(app, ["ties", "--out", str(toy_results)])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    cells = next(
        row for row in rows if row[:3] == ["random", "16", "0"]
    )  # method, bits, seed, split, then the diagnostics
    best, worst, tie_aware, map_best, map_worst = map(float, cells[4:9])
    assert worst <= best and map_worst <= tie_aware <= map_best
    assert int(cells[13]) == 0  # random codes: no dead bit
    assert float(cells[12]) > 0.9  # and balanced bits


def test_compare_accepts_cell_directories(toy_results):
    coded = sorted((toy_results / "toy" / "coded" / "16bits").iterdir())[0].resolve()
    copy = sorted((toy_results / "toy" / "copy" / "16bits").iterdir())[0]
    result = CliRunner().invoke(
        app, ["compare", str(coded), str(copy), "--out", str(toy_results), "--metrics", "map@10"]
    )
    assert result.exit_code == 0, result.output
    cells = [c.strip() for c in next(line for line in result.output.splitlines() if " map@10 " in line).split("│")]
    assert cells[2].endswith("(n=1)") and cells[4] == "+0.000" and cells[7] == "n/a (one seed)"


def test_compare_refuses_cells_of_other_data_versions_even_on_the_same_query_ids(tmp_path, cell_writer):
    from hashbench.evaluation.stats import compare_cells
    from hashbench.store.results import Cell

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    codes = lambda n: rng.random((n, 16)) < 0.5  # noqa: E731
    old = cell_writer(
        tmp_path, "a", codes(9), labels[::10], codes(90), labels, dataset_fingerprint="1111", split_hash="aaaa"
    )
    new = cell_writer(
        tmp_path, "b", codes(9), labels[::10], codes(90), labels, dataset_fingerprint="2222", split_hash="aaaa"
    )
    same = cell_writer(
        tmp_path,
        "c",
        codes(9),
        labels[::10],
        np.zeros((90, 16), bool),
        labels,
        dataset_fingerprint="1111",
        split_hash="aaaa",
        epochs=5,
    )
    with pytest.raises(
        ValueError, match="data version 2222.*data version 1111.*compare cells of one data version and split"
    ):
        compare_cells([Cell(old)], [Cell(new)], ("map@10",))
    rows, warnings = compare_cells([Cell(old)], [Cell(same)], ("map@10",))
    assert rows[0].metric == "map@10" and rows[0].result.n_queries == 9
    assert "the sides differ in epochs: 1 vs 5" in warnings and any(
        w.startswith("B has degenerate codes (collapsed: 16/16 dead bits)") for w in warnings
    )


def test_identical_slices_of_one_patient_widen_the_clustered_interval():
    """20 patients, each queried by 10 identical copies of one slice: 20 independent values, not 200."""
    from hashbench.evaluation.evaluate import evaluate

    rng = np.random.default_rng(4)
    patient_codes, patient_labels = rng.random((20, 16)) < 0.5, rng.integers(0, 4, 20)
    patients = np.repeat(np.arange(20), 10)
    database, database_labels = rng.random((400, 16)) < 0.5, rng.integers(0, 4, 400)
    values = evaluate(patient_codes[patients], patient_labels[patients], database, database_labels, ("map@10",))
    per_query = values.per_query["map@10"]
    assert len(np.unique(per_query)) <= 20  # the copies score alike
    slices_low, slices_high = stats.bootstrap_interval(per_query)
    low, high = stats.bootstrap_interval(per_query, clusters=patients)
    assert low <= per_query.mean() <= high
    assert high - low > 2 * (slices_high - slices_low)  # about sqrt(10) wider: the patients are the sample
    # one query per patient: resampling patients is resampling queries, draw for draw
    assert stats.bootstrap_interval(per_query, clusters=np.arange(200)) == (slices_low, slices_high)


def test_dropped_queries_are_left_out_of_intervals_and_paired_tests():
    a = np.array([[1.0, np.nan, 0.5, 0.0]])
    b = np.array([[0.0, 0.3, np.nan, 0.0]])
    result = stats.compare(a, b, rounds=200)
    assert result.n_queries == 2 and result.difference == pytest.approx(0.5)
    low, high = stats.bootstrap_interval(a, rounds=200)
    assert 0.0 <= low <= high <= 1.0


def test_a_comparison_with_no_query_counted_tests_nothing():
    result = stats.compare(np.full((1, 4), np.nan), np.zeros((1, 4)), rounds=100)
    assert result.n_queries == 0 and np.isnan(result.p_queries)
