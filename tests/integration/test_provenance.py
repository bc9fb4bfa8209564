"""Truthful provenance: data versions, the backbone that ran, weights, the plan before the run."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from typer.testing import CliRunner

from hashbench.api import RunRequest, run_grid
from hashbench.cli import app, expand_multi_value_options
from hashbench.data.dataset import split_hash
from hashbench.datasets.tcia import ingest_tcia
from hashbench.report import leaderboard
from hashbench.runner.search import CellIndex
from hashbench.store.paths import datasets_dir
from hashbench.store.results import Cell, ResultsStore

runner = CliRunner()


def test_every_cell_records_what_ran_on_which_data(tiny_phantom, tmp_path):
    dataset = tiny_phantom.dataset
    outcome = run_grid(RunRequest(["dpn"], [8], dataset=dataset.name, epochs=1), dataset, tmp_path)[0]
    cell = Cell(outcome.config.directory(tmp_path))
    config, record = cell.config, cell.record
    assert config.dataset_fingerprint == dataset.fingerprint and re.fullmatch(r"[0-9a-f]{16}", dataset.fingerprint)
    assert config.split_hash == split_hash(dataset.split("patient")) and config.split_seed == 0
    assert (
        config.backbone == config.run_backbone == "test_efficientnet"
        and config.weights == {"test_efficientnet": "random"}
        and config.profile == "quick"
    )
    assert record["backbones_ran"] == ["test_efficientnet"] and record["weights"] == {
        "test_efficientnet": {"source": "random init", "revision": ""}
    }
    assert re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"]) and isinstance(record["git"]["dirty"], bool)
    assert {"torch", "timm", "numpy", "hashbench", "cuda"} <= set(record["versions"]) and record["device"].startswith(
        "cpu"
    )
    assert (
        record["seconds"] >= record["train_seconds"] > 0
        and record["resumed_from_epoch"] == 0
        and record["peak_memory_mib"]["process_rss_peak_so_far_mib"] > 100
    )
    assert record["evaluation"] == {"tie_break": "random", "tie_seed": 0}
    import hashlib

    assert record["codes_sha256"] == hashlib.sha256(cell.path("codes.npz").read_bytes()).hexdigest()
    other_split = run_grid(RunRequest(["dpn"], [8], dataset=dataset.name, epochs=1, split_seed=1), dataset, tmp_path)[0]
    assert (
        other_split.status == "done" and other_split.config.split_hash != config.split_hash
    )  # another split is another cell


def test_a_reingested_dataset_makes_new_cells_and_never_mixes_with_the_old(tiny_phantom, tmp_path):
    source = tmp_path / "download"
    shutil.copytree(tiny_phantom.dataset.manifest["source"], source)
    before = ingest_tcia(source, "reingest", datasets_dir(), workers=1).dataset
    request = RunRequest(["dpn"], [8], dataset="reingest", epochs=1, profile="quick")
    old = run_grid(request, before, tmp_path / "out")[0]
    assert old.status == "done"
    first = sorted(source.rglob("*.dcm"))[0]
    shutil.copy(first, first.with_name("added-copy.dcm"))  # one more slice in the download
    after = ingest_tcia(source, "reingest", datasets_dir(), workers=1).dataset
    assert after.fingerprint != before.fingerprint and len(after.index) == len(before.index) + 1

    new = run_grid(request, after, tmp_path / "out")[0]
    assert new.status == "done"  # not skipped as finished: the old cell is of other data
    assert new.config.directory(tmp_path / "out") != old.config.directory(tmp_path / "out")
    assert Cell(old.config.directory(tmp_path / "out")).status() == "finished"
    boards = leaderboard.build(ResultsStore(tmp_path / "out").table(), ("map@10",))
    assert len(boards) == 2 and all(len(board.table) == 1 for board in boards)  # one table per data version
    captions = sorted(board.caption for board in boards)
    assert any(f"data version {before.fingerprint} (superseded" in c for c in captions) and any(
        f"data version {after.fingerprint};" in c for c in captions
    )
    with pytest.raises(ValueError, match="re-ingested with other content"):
        CellIndex(old.config.directory(tmp_path / "out"), "cpu", False)


def test_a_variant_records_the_backbone_it_ran_and_the_caption_says_so_per_row(tiny_phantom, tmp_path):
    request = RunRequest(
        ["dafh", "dafh-resnet50"],
        [8],
        dataset=tiny_phantom.dataset.name,
        epochs=1,
        overrides={"dafh-resnet50": {"backbone": "test_resnet"}},
    )
    outcomes = run_grid(request, tiny_phantom.dataset, tmp_path)
    assert [o.status for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
    dafh, resnet = (Cell(o.config.directory(tmp_path)) for o in outcomes)
    assert (
        dafh.config.backbone == "test_efficientnet"
        and resnet.config.backbone == "test_resnet"
        and resnet.config.run_backbone == "test_efficientnet"
    )
    assert resnet.record["backbones_ran"] == ["test_resnet"]
    weights = torch.load(resnet.path("model.pt"), weights_only=True)["network"]
    assert any(".layer3." in name for name in weights) and not any(
        ".blocks." in name for name in weights
    )  # a ResNet's state, not an EfficientNet's
    (board,) = leaderboard.build(ResultsStore(tmp_path).table(), ("map@10",))
    assert "backbone test_efficientnet (random init); row dafh-resnet50: backbone test_resnet;" in board.caption
    assert "row dafh:" not in board.caption


def test_dry_run_of_table_4_on_the_full_profile_lists_the_papers_backbones_and_runs_nothing(tiny_phantom, tmp_path):
    out = tmp_path / "never"
    argv = [
        "run",
        "--suite",
        "paper-table4",
        "--profile",
        "full",
        "--dataset",
        "phantom-tiny-seed0",
        "--out",
        str(out),
        "--dry-run",
    ]
    result = runner.invoke(app, expand_multi_value_options([*argv, "--json"]))
    assert result.exit_code == 0, result.output
    plan = [json.loads(line) for line in result.output.splitlines()]
    assert len(plan) == 12 and {p["bits"] for p in plan} == {16, 32, 48}
    backbones = {p["method"]: p["backbone"] for p in plan}
    assert backbones == {
        "dafh": "tf_efficientnet_b6.aa_in1k",
        "dafh-resnet50": "resnet50",
        "dafh-resnet50-at": "resnet50",
        "dafh-vit-resnet50": "vit_base_patch16_224 + resnet50",
    }
    first = next(p for p in plan if p["method"] == "dafh")
    assert (
        first["epochs"] == 50
        and first["image_size"] == 224
        and first["profile"] == "full"
        and first["augment"]["rotation"] > 0
    )
    assert first["weights"]["tf_efficientnet_b6.aa_in1k"].startswith(
        "pretrained weights from the Hugging Face hub (timm/tf_efficientnet_b6.aa_in1k)"
    )
    assert not out.exists()
    text = runner.invoke(app, expand_multi_value_options(argv))
    assert text.exit_code == 0 and "12 cells planned; nothing was run" in text.output
    assert (
        "phantom-tiny-seed0/dafh/16 bits/seed 0: " in text.output
        and 'backbone="tf_efficientnet_b6.aa_in1k"' in text.output
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "dafh.mining=hardest"], "dafh.mining=hardest is not valid; expected one of random, batch-hard"),
        (["--set", "lr_schedule=step:10:0.5"], "dafh.lr_schedule=step:10:0.5 is not valid"),
        (
            ["--augment", "rotation=-5"],
            "augmentation rotation=-5.0 must be a finite number >= 0; valid keys: rotation, scale, brightness, noise, blur",
        ),
        (["--split", "study"], "unknown split 'study'"),
        (["--backbone", "efficientnet_b77"], "timm has no model 'efficientnet_b77'; did you mean efficientnet_b7"),
        (["--set", "hashnet.alpha=1"], "--set names hashnet, not in this run (dafh)"),
        (["--set", "batch_size=many"], "dafh.batch_size=many is not valid"),
    ],
)
def test_the_plan_rejects_bad_input_before_any_cell_is_written(tiny_phantom, tmp_path, argv, message):
    out = tmp_path / "never"
    result = runner.invoke(
        app,
        expand_multi_value_options(
            ["run", "--methods", "dafh", "--bits", "8", "--dataset", "phantom-tiny-seed0", "--out", str(out), *argv]
        ),
    )
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output  # rich wraps long lines
    assert not out.exists()


def test_pretrained_weights_offline_fail_fast_or_come_from_a_local_file(tiny_phantom, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "out"
    argv = [
        "run",
        "--methods",
        "dpn",
        "--bits",
        "8",
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--backbone",
        "test_efficientnet",
        "--profile",
        "full",
        "--dataset",
        "phantom-tiny-seed0",
        "--out",
        str(out),
    ]
    offline = runner.invoke(app, expand_multi_value_options(argv))
    assert (
        offline.exit_code == 2
        and "--weights test_efficientnet=PATH" in offline.output
        and "--no-pretrained" in offline.output
    )
    assert not out.exists()

    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    saved = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).state_dict()
    path = tmp_path / "test_efficientnet.safetensors"
    save_file(saved, str(path))
    local = runner.invoke(
        app,
        expand_multi_value_options(
            [*argv, "--weights", f"test_efficientnet={path}", "--augment", "none", "--set", "dpn.batch_size=32"]
        ),
    )
    assert local.exit_code == 0, local.output
    (cell,) = ResultsStore(out).cells()
    assert (
        cell.config.weights["test_efficientnet"].startswith("file:sha256:")
        and str(path) in cell.record["weights"]["test_efficientnet"]["source"]
    )
    assert "weights from a local file" in local.output  # the caption says where the backbone's weights came from
    trained = torch.load(cell.path("model.pt"), weights_only=True)["network"]
    stem = trained["encoder.conv_stem.weight"]  # training started from the file: one epoch moved the weights, not far
    assert torch.allclose(stem, saved["conv_stem.weight"], atol=0.05) and not torch.equal(
        stem, saved["conv_stem.weight"]
    )
