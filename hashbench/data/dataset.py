"""An ingested dataset on disk, read back: images memory-mapped, index as a table, splits drawn from it.

Layout of ``<home>/datasets/<name>/`` (written by :mod:`hashbench.data.ingest`):

- ``images.u8``     all slices, uint8, shape (n, size, size) (x 3 in colour), one raw memory-mapped array
- ``index.csv``     one row per slice: label, patient, study, series, modality, attributes
                    (body part, sex, age, manufacturer, slice thickness; '' where unknown),
                    source path and frame, image statistics
- ``files.csv``     one row per source file: size, mtime, digest, kept/skipped and why
                    (the ingest report; also what makes re-ingesting incremental)
- ``manifest.json`` what was ingested from where, with which image options, the
                    data's fingerprint, and the integrity record every open checks
                    (counts, the image array's size, checksums of both tables)

A dataset's **fingerprint** names what it was built from, not where or when: the
image options, the cleaning switch, the cache format, every source file's path and
content digest, and every slice's identity (label, patient, study, series, modality,
path, frame); not its attributes, which describe a slice without making it another one
(cells keep their own copy). Results record it, so a re-ingested dataset that changed
never passes for the one a result was computed on. The decoded pixels are not hashed (too costly
for large collections): a decoder change that keeps the format version would pass.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from hashbench.data import splits
from hashbench.data.attributes import ATTRIBUTE_COLUMNS
from hashbench.data.cleaning import iqr_outliers
from hashbench.data.manifest import Manifest, read_manifest
from hashbench.store import locks
from hashbench.store.digest import file_sha256
from hashbench.store.paths import SAFE_NAME

FORMAT_VERSION = 1
IMAGES, INDEX, FILES, MANIFEST = "images.u8", "index.csv", "files.csv", "manifest.json"
INDEX_DTYPES = {
    "label": str,
    "label_source": str,
    "patient": str,
    "study": str,
    "series": str,
    "modality": str,
    "path": str,
    **dict.fromkeys(ATTRIBUTE_COLUMNS, str),
}
FILES_DTYPES = {"path": str, "digest": str, "status": str, "reason": str, "detail": str}
SETTINGS_KEYS = ("options", "clean", "format")
LABEL_SEPARATOR = "|"  # joins the labels of a multi-label image in its label column
SLICE_IDENTITY = ["label", "patient", "study", "series", "modality", "path", "frame"]
RETIRED = "@replaced-"  # .<name>@replaced-<pid>-<ns>: a build a swap moved aside (``@`` is in no dataset name)


class DatasetError(ValueError):
    """A dataset whose files do not match what its ingest wrote; the message names the command that rebuilds it."""


def lock_path(target: Path) -> Path:
    """The lock an ingest of the dataset at ``target`` holds; whoever settles its swap takes it too."""
    return target.with_name(f".{target.name}@lock")


def finish_swap(target: Path) -> None:
    """Finish what a swap cut by a kill between its two renames left (the caller holds :func:`lock_path`): put the
    retired build back if nothing replaced it, else remove it.

    Only ``.<name>@replaced-*`` folders are touched: the ones a swap of this name created.
    """
    for retired in _retired(target):
        if not (target / MANIFEST).exists() and (retired / MANIFEST).exists():
            shutil.rmtree(target, ignore_errors=True)
            os.replace(retired, target)
        else:
            shutil.rmtree(retired, ignore_errors=True)


def settle_swap(target: Path) -> None:
    """:func:`finish_swap` for a reader (``run``, ``datasets``), so a cut swap never leaves a dataset unknown until the
    next ingest: only if no ingest holds the dataset (a live one may be between its renames, and settles its own)."""
    if not _retired(target):
        return
    try:
        with locks.exclusive(lock_path(target), wait=False) as held:
            if held:
                finish_swap(target)
    except OSError:  # a datasets folder this reader cannot write: the next ingest settles it
        pass


def settle_swaps(root: Path) -> None:
    """:func:`settle_swap` for every dataset under ``root`` whose swap a kill cut."""
    names = {retired.name[1:].partition(RETIRED)[0] for retired in root.glob(f".*{RETIRED}*")}
    for name in sorted(filter(SAFE_NAME.fullmatch, names)):
        settle_swap(root / name)


def _retired(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{glob.escape(target.name)}{RETIRED}*"))


def integrity(root: Path) -> dict[str, object]:
    """What a finished dataset's files must be: cheap to check on every open (sizes, and checksums of the two tables)."""
    return {
        "images_bytes": (root / IMAGES).stat().st_size,
        "index_sha256": file_sha256(root / INDEX),
        "files_sha256": file_sha256(root / FILES),
    }


def _digest(*parts: str) -> str:
    hasher = hashlib.blake2b(digest_size=8)
    for part in parts:
        hasher.update(part.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()


def content_fingerprint(root: Path, settings: dict) -> str:
    """16 hex digits over the settings, the source files' digests and the slices' identities."""
    files = pd.read_csv(root / FILES, dtype=FILES_DTYPES, keep_default_na=False).sort_values("path", kind="stable")
    index = pd.read_csv(root / INDEX, dtype=INDEX_DTYPES, keep_default_na=False).sort_values("slice_id", kind="stable")
    return _digest(
        json.dumps({k: settings.get(k) for k in SETTINGS_KEYS}, sort_keys=True),
        files[["path", "digest", "status"]].to_csv(index=False),
        index[["slice_id", *SLICE_IDENTITY]].to_csv(index=False),
    )


def split_hash(side: pd.Series) -> str:
    """16 hex digits over (slice_id, side) in slice order: two results share queries and training set iff equal."""
    ordered = side.sort_index()
    return _digest("\n".join(f"{i},{s}" for i, s in zip(ordered.index, ordered.to_numpy())))


@dataclass
class Dataset:
    """A read-only view of one ingested dataset."""

    root: Path

    @cached_property
    def manifest(self) -> dict:
        """The manifest as stored (JSON); :attr:`info` is its typed view."""
        return json.loads((self.root / MANIFEST).read_text())

    @cached_property
    def info(self) -> Manifest:
        """The manifest, typed."""
        return read_manifest(self.manifest)

    @property
    def name(self) -> str:
        return self.info.name

    @cached_property
    def fingerprint(self) -> str:
        """The content's fingerprint: written at ingest; computed here for datasets ingested before it was."""
        return self.info.fingerprint or content_fingerprint(self.root, self.manifest)

    def verify(self) -> Dataset:
        """Raise :class:`DatasetError` if the files differ from what the ingest wrote (truncated, replaced, edited)."""
        try:
            expected = self.info.integrity
            if expected is None:  # ingested before integrity was recorded
                return self
            n_bytes = self.info.n_slices * self.image_size**2 * self.channels
            if expected["images_bytes"] != n_bytes:
                raise DatasetError(
                    f"its manifest says {self.info.n_slices} slices but its integrity record {expected['images_bytes']} bytes of images"
                )
            found = integrity(self.root)
        except DatasetError as exc:
            raise DatasetError(self._damaged(str(exc))) from None
        except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise DatasetError(self._damaged(f"{type(exc).__name__}: {exc}")) from None
        wrong = [name for name in expected if found.get(name) != expected[name]]
        if wrong:
            files = {
                "images_bytes": f"{IMAGES} has {found['images_bytes']:,} bytes, not {expected['images_bytes']:,}",
                "index_sha256": f"{INDEX} was changed",
                "files_sha256": f"{FILES} was changed",
            }
            raise DatasetError(self._damaged("; ".join(files[name] for name in wrong)))
        return self

    def _damaged(self, reason: str) -> str:
        return f"dataset {self.root.name} ({self.root}) is damaged: {reason}. Rebuild it: {self.rebuild_command()}"

    def rebuild_command(self) -> str:
        """The ingest command that builds this dataset again from its source (with the options it was built with), as its source says."""
        from hashbench.data.sources import source

        name = self.root.name
        try:
            manifest = self.info
        except (OSError, KeyError, TypeError, ValueError):
            return f"delete {self.root} and ingest its source again (`hashbench ingest SOURCE ... --name {name}`)"
        try:
            return source(manifest.kind).rebuild_command(manifest, name)
        except (LookupError, RuntimeError) as exc:  # a source that is not installed here, or broken
            return f"hashbench ingest {manifest.kind} '{manifest.source}' --name {name} (once its source is available: {exc})"

    @property
    def image_size(self) -> int:
        return int(self.info.options["size"])

    @property
    def channels(self) -> int:
        """3 for a dataset stored in colour (its images are (n, size, size, 3)), else 1."""
        return 3 if self.info.options.get("colour") == "rgb" else 1

    @cached_property
    def index(self) -> pd.DataFrame:
        """All slices indexed by ``slice_id`` (= row of the image array).

        The ``outlier`` column is derived here, not stored, so it always follows the
        current cleaning rule. A dataset ingested before slices had attributes reads them as ''.
        """
        frame = pd.read_csv(self.root / INDEX, dtype=INDEX_DTYPES, keep_default_na=False).set_index("slice_id")
        for column in ATTRIBUTE_COLUMNS:
            if column not in frame:
                frame[column] = ""
        frame["outlier"] = iqr_outliers(frame) if len(frame) else False
        return frame

    @cached_property
    def files(self) -> pd.DataFrame:
        return pd.read_csv(self.root / FILES, dtype=FILES_DTYPES, keep_default_na=False)

    @cached_property
    def images(self) -> np.ndarray:
        """uint8 array (n, size, size), or (n, size, size, 3) in colour, memory-mapped: nothing is loaded until indexed."""
        shape = (self.info.n_slices, self.image_size, self.image_size, *((3,) if self.channels == 3 else ()))
        if shape[0] == 0:
            return np.zeros(shape, np.uint8)
        return np.memmap(self.root / IMAGES, dtype=np.uint8, mode="r", shape=shape)

    @property
    def skipped(self) -> pd.DataFrame:
        """The ingest report: every source file that gave no slice, with its reason."""
        return self.files[self.files["status"] == "skipped"]

    def usable(self, clean: bool | None = None) -> pd.DataFrame:
        """Slices used for training and retrieval: outliers dropped unless cleaning is off."""
        clean = self.info.clean if clean is None else clean
        return self.index[~self.index["outlier"]] if clean else self.index

    def split(
        self,
        protocol: str = "patient",
        seed: int = 0,
        query_fraction: float = 0.2,
        validation_fraction: float = 0.0,
        clean: bool | None = None,
    ) -> pd.Series:
        """Side ('database', 'query', 'validation') per usable slice_id.

        Drawn afresh each time (under a second for the paper's 372,004 slices): a split kept on disk would outlive the
        code that drew it, and each cell names the split it used by its hash.
        """
        rows = self.usable(self.info.clean if clean is None else clean)
        side = splits.split(rows, protocol, seed, query_fraction, validation_fraction, self.protocols).rename("side")
        return side

    @property
    def default_split(self) -> str:
        """The split protocol a run uses unless told otherwise: the data's own where it ships one."""
        return self.info.default_split

    @property
    def protocols(self) -> dict[str, dict]:
        """The split protocols this dataset declares beyond patient and slice (see :mod:`hashbench.data.splits`)."""
        return self.info.protocols

    def protocol_sizes(self) -> dict[str, dict[str, int] | str]:
        """Queries, training images and database of each declared protocol (split seed 0), or why it cannot be drawn here."""
        found = {}
        for protocol in self.protocols:
            try:
                found[protocol] = splits.side_sizes(self.split(protocol))
            except ValueError as exc:
                found[protocol] = f"not available ({exc})"
        return found

    def describe_split(self, protocol: str) -> str:
        """A caption's words for ``protocol`` on this data (a patient-level split of one image per patient is image-level)."""
        if protocol == "patient" and self.info.patients.startswith("one per image"):
            return "image-level split (each image its own patient)"
        return splits.describe(protocol, self.protocols)

    @property
    def multi_label(self) -> bool:
        """Whether an image may carry several labels (its ``label`` holds them joined by ``|``): relevance is sharing one."""
        return self.info.multi_label

    def published_metric(self, protocol: str) -> str | None:
        """The metric the literature reports under ``protocol`` (CIFAR-10's map@all, NUS-WIDE's map@5000), computed beside the rest."""
        return self.protocols.get(protocol, {}).get("metric")

    def class_names(self) -> list[str]:
        """Every class a label names (a multi-label image's labels counted one by one)."""
        labels = self.index.loc[self.index["label"] != "", "label"]
        if self.multi_label:
            return sorted({name for label in labels.unique() for name in label.split(LABEL_SEPARATOR)})
        return sorted(labels.unique())

    def summary(self) -> dict:
        """Counts for listings: slices kept, outliers, patients, classes, skipped files, bytes."""
        index = self.index
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return {
            "name": self.name,
            "kind": self.info.kind,
            "slices": int((~index["outlier"]).sum()) if self.info.clean else len(index),
            "outliers": int(index["outlier"].sum()),
            "patients": int(index["patient"].nunique()),
            "classes": len(self.class_names()),
            "files": len(self.files),
            "skipped": len(self.skipped),
            "image_size": self.image_size,
            "bytes": size,
            "source": self.info.source,
            "updated": self.info.updated,
        }

    def class_table(self) -> pd.DataFrame:
        """Per class (each of a multi-label image's classes): slices, patients, modalities with counts, where labels came from."""
        usable = self.usable()
        if self.multi_label:
            usable = usable.assign(label=usable["label"].str.split(LABEL_SEPARATOR)).explode("label")
        rows = [
            {
                "label": label,
                "slices": len(group),
                "patients": group["patient"].nunique(),
                "modalities": ", ".join(f"{m or '?'} {n}" for m, n in group["modality"].value_counts().items()),
                "label from": ", ".join(sorted(group["label_source"].unique())),
            }
            for label, group in usable.groupby("label")
        ]
        return pd.DataFrame(rows, columns=["label", "slices", "patients", "modalities", "label from"])

    def skip_table(self) -> pd.DataFrame:
        """Skipped files per reason: how many, and the first one as an example (with its detail)."""
        rows = [
            {"reason": reason, "files": len(group), "example": group.iloc[0]["path"], "detail": group.iloc[0]["detail"]}
            for reason, group in self.skipped.groupby("reason")
        ]
        return pd.DataFrame(rows, columns=["reason", "files", "example", "detail"])
