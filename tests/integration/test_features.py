"""The feature cache: a frozen backbone's features computed in one pass, reused by every cell, resumed after a kill,
rebuilt when damaged."""

from __future__ import annotations

import json

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
    assert len(cells) == 5 * 4  # five methods at 16, 32, 48 and 64 bits
    for cell in cells:
        assert cell["backbone"] == "test_efficientnet" and cell["weights"] == {"test_efficientnet": "random init"}
        assert cell["feature_cache"].startswith("phantom-tiny-seed0/")  # every one reads the backbone's features
        assert cell["frozen_backbone"] == (cell["method"] in ("hashnet", "csq"))
        if cell["method"] in ("pcarr", "itq", "lsh"):
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
