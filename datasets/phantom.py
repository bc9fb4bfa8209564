"""The phantom collection: a synthetic TCIA download, written as real DICOM files.

hashbench's embedded default dataset. Machines without internet (CI, this project's
own) cannot fetch TCIA data, so the suite generates a stand-in that goes through the
very same loader: the NBIA descriptive layout, ``metadata.csv``, the CTP collection
tag, CT / MR / PT series with proper rescale and window tags, some MONOCHROME1 and
some JPEG 2000 or RLE compressed files, and a few blank slices for the IQR rule.

The ten classes are the paper's ten collections (Table 1). Each patient has a body
(outline, fat, muscle, bones and organs at their heights) whose size, position,
contrast and noise vary from patient to patient; each series covers the height of
its collection's organ and shows a lesion there, whose look depends on the cancer
type. Classes that share an organ (two kidney cancers) or a region (the pelvis,
the upper abdomen) differ only in the lesion, so retrieval is learnable but not
trivial. Neighbouring slices of a series are 1% of the body height apart and nearly
identical, as in real scans, so a slice-level split leaks.

Everything is a pure function of (profile, seed): two machines generate the same
files byte for byte.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hashbench.data.manifest import Manifest
from hashbench.data.sources import SIZE_HELP, Source, register_source
from hashbench.model.options import option
from hashbench.store import locks
from hashbench.store.paths import sources_dir

if TYPE_CHECKING:  # pydicom, PIL and scipy load where the files are generated or read, not where sources are listed
    from pydicom.dataset import Dataset

    from hashbench.data.ingest import IngestResult

GENERATOR_VERSION = 2


@dataclass(frozen=True)
class Profile:
    """How big a phantom download to write."""

    patients_per_collection: int
    slices_per_series: int
    matrix: int  # rows = columns of every image (PET is blurred to look coarser)
    blank_slice_rate: float = 0.2  # share of series that end in a blank (outlier) slice


PHANTOM_SIZES = {
    "tiny": Profile(patients_per_collection=3, slices_per_series=4, matrix=64),
    "default": Profile(patients_per_collection=8, slices_per_series=12, matrix=192),
    "large": Profile(patients_per_collection=40, slices_per_series=24, matrix=256),
}


@dataclass(frozen=True)
class Organ:
    """An ellipsoid in body coordinates: x across (-1 right .. 1 left), y front (-1) to back (1), z 0 pelvis .. 1 chest."""

    z: tuple[float, float]
    centre: tuple[float, float]
    radii: tuple[float, float]
    tissue: tuple[float, float, float]  # CT (HU), MR signal, PET uptake


# Painted in this order, later over earlier.
ANATOMY = {
    "lung_r": Organ((0.70, 1.05), (-0.45, -0.05), (0.36, 0.62), (-850, 30, 0.3)),
    "lung_l": Organ((0.70, 1.05), (0.45, -0.05), (0.34, 0.62), (-850, 30, 0.3)),
    "heart": Organ((0.70, 0.86), (0.15, -0.30), (0.30, 0.34), (45, 450, 2.5)),
    "liver": Organ((0.54, 0.76), (-0.42, -0.05), (0.46, 0.58), (60, 500, 2.0)),
    "spleen": Organ((0.55, 0.68), (0.62, 0.25), (0.18, 0.28), (50, 420, 1.8)),
    "stomach": Organ((0.55, 0.70), (0.38, -0.22), (0.30, 0.32), (25, 250, 1.4)),
    "pancreas": Organ((0.48, 0.58), (0.08, 0.12), (0.36, 0.11), (45, 520, 1.5)),
    "kidney_r": Organ((0.38, 0.56), (-0.42, 0.38), (0.15, 0.22), (150, 350, 3.5)),
    "kidney_l": Organ((0.38, 0.56), (0.42, 0.38), (0.15, 0.22), (150, 350, 3.5)),
    "bowel": Organ((0.20, 0.48), (0.0, -0.15), (0.55, 0.40), (35, 300, 1.6)),
    "bladder": Organ((0.0, 0.14), (0.0, -0.30), (0.26, 0.22), (8, 1200, 10.0)),
    "uterus": Organ((0.10, 0.27), (0.0, 0.0), (0.24, 0.20), (55, 600, 1.8)),
    "ovary_r": Organ((0.13, 0.24), (-0.36, 0.05), (0.10, 0.08), (35, 700, 1.6)),
    "ovary_l": Organ((0.13, 0.24), (0.36, 0.05), (0.10, 0.08), (35, 700, 1.6)),
    "cervix": Organ((0.03, 0.13), (0.0, 0.16), (0.12, 0.10), (50, 450, 1.7)),
    "esophagus": Organ((0.55, 1.05), (0.05, 0.38), (0.07, 0.07), (40, 380, 1.2)),
    "aorta": Organ((0.30, 1.05), (0.12, 0.52), (0.07, 0.07), (170, 200, 1.8)),
    "spine": Organ((0.15, 1.05), (0.0, 0.74), (0.13, 0.13), (700, 150, 0.8)),
    "pelvis_r": Organ((0.0, 0.30), (-0.62, 0.40), (0.20, 0.30), (650, 150, 0.8)),
    "pelvis_l": Organ((0.0, 0.30), (0.62, 0.40), (0.20, 0.30), (650, 150, 0.8)),
}
FEMALE_ONLY = {"uterus", "ovary_r", "ovary_l", "cervix"}
BODY_FAT, BODY_MUSCLE, AIR = (-100, 900, 0.5), (45, 400, 1.0), (-1000, 0, 0.0)


@dataclass(frozen=True)
class Collection:
    """One class: the paper's collection, its organ, modalities (Table 1) and lesion look."""

    name: str
    organs: tuple[str, ...]  # where the lesion sits (one picked per patient)
    modalities: tuple[str, ...]
    lesion: tuple[float, float, float]  # CT, MR, PET of the lesion
    radius: tuple[float, float]  # lesion radius range, body units
    style: str  # solid | necrotic | cystic | wall
    female: bool = False


COLLECTIONS = (
    Collection("TCGA-KIRP", ("kidney_r", "kidney_l"), ("CT", "MR", "PT"), (40, 250, 4.0), (0.07, 0.11), "solid"),
    Collection("TCGA-LIHC", ("liver",), ("MR", "CT", "PT"), (110, 750, 6.0), (0.08, 0.14), "solid"),
    # Table 1 lists no radiology for CPTAC-CCRCC, yet the paper uses its images: CT and MR here.
    Collection("CPTAC-CCRCC", ("kidney_r", "kidney_l"), ("CT", "MR"), (210, 700, 5.0), (0.08, 0.13), "necrotic"),
    Collection("TCGA-UCEC", ("uterus",), ("CT", "MR", "PT"), (85, 900, 8.0), (0.08, 0.12), "solid", female=True),
    Collection("TCGA-OV", ("ovary_r", "ovary_l"), ("CT", "MR"), (12, 1150, 3.0), (0.12, 0.18), "cystic", female=True),
    Collection("TCGA-ESCA", ("esophagus",), ("CT",), (55, 500, 9.0), (0.10, 0.14), "wall"),
    Collection("CPTAC-PDA", ("pancreas",), ("CT", "MR", "PT"), (15, 250, 7.0), (0.06, 0.09), "solid"),
    Collection("TCGA-STAD", ("stomach",), ("CT",), (85, 600, 7.0), (0.10, 0.15), "wall"),
    Collection("TCGA-CESC", ("cervix",), ("MR",), (75, 800, 9.0), (0.08, 0.12), "solid", female=True),
    Collection("TCGA-LUAD", ("lung_r", "lung_l"), ("CT", "PT"), (30, 300, 8.0), (0.05, 0.09), "solid"),
)
SOP_CLASSES = {  # pydicom.uid's CTImageStorage, MRImageStorage and PositronEmissionTomographyImageStorage
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
METADATA_COLUMNS = [
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


def generate(root: Path, profile: str = "default", seed: int = 0) -> Path:
    """Write the phantom download under ``root`` (skipped when already complete); returns it."""
    if profile not in PHANTOM_SIZES:
        raise ValueError(f"unknown phantom profile {profile!r}; valid: {', '.join(PHANTOM_SIZES)}")
    stamp = {"generator": GENERATOR_VERSION, "profile": profile, "seed": seed, **asdict(PHANTOM_SIZES[profile])}
    marker = root / "phantom.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rows = []
    for class_index, collection in enumerate(COLLECTIONS):
        for patient_index in range(PHANTOM_SIZES[profile].patients_per_collection):
            rng = np.random.default_rng([seed, class_index, patient_index])
            rows.extend(_write_patient(root, collection, patient_index, PHANTOM_SIZES[profile], rng, seed))
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    marker.write_text(json.dumps(stamp))
    return root


@dataclass
class _Patient:
    """Everything that varies from patient to patient."""

    width: float  # body half-width, share of the field of view
    depth: float  # body half-depth, share of the half-width
    shift: tuple[float, float]
    organ_jitter: dict[str, tuple[float, float, float, float]]  # dx, dy, scale, z shift
    female: bool
    contrast: float
    noise: float
    texture: np.ndarray  # smooth field in [-1, 1], fixed across slices


def _new_patient(collection: Collection, profile: Profile, rng: np.random.Generator) -> _Patient:
    from PIL import Image

    coarse = rng.uniform(-1, 1, (6, 6)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((profile.matrix, profile.matrix), Image.Resampling.BICUBIC))
    return _Patient(
        width=rng.uniform(0.74, 0.9),
        depth=rng.uniform(0.6, 0.74),
        shift=(rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)),
        organ_jitter={
            name: (rng.normal(0, 0.04), rng.normal(0, 0.04), rng.uniform(0.85, 1.15), rng.normal(0, 0.015))
            for name in ANATOMY
        },
        female=collection.female or bool(rng.random() < 0.5),
        contrast=rng.uniform(0.85, 1.15),
        noise=rng.uniform(0.6, 1.6),
        texture=np.clip(texture, -1, 1),
    )


def _organ_z(organ: Organ, jitter: tuple[float, float, float, float]) -> float:
    return (organ.z[0] + organ.z[1]) / 2 + jitter[3]


def _write_patient(
    root: Path, collection: Collection, patient_index: int, profile: Profile, rng: np.random.Generator, seed: int
) -> list[dict]:
    from pydicom.uid import generate_uid

    patient = _new_patient(collection, profile, rng)
    subject = f"{collection.name}-PH{patient_index + 1:03d}"
    organ_name = collection.organs[int(rng.integers(len(collection.organs)))]
    organ = ANATOMY[organ_name]
    jitter = patient.organ_jitter[organ_name]
    z_centre = float(np.clip(_organ_z(organ, jitter) + rng.normal(0, 0.01), 0.04, 0.96))
    lesion = {
        "x": organ.centre[0] + jitter[0] + rng.uniform(-0.4, 0.4) * organ.radii[0],
        "y": organ.centre[1] + jitter[1] + rng.uniform(-0.4, 0.4) * organ.radii[1],
        "z": z_centre + rng.normal(0, 0.01),
        "r": rng.uniform(*collection.radius),
    }
    if collection.style == "wall":  # wall thickening is centred on the organ itself
        lesion.update(x=organ.centre[0] + jitter[0], y=organ.centre[1] + jitter[1])
    modalities = [collection.modalities[0], *(m for m in collection.modalities[1:] if rng.random() < 0.5)]
    study_uid = generate_uid(entropy_srcs=[str(seed), subject, "study"])
    date = f"{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}-{int(rng.integers(1995, 2015))}"
    study_description = {"CT": "CT ABDOMEN PELVIS W CONTRAST", "MR": "MRI ABDOMEN PELVIS", "PT": "PETCT WHOLE BODY"}[
        modalities[0]
    ]
    study_folder = f"{date}-NA-{study_description}-{study_uid[-5:]}"
    rows = []
    for series_number, modality in enumerate(modalities, start=1):
        series_uid = generate_uid(entropy_srcs=[str(seed), subject, modality, "series"])
        description = {"CT": "ABD PELVIS 2.5MM", "MR": "AX T2 FSE", "PT": "PET AC"}[modality]
        series_folder = f"{series_number:.6f}-{description}-{series_uid[-5:]}"
        folder = root / collection.name / subject / study_folder / series_folder
        folder.mkdir(parents=True)
        encoding = rng.choice(["plain", "plain", "plain", "plain", "j2k", "rle"])
        monochrome1 = modality == "MR" and rng.random() < 0.3
        window_tags = rng.random() < 0.8
        n = profile.slices_per_series
        heights = z_centre + np.linspace(-0.05, 0.05, n)
        blank = rng.random() < profile.blank_slice_rate
        size = 0
        for i in range(n + int(blank)):
            z = float(heights[min(i, n - 1)])
            tissue = _slice(patient, lesion, collection, z, modality, profile, rng, blank=i == n)
            ds = _dicom(tissue, modality, window_tags, monochrome1, rng)
            _identify(
                ds,
                collection,
                subject,
                study_uid,
                series_uid,
                series_number,
                description,
                study_description,
                date,
                modality,
                i,
                z,
                seed,
            )
            path = folder / f"1-{i + 1:02d}.dcm"
            _save(ds, path, encoding)
            size += path.stat().st_size
        rows.append(
            {
                "Series UID": series_uid,
                "Collection": collection.name,
                "3rd Party Analysis": "NO",
                "Data Description URI": "",
                "Subject ID": subject,
                "Study UID": study_uid,
                "Study Description": study_description,
                "Study Date": date.replace("-", "/"),
                "Series Description": description,
                "Manufacturer": "hashbench phantom",
                "Modality": modality,
                "SOP Class Name": f"{modality} Image Storage",
                "SOP Class UID": SOP_CLASSES[modality],
                "Number of Images": n + int(blank),
                "File Size": size,
                "File Location": f"./{collection.name}/{subject}/{study_folder}/{series_folder}",
                "Download Timestamp": "",
            }
        )
    return rows


def _slice(
    patient: _Patient,
    lesion: dict,
    collection: Collection,
    z: float,
    modality: str,
    profile: Profile,
    rng: np.random.Generator,
    blank: bool,
) -> np.ndarray:
    """The three tissue maps (CT HU, MR signal, PET uptake) of one axial slice: (3, n, n)."""
    n = profile.matrix
    axis = (np.arange(n) - n / 2 + 0.5) / (n / 2)
    xs, ys = np.meshgrid(axis, axis)
    bx, by = (xs - patient.shift[0]) / patient.width, (ys - patient.shift[1]) / (patient.width * patient.depth)
    maps = np.empty((3, n, n), np.float32)
    maps[:] = np.array(AIR, np.float32)[:, None, None]
    if blank:  # table only: what a scan range overshoot or a failed reconstruction looks like
        return maps
    _paint(maps, bx**2 + by**2 <= 1.0, BODY_FAT)
    _paint(maps, (bx / 0.9) ** 2 + (by / 0.86) ** 2 <= 1.0, BODY_MUSCLE)
    for name, organ in ANATOMY.items():
        if name in FEMALE_ONLY and not patient.female:
            continue
        dx, dy, scale, dz = patient.organ_jitter[name]
        z0, z1 = organ.z[0] + dz, organ.z[1] + dz
        if not z0 <= z <= z1:
            continue
        profile_z = np.sqrt(max(1 - ((z - (z0 + z1) / 2) / ((z1 - z0) / 2)) ** 2, 0.0)) ** 0.5
        rx, ry = organ.radii[0] * scale * profile_z, organ.radii[1] * scale * profile_z
        inside = ((bx - organ.centre[0] - dx) / rx) ** 2 + ((by - organ.centre[1] - dy) / ry) ** 2 <= 1.0
        tissue = organ.tissue
        if tissue[0] > -500:  # soft tissue contrast varies between patients; air and bone do not
            tissue = (tissue[0] * patient.contrast, tissue[1] * patient.contrast, tissue[2])
        _paint(maps, inside, tissue)
    _paint_lesion(maps, bx, by, z, lesion, collection)
    maps[0] += 12 * patient.texture
    maps[1] += 40 * patient.texture
    return maps


def _paint(maps: np.ndarray, mask: np.ndarray, tissue: tuple[float, float, float]) -> None:
    for channel, value in enumerate(tissue):
        maps[channel][mask] = value


def _paint_lesion(
    maps: np.ndarray, bx: np.ndarray, by: np.ndarray, z: float, lesion: dict, collection: Collection
) -> None:
    """A sphere of the collection's look; its cross-section shrinks away from its centre height."""
    z_radius = 0.06
    if abs(z - lesion["z"]) >= z_radius:
        return
    radius = lesion["r"] * np.sqrt(1 - ((z - lesion["z"]) / z_radius) ** 2)
    distance = np.sqrt((bx - lesion["x"]) ** 2 + (by - lesion["y"]) ** 2)
    ct, mr, pet = collection.lesion
    if collection.style == "cystic":  # fluid with an enhancing rim
        _paint(maps, distance <= radius, (90, 500, 2.5))
        _paint(maps, distance <= radius * 0.8, (ct, mr, pet))
    elif collection.style == "necrotic":  # enhancing tumour with a necrotic core
        _paint(maps, distance <= radius, (ct, mr, pet))
        _paint(maps, distance <= radius * 0.45, (15, 1100, 0.8))
    elif collection.style == "wall":  # thickened wall around the lumen
        _paint(maps, distance <= radius, (ct, mr, pet))
        _paint(maps, distance <= radius * 0.35, (-900, 0, 0.0))
    else:
        _paint(maps, distance <= radius, (ct, mr, pet))


def _dicom(maps: np.ndarray, modality: str, window_tags: bool, monochrome1: bool, rng: np.random.Generator) -> Dataset:
    """Stored pixels and the tags that turn them back into physical values."""
    from pydicom.dataset import Dataset
    from scipy.ndimage import gaussian_filter

    ds = Dataset()
    noise = rng.standard_normal(maps.shape[1:]).astype(np.float32)
    if modality == "CT":
        hu = maps[0] + 10 * noise
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        stored = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)
        window = ([40, -600], [400, 1500]) if rng.random() < 0.3 else (40, 400)  # some carry two presets
    elif modality == "MR":
        bias = np.linspace(0.85, 1.15, maps.shape[1])[None, :]
        signal = np.abs(maps[1] * bias + 25 * noise)
        stored = np.clip(np.rint(signal), 0, 4095).astype(np.uint16)
        low, high = np.percentile(stored, (1, 99))
        window = (round(float(low + high) / 2), max(round(float(high - low)), 2))
    else:
        activity = gaussian_filter(maps[2], sigma=1.5) * 4000.0
        activity = np.clip(activity + np.sqrt(np.maximum(activity, 0) * 20) * noise, 0, None)
        slope = max(float(activity.max()) / 30000.0, 1e-3)
        stored = np.rint(activity / slope).astype(np.uint16)
        ds.RescaleIntercept, ds.RescaleSlope, ds.Units = 0, round(slope, 6), "BQML"
        window = None
    photometric = "MONOCHROME2"
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
        window = (4095 - window[0], window[1])
        photometric = "MONOCHROME1"
    if window is not None and window_tags:
        ds.WindowCenter, ds.WindowWidth = window
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        16,
        16 if modality == "PT" else 12,
        15 if modality == "PT" else 11,
        0,
    )
    ds.PixelData = stored.tobytes()
    return ds


def _identify(
    ds: Dataset,
    collection: Collection,
    subject: str,
    study_uid: str,
    series_uid: str,
    series_number: int,
    description: str,
    study_description: str,
    date: str,
    modality: str,
    index: int,
    z: float,
    seed: int,
) -> None:
    """Patient, study and series identity, geometry, and TCIA's CTP collection tag."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_uid = generate_uid(entropy_srcs=[str(seed), series_uid, str(index)])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASSES[modality], sop_uid
    ds.PatientID, ds.PatientName = subject, subject
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    month, day, year = date.split("-")
    ds.StudyDate, ds.StudyDescription = f"{year}{month}{day}", study_description
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = (
        modality,
        series_number,
        description,
        index + 1,
    )
    ds.BodyPartExamined = "ABDOMEN"
    location = round(z * 700.0, 2)  # body height 700 mm
    ds.SliceLocation, ds.ImagePositionPatient = location, [-250.0, -250.0, location]
    ds.SliceThickness, ds.PixelSpacing = 7.0, [500.0 / ds.Rows, 500.0 / ds.Columns]
    block = ds.private_block(0x0013, "CTP", create=True)
    block.add_new(0x10, "LO", collection.name)


def _save(ds: Dataset, path: Path, encoding: str) -> None:
    from pydicom.uid import JPEG2000Lossless, RLELossless

    if encoding == "j2k":  # lossless: the instance keeps its UID
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif encoding == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


@dataclass(frozen=True, kw_only=True)
class PhantomOptions:
    profile: str = option("default", "tiny, default or large.")
    seed: int = option(0, "Generator seed: same seed, same files.")
    size: int = option(224, SIZE_HELP)

    def __post_init__(self) -> None:
        from hashbench.data.dicom import ImageOptions

        if self.profile not in PHANTOM_SIZES:
            raise ValueError(f"unknown profile {self.profile!r}; valid: {', '.join(PHANTOM_SIZES)}")
        ImageOptions(size=self.size)


@register_source("phantom")
class Phantom(Source):
    """Generate the synthetic phantom download (once) and ingest it through the TCIA loader."""

    summary = "synthetic TCIA-like collection, generated locally; the embedded default"
    Options = PhantomOptions

    def dataset_name(self, options: PhantomOptions) -> str:
        return (
            "phantom"
            if options.profile == "default" and options.seed == 0
            else f"phantom-{options.profile}-seed{options.seed}"
        )

    def ingest(
        self, options: PhantomOptions, name: str, destination: Path, workers: int | None = None, progress: bool = False
    ) -> IngestResult:
        from hashbench.data.dicom import ImageOptions
        from hashbench.datasets import tcia

        source = sources_dir() / f"phantom-{options.profile}-seed{options.seed}"
        with locks.exclusive(
            sources_dir() / f".{source.name}.lock", wait=True
        ):  # two first runs at once generate it once
            generate(source, options.profile, options.seed)
        extra = {"synthetic": True, "phantom": {"profile": options.profile, "seed": options.seed}}
        return tcia.ingest_tcia(
            source,
            name,
            destination,
            ImageOptions(size=options.size),
            True,
            workers,
            progress,
            kind="phantom",
            extra_manifest=extra,
        )

    def rebuild_command(self, manifest: Manifest, name: str) -> str:
        phantom = manifest.stored.get("phantom", {})
        return f"hashbench ingest phantom --profile {phantom.get('profile', 'default')} --seed {phantom.get('seed', 0)} --name {name} --size {manifest.options.get('size', 224)}"
