"""Medical retrieval protocols on stored cells: a query's own patient left out of its ranking, without retraining."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench import api
from hashbench.cli import app, expand_multi_value_options
from hashbench.evaluation.stored import cell_groups, cell_per_query
from hashbench.store.results import GROUP_LEVELS, Cell, ResultsStore

runner = CliRunner()


@pytest.fixture(scope="module")
def slice_split_lsh(default_phantom, tmp_path_factory):
    dataset = default_phantom.dataset
    """LSH and PCAH on raw pixels under the paper's slice-level split: neighbouring slices of one patient on both sides."""
    out = tmp_path_factory.mktemp("slice-lsh")
    request = api.RunRequest(methods=["lsh", "pcah"], bits=[32], dataset=dataset.name, split="slice", device="cpu")
    outcomes = api.run_grid(request, dataset, out)
    assert [o.status for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
    return out


def lsh_cell(out):
    (cell,) = ResultsStore(out).select("lsh")
    return cell


def test_each_side_stores_its_slices_patient_study_and_series(slice_split_lsh, default_phantom):
    cell = lsh_cell(slice_split_lsh)
    codes = cell.codes()
    index = default_phantom.dataset.index
    for side in ("query", "database"):
        ids, groups = codes[f"{side}_ids"], codes[f"{side}_groups"]
        assert groups.shape == (len(ids), len(GROUP_LEVELS))
        for column, level in enumerate(GROUP_LEVELS):
            names = index.loc[ids, level].to_numpy()
            # one id per name, the same on both sides: equal ids exactly where the names are equal
            same_id = groups[:, column][:, None] == groups[:, column][None, :]
            np.testing.assert_array_equal(same_id, names[:, None] == names[None, :], err_msg=level)
    assert (codes["query_groups"][:, 0][:, None] == codes["database_groups"][:, 0][None, :]).any(axis=1).all()


def test_leaving_the_query_patient_out_measures_the_slice_split_leak(slice_split_lsh):
    cell = lsh_cell(slice_split_lsh)
    plain = cell_per_query(cell, "map@10").mean()
    without_own_patient = cell_per_query(cell, "map@10", "same-patient").mean()
    # near-duplicate neighbours of the query's own patient carry the plain number; without them it falls far
    assert plain > 0.9 and without_own_patient < plain - 0.2
    # the series is inside the patient: leaving out less leaves more of the leak
    assert without_own_patient <= cell_per_query(cell, "map@10", "same-series").mean() <= plain

    markdown = slice_split_lsh / "without-own-patient.md"
    argv = ["leaderboard", "--out", str(slice_split_lsh), "--metrics", "map@10", "--exclude", "same-patient"]
    result = runner.invoke(app, expand_multi_value_options([*argv, "--format", "md", "--output", str(markdown)]))
    assert result.exit_code == 0, result.output
    text = markdown.read_text()
    assert "each query's own patient left out of its ranking (--exclude same-patient)" in text
    shown = float(re.search(r"\| lsh \(training-free\) \| (\d\.\d{3}) \[", text).group(1))
    assert shown == pytest.approx(without_own_patient, abs=5e-4)


def test_an_unknown_exclusion_and_cells_without_patient_ids_are_refused_with_the_fix(slice_split_lsh, monkeypatch):
    bad = runner.invoke(app, ["leaderboard", "--out", str(slice_split_lsh), "--exclude", "same-hospital"])
    assert bad.exit_code == 2 and "same-patient, same-study, same-series" in bad.output

    cell = lsh_cell(slice_split_lsh)
    stored = dict(cell.codes())
    older = {name: values for name, values in stored.items() if not name.endswith("_groups")}
    monkeypatch.setattr(Cell, "codes", lambda self: older)
    with pytest.raises(ValueError, match="run it again with --force"):
        cell_groups(cell, "same-patient")
    assert cell_groups(cell, "none") == {}


def test_compare_pairs_the_same_queries_with_their_own_patient_left_out(slice_split_lsh):
    rows, _, n_queries = api.compare("lsh", "pcah", slice_split_lsh, metrics=("map@10",), exclude="same-patient")
    (pcah,) = ResultsStore(slice_split_lsh).select("pcah")
    (row,) = rows
    assert row.mean_a == pytest.approx(cell_per_query(lsh_cell(slice_split_lsh), "map@10", "same-patient").mean())
    assert row.mean_b == pytest.approx(cell_per_query(pcah, "map@10", "same-patient").mean())
    assert row.mean_b != pytest.approx(cell_per_query(pcah, "map@10").mean())  # the exclusion reached both sides
    assert n_queries == len(pcah.query_ids())
    refused = runner.invoke(app, ["compare", "lsh", "pcah", "--out", str(slice_split_lsh), "--exclude", "patient"])
    assert refused.exit_code == 2 and "valid: none, same-patient" in refused.output
