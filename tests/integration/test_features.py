"""The feature cache: a frozen backbone's features computed in one pass, reused by every cell, resumed after a kill,
rebuilt when damaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hashbench import api
from hashbench.model.method import FrozenFeatures
from hashbench.training import features as feature_cache
from hashbench.training.features import FeatureKey, cached_features


def test_four_training_free_methods_at_three_code_lengths_encode_the_dataset_once(
    tiny_phantom, tmp_path, monkeypatch, chance
):
    dataset = tiny_phantom.dataset
    encoded = []
    forward = FrozenFeatures.forward

    def counted(self, images):
        encoded.append(len(images))
        return forward(self, images)

    monkeypatch.setattr(FrozenFeatures, "forward", counted)
    request = api.RunRequest(
        methods=["lsh", "pcah", "itq", "pcarr"],
        bits=[8, 16, 24],
        dataset=dataset.name,
        profile="quick",
        device="cpu",
        overrides={"*": {"features": "backbone"}},
    )
    specs = api.plan(request, dataset)
    assert len({spec.feature_key for spec in specs}) == 1 and specs[0].feature_key is not None
    outcomes = api.run_grid(request, dataset, tmp_path / "runs")
    assert [o.status for o in outcomes] == ["done"] * 12, [o.error for o in outcomes]
    assert sum(encoded) == len(dataset.images)  # one pass over every slice, for twelve cells
    manifest = json.loads((specs[0].feature_key.folder() / feature_cache.MANIFEST).read_text())
    assert manifest["rows"] == len(dataset.images) and manifest["width"] == 256
    floor = chance(dataset)["map@10"]  # about 0.22
    for outcome in outcomes:  # a random-init network's features carry the phantom's structure: PCA finds it
        if outcome.config.method != "lsh":  # (measured 0.33 to 0.49; random projections of them 0.24 to 0.31)
            assert outcome.metrics["map@10"] > floor + 0.1, outcome.config.label()


def key(**changes) -> FeatureKey:
    fields = dict(
        dataset="toy", fingerprint="f", backbone="b", weights="random seed 0", image_size=16, precision="fp32"
    )
    return FeatureKey(**{**fields, **changes})


def features_of(rows: np.ndarray) -> np.ndarray:
    """What a backbone would give: a deterministic function of the row."""
    return np.stack([rows * 0.5, np.sin(rows), np.cos(rows)], axis=1).astype(np.float32)


@pytest.fixture
def small_chunks(hashbench_home, monkeypatch):
    monkeypatch.setattr(feature_cache, "CHUNK_ROWS", 10)


def test_a_killed_build_resumes_from_its_last_commit(small_chunks):
    asked = []

    def dies_after_three_chunks(rows):
        if len(asked) == 3:
            raise KeyboardInterrupt
        asked.append(rows)
        return features_of(rows)

    with pytest.raises(KeyboardInterrupt):
        cached_features(key(), 95, dies_after_three_chunks)
    assert not (key().folder() / feature_cache.MANIFEST).exists()
    resumed = []
    result = cached_features(key(), 95, lambda rows: resumed.append(rows) or features_of(rows))
    assert np.concatenate(resumed).tolist() == list(range(30, 95))  # only what was not committed
    np.testing.assert_array_equal(result, features_of(np.arange(95)))
    again = []
    np.testing.assert_array_equal(cached_features(key(), 95, again.append), result)
    assert again == []  # complete: read, not computed


def test_a_damaged_cache_is_detected_and_built_again(small_chunks, capsys):
    cached_features(key(), 40, features_of)
    path = key().folder() / feature_cache.FEATURES
    data = bytearray(path.read_bytes())
    data[17] ^= 0xFF
    path.write_bytes(bytes(data))
    computed = []
    result = cached_features(key(), 40, lambda rows: computed.append(rows) or features_of(rows))
    assert "does not match its manifest's checksum" in capsys.readouterr().err
    assert len(computed) == 4
    np.testing.assert_array_equal(result, features_of(np.arange(40)))
    path.write_bytes(path.read_bytes()[:100])  # cut short
    cached_features(key(), 40, features_of)
    assert "not the 480 its manifest says" in capsys.readouterr().err


def test_every_part_of_the_key_names_another_cache():
    digests = {
        key().digest(),
        key(fingerprint="g").digest(),
        key(weights="random seed 1").digest(),
        key(image_size=32).digest(),
        key(precision="bf16").digest(),
        key(backbone="c").digest(),
    }
    assert len(digests) == 6


def test_the_dry_run_names_each_cells_feature_cache(tiny_phantom):
    from typer.testing import CliRunner

    from hashbench.cli import app, expand_multi_value_options

    argv = ["run", "--methods", "itq,pcarr,hashnet", "--bits", "16", "32", "--dataset", tiny_phantom.dataset.name]
    result = CliRunner().invoke(app, expand_multi_value_options([*argv, "--set", "itq.features=backbone", "--dry-run"]))
    assert result.exit_code == 0, result.output
    lines = {line.split(":")[0]: line for line in result.output.splitlines() if " bits/seed " in line}
    itq = [line for cell, line in lines.items() if "/itq/" in cell]
    assert len(itq) == 2 and all('feature_cache="phantom-tiny-seed0/' in line for line in itq)
    assert len({line.split("feature_cache=")[1].split()[0] for line in itq}) == 1  # one cache for both lengths
    assert not any("feature_cache" in line for cell, line in lines.items() if "/itq/" not in cell)  # pixels, trained


def epoch_seconds(outcome, out) -> float:
    """The median training epoch's seconds, from the cell's log."""
    log = outcome.config.directory(out) / "train_log.jsonl"
    return float(np.median([json.loads(line)["seconds"] for line in log.read_text().splitlines()]))


def test_a_frozen_backbone_trains_the_head_alone_on_cached_features_fast_and_it_learns(
    default_phantom, tmp_path, chance
):
    """HashNet's head on the cached features of its backbone against the same cell trained whole, in one run."""
    dataset = default_phantom.dataset
    out = tmp_path / "runs"
    common = dict(methods=["hashnet"], bits=[16], dataset=dataset.name, profile="quick", device="cpu")
    (whole,) = api.run_grid(api.RunRequest(**common, epochs=3), dataset, out)
    # a head alone takes more steps, and a larger rate, to learn (measured MAP@10 0.50 at 100 epochs, lr 0.01; 0.32 at
    # 30 epochs, lr 0.001)
    head_only = dict(epochs=100, freeze_backbone=True, overrides={"hashnet": {"lr": 0.01}})
    (frozen,) = api.run_grid(api.RunRequest(**common, **head_only), dataset, out)
    assert whole.status == frozen.status == "done", (whole.error, frozen.error)
    assert frozen.config.frozen_backbone and frozen.config.augment == {k: 0.0 for k in frozen.config.augment}
    speedup = epoch_seconds(whole, out) / max(epoch_seconds(frozen, out), 1e-3)
    assert speedup >= 20, speedup  # measured about 40x on 2 busy CPU cores: no image is decoded, resized or convolved
    assert frozen.metrics["map@10"] > chance(dataset)["map@10"] + 0.1, frozen.metrics
    text = api.to_markdown(api.leaderboard(out, ("map@10",)))
    assert "hashnet (frozen backbone)" in text and "the head alone trained" in text


def test_dafh_refuses_a_frozen_backbone_with_the_reason(tiny_phantom):
    from typer.testing import CliRunner

    from hashbench.cli import app

    argv = ["run", "--methods", "dafh", "--bits", "16", "--dataset", tiny_phantom.dataset.name, "--freeze-backbone"]
    result = CliRunner().invoke(app, [*argv, "--dry-run"])
    assert result.exit_code == 2 and "feature maps" in " ".join(result.output.split()), result.output


def test_the_foundation_suite_plans_every_cell_with_its_backbone_weights_and_feature_cache(tiny_phantom, tmp_path):
    from typer.testing import CliRunner

    from hashbench.cli import app

    argv = ["run", "--suite", "foundation", "--dataset", tiny_phantom.dataset.name, "--dry-run", "--json"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    cells = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    floats = [cell for cell in cells if cell["method"] == "float-cosine"]
    assert len(floats) == 1 and floats[0]["bits"] == 0  # the float reference has no code length: one cell
    assert len(cells) == 1 + 5 * 4  # and five methods at 16, 32, 48 and 64 bits
    for cell in cells:
        assert cell["backbone"] == "test_efficientnet" and cell["weights"] == {"test_efficientnet": "random init"}
        assert cell["feature_cache"].startswith("phantom-tiny-seed0/")  # every one reads the backbone's features
        assert cell["frozen_backbone"] == (cell["method"] in ("hashnet", "csq"))
        if cell["method"] in ("float-cosine", "pcarr", "itq", "lsh"):
            assert cell["options"]["features"] == "backbone"
    assert len({cell["feature_cache"] for cell in cells}) == 1


def test_the_foundation_suite_without_its_weights_stops_at_once_with_the_fix(tiny_phantom, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from typer.testing import CliRunner

    from hashbench.cli import app

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    argv = ["run", "--suite", "foundation", "--dataset", tiny_phantom.dataset.name, "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*argv, "--backbone", "resnet18.a1_in1k", "--pretrained"])
    assert result.exit_code == 2 and "--weights" in result.output, result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_suite_gives_its_options_only_to_the_methods_that_run_and_the_users_win():
    from hashbench.config.suites import get_suite

    suite = get_suite("foundation")
    request = api.with_suite_settings(
        api.RunRequest(methods=["itq", "hashnet"], bits=[16], overrides={"*": {"pixels": 8}}), suite
    )
    assert set(request.overrides) == {"*", "itq"} and request.freeze_backbone
    assert request.overrides["itq"] == {"features": "backbone", "pixels": 8}


def brute_force_ranking(query: np.ndarray, database: np.ndarray, distance: str, tie_rank: np.ndarray) -> np.ndarray:
    """Database positions from nearest to farthest, by a plain float64 sort (equal distances in tie order)."""
    query, database = query.astype(np.float64), database.astype(np.float64)
    if distance == "cosine":
        distances = 1 - database @ query / (np.linalg.norm(database, axis=1) * np.linalg.norm(query))
    else:
        distances = np.linalg.norm(database - query, axis=1)
    return np.lexsort((tie_rank, distances))


def average_precision(relevant: np.ndarray) -> float:
    """AP over the ranked relevance flags given, normalised by the relevant items among them (0 when none)."""
    hits = np.cumsum(relevant)
    return float((hits / np.arange(1, len(relevant) + 1))[relevant].sum() / hits[-1]) if hits[-1] else 0.0


def test_float_references_rank_their_stored_features_as_a_brute_force_sort(tiny_phantom, tmp_path, chance):
    """One cell per float reference whatever --bits says, holding the backbone's cached features, its metrics those
    of a plain sort to 1e-12, shown in its own column beside the codes of the same features."""
    from hashbench.evaluation.ranking import tie_order
    from hashbench.evaluation.stored import evaluate_cell
    from hashbench.store.results import NO_CODE, Cell

    dataset = tiny_phantom.dataset
    out = tmp_path / "runs"
    request = api.RunRequest(
        methods=["float-cosine", "float-l2", "itq"],
        bits=[8, 16],
        dataset=dataset.name,
        profile="quick",
        device="cpu",
        overrides={"*": {"features": "backbone"}},
    )
    specs = api.plan(request, dataset)
    outcomes = api.run_grid(request, dataset, out)
    assert [(o.config.method, o.config.bits, o.status) for o in outcomes] == [
        ("float-cosine", NO_CODE, "done"),
        ("float-l2", NO_CODE, "done"),
        ("itq", 8, "done"),
        ("itq", 16, "done"),
    ], [o.error for o in outcomes]
    cached = cached_features(specs[0].feature_key, len(dataset.images), lambda rows: pytest.fail("built twice"))
    for outcome, distance in zip(outcomes, ("cosine", "euclidean")):
        cell = Cell(outcome.config.directory(out))
        stored = cell.codes()
        assert cell.float_distance == distance and stored["query_codes"].shape[1] == 0
        query, database = stored["query_embeddings"], stored["database_embeddings"]
        assert query.dtype == np.float32 and np.array_equal(query, cached[stored["query_ids"]])
        tie_rank = np.empty(len(database), np.int64)
        tie_rank[tie_order(len(database), 0)] = np.arange(len(database))
        relevant = [
            stored["database_labels"][brute_force_ranking(q, database, distance, tie_rank)] == label
            for q, label in zip(query, stored["query_labels"])
        ]
        expected = {f"map@{k}": [average_precision(r[:k]) for r in relevant] for k in (1, 5, 10)}
        expected["map@all"] = [average_precision(r) for r in relevant]
        for metric in ("map@1", "map@10", "map@all"):  # as stored by the run
            assert np.abs(stored[f"per_query/{metric}"] - expected[metric]).max() <= 1e-12, metric
        again = evaluate_cell(cell, ("map@5",)).per_query["map@5"]  # recomputed from the stored features
        assert np.abs(again - expected["map@5"]).max() <= 1e-12
        assert outcome.metrics["map@10"] > chance(dataset)["map@10"] + 0.1, outcome.metrics
    text = api.to_markdown(api.leaderboard(out, ("map@10",)))
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header == "| method | 8 bits | 16 bits | float (no code) |"
    row = next(line for line in text.splitlines() if line.startswith("| float-cosine"))
    assert row.split(" | ")[1:3] == ["-", "-"] and "(n=1" in row.split(" | ")[3]
    assert "row float-cosine (training-free): frozen test_efficientnet features, unhashed" in text
    (comparison,), _ = api.compare("itq", "float-cosine", out, bits=16, metrics=("map@10",))
    assert comparison.metric == "map@10"
    with pytest.raises(ValueError, match="float reference"):
        api.search(outcomes[0].config.directory(out), [])


def test_a_method_with_its_own_encoder_reads_another_feature_cache_than_the_pooled_backbones(tiny_phantom):
    from dataclasses import replace

    from torch import nn

    from hashbench.methods.lsh import LSH

    class Normalised(LSH):
        def build_encoder(self, backbone):
            encoder, width = super().build_encoder(backbone)
            return nn.Sequential(encoder, nn.LayerNorm(width)), width

    dataset = tiny_phantom.dataset
    common = dict(bits=[16], dataset=dataset.name, profile="quick", device="cpu")
    (lsh,) = api.plan(api.RunRequest(methods=["lsh"], overrides={"lsh": {"features": "backbone"}}, **common), dataset)
    (head,) = api.plan(api.RunRequest(methods=["hashnet"], freeze_backbone=True, **common), dataset)
    assert lsh.feature_key == head.feature_key  # the pooled backbone's features, shared
    assert replace(lsh, method=Normalised).feature_key != lsh.feature_key


def test_rows_that_never_see_augmentation_share_the_table_of_rows_trained_with_it(tiny_phantom, tmp_path):
    """A training-free cell records the run's augmentation, a head on cached features none; neither used it, so
    neither splits the table: the table is the trained rows' augmentation's, and its caption says who saw it."""
    dataset = tiny_phantom.dataset
    out = tmp_path / "runs"
    common = dict(bits=[16], dataset=dataset.name, profile="quick", device="cpu", epochs=1, augment="paper")
    runs = [
        api.RunRequest(methods=["itq"], **common),
        api.RunRequest(methods=["hashnet"], freeze_backbone=True, **common),
        api.RunRequest(methods=["dpsh"], **common),
    ]
    for request in runs:
        assert all(o.status == "done" for o in api.run_grid(request, dataset, out))
    (board,) = api.leaderboard(out, ("map@10",))
    assert set(board.table.index) == {"dpsh", "hashnet (frozen backbone)", "itq (training-free)"}
    assert "augmentation: rotation" in board.caption and "the other rows never see it" in board.caption


def test_queries_pooled_over_split_seeds_are_resampled_by_patient(tiny_phantom, tmp_path):
    from hashbench.evaluation.stats import bootstrap_interval
    from hashbench.evaluation.stored import cell_per_query, clusters_of, query_patients
    from hashbench.report.leaderboard import CLUSTERED_LEGEND, summarise
    from hashbench.store.results import Cell

    dataset = tiny_phantom.dataset
    out = tmp_path / "runs"
    for split_seed in (0, 1):
        request = api.RunRequest(
            methods=["lsh"], bits=[16], dataset=dataset.name, split="slice", split_seed=split_seed, device="cpu"
        )
        assert all(o.status == "done" for o in api.run_grid(request, dataset, out))
    (board,) = api.leaderboard(out, ("map@10",))
    assert board.legend == CLUSTERED_LEGEND
    rows = api.cells(out)
    cells = [Cell(d) for d in rows["directory"]]
    patients = np.concatenate([query_patients(cell) for cell in cells])
    values = np.concatenate([cell_per_query(cell, "map@10") for cell in cells])
    assert len(np.unique(patients)) < len(patients)  # slices of one patient, in both seeds' queries
    low, high = bootstrap_interval(values[None], clusters=clusters_of(patients))
    assert f"[{low:.3f}, {high:.3f}]" in summarise(rows.assign(row="lsh"), "map@10")
    unclustered = bootstrap_interval(values[None])
    assert (low, high) != unclustered


def test_several_backbones_run_the_grid_once_each_in_one_command(tiny_phantom):
    from typer.testing import CliRunner

    from hashbench.cli import app, expand_multi_value_options

    argv = ["run", "--suite", "foundation", "--dataset", tiny_phantom.dataset.name, "--bits", "16", "--dry-run"]
    argv += ["--json", "--backbone", "test_efficientnet,test_resnet"]
    result = CliRunner().invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    cells = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    by_backbone = {b: [c for c in cells if c["run_backbone"] == b] for b in ("test_efficientnet", "test_resnet")}
    assert [len(chosen) for chosen in by_backbone.values()] == [6, 6]  # float-cosine, and five methods at 16 bits
    caches = [{c["feature_cache"] for c in chosen} for chosen in by_backbone.values()]
    assert all(len(cache) == 1 for cache in caches) and caches[0] != caches[1]  # one cache per backbone
    bare = CliRunner().invoke(app, expand_multi_value_options([*argv, "--weights", __file__]))
    assert bare.exit_code == 2 and "MODEL=FILE for each" in bare.output, bare.output


def test_a_float_reference_runs_once_unless_a_seed_draws_its_backbone(tiny_phantom):
    dataset = tiny_phantom.dataset
    common = dict(methods=["float-cosine"], bits=[16, 32], seeds=[0, 1, 2], dataset=dataset.name, profile="quick")
    pixels = api.plan(api.RunRequest(**common), dataset)
    assert [(s.config.bits, s.config.seed) for s in pixels] == [(0, 0)]  # raw pixels: nothing drawn
    drawn = api.plan(api.RunRequest(**common, overrides={"*": {"features": "backbone"}}), dataset)
    assert [s.config.seed for s in drawn] == [0, 1, 2]  # each seed its own random-init backbone


def test_figures_leave_float_references_out_where_cases_are_ranked_by_their_closest_slices(tiny_phantom, tmp_path):
    from hashbench.evaluation.view import View

    dataset = tiny_phantom.dataset
    request = api.RunRequest(methods=["float-cosine", "lsh"], bits=[16], dataset=dataset.name, device="cpu")
    assert all(o.status == "done" for o in api.run_grid(request, dataset, tmp_path / "runs"))
    view = View(level="patient", case_distance="min")
    target = api.write_leaderboard(tmp_path / "runs", tmp_path / "board.md", ("map@10",), figures=True, view=view)
    text = target.read_text()
    assert "- (no code: cases are their slices' mean features)" in text and "board-pr.png" in text


def test_a_table_mixing_cells_with_and_without_their_patients_says_so(tiny_phantom, tmp_path, monkeypatch):
    """Cells stored before patients were kept cannot be resampled by patient: a table holding both kinds names both,
    rather than the first cell's kind."""
    from hashbench.report.leaderboard import CLUSTERED_LEGEND, MIXED_LEGEND
    from hashbench.store.results import Cell

    dataset = tiny_phantom.dataset
    out = tmp_path / "runs"
    request = api.RunRequest(
        methods=["lsh"], bits=[16], seeds=[0, 1], dataset=dataset.name, split="slice", device="cpu"
    )
    assert all(o.status == "done" for o in api.run_grid(request, dataset, out))
    (board,) = api.leaderboard(out, ("map@10",))
    assert board.legend == CLUSTERED_LEGEND
    older = Path(max(api.cells(out)["directory"])).resolve()  # one of the two, stored as before patients were kept
    codes = Cell.codes

    def without_patients(cell):
        stored = codes(cell)
        return {k: v for k, v in stored.items() if k != "query_groups"} if cell.directory.resolve() == older else stored

    monkeypatch.setattr(Cell, "codes", without_patients)
    (board,) = api.leaderboard(out, ("map@10",))
    assert (
        board.legend == MIXED_LEGEND and "as if independent" in board.legend and "resampling patients" in board.legend
    )
