"""Shared fixtures: an isolated hashbench home, a DICOM file factory, the tiny phantom."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, SegmentationStorage, generate_uid

# Rich sizes its output from COLUMNS when it is created: wide, so CLI tests see unwrapped lines.
os.environ["COLUMNS"] = "200"


@pytest.fixture(autouse=True, scope="session")
def hashbench_home(tmp_path_factory):
    """Every test writes under a temporary home, never the user's cache."""
    home = tmp_path_factory.mktemp("hashbench-home")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("HASHBENCH_HOME", str(home))
    yield home
    patcher.undo()


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    modality: str = "CT",
    patient: str | None = "P1",
    collection_tag: str | None = None,
    series_uid: str | None = None,
    photometric: str = "MONOCHROME2",
    compress: str | None = None,
    file_header: bool = True,
    **tags,
) -> Path:
    """Write a minimal but valid DICOM image; ``pixels`` is (rows, cols), (frames, rows, cols) or (rows, cols, 3).

    ``file_header=False`` writes the bare data set, implicit VR, without the Part-10 preamble and file meta, as older writers did.
    """
    ds = Dataset()
    sop_uid = generate_uid()
    sop_class = {"CT": CTImageStorage, "SEG": SegmentationStorage}.get(modality, MRImageStorage)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop_uid, modality
    if patient is not None:
        ds.PatientID = patient
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    colour = pixels.ndim == 3 and pixels.shape[-1] == 3
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if collection_tag is not None:
        ds.private_block(0x0013, "CTP", create=True).add_new(0x10, "LO", collection_tag)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if compress:
        ds.compress(compress, pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_header:
        ds.save_as(path, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
        assert path.read_bytes()[128:132] != b"DICM"
    return path


@pytest.fixture
def dicom():
    return write_dicom


def truncate_j2k(path: Path) -> Path:
    """Keep the DICOM structure valid but cut the compressed frame in half, as a broken download does."""
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds.save_as(path)
    return path


@pytest.fixture
def truncate_codestream():
    return truncate_j2k


def ramp(rows: int = 16, cols: int = 16, low: int = 0, high: int = 2000) -> np.ndarray:
    """A uint16 ramp: distinct values, so every pixel of a decode can be checked."""
    return np.linspace(low, high, rows * cols).reshape(rows, cols).astype(np.uint16)


@pytest.fixture
def ramp_image():
    return ramp


@pytest.fixture(scope="session")
def tiny_phantom(hashbench_home):
    """The tiny phantom profile, generated and ingested once for the session."""
    from hashbench.datasets import ingest_phantom

    return ingest_phantom(profile="tiny", workers=2)


@pytest.fixture(scope="session")
def default_phantom(hashbench_home):
    """The default phantom (80 patients, 1,377 slices): for tests that measure learning."""
    from hashbench.datasets import ingest_phantom

    return ingest_phantom(profile="default", workers=2)


def chance_metrics(dataset, metrics=("map@10", "map@all"), bits=16, split=None):
    """Metrics of random codes on the dataset's default split (or ``split``), averaged over draws: the floor to clear."""
    from hashbench.data.sides import class_ids
    from hashbench.data.splits import SEARCHED
    from hashbench.evaluation.evaluate import evaluate

    side = dataset.split(split or dataset.default_split)
    labels, _ = class_ids(dataset.index.loc[side.index, "label"], dataset.multi_label)
    query, database = (side == "query").to_numpy(), side.isin(SEARCHED).to_numpy()
    rng = np.random.default_rng(0)
    draws = [
        evaluate(
            rng.random((query.sum(), bits)) < 0.5,
            labels[query],
            rng.random((database.sum(), bits)) < 0.5,
            labels[database],
            metrics,
        ).metrics
        for _ in range(5)
    ]
    return {m: float(np.mean([d[m] for d in draws])) for m in metrics}


@pytest.fixture
def chance():
    return chance_metrics


@pytest.fixture
def quick_phantom_cell(default_phantom, tmp_path):
    """``run(method)``: one finished 16-bit cell of the quick profile on the default phantom (3 epochs, CPU), and the
    metrics of random codes on the same split: what a method's learning test compares."""
    from hashbench.api import RunRequest, run_grid

    def run(method: str, epochs: int = 3):
        request = RunRequest(methods=[method], bits=[16], epochs=epochs, profile="quick", device="cpu")
        (outcome,) = run_grid(request, default_phantom.dataset, tmp_path)
        assert outcome.status == "done", outcome.error
        return outcome.metrics, chance_metrics(default_phantom.dataset)

    return run


def write_cell(
    out, method, query_bits, query_labels, database_bits, database_labels, seed=0, dataset="toy", **config_fields
):
    """A finished cell written straight from codes (no training): for tests of what reads the results store."""
    from hashbench.evaluation.evaluate import STORED_METRICS, evaluate, pack, tie_diagnostics
    from hashbench.store.results import CellConfig, ResultsStore

    fields = {
        "backbone": "none",
        "epochs": 1,
        "image_size": 8,
        "split": "patient",
        "train": {"optimizer": "adam", "lr": 1e-3},
        "weights": {"none": "random"},
        "profile": "quick",
        **config_fields,
    }
    config = CellConfig(dataset=dataset, method=method, bits=query_bits.shape[1], seed=seed, **fields)
    cell = ResultsStore(out).cell(config)
    cell.directory.mkdir(parents=True)
    result = evaluate(query_bits, query_labels, database_bits, database_labels, STORED_METRICS)
    cell.start(config)
    arrays = {
        "query_codes": pack(query_bits),
        "database_codes": pack(database_bits),
        "query_labels": query_labels,
        "database_labels": database_labels,
        "query_ids": np.arange(len(query_bits)),
        "database_ids": np.arange(len(database_bits)) + len(query_bits),
        "class_names": np.array([f"class{i}" for i in range(int(max(query_labels.max(), database_labels.max())) + 1)]),
        "bits": np.array(query_bits.shape[1]),
        **{f"per_query/{name}": values for name, values in result.per_query.items()},
    }
    record = {
        "metrics": result.metrics,
        "ties": tie_diagnostics(result.counts, database_bits),
        "evaluation": {"tie_break": "random", "tie_seed": 0},
        "synthetic": True,
    }
    cell.finish(arrays, lambda handle: handle.write(b""), record)
    return cell.directory


@pytest.fixture
def cell_writer():
    return write_cell
