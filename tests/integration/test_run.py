"""The grid end to end on the tiny phantom: methods learn, cells are stored, resumed, isolated, tabled."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import numpy as np
import pytest

from hashbench.api import RunRequest, run_grid
from hashbench.evaluation.evaluate import evaluate
from hashbench.evaluation.stats import bootstrap_interval
from hashbench.evaluation.stored import cell_per_query, query_clusters
from hashbench.model.registry import REGISTRY
from hashbench.report import leaderboard
from hashbench.store.results import Cell, ResultsStore
from hashbench.training import engine
from hashbench.training.augment import PAPER_AUGMENTATION

BACKBONE = "test_efficientnet"
QUICK = {"*": {"batch_size": 32}}


def request(methods, bits=(16,), seeds=(0,), epochs=20, **kw):
    return RunRequest(
        methods=list(methods),
        bits=list(bits),
        seeds=list(seeds),
        dataset="phantom-tiny-seed0",
        backbones=[BACKBONE],
        epochs=epochs,
        overrides=kw.pop("overrides", QUICK),
        **kw,
    )


@pytest.fixture(scope="module")
def baseline_runs(tiny_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    outcomes = run_grid(request(["hashnet", "dpsh", "dsh", "dpn"], epochs=3), tiny_phantom.dataset, out)
    return out, outcomes


def test_each_baseline_learns_far_above_chance(default_phantom, tmp_path, chance):
    """A short CPU training on the default phantom (6 epochs of the tiny test EfficientNet, 64 px)."""
    floor = chance(default_phantom.dataset)  # measured: MAP@10 0.22, mAP@all 0.11
    run = RunRequest(methods=["hashnet", "dpsh", "dsh", "dpn"], bits=[16], epochs=6, profile="quick")
    for outcome in run_grid(run, default_phantom.dataset, tmp_path):
        assert outcome.status == "done", outcome.error
        # measured MAP@10: hashnet 0.43, dpsh 0.43, dsh 0.45, dpn 0.42; mAP@all 0.46 to 0.50
        assert outcome.metrics["map@10"] > floor["map@10"] + 0.08, outcome.config.method
        assert outcome.metrics["map@all"] > 3 * floor["map@all"], outcome.config.method


def test_csq_orthohash_and_greedyhash_learn_far_above_chance(default_phantom, tmp_path, chance):
    """Half the budget of the paper's methods above (3 epochs of the quick profile at 16 bits), to keep the suite short."""
    floor = chance(default_phantom.dataset)
    run = RunRequest(methods=["csq", "orthohash", "greedyhash"], bits=[16], epochs=3, profile="quick")
    for outcome in run_grid(run, default_phantom.dataset, tmp_path):
        assert outcome.status == "done", outcome.error
        # measured MAP@10: csq 0.48, orthohash 0.45, greedyhash 0.56; mAP@all 0.52 to 0.60 (random codes: 0.22, 0.11)
        assert outcome.metrics["map@10"] > floor["map@10"] + 0.12, outcome.config.method
        assert outcome.metrics["map@all"] > 3 * floor["map@all"], outcome.config.method


def test_a_cell_stores_config_codes_metrics_and_versions(baseline_runs):
    out, outcomes = baseline_runs
    directory = outcomes[0].config.directory(out)
    config = json.loads((directory / "config.json").read_text())
    assert config["method"] == "hashnet" and config["backbone"] == BACKBONE and config["train"]["batch_size"] == 32
    record = json.loads((directory / "metrics.json").read_text())
    assert (
        record["origin"] == "built-in"
        and record["synthetic"] is True
        and set(record["versions"]) >= {"hashbench", "torch", "timm"}
    )
    assert not (directory / "checkpoint.pt").exists() and (directory / "model.pt").exists()
    assert len((directory / "train_log.jsonl").read_text().splitlines()) == 3
    codes = Cell(directory).codes()
    # New metrics need no retraining: the stored codes reproduce the stored numbers.
    query = np.unpackbits(codes["query_codes"], axis=1)[:, :16].astype(bool)
    database = np.unpackbits(codes["database_codes"], axis=1)[:, :16].astype(bool)
    again = evaluate(query, codes["query_labels"], database, codes["database_labels"], ("map@10",))
    assert again.metrics["map@10"] == pytest.approx(record["metrics"]["map@10"], abs=1e-12)
    np.testing.assert_allclose(codes["per_query/map@10"], again.per_query["map@10"])
    expected_top1 = evaluate(query, codes["query_labels"], database, codes["database_labels"], ("map@1-tie",)).metrics[
        "map@1-tie"
    ]
    assert record["metrics"]["map@1-tie"] == pytest.approx(expected_top1, abs=1e-12)  # stored beside MAP@1
    assert not set(codes["query_ids"]) & set(codes["database_ids"])


def test_finished_cells_are_skipped(baseline_runs, tiny_phantom):
    out, _ = baseline_runs
    again = run_grid(request(["hashnet", "dsh"], epochs=3), tiny_phantom.dataset, out)
    assert [o.status for o in again] == ["skipped", "skipped"]
    other_protocol = run_grid(request(["dsh"], epochs=1), tiny_phantom.dataset, out)  # another protocol is another cell
    assert [o.status for o in other_protocol] == ["done"]
    assert other_protocol[0].config.directory(out) != again[1].config.directory(out)


def test_leaderboard_markdown_has_methods_by_bits_with_mean_std_and_protocol(tiny_phantom, tmp_path):
    outcomes = run_grid(request(["dpn"], bits=(8, 16), seeds=(0, 1), epochs=2), tiny_phantom.dataset, tmp_path)
    assert all(o.status == "done" for o in outcomes)
    boards = leaderboard.build(ResultsStore(tmp_path).table(), ("map@10",))
    assert len(boards) == 1
    board = boards[0]
    assert list(board.table.columns) == ["8 bits", "16 bits"] and list(board.table.index) == ["dpn"]
    values = [o.metrics["map@10"] for o in outcomes if o.config.bits == 8]
    per_seed = np.stack(
        [cell_per_query(Cell(o.config.directory(tmp_path)), "map@10") for o in outcomes if o.config.bits == 8]
    )
    np.testing.assert_allclose(per_seed.mean(axis=1), values, atol=1e-12)  # the stored per-query values are the cell's
    # the queries are slices of a few patients: the interval resamples patients
    clusters = query_clusters(Cell(outcomes[0].config.directory(tmp_path)))
    assert clusters is not None and clusters.max() + 1 < per_seed.shape[1]
    low, high = bootstrap_interval(per_seed, clusters=clusters)
    assert low <= np.mean(values) <= high
    assert board.table.loc["dpn", "8 bits"].startswith(
        f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} [{low:.3f}, {high:.3f}] (n=2"
    )  # then any dead-bit flags
    assert (
        "synthetic phantom" in board.caption
        and "patient-level split" in board.caption
        and BACKBONE in board.caption
        and "2 epochs" in board.caption
    )
    assert "one run per cell" not in board.caption  # two seeds a cell
    assert "data (the paper's: TCIA collections, 224 px): phantom-tiny-seed0 (synthetic phantom data) at 64 px" in (
        board.caption
    )
    text = leaderboard.to_markdown(boards)
    assert "| method | 8 bits | 16 bits |" in text and "### MAP@10 — phantom-tiny-seed0" in text
    more = run_grid(request(["dsh"], bits=(8,), epochs=2), tiny_phantom.dataset, tmp_path)  # dsh has no 16-bit cell
    assert more[0].status == "done"
    table = leaderboard.build(ResultsStore(tmp_path).table(), ("map@10",))[0].table
    assert table.loc["dsh", "16 bits"] == "-"


def test_a_collapsed_cell_is_flagged_beside_its_number(tmp_path, cell_writer):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    cell_writer(
        tmp_path, "collapsed", np.zeros((9, 16), bool), labels[::10], np.zeros((90, 16), bool), labels
    )  # one bucket: every code equal
    partly = rng.random((90, 16)) < 0.5
    partly[:, :3] = True  # three bits never change
    cell_writer(tmp_path, "partly", rng.random((9, 16)) < 0.5, labels[::10], partly, labels)
    cell_writer(tmp_path, "healthy", rng.random((9, 16)) < 0.5, labels[::10], rng.random((90, 16)) < 0.5, labels)
    table = leaderboard.build(ResultsStore(tmp_path).table(), ("map@10",))[0].table
    assert table.loc["collapsed", "16 bits"].endswith("(n=1; collapsed: 16/16 dead bits)")
    assert table.loc["partly", "16 bits"].endswith("(n=1; partly collapsed: 3/16 dead bits)")
    assert re.fullmatch(
        r"0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\] \(n=1\)", table.loc["healthy", "16 bits"]
    )  # no flag on healthy codes


PAPERLIKE = {
    "split": "slice",
    "run_backbone": "tf_efficientnet_b6.aa_in1k",
    "backbone": "tf_efficientnet_b6.aa_in1k",
    "epochs": 50,
    "image_size": 224,
    "weights": {"tf_efficientnet_b6.aa_in1k": "hub:timm/tf_efficientnet_b6.aa_in1k"},
    "augment": PAPER_AUGMENTATION.to_dict(),
}


@pytest.mark.parametrize(
    "fields, expected",
    [
        (
            {"profile": "full", "train": asdict(REGISTRY.get("dpn").train)},
            "profile full: the paper's protocol (augmentation magnitudes are hashbench's choice",
        ),
        (
            {"profile": "quick", "train": {**asdict(REGISTRY.get("dpn").train), "optimizer": "adam", "lr": 1e-3}},
            "training (the paper's: each method's own optimiser): 50 epochs;",
        ),
        (
            {"profile": "full", "train": asdict(REGISTRY.get("dpn").train), "split": "patient"},
            "split (the paper's: slice-level): patient-level split",
        ),
        (
            {
                "profile": "full",
                "train": asdict(REGISTRY.get("dpn").train),
                "weights": {"tf_efficientnet_b6.aa_in1k": "file:sha256:00"},
            },
            "features (the paper's: ImageNet weights from the hub): backbone tf_efficientnet_b6.aa_in1k (weights from",
        ),
    ],
)
def test_the_caption_calls_a_protocol_the_papers_only_where_every_setting_is(tmp_path, cell_writer, fields, expected):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 30)
    directory = cell_writer(
        tmp_path,
        "dpn",
        rng.random((9, 16)) < 0.5,
        labels[::10],
        rng.random((90, 16)) < 0.5,
        labels,
        **{**PAPERLIKE, **fields},
    )
    record = json.loads((directory / "metrics.json").read_text())
    (directory / "metrics.json").write_text(json.dumps({**record, "synthetic": False}))  # as if on TCIA data
    (board,) = leaderboard.build(ResultsStore(tmp_path).table(), ("map@10",))
    assert expected in board.caption


def test_an_interrupted_cell_resumes_from_its_last_epoch(tiny_phantom, tmp_path, monkeypatch):
    real_save, saves = engine._save, []

    def save_then_stop(*args):
        real_save(*args)
        saves.append(args[4])  # epochs done
        if args[4] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_grid(request(["dsh"], epochs=4), tiny_phantom.dataset, tmp_path)
    monkeypatch.setattr(engine, "_save", real_save)
    outcome = run_grid(request(["dsh"], epochs=4), tiny_phantom.dataset, tmp_path)[0]
    assert outcome.status == "done"
    log = [
        json.loads(line)["epoch"]
        for line in (outcome.config.directory(tmp_path) / "train_log.jsonl").read_text().splitlines()
    ]
    assert log == [1, 2, 3, 4]  # epochs 1-2 before the interruption, 3-4 after: none repeated


def test_a_failing_cell_is_reported_and_the_grid_goes_on(tiny_phantom, tmp_path, monkeypatch):
    dsh = REGISTRY.get("dsh")

    def broken_loss(self):
        raise RuntimeError("this loss is broken on purpose")

    monkeypatch.setattr(dsh, "build_loss", broken_loss)
    outcomes = run_grid(request(["dsh", "dpn"], epochs=1), tiny_phantom.dataset, tmp_path)
    assert [o.status for o in outcomes] == ["failed", "done"]
    assert "broken on purpose" in outcomes[0].error
    assert (outcomes[0].config.directory(tmp_path) / "failed.json").exists()


def test_unknown_option_and_method_are_caught_before_training(tiny_phantom, tmp_path):
    from hashbench.model.registry import UnknownMethodError

    with pytest.raises(ValueError, match="unknown option"):
        run_grid(request(["dpn"], overrides={"dpn": {"margn": 2}}), tiny_phantom.dataset, tmp_path)
    with pytest.raises(UnknownMethodError, match="valid: .*dafh, .*dpn, dpsh, dsh, .*hashnet"):
        run_grid(request(["hashnett"]), tiny_phantom.dataset, tmp_path)


def test_a_validation_side_is_held_out_of_training_and_logged_each_epoch(tiny_phantom, tmp_path):
    outcome = run_grid(request(["dpn"], epochs=2, validation=0.2), tiny_phantom.dataset, tmp_path)[0]
    assert outcome.status == "done", outcome.error
    directory = outcome.config.directory(tmp_path)
    log = [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]
    assert all(0 <= record["validation map@10"] <= 1 for record in log) and len(log) == 2
    side = tiny_phantom.dataset.split("patient", validation_fraction=0.2)
    codes = Cell(directory).codes()
    validation_ids = set(side.index[side == "validation"])
    assert (
        validation_ids
        and not validation_ids & set(codes["database_ids"])
        and not validation_ids & set(codes["query_ids"])
    )
