"""`ingest medmnist`: MedMNIST-shaped .npz files, their official split as the protocol, every bad file a clear message."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.cli import app
from hashbench.datasets.medmnist import ingest_medmnist
from hashbench.run import RunRequest, plan, run_grid

runner = CliRunner()
PARTS = {"train": 300, "val": 30, "test": 60}


def write_npz(path: Path, size: int = 28, colour: bool = False, classes: int = 3, labels_per_image: int = 1, drop: str = "") -> Path:
    """A MedMNIST-shaped file whose classes differ in brightness (learnable), in the official key layout."""
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in PARTS.items():
        labels = np.arange(n) % classes
        images = np.clip(rng.normal(40 + 80 * labels[:, None, None], 12, (n, size, size)), 0, 255).astype(np.uint8)
        if colour:
            images = np.stack([images, images, images], axis=-1)
        arrays[f"{part}_images"] = images
        arrays[f"{part}_labels"] = labels[:, None] if labels_per_image == 1 else rng.integers(0, 2, (n, labels_per_image))
    arrays.pop(drop, None)
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "colour"])
def test_the_official_split_is_the_protocol_and_sizes_are_the_files(tmp_path, colour):
    source = write_npz(tmp_path / "toymnist_28.npz", colour=colour)
    dataset = ingest_medmnist(source, "toy", tmp_path / "datasets", workers=1).dataset
    assert dataset.image_size == 28 and dataset.images.shape == (sum(PARTS.values()), 28, 28)
    assert dataset.default_split == "official" and dataset.manifest["parts"] == PARTS
    sides = dataset.split("official")
    assert sides.value_counts().to_dict() == {"database": PARTS["train"], "query": PARTS["test"], "validation": PARTS["val"]}
    index = dataset.index
    assert (index.loc[sides.index, "series"].map({"train": "database", "val": "validation", "test": "query"}) == sides).all()
    third = sum(PARTS.values()) // 3
    assert index["label"].value_counts().to_dict() == {"0": third, "1": third, "2": third} and index["patient"].is_unique
    first_query = index[index["series"] == "test"].iloc[0]
    assert first_query["label"] == "0" and abs(float(np.median(dataset.images[first_query.name])) - 40) < 10
    assert "hashbench ingest medmnist" in dataset.rebuild_command()
    assert ingest_medmnist(source, "toy", tmp_path / "datasets", workers=1).up_to_date


def test_a_method_learns_on_the_official_split_by_default(tmp_path, monkeypatch, chance):
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    source = write_npz(tmp_path / "toymnist.npz")
    result = runner.invoke(app, ["ingest", "medmnist", str(source)])
    assert result.exit_code == 0, result.output
    from hashbench.datasets import load_dataset

    dataset = load_dataset("toymnist")
    request = RunRequest(["dpsh"], [8], dataset="toymnist", epochs=8, image_size=28, profile="quick")
    outcome = run_grid(request, dataset, tmp_path / "runs")[0]
    assert outcome.status == "done", outcome.error
    assert outcome.config.split == "official"
    floor = chance(dataset)["map@10"]
    assert outcome.metrics["map@10"] > floor + 0.3, (outcome.metrics["map@10"], floor)  # three brightness classes: far above random codes
    with pytest.raises(ValueError, match="unknown split 'slices' for toymnist; valid: patient, slice, official"):
        plan(RunRequest(["dpsh"], [8], dataset="toymnist", split="slices"), dataset, __import__("torch").device("cpu"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_npz(p / "a.npz", drop="val_labels"), "missing val_labels"),
        (lambda p: write_npz(p / "chest.npz", labels_per_image=14), "multi-label set (like ChestMNIST)"),
        (lambda p: (p / "b.npz").write_bytes(b"not a zip") and p / "b.npz", "not a readable .npz file"),
        (lambda p: p / "missing.npz", "no such file"),
    ],
    ids=["missing keys", "multi-label", "not an npz", "no file"],
)
def test_bad_files_exit_2_with_the_reason(tmp_path, make, message):
    path = make(tmp_path)
    result = runner.invoke(app, ["ingest", "medmnist", str(path)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


@pytest.mark.skipif(importlib.util.find_spec("medmnist") is not None, reason="the medmnist package is installed here: a name would be fetched")
def test_a_set_name_without_the_medmnist_package_says_how_to_get_it():
    result = runner.invoke(app, ["ingest", "medmnist", "pathmnist"])
    assert result.exit_code == 2 and "pip install medmnist" in result.output and "pathmnist.npz" in result.output


def test_the_official_split_is_refused_where_the_data_ships_none(tiny_phantom):
    result = runner.invoke(app, ["run", "--methods", "dpn", "--dataset", "phantom-tiny-seed0", "--split", "official", "--dry-run"])
    assert result.exit_code == 2 and "valid: patient, slice" in result.output
