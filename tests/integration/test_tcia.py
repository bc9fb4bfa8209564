"""The TCIA loader end to end on hand-made trees: layouts, labels, the ingest report, incremental and resumed ingest."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from hashbench.data import ingest as ingest_module
from hashbench.data.attributes import ATTRIBUTE_COLUMNS
from hashbench.data.dataset import INDEX, MANIFEST, Dataset, integrity
from hashbench.data.dicom import ImageOptions
from hashbench.datasets.tcia import ingest_tcia, scan

OPTIONS = ImageOptions(size=32)
DESCRIPTIVE = ("12-01-1998-NA-PETCT HEAD  NECK CA-59359", "5.000000-PET NO AC-52932")
CLASSIC = ("1.3.6.1.4.1.14519.5.2.1.7777.1", "1.3.6.1.4.1.14519.5.2.1.7777.2")


def ct(value_hu: int = 100) -> np.ndarray:
    return np.full((32, 32), value_hu + 1024, np.uint16)


CT_TAGS = dict(RescaleIntercept=-1024, RescaleSlope=1, WindowCenter=40, WindowWidth=400)


def write_metadata(root, rows):
    columns = [
        "Series UID",
        "Collection",
        "3rd Party Analysis",
        "Data Description URI",
        "Subject ID",
        "Study UID",
        "Study Description",
        "Study Date",
        "Series Description",
        "Manufacturer",
        "Modality",
        "SOP Class Name",
        "SOP Class UID",
        "Number of Images",
        "File Size",
        "File Location",
        "Download Timestamp",
    ]
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def ingest(root, tmp_path, **kw):
    return ingest_tcia(root, "test", tmp_path / "cache", OPTIONS, workers=kw.pop("workers", 1), **kw)


@pytest.mark.parametrize("layout", [DESCRIPTIVE, CLASSIC], ids=["descriptive", "classic"])
@pytest.mark.parametrize("wrapper", ["", "manifest-1700000000000"], ids=["root", "manifest-folder"])
def test_every_nbia_layout_parses(tmp_path, dicom, layout, wrapper):
    root = tmp_path / "download"
    series = (
        root / wrapper / "TCGA-LUAD" / "TCGA-05-4244" / layout[0] / layout[1]
        if wrapper
        else root / "TCGA-LUAD" / "TCGA-05-4244" / layout[0] / layout[1]
    )
    for i in range(3):
        dicom(series / f"1-0{i + 1}.dcm", ct(), patient=None, **CT_TAGS)
    files, _, layouts = scan(root)
    assert [f.collection for f in files] == ["TCGA-LUAD"] * 3
    assert {(f.patient, f.study, f.series) for f in files} == {("TCGA-05-4244", *layout)}
    assert layouts == {"classic" if layout is CLASSIC else "descriptive": 3}
    dataset = ingest(root, tmp_path).dataset
    assert list(dataset.index["patient"]) == ["TCGA-05-4244"] * 3  # no PatientID tag: the folder
    assert list(dataset.index["label"]) == ["TCGA-LUAD"] * 3


def test_a_single_collection_folder_is_its_own_label(tmp_path, dicom):
    root = tmp_path / "TCGA-OV"
    dicom(root / "TCGA-OV-01" / DESCRIPTIVE[0] / DESCRIPTIVE[1] / "1-01.dcm", ct(), **CT_TAGS)
    assert ingest(root, tmp_path).dataset.index["label"].tolist() == ["TCGA-OV"]


def test_label_from_tag_then_metadata_csv_then_folder(tmp_path, dicom):
    root = tmp_path / "download"
    study = "01-01-2000-NA-CT-12345"
    tagged = dicom(
        root / "FOLDER-A" / "P1" / study / "1.000000-A-11111" / "1-01.dcm",
        ct(),
        patient="P1",
        collection_tag="TCGA-KIRP",
        **CT_TAGS,
    )
    by_location = dicom(
        root / "FOLDER-B" / "P2" / study / "1.000000-B-22222" / "1-01.dcm", ct(), patient="P2", **CT_TAGS
    )
    by_uid = dicom(
        root / "FOLDER-C" / "P3" / study / "1.000000-C-33333" / "1-01.dcm",
        ct(),
        patient="P3",
        series_uid="1.2.3.4.5",
        **CT_TAGS,
    )
    from_folder = dicom(
        root / "FOLDER-D" / "P4" / study / "1.000000-D-44444" / "1-01.dcm", ct(), patient="P4", **CT_TAGS
    )
    write_metadata(
        root,
        [
            {
                "Collection": "TCGA-LIHC",
                "File Location": "./FOLDER-A/P1/" + study + "/1.000000-A-11111",
                "Modality": "CT",
            },  # the tag wins
            {
                "Collection": "TCGA-STAD",
                "File Location": "./FOLDER-B/P2/" + study + "/1.000000-B-22222",
                "Modality": "CT",
            },
            {
                "Collection": "TCGA-ESCA",
                "Series UID": "1.2.3.4.5",
                "File Location": "./moved/elsewhere",
                "Modality": "CT",
            },
        ],
    )
    index = ingest(root, tmp_path).dataset.index.set_index("path")
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert index.loc[rel(tagged), ["label", "label_source"]].tolist() == ["TCGA-KIRP", "tag"]
    assert index.loc[rel(by_location), ["label", "label_source"]].tolist() == ["TCGA-STAD", "metadata.csv"]
    assert index.loc[rel(by_uid), ["label", "label_source"]].tolist() == ["TCGA-ESCA", "metadata.csv"]
    assert index.loc[rel(from_folder), ["label", "label_source"]].tolist() == ["FOLDER-D", "folder"]


def test_ctp_tag_arriving_as_bytes_of_vr_un_is_decoded(tmp_path, dicom):
    path = dicom(tmp_path / "x.dcm", ct(), collection_tag="TCGA-UCEC", **CT_TAGS)
    import pydicom

    ds = pydicom.dcmread(path)
    element = ds.get_private_item(0x0013, 0x10, "CTP")
    element.VR, element.value = "UN", b"TCGA-UCEC "
    from hashbench.data.dicom import ctp_collection

    assert ctp_collection(ds) == "TCGA-UCEC"


def make_tree_with_broken_files(root, dicom, truncate_codestream):
    """Nine good files in several encodings and frames (one without the Part-10 header), plus five that must be reported."""
    series = root / "TCGA-LIHC" / "LIHC-01" / DESCRIPTIVE[0] / DESCRIPTIVE[1]
    good = [
        dicom(series / "1-01.dcm", ct(100), collection_tag="TCGA-LIHC", **CT_TAGS),
        dicom(series / "1-02.dcm", ct(40), collection_tag="TCGA-LIHC", compress=RLELossless, **CT_TAGS),
        dicom(series / "1-03.dcm", ct(0), collection_tag="TCGA-LIHC", compress=JPEG2000Lossless, **CT_TAGS),
        dicom(series / "1-04.dcm", ct(0), collection_tag="TCGA-LIHC", compress=JPEGLSLossless, **CT_TAGS),
        dicom(series / "1-05.dcm", np.stack([ct(0), ct(100)]), collection_tag="TCGA-LIHC", **CT_TAGS),  # 2 frames
        dicom(series / "1-06.dcm", ct(0), collection_tag="TCGA-LIHC", photometric="MONOCHROME1", **CT_TAGS),
        dicom(
            series / "1-07.dcm", ct(40), collection_tag="TCGA-LIHC", file_header=False, **CT_TAGS
        ),  # no Part-10 header: still DICOM
        dicom(
            root / "TCGA-LIHC" / "LIHC-02" / DESCRIPTIVE[0] / DESCRIPTIVE[1] / "1-01.dcm",
            ct(0),
            patient="LIHC-02",
            collection_tag="TCGA-LIHC",
            **CT_TAGS,
        ),
        dicom(
            root / "TCGA-LIHC" / "LIHC-02" / DESCRIPTIVE[0] / DESCRIPTIVE[1] / "1-02.dcm",
            ct(0),
            patient="LIHC-02",
            collection_tag="TCGA-LIHC",
            **CT_TAGS,
        ),
    ]
    bad_series = root / "TCGA-LIHC" / "LIHC-03" / DESCRIPTIVE[0] / "300.000000-Segmentation-99999"
    empty = bad_series / "empty.dcm"
    empty.parent.mkdir(parents=True)
    empty.write_bytes(b"")
    text = bad_series / "notes.dcm"
    text.write_text("this is a radiology report, not an image")
    halved = dicom(bad_series / "halved.dcm", np.random.default_rng(1).integers(0, 4000, (64, 64)).astype(np.uint16))
    halved.write_bytes(halved.read_bytes()[: halved.stat().st_size // 2])
    seg = dicom(bad_series / "seg.dcm", np.zeros((16, 16), np.uint8), modality="SEG")
    noise = np.random.default_rng(2).integers(0, 4000, (64, 64)).astype(np.uint16)
    j2k = truncate_codestream(dicom(bad_series / "cut-j2k.dcm", noise, modality="MR", compress=JPEG2000Lossless))
    bad = {
        empty: "empty file",
        text: "not DICOM",
        halved: "truncated pixel data",
        seg: "non-image object",
        j2k: "undecodable pixel data",
    }
    return good, bad


def test_broken_files_are_reported_with_path_and_reason_and_the_rest_is_kept(tmp_path, dicom, truncate_codestream):
    root = tmp_path / "download"
    good, bad = make_tree_with_broken_files(root, dicom, truncate_codestream)
    result = ingest(root, tmp_path, workers=2)
    dataset = result.dataset
    report = dataset.skipped.set_index("path")
    for path, reason in bad.items():
        row = report.loc[path.relative_to(root).as_posix()]
        assert row["reason"] == reason
    assert len(report) == len(bad)
    assert sorted(set(dataset.index["path"])) == sorted(p.relative_to(root).as_posix() for p in good)
    assert len(dataset.index) == len(good) + 1  # the two-frame file gives two slices
    frames = dataset.index[dataset.index["path"].str.endswith("1-05.dcm")]
    assert frames["frame"].tolist() == [0, 1]
    assert [int(dataset.images[i][0, 0]) for i in frames.index] == [102, 166]
    encoded = dataset.index.set_index("path")
    expected = {"1-02.dcm": 128, "1-03.dcm": 102, "1-04.dcm": 102, "1-06.dcm": 255 - 102, "1-07.dcm": 128}
    for name, grey in expected.items():
        slice_id = dataset.index.index[
            dataset.index["path"].str.endswith("LIHC-01/" + DESCRIPTIVE[0] + "/" + DESCRIPTIVE[1] + "/" + name)
        ][0]
        assert dataset.images[slice_id][0, 0] == grey, name
    assert result.skipped_by_reason["empty file"] == 1
    assert set(encoded["label"]) == {"TCGA-LIHC"}


def test_reingesting_an_unchanged_tree_is_a_no_op_and_changes_are_picked_up(tmp_path, dicom):
    root = tmp_path / "download"
    series = root / "TCGA-OV" / "OV-01" / DESCRIPTIVE[0] / DESCRIPTIVE[1]
    paths = [dicom(series / f"1-0{i}.dcm", ct(10 * i), **CT_TAGS) for i in range(1, 5)]
    first = ingest(root, tmp_path)
    assert (first.decoded, first.up_to_date) == (4, False)
    images_file = first.dataset.root / "images.u8"
    stamp = images_file.stat().st_mtime_ns

    again = ingest(root, tmp_path)
    assert again.up_to_date and again.decoded == 0
    assert images_file.stat().st_mtime_ns == stamp

    os.utime(paths[0], ns=(1, 1))  # touched, same content: hashed, not decoded
    touched = ingest(root, tmp_path)
    assert not touched.up_to_date and touched.reused == 4

    dicom(paths[1], ct(200), **CT_TAGS)  # changed content
    dicom(series / "1-09.dcm", ct(0), **CT_TAGS)  # added
    paths[3].unlink()  # removed
    changed = ingest(root, tmp_path)
    assert (changed.decoded, changed.reused) == (2, 2)
    index = changed.dataset.index.set_index("path")
    assert changed.dataset.images[list(changed.dataset.index["path"]).index(paths[1].relative_to(root).as_posix())][
        0, 0
    ] == round(((200 - 39.5) / 399 + 0.5) * 255)
    assert paths[3].relative_to(root).as_posix() not in index.index
    assert len(index) == 4


def test_a_dataset_ingested_before_attributes_reads_them_as_unknown_and_is_updated_incrementally(tmp_path, dicom):
    root = tmp_path / "download"
    series = root / "TCGA-OV" / "OV-01" / DESCRIPTIVE[0] / DESCRIPTIVE[1]
    tags = dict(CT_TAGS, BodyPartExamined="PELVIS", PatientSex="F", PatientAge="061Y", SliceThickness="2.50")
    for i in range(1, 4):
        dicom(series / f"1-0{i}.dcm", ct(10 * i), **tags)
    dataset = ingest(root, tmp_path).dataset
    assert dataset.index[["body_part", "sex", "age", "slice_thickness"]].drop_duplicates().values.tolist() == [
        ["PELVIS", "F", "61", "2.5"]
    ]
    old = pd.read_csv(dataset.root / INDEX, dtype=str, keep_default_na=False).drop(columns=ATTRIBUTE_COLUMNS)
    old.to_csv(dataset.root / INDEX, index=False)  # as ingested before slices had attributes
    manifest = json.loads((dataset.root / MANIFEST).read_text())
    (dataset.root / MANIFEST).write_text(json.dumps({**manifest, "integrity": integrity(dataset.root)}))

    before = Dataset(dataset.root).verify()
    assert (before.index[ATTRIBUTE_COLUMNS] == "").all().all() and before.fingerprint == dataset.fingerprint
    assert ingest(root, tmp_path).up_to_date
    dicom(series / "1-04.dcm", ct(40), **tags)
    updated = ingest(root, tmp_path)
    assert (updated.decoded, updated.reused) == (1, 3)
    assert updated.dataset.index.groupby("path")["body_part"].first().to_dict() == {
        **{f"{series.relative_to(root).as_posix()}/1-0{i}.dcm": "" for i in range(1, 4)},
        f"{series.relative_to(root).as_posix()}/1-04.dcm": "PELVIS",
    }


def test_an_interrupted_ingest_resumes_where_it_stopped(tmp_path, dicom, monkeypatch):
    root = tmp_path / "download"
    for patient in range(3):
        series = root / "TCGA-STAD" / f"STAD-{patient}" / DESCRIPTIVE[0] / DESCRIPTIVE[1]
        for i in range(4):
            dicom(series / f"1-0{i}.dcm", ct(10 * i + patient), patient=f"STAD-{patient}", **CT_TAGS)
    real_decode, calls = ingest_module._decode_job, []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_decode(job)

    monkeypatch.setattr(ingest_module, "_decode_job", interrupted)
    monkeypatch.setattr(ingest_module, "COMMIT_EVERY_S", 0.0)
    with pytest.raises(KeyboardInterrupt):
        ingest(root, tmp_path)
    monkeypatch.setattr(ingest_module, "_decode_job", real_decode)
    resumed = ingest(root, tmp_path)
    assert (resumed.resumed, resumed.decoded) == (6, 6)
    fresh = ingest_tcia(root, "fresh", tmp_path / "cache", OPTIONS, workers=1).dataset
    by_path = lambda d: {(r.path, r.frame): d.images[i].tobytes() for i, r in d.index.iterrows()}  # noqa: E731
    assert by_path(resumed.dataset) == by_path(fresh)
    assert not (tmp_path / "cache" / ".test@partial").exists()


def test_a_build_interrupted_before_slices_had_attributes_starts_over(tmp_path, dicom, monkeypatch):
    root = tmp_path / "download"
    series = root / "TCGA-STAD" / "STAD-0" / DESCRIPTIVE[0] / DESCRIPTIVE[1]
    for i in range(4):
        dicom(series / f"1-0{i}.dcm", ct(10 * i), patient="STAD-0", PatientSex="M", **CT_TAGS)
    real_decode = ingest_module._decode_job

    def interrupted(job):
        if job[0].endswith("1-02.dcm"):
            raise KeyboardInterrupt
        return real_decode(job)

    monkeypatch.setattr(ingest_module, "_decode_job", interrupted)
    monkeypatch.setattr(ingest_module, "COMMIT_EVERY_S", 0.0)
    with pytest.raises(KeyboardInterrupt):
        ingest(root, tmp_path)
    partial = tmp_path / "cache" / ".test@partial"
    old = pd.read_csv(partial / INDEX, dtype=str, keep_default_na=False).drop(columns=ATTRIBUTE_COLUMNS)
    old.to_csv(partial / INDEX, index=False)  # as an older version wrote it, committed
    journal = json.loads((partial / "journal.json").read_text())
    journal["bytes"][INDEX] = (partial / INDEX).stat().st_size
    (partial / "journal.json").write_text(json.dumps(journal))
    monkeypatch.setattr(ingest_module, "_decode_job", real_decode)
    resumed = ingest(root, tmp_path)
    assert (resumed.resumed, resumed.decoded) == (0, 4)
    assert set(resumed.dataset.index["sex"]) == {"M"}


def test_changing_image_options_rebuilds_everything(tmp_path, dicom):
    root = tmp_path / "download"
    dicom(root / "TCGA-OV" / "OV-01" / DESCRIPTIVE[0] / DESCRIPTIVE[1] / "1-01.dcm", ct(), **CT_TAGS)
    ingest(root, tmp_path)
    bigger = ingest_tcia(root, "test", tmp_path / "cache", ImageOptions(size=48), workers=1)
    assert bigger.decoded == 1 and bigger.dataset.images.shape == (1, 48, 48)


def test_an_empty_folder_is_an_error_not_an_empty_dataset(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM files"):
        ingest(tmp_path / "nothing", tmp_path)
