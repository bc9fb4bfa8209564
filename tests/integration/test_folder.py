"""`ingest folder`: a class-per-folder image tree of mixed formats and sizes, bad files reported, methods that learn on real scans."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hashbench.api import RunRequest, run_grid
from hashbench.cli import app
from hashbench.data.dicom import ImageOptions
from hashbench.datasets.folder import ingest_folder

runner = CliRunner()
SIZE = 16


def write_tree(root: Path) -> dict[str, int]:
    """Three classes in every supported format, plus files that must be skipped or left out; returns what each class should keep."""
    rng = np.random.default_rng(0)
    for label, brightness in (("bright", 200), ("dark", 40), ("striped", 120)):
        folder = root / label / "nested" if label == "striped" else root / label
        folder.mkdir(parents=True)
        for i in range(6):
            grey = np.clip(rng.normal(brightness, 10, (20 + i, 30)), 0, 255).astype(np.uint8)
            if label == "striped":
                grey[::4] = 255
            Image.fromarray(grey).save(folder / f"grey{i}.png")
        Image.fromarray(np.stack([np.full((24, 24), brightness, np.uint8)] * 3, axis=-1)).save(
            folder / "colour.jpg", quality=95
        )
        Image.fromarray(np.full((12, 40), brightness, np.uint8)).save(folder / "wide.bmp")
        Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)).save(folder / "deep.tif")
    pages = [Image.fromarray(np.full((10, 10), v, np.uint8)) for v in (30, 60)]
    pages[0].save(root / "dark" / "pages.tif", save_all=True, append_images=pages[1:])
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 220, 255
    Image.fromarray(rgba).save(root / "bright" / "alpha.png")
    whole = (root / "bright" / "grey0.png").read_bytes()
    (root / "bright" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "dark" / "notes.jpg").write_text("not an image")
    (root / "dark" / "readme.txt").write_text("ignored: not an image suffix")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "loose.png")
    return {"bright": 6 + 3 + 1, "dark": 6 + 3 + 2, "striped": 6 + 3}


def test_a_mixed_tree_is_ingested_with_every_bad_file_reported(tmp_path):
    expected = write_tree(tmp_path / "tree")
    result = ingest_folder(tmp_path / "tree", "mixed", tmp_path / "datasets", ImageOptions(size=SIZE), workers=1)
    dataset = result.dataset
    assert dataset.index["label"].value_counts().to_dict() == expected
    assert dataset.images.shape[1:] == (SIZE, SIZE)
    skipped = dict(zip(dataset.skipped["path"], dataset.skipped["reason"]))
    assert skipped == {"bright/cut.png": "truncated image", "dark/notes.jpg": "not an image"}
    assert dataset.manifest["unlabelled_files"] == ["loose.png"] and dataset.manifest["kind"] == "folder"
    assert (
        dataset.index["patient"].nunique() == len(dataset.index) - 1
    )  # one patient per image; the two TIFF pages share their file
    slice_of = {(row.path, int(row.frame)): slice_id for slice_id, row in dataset.index.iterrows()}
    colour = dataset.images[slice_of["bright/colour.jpg", 0]]
    assert abs(int(np.median(colour)) - 200) <= 2  # luma of a grey-valued colour image
    assert dataset.images[slice_of["bright/alpha.png", 0]].min() >= 218
    deep = dataset.images[slice_of["dark/deep.tif", 0]]
    assert deep.min() < 16 and deep.max() > 240  # 16-bit scaled by its own range (then averaged down to 16 px)
    pages = [int(np.median(dataset.images[slice_of["dark/pages.tif", f]])) for f in (0, 1)]
    assert pages == [30, 60]
    assert set(dataset.index["modality"]) == {"PNG", "JPEG", "BMP", "TIFF"}
    assert "hashbench ingest folder" in dataset.rebuild_command()

    again = ingest_folder(tmp_path / "tree", "mixed", tmp_path / "datasets", ImageOptions(size=SIZE), workers=1)
    assert again.up_to_date and again.decoded == 0


def test_a_method_runs_end_to_end_on_a_folder_dataset(tmp_path):
    write_tree(tmp_path / "tree")
    dataset = ingest_folder(
        tmp_path / "tree", "mixed", tmp_path / "datasets", ImageOptions(size=SIZE), workers=1
    ).dataset
    request = RunRequest(["dpsh"], [8], dataset="mixed", epochs=2, image_size=SIZE, profile="quick", split="slice")
    outcome = run_grid(request, dataset, tmp_path / "runs")[0]
    assert outcome.status == "done", outcome.error
    assert 0 <= outcome.metrics["map@10"] <= 1


def test_attributes_come_from_an_attributes_file_and_follow_its_edits_without_decoding_again(tmp_path):
    root = tmp_path / "tree"
    for label, brightness in (("dark", 40), ("bright", 200)):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((12, 12), brightness + i, np.uint8)).save(root / label / f"{i}.png")
    pages = [Image.fromarray(np.full((10, 10), v, np.uint8)) for v in (30, 60)]
    pages[0].save(root / "dark" / "pages.tif", save_all=True, append_images=pages[1:])
    attributes = root / "attributes.csv"
    attributes.write_text("path,body_part,sex,age\ndark/0.png,chest,F,045Y\ndark/pages.tif,HEAD,M,7\n")

    def ingest():
        return ingest_folder(root, "tagged", tmp_path / "datasets", ImageOptions(size=SIZE), workers=1)

    def stated():
        index = ingest().dataset.index
        return {
            (row.path, int(row.frame)): (row.body_part, row.sex, row.age)
            for row in index.itertuples()
            if row.body_part or row.sex or row.age
        }

    first = ingest()
    assert first.dataset.manifest["attributes_file"] == str(attributes.resolve())
    assert stated() == {
        ("dark/0.png", 0): ("CHEST", "F", "45"),
        ("dark/pages.tif", 0): ("HEAD", "M", "7"),
        ("dark/pages.tif", 1): ("HEAD", "M", "7"),  # every page of the file
    }
    assert (first.dataset.index[["manufacturer", "slice_thickness"]] == "").all().all()
    assert ingest().up_to_date

    attributes.write_text("path,age\nbright/2.png,80\n")
    edited = ingest()
    assert not edited.up_to_date and (edited.decoded, edited.reused) == (0, 7)
    assert stated() == {("bright/2.png", 0): ("", "", "80")}
    attributes.unlink()
    removed = ingest()
    assert (removed.decoded, removed.reused) == (0, 7) and stated() == {}

    for text, message in (
        (
            "path,scanner\ndark/0.png,X\n",
            "any of body_part, sex, age, manufacturer, slice_thickness (unknown: scanner)",
        ),
        ("path,sex\ndark/9.png,F\n", "1 row(s) name images that are not in the source (e.g. dark/9.png)"),
    ):
        attributes.write_text(text)
        result = runner.invoke(app, ["ingest", "folder", str(root), "--name", "tagged", "--size", str(SIZE)])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "no images in class folders"),
        ({"only/a.png": True, "only/b.png": True}, "one class folder (only)"),
        ({"a.png": True, "b.png": True}, "2 image(s) directly under it have no class folder"),
        ({"one/a.png": False, "two/b.png": False}, "none of its 2 files gave a slice"),
    ],
    ids=["empty", "one class", "no class folders", "unreadable"],
)
def test_bad_folders_exit_2_with_the_reason(tmp_path, layout, message):
    root = tmp_path / "source"
    root.mkdir()
    for relpath, readable in layout.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        if readable:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / relpath)
        else:
            (root / relpath).write_bytes(b"\x89PNG broken")
    result = runner.invoke(app, ["ingest", "folder", str(root), "--name", "bad"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    missing = runner.invoke(app, ["ingest", "folder", str(tmp_path / "nowhere"), "--name", "bad"])
    assert missing.exit_code == 2 and "no such folder" in missing.output


def test_hashnet_and_dpsh_learn_real_handwritten_digits_far_above_chance(tmp_path, chance):
    """scikit-learn's digits (1,797 real scans, 10 classes) written as a folder tree, as the README shows."""
    spec = importlib.util.spec_from_file_location(
        "digits_folder", Path(__file__).resolve().parents[2] / "examples" / "digits_folder.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.write_digits(tmp_path / "digits") == 1797
    dataset = ingest_folder(tmp_path / "digits", "digits", tmp_path / "datasets", ImageOptions(size=32)).dataset
    request = RunRequest(["hashnet", "dpsh"], [16], dataset="digits", epochs=5, image_size=32, profile="quick")
    outcomes = run_grid(request, dataset, tmp_path / "runs")
    baseline = chance(dataset)["map@10"]
    assert baseline < 0.3
    for outcome in outcomes:
        assert outcome.status == "done", outcome.error
        assert outcome.metrics["map@10"] > baseline + 0.5, (outcome.config.method, outcome.metrics["map@10"], baseline)


def test_the_ingest_report_prints_class_and_file_names_with_brackets_as_they_are(tmp_path, hashbench_home):
    """Folder and file names are the user's text, not rich markup: '[bold]' and '[b955f5dd]' print as written."""
    root = tmp_path / "scans [2024]"
    for label, brightness in (("liver [bold]", 200), ("kidney", 40)):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), brightness + i, np.uint8)).save(root / label / f"{i}.png")
    (root / "kidney" / "scan [b955f5dd].png").write_text("not an image")
    result = runner.invoke(app, ["ingest", "folder", str(root), "--name", "brackets", "--size", "16", "--workers", "1"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "liver [bold]" in text and "kidney/scan [b955f5dd].png" in text
