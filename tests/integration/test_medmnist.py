"""`ingest medmnist`: MedMNIST-shaped .npz files, their official split as the protocol, every bad file a clear message."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.api import RunRequest, plan, run_grid
from hashbench.cli import app
from hashbench.datasets.medmnist import ingest_medmnist

runner = CliRunner()
PARTS = {"train": 300, "val": 30, "test": 60}


def write_npz(path: Path, size: int = 28, colour: bool = False, classes: int = 3, drop: str = "") -> Path:
    """A MedMNIST-shaped file whose classes differ in brightness (learnable), in the official key layout."""
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in PARTS.items():
        labels = np.arange(n) % classes
        images = np.clip(rng.normal(40 + 80 * labels[:, None, None], 12, (n, size, size)), 0, 255).astype(np.uint8)
        if colour:
            images = np.stack([images, images, images], axis=-1)
        arrays[f"{part}_images"] = images
        arrays[f"{part}_labels"] = labels[:, None]
    arrays.pop(drop, None)
    np.savez_compressed(path, **arrays)
    return path


def write_multi_label_npz(path: Path, findings: int = 4, size: int = 28) -> Path:
    """A ChestMNIST-shaped file: a 0/1 column per finding, each finding a bright quadrant of the image (learnable)."""
    rng = np.random.default_rng(1)
    arrays = {}
    half = size // 2
    for part, n in PARTS.items():
        labels = (rng.random((n, findings)) < 0.3).astype(np.uint8)
        images = rng.normal(40, 10, (n, size, size))
        for finding in range(findings):
            rows, columns = divmod(finding, 2)
            images[labels[:, finding] == 1, rows * half : (rows + 1) * half, columns * half : (columns + 1) * half] += (
                150
            )
        arrays[f"{part}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{part}_labels"] = labels
    np.savez_compressed(path, **arrays)
    return path


VOLUMES = {"train": 6, "val": 2, "test": 3}
DEPTH = 8


def write_volumes_npz(path: Path, classes: int = 3) -> Path:
    """A 3-D MedMNIST-shaped file (n, depth, 28, 28): each class a bright cube at its own depth, on noise."""
    rng = np.random.default_rng(2)
    arrays = {}
    for part, n in VOLUMES.items():
        labels = np.arange(n) % classes
        volumes = rng.normal(40, 10, (n, DEPTH, 28, 28))
        for i, label in enumerate(labels):
            volumes[i, 2 * label : 2 * label + 3, 8:20, 8:20] += 150
        arrays[f"{part}_images"] = np.clip(volumes, 0, 255).astype(np.uint8)
        arrays[f"{part}_labels"] = labels[:, None]
    np.savez_compressed(path, **arrays)
    return path


def test_a_3d_set_is_ingested_as_the_slices_of_its_volumes_each_volume_a_series(tmp_path):
    source = write_volumes_npz(tmp_path / "toymnist3d.npz")
    (tmp_path / "toymnist3d.attributes.csv").write_text("part,index,sex,age\ntest,2,F,63\ntrain,0,M,40\n")
    dataset = ingest_medmnist(source, "toy3d", tmp_path / "datasets", size=16, workers=1).dataset
    arrays = np.load(source)
    assert dataset.images.shape == (sum(VOLUMES.values()) * DEPTH, 16, 16)  # resized as 2-D images are
    assert dataset.manifest["parts"] == VOLUMES and dataset.manifest["depth"] == DEPTH
    assert dataset.manifest["native_size"] == 28 and dataset.manifest["patients"] == "one per volume"
    index = dataset.index
    assert set(index["modality"]) == {"MEDMNIST3D"}
    expected = {f"{part}-{i:06d}" for part, n in VOLUMES.items() for i in range(n)}
    assert set(index["series"]) == expected and index.groupby("series").size().eq(DEPTH).all()
    assert (index["patient"] == index["series"]).all() and (index["study"] == index["series"]).all()
    volume = index[index["series"] == "test-000002"]
    assert volume["frame"].tolist() == list(range(2 * DEPTH, 3 * DEPTH))  # the volume's slices, in depth order
    assert set(volume["label"]) == {str(arrays["test_labels"][2, 0])}
    assert volume[["sex", "age"]].drop_duplicates().values.tolist() == [["F", "63"]]  # every slice of the volume
    assert set(index.loc[index["series"] == "val-000001", "sex"]) == {""}
    bright = dataset.images[volume.index[2 * 2 + 1]]  # class 2's cube lies at depths 4 to 6
    assert bright[6:10, 6:10].mean() > 150 and dataset.images[volume.index[0]][6:10, 6:10].mean() < 80
    sides = dataset.split("official")
    part_of = index.loc[sides.index, "series"].str.split("-").str[0]
    assert (part_of.map({"train": "database", "val": "validation", "test": "query"}) == sides).all()
    assert sides.value_counts().to_dict() == {
        side: VOLUMES[part] * DEPTH for part, side in (("train", "database"), ("test", "query"), ("val", "validation"))
    }
    assert dataset.describe_split("patient") == "patient-level split"
    assert ingest_medmnist(source, "toy3d", tmp_path / "datasets", size=16, workers=1).up_to_date


def test_a_3d_set_is_evaluated_volume_by_volume_at_series_level(tmp_path, monkeypatch):
    """Each test volume is one query and each train volume one database item; the table says so."""
    from hashbench.cli import expand_multi_value_options
    from hashbench.datasets import load_dataset
    from hashbench.evaluation.stored import cell_per_query, judged_items
    from hashbench.evaluation.view import View
    from hashbench.store.results import ResultsStore

    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    source = write_volumes_npz(tmp_path / "toymnist3d.npz")
    assert runner.invoke(app, ["ingest", "medmnist", str(source), "--size", "16"]).exit_code == 0
    request = RunRequest(["pcah"], [8], dataset="toymnist3d", image_size=16, profile="quick")
    (outcome,) = run_grid(request, load_dataset("toymnist3d"), tmp_path / "runs")
    assert outcome.status == "done", outcome.error
    (cell,) = ResultsStore(tmp_path / "runs").select("pcah")
    series = View(level="series")
    query, database = judged_items(cell, series)
    assert (len(query), len(database)) == (VOLUMES["test"], VOLUMES["train"])
    assert len(cell_per_query(cell, "map@1")) == VOLUMES["test"] * DEPTH  # slices, unless told otherwise
    markdown = tmp_path / "volumes.md"
    argv = ["leaderboard", "--out", str(tmp_path / "runs"), "--level", "series", "--metrics", "map@1,acc@3"]
    result = runner.invoke(app, expand_multi_value_options([*argv, "--format", "md", "--output", str(markdown)]))
    assert result.exit_code == 0, result.output
    text = markdown.read_text()
    assert "series-level retrieval" in text and "### ACC@3" in text
    shown = float(text.split("| pcah (training-free) | ")[1].split()[0])
    assert shown == pytest.approx(cell_per_query(cell, "map@1", series).mean(), abs=5e-4)


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "colour"])
def test_the_official_split_is_the_protocol_and_sizes_are_the_files(tmp_path, colour):
    source = write_npz(tmp_path / "toymnist_28.npz", colour=colour)
    dataset = ingest_medmnist(source, "toy", tmp_path / "datasets", workers=1).dataset
    assert dataset.image_size == 28 and dataset.images.shape == (
        sum(PARTS.values()),
        28,
        28,
        *((3,) if colour else ()),
    )  # colour kept
    assert dataset.default_split == "official" and dataset.manifest["parts"] == PARTS
    sides = dataset.split("official")
    assert sides.value_counts().to_dict() == {
        "database": PARTS["train"],
        "query": PARTS["test"],
        "validation": PARTS["val"],
    }
    index = dataset.index
    assert (
        index.loc[sides.index, "series"].map({"train": "database", "val": "validation", "test": "query"}) == sides
    ).all()
    third = sum(PARTS.values()) // 3
    assert (
        index["label"].value_counts().to_dict() == {"0": third, "1": third, "2": third} and index["patient"].is_unique
    )
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
    assert outcome.metrics["map@10"] > floor + 0.3, (
        outcome.metrics["map@10"],
        floor,
    )  # three brightness classes: far above random codes
    with pytest.raises(ValueError, match="unknown split 'slices' for toymnist; valid: patient, slice, official"):
        plan(RunRequest(["dpsh"], [8], dataset="toymnist", split="slices"), dataset, __import__("torch").device("cpu"))


def test_a_multi_label_set_keeps_every_finding_and_a_method_learns_relevance_as_sharing_one(
    tmp_path, monkeypatch, chance
):
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    source = write_multi_label_npz(tmp_path / "toychest.npz")
    arrays = np.load(source)
    dataset = ingest_medmnist(source, "toychest", tmp_path / "home" / "datasets", workers=1).dataset
    assert dataset.multi_label
    stored = dataset.index[dataset.index["series"] == "train"]["label"].to_numpy()
    expected = ["|".join(map(str, np.flatnonzero(row))) or "none" for row in arrays["train_labels"]]
    assert list(stored) == expected and "none" in stored and any("|" in label for label in stored)
    assert dataset.summary()["classes"] == 5  # four findings and none
    request = RunRequest(["dpsh"], [16], dataset="toychest", epochs=8, image_size=28, profile="quick")
    outcome = run_grid(request, dataset, tmp_path / "runs")[0]
    assert outcome.status == "done", outcome.error
    floor = chance(dataset)["map@10"]
    assert outcome.metrics["map@10"] > floor + 0.3, (
        outcome.metrics["map@10"],
        floor,
    )  # measured 1.00 against random codes' 0.52
    cell = next((tmp_path / "runs").rglob("metrics.json")).parent
    result = runner.invoke(app, ["confusion", str(cell), "--output-dir", str(tmp_path / "figures")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "figures" / "confusion.png").exists()  # no confusion matrix for multi-label codes
    table = (tmp_path / "figures" / "confusion.md").read_text()
    assert "multi-label" in table and all(f"| {name} |" in table for name in ("0", "1", "2", "3", "none"))


def mix_volumes_and_images(path: Path) -> Path:
    arrays = dict(np.load(write_volumes_npz(path)))
    arrays["val_images"] = arrays["val_images"][:, 0]
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_npz(p / "a.npz", drop="val_labels"), "missing val_labels"),
        (lambda p: (p / "b.npz").write_bytes(b"not a zip") and p / "b.npz", "not a readable .npz file"),
        (lambda p: p / "missing.npz", "no such file"),
        (lambda p: mix_volumes_and_images(p / "c.npz"), "one file holds either images or volumes"),
    ],
    ids=["missing keys", "not an npz", "no file", "images and volumes"],
)
def test_bad_files_exit_2_with_the_reason(tmp_path, make, message):
    path = make(tmp_path)
    result = runner.invoke(app, ["ingest", "medmnist", str(path)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


@pytest.mark.skipif(
    importlib.util.find_spec("medmnist") is not None,
    reason="the medmnist package is installed here: a name would be fetched",
)
def test_a_set_name_without_the_medmnist_package_says_how_to_get_it():
    result = runner.invoke(app, ["ingest", "medmnist", "pathmnist"])
    assert result.exit_code == 2 and "pip install medmnist" in result.output and "pathmnist.npz" in result.output


def test_the_official_split_is_refused_where_the_data_ships_none(tiny_phantom):
    result = runner.invoke(
        app, ["run", "--methods", "dpn", "--dataset", "phantom-tiny-seed0", "--split", "official", "--dry-run"]
    )
    assert result.exit_code == 2 and "valid: patient, slice" in result.output
