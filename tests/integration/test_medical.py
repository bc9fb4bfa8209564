"""Medical retrieval protocols on stored cells, without retraining: a query's own patient left out of its ranking,
cases (patients, series) retrieved instead of slices, graded relevance, subgroups, intervals over patients."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench import api
from hashbench.cli import app, expand_multi_value_options
from hashbench.evaluation import stored as stored_module
from hashbench.evaluation.stored import cell_per_query, judged_items, query_subgroups
from hashbench.evaluation.view import View
from hashbench.store.results import ATTRIBUTES, GROUP_LEVELS, Cell, ResultsStore

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
    without_own_patient = cell_per_query(cell, "map@10", View("same-patient")).mean()
    # near-duplicate neighbours of the query's own patient carry the plain number; without them it falls far
    assert plain > 0.9 and without_own_patient < plain - 0.2
    # the series is inside the patient: leaving out less leaves more of the leak
    assert without_own_patient <= cell_per_query(cell, "map@10", View("same-series")).mean() <= plain

    markdown = slice_split_lsh / "without-own-patient.md"
    argv = ["leaderboard", "--out", str(slice_split_lsh), "--metrics", "map@10", "--exclude", "same-patient"]
    result = runner.invoke(app, expand_multi_value_options([*argv, "--format", "md", "--output", str(markdown)]))
    assert result.exit_code == 0, result.output
    text = markdown.read_text()
    assert "each query's own patient left out of its ranking" in text
    shown = float(re.search(r"\| lsh \(training-free\) \| (\d\.\d{3}) \[", text).group(1))
    assert shown == pytest.approx(without_own_patient, abs=5e-4)


@pytest.mark.parametrize(
    "option, value, fix",
    [
        ("--exclude", "same-hospital", "same-patient, same-study, same-series"),
        ("--level", "volume", "slice, series, study, patient"),
        ("--case-code", "median", "vote, mean"),
        ("--case-distance", "mean", "code, min"),
        ("--relevance", "label,scanner", "label, patient, study, series, modality, body_part"),
        ("--relevance", "label=-1", "a weight must be a positive finite number"),
        ("--relevance", "label=nan", "a weight must be a positive finite number"),
        ("--relevance", "label=heavy", "the weight must be a number"),
        ("--ap-norm", "relevant", "found, min, all"),
        ("--empty-queries", "skip", "zero, drop"),
        ("--ranking", "manhattan", "hamming, cosine, euclidean"),
        ("--by", "hospital", "modality, collection, body_part, sex, age"),
    ],
)
def test_every_view_option_refuses_a_bad_value_with_exit_2_and_the_valid_ones(slice_split_lsh, option, value, fix):
    for command in (["leaderboard"], ["compare", "lsh", "pcah"]):
        if option == "--by" and command[0] == "compare":
            continue
        bad = runner.invoke(app, [*command, "--out", str(slice_split_lsh), option, value])
        assert bad.exit_code == 2 and fix in " ".join(bad.output.split()), bad.output
        assert "Traceback" not in bad.output


def test_an_exclusion_finer_than_the_level_is_refused_with_the_coarser_ones(slice_split_lsh):
    bad = runner.invoke(
        app, ["leaderboard", "--out", str(slice_split_lsh), "--level", "patient", "--exclude", "same-series"]
    )
    assert bad.exit_code == 2 and "same-patient" in bad.output


def test_cells_stored_without_groups_or_attributes_are_refused_with_the_fix(slice_split_lsh, monkeypatch):
    cell = lsh_cell(slice_split_lsh)
    stored = dict(cell.codes())
    older = {
        name: values
        for name, values in stored.items()
        if not name.endswith(("_groups", "_attributes")) and name != "query_embeddings"
    }
    monkeypatch.setattr(Cell, "codes", lambda self: older)
    stored_module._judged_items.cache_clear()  # what the other tests judged came from the full codes
    for view in (
        View("same-patient"),
        View(level="patient"),
        View(relevance=(("modality", 1.0),)),
        View(ranking="cosine"),
    ):
        with pytest.raises(ValueError, match="run it again with --force"):
            judged_items(cell, view)
    with pytest.raises(ValueError, match="run it again with --force"):
        query_subgroups(cell, "modality")
    assert len(judged_items(cell, View(relevance=(("label", 1.0),)))[0]) == len(stored["query_codes"])
    stored_module._judged_items.cache_clear()


def test_compare_pairs_the_same_queries_with_their_own_patient_left_out(slice_split_lsh):
    view = View("same-patient")
    rows, _ = api.compare("lsh", "pcah", slice_split_lsh, metrics=("map@10",), view=view)
    (pcah,) = ResultsStore(slice_split_lsh).select("pcah")
    (row,) = rows
    assert row.mean_a == pytest.approx(cell_per_query(lsh_cell(slice_split_lsh), "map@10", view).mean())
    assert row.mean_b == pytest.approx(cell_per_query(pcah, "map@10", view).mean())
    assert row.mean_b != pytest.approx(cell_per_query(pcah, "map@10").mean())  # the exclusion reached both sides
    assert row.result.n_queries == len(pcah.query_ids())
    # slices of one patient are not independent: the test resamples the patients the queries come from
    n_patients = len(np.unique(pcah.codes()["query_groups"][:, 0]))
    assert row.result.patients == n_patients < row.result.n_queries


def test_compare_under_dropped_queries_gives_means_whose_difference_is_the_paired_one(slice_split_lsh):
    """AP@10 normalised by what was found drops the queries that found nothing: each side drops its own, so the means
    are over the queries both sides count."""
    view = View("same-patient", empty="drop")
    (row,) = api.compare("lsh", "pcah", slice_split_lsh, metrics=("map@10",), view=view)[0]
    (pcah,) = ResultsStore(slice_split_lsh).select("pcah")
    dropped = [np.isnan(cell_per_query(cell, "map@10", view)) for cell in (lsh_cell(slice_split_lsh), pcah)]
    assert (dropped[0] != dropped[1]).any()  # the sides drop different queries
    assert row.result.n_queries == (~dropped[0] & ~dropped[1]).sum()
    assert row.mean_a - row.mean_b == pytest.approx(row.result.difference, abs=1e-12)


def test_each_side_stores_its_slices_attributes(slice_split_lsh, default_phantom):
    codes = lsh_cell(slice_split_lsh).codes()
    index = default_phantom.dataset.index
    for side in ("query", "database"):
        attributes = codes[f"{side}_attributes"]
        assert attributes.shape == (len(codes[f"{side}_ids"]), len(ATTRIBUTES))
        modality = index.loc[codes[f"{side}_ids"], "modality"].to_numpy()
        np.testing.assert_array_equal(attributes[:, ATTRIBUTES.index("modality")], modality)


def test_patient_level_leaderboard_with_majority_vote_accuracy(slice_split_lsh):
    """The must-show command: cases are patients, built from the stored slice codes, and acc@5 is in the table."""
    markdown = slice_split_lsh / "patients.md"
    argv = ["leaderboard", "--out", str(slice_split_lsh), "--level", "patient", "--metrics", "map@10,acc@5"]
    argv += ["--exclude", "same-patient", "--format", "md", "--output", str(markdown), "--no-figures"]
    result = runner.invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    text = markdown.read_text()
    assert "patient-level retrieval" in text and "### ACC@5" in text
    cell = lsh_cell(slice_split_lsh)
    view = View("same-patient", level="patient")
    query, database = judged_items(cell, view)
    n_query_patients = len(np.unique(cell.codes()["query_groups"][:, 0]))
    assert len(query) == n_query_patients and len(database) < len(cell.codes()["database_codes"])
    accuracy = cell_per_query(cell, "acc@5", view)
    assert len(accuracy) == n_query_patients
    # a patient is near another when any slice of one is near any slice of the other: never farther than its code
    nearest = cell_per_query(cell, "map@10", View("same-patient", level="patient", case_distance="min"))
    assert len(nearest) == n_query_patients and 0 < nearest.mean() <= 1
    shown = float(re.search(r"### ACC@5.*?\| lsh \(training-free\) \| (\d\.\d{3}) \[", text, re.S).group(1))
    assert shown == pytest.approx(accuracy.mean(), abs=5e-4)


def test_graded_relevance_on_label_and_modality(slice_split_lsh):
    cell = lsh_cell(slice_split_lsh)
    graded = View.from_options(relevance="label,modality")
    binary = cell_per_query(cell, "ndcg@10")
    both = cell_per_query(cell, "ndcg@10", graded)
    assert 0 < both.mean() < 1 and not np.allclose(both, binary)
    markdown = slice_split_lsh / "graded.md"
    argv = ["leaderboard", "--out", str(slice_split_lsh), "--relevance", "label,modality", "--metrics", "ndcg@10"]
    result = runner.invoke(app, [*argv, "--format", "md", "--output", str(markdown), "--no-figures"])
    assert result.exit_code == 0, result.output
    assert "graded relevance for nDCG/ACG/wMAP: 1 x same label + 1 x same modality" in markdown.read_text()


def test_by_modality_prints_one_table_per_modality_with_its_n(slice_split_lsh, default_phantom):
    boards = api.leaderboard(slice_split_lsh, ("map@10",), by="modality")
    cell = lsh_cell(slice_split_lsh)
    modalities = default_phantom.dataset.index.loc[cell.query_ids(), "modality"].value_counts()
    titles = [board.title for board in boards]
    assert titles == [f"MAP@10, modality {m} (n = {n} queries)" for m, n in sorted(modalities.items())]
    for board, (modality, _) in zip(boards, sorted(modalities.items())):
        shown = float(board.table.loc["lsh (training-free)", "32 bits"].split()[0])
        values = cell_per_query(cell, "map@10")[query_subgroups(cell, "modality") == modality]
        assert shown == pytest.approx(values.mean(), abs=5e-4)


def test_ranking_by_the_continuous_codes_measures_what_binarising_costs(slice_split_lsh):
    """The stored continuous codes, ranked by cosine distance, through the same table and options as the bits."""
    cell = lsh_cell(slice_split_lsh)
    codes = cell.codes()
    view = View("same-patient", ranking="cosine")
    floats = cell_per_query(cell, "map@10", view)
    query = codes["query_embeddings"].astype(np.float64)
    database = codes["database_embeddings"].astype(np.float64)
    similarity = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        database / np.linalg.norm(database, axis=1, keepdims=True)
    ).T
    patients = codes["query_groups"][:, 0], codes["database_groups"][:, 0]
    for q in range(0, len(query), 37):  # a sample of queries, by plain sorting
        kept = np.flatnonzero(patients[1] != patients[0][q])
        top = kept[np.argsort(-similarity[q, kept], kind="stable")][:10]
        relevant = codes["database_labels"][top] == codes["query_labels"][q]
        precisions = np.cumsum(relevant) / np.arange(1, 11)
        expected = (precisions * relevant).sum() / relevant.sum() if relevant.any() else 0.0
        assert floats[q] == pytest.approx(expected, abs=1e-9)
    assert floats.mean() != pytest.approx(cell_per_query(cell, "map@10", View("same-patient")).mean())
    markdown = slice_split_lsh / "floats.md"
    argv = ["leaderboard", "--out", str(slice_split_lsh), "--ranking", "cosine", "--metrics", "map@10,map@tie"]
    result = runner.invoke(app, expand_multi_value_options([*argv, "--format", "md", "--output", str(markdown)]))
    assert result.exit_code == 0, result.output
    assert "before binarisation" in markdown.read_text() and not list(slice_split_lsh.glob("floats-*.png"))
