"""The phantom collection: a deterministic, realistic TCIA download through the real loader."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pydicom
import pytest

from hashbench.datasets import phantom
from hashbench.store.paths import sources_dir


def digest_tree(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generation_is_deterministic_byte_for_byte(tmp_path, tiny_phantom):
    again = phantom.generate(tmp_path / "again", "tiny", seed=0)
    assert digest_tree(again) == digest_tree(sources_dir() / "phantom-tiny-seed0")
    other_seed = phantom.generate(tmp_path / "other", "tiny", seed=1)
    assert digest_tree(other_seed) != digest_tree(again)


def test_it_is_a_descriptive_nbia_download_with_metadata_and_ctp_tags(tiny_phantom):
    root = sources_dir() / "phantom-tiny-seed0"
    with open(root / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["Collection"] for r in rows} == {c.name for c in phantom.COLLECTIONS}
    files = sorted(root.rglob("*.dcm"))
    assert sum(int(r["Number of Images"]) for r in rows) == len(files)
    for row in rows:
        assert (root / row["File Location"]).is_dir()
    first = pydicom.dcmread(files[0])
    assert first.get_private_item(0x0013, 0x10, "CTP").value == files[0].relative_to(root).parts[0]
    assert tiny_phantom.dataset.manifest["layouts"] == {"descriptive": len(files)}


def test_it_has_the_hard_cases_real_downloads_have(tiny_phantom):
    root = sources_dir() / "phantom-tiny-seed0"
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(root.rglob("*.dcm"))]
    syntaxes = {h.file_meta.TransferSyntaxUID.name for h in headers}
    assert {"JPEG 2000 Image Compression (Lossless Only)", "RLE Lossless", "Explicit VR Little Endian"} <= syntaxes
    assert {"MONOCHROME1", "MONOCHROME2"} <= {h.PhotometricInterpretation for h in headers}
    assert {"CT", "MR", "PT"} == {h.Modality for h in headers}
    assert any("WindowCenter" not in h for h in headers if h.Modality == "CT")  # the CT default window is exercised
    ct = next(h for h in headers if h.Modality == "CT")
    assert (ct.RescaleIntercept, ct.RescaleSlope) == (-1024, 1)


def test_ingested_phantom_keeps_every_file_and_flags_every_blank_slice(tiny_phantom):
    dataset = tiny_phantom.dataset
    assert dataset.manifest["synthetic"] is True and dataset.manifest["kind"] == "phantom"
    assert len(dataset.skipped) == 0
    index = dataset.index
    assert set(index["label"]) == {c.name for c in phantom.COLLECTIONS}
    assert set(index["label_source"]) == {"tag"}
    blank = np.array([dataset.images[i].max() < 20 for i in index.index])
    assert blank.sum() > 0
    assert index["outlier"][blank].all()
    assert index["outlier"].mean() < 0.1


def nearest_neighbour_accuracy(dataset, protocol):
    """1-NN on raw pixels (8x downsampled): what a method gets for free from the data alone."""
    side = dataset.split(protocol)
    images = np.asarray(dataset.images[side.index.to_numpy()])[:, ::8, ::8]
    features = images.reshape(len(side), -1).astype(np.float32)
    labels = dataset.index.loc[side.index, "label"].to_numpy()
    database, query = (side == "database").to_numpy(), (side == "query").to_numpy()
    distances = ((features[query, None, :] - features[None, database, :]) ** 2).sum(-1)
    return (labels[database][distances.argmin(1)] == labels[query]).mean()


def test_classes_are_learnable_but_not_trivial_and_the_slice_split_leaks(tiny_phantom):
    dataset = tiny_phantom.dataset
    by_patient = nearest_neighbour_accuracy(dataset, "patient")
    by_slice = nearest_neighbour_accuracy(dataset, "slice")
    assert 0.25 < by_patient < 0.8  # chance is 0.1; measured 0.46
    assert by_slice > 0.95  # neighbouring slices of the same patient on both sides: measured 1.0


def test_neighbouring_slices_are_near_duplicates(tiny_phantom):
    dataset = tiny_phantom.dataset
    index = dataset.index[~dataset.index["outlier"]]
    adjacent = [
        np.abs(np.diff(np.asarray(dataset.images[rows.index.to_numpy()], float), axis=0)).mean()
        for _, rows in index.groupby("series")
        if len(rows) > 1
    ]
    rng = np.random.default_rng(0)
    a, b = rng.choice(index.index.to_numpy(), (2, 200))
    unrelated = np.abs(np.asarray(dataset.images[a], float) - np.asarray(dataset.images[b], float)).mean()
    assert np.mean(adjacent) < unrelated / 4  # measured 4.2 against 26.7 grey levels


def test_patient_split_of_the_phantom_is_clean_and_balanced(tiny_phantom):
    dataset = tiny_phantom.dataset
    side = dataset.split("patient")
    index = dataset.index.loc[side.index]
    assert side.groupby(index["patient"]).nunique().max() == 1
    shares = index.assign(side=side).groupby("side")["label"].value_counts(normalize=True).unstack(0)
    assert (shares["database"] - shares["query"]).abs().max() < 0.05


def test_unknown_profile_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid: tiny, default, large"):
        phantom.generate(tmp_path, "huge")
