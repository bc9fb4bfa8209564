"""Ingest: decode a tree of DICOM files once, in parallel, into a dataset cache.

Every source file is decoded by a worker process into uint8 slices that are
appended to one raw array, so training never touches DICOM again. Three rules:

- incremental: a file whose size and mtime (or, failing that, content digest) match
  the last ingest is not decoded again; an unchanged tree is a no-op;
- resumable: the build is appended to ``<name>.partial/`` as it goes, so an
  interrupted ingest of a large download resumes where it stopped;
- never crashes on data: every file that gives no slice is recorded in the ingest
  report (``files.csv``) with its path and reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import hashbench
from hashbench.cleaning import STAT_COLUMNS, image_stats
from hashbench import atomic
from hashbench.dataset import FILES, FILES_DTYPES, FORMAT_VERSION, IMAGES, INDEX, MANIFEST, Dataset, content_fingerprint
from hashbench.dicom import DicomSlices, ImageOptions, SkippedFile, decode

INDEX_COLUMNS = ["slice_id", "label", "label_source", "patient", "study", "series", "modality", "path", "frame", *STAT_COLUMNS]
FILES_COLUMNS = ["path", "size", "mtime_ns", "digest", "status", "reason", "detail", "first_slice", "n_slices"]
FLUSH_EVERY_S = 2.0


@dataclass(frozen=True)
class SourceFile:
    """One file of a source tree, with the identifiers its location implies.

    Folder-derived fields are fallbacks: the file's own tags win when present.
    """

    path: Path
    relpath: str
    collection: str
    patient: str
    study: str
    series: str
    csv_collection: str = ""
    csv_modality: str = ""


@dataclass
class IngestResult:
    dataset: Dataset
    up_to_date: bool
    decoded: int
    reused: int
    resumed: int
    seconds: float
    skipped_by_reason: dict[str, int] = field(default_factory=dict)


def ingest(
    name: str,
    kind: str,
    source: Path,
    files: Iterable[SourceFile],
    destination: Path,
    options: ImageOptions = ImageOptions(),
    clean: bool = True,
    series_metadata: dict[str, dict[str, str]] | None = None,
    workers: int | None = None,
    progress: bool = False,
    extra_manifest: dict | None = None,
) -> IngestResult:
    """Build or update the dataset ``destination/name`` from ``files``.

    ``series_metadata`` maps a SeriesInstanceUID to metadata.csv fields
    (``collection``, ``modality``) for files whose folder moved.
    """
    start = time.perf_counter()
    files = sorted(files, key=lambda f: f.relpath)
    if len({f.relpath for f in files}) != len(files):
        raise ValueError("two source files share one relative path")
    target = destination / name
    partial = destination / f"{name}.partial"
    settings = {"options": options.to_dict(), "clean": clean, "format": FORMAT_VERSION}
    stats = {f.relpath: os.stat(f.path) for f in files}
    previous = _previous_build(target, settings)
    build = _open_partial(partial, settings, stats, options.size)
    done_in_partial = set(build.records)
    reuse = {p for p, r in previous.records.items() if p not in done_in_partial and _same_stat(r, stats.get(p))}
    to_decode = [f for f in files if f.relpath not in done_in_partial and f.relpath not in reuse]
    if previous.dataset is not None and not to_decode and not done_in_partial and set(previous.records) == set(stats):
        shutil.rmtree(partial, ignore_errors=True)
        return IngestResult(previous.dataset, True, 0, len(reuse), 0, time.perf_counter() - start, _skip_counts(previous.dataset.files))

    build.start(partial, settings)
    jobs = [(str(f.path), previous.records.get(f.relpath, {}).get("digest", ""), options) for f in to_decode]
    series_metadata = series_metadata or {}
    decoded = reused = 0
    with _ProgressBar(progress, len(files) - len(done_in_partial)) as bar, _WorkerPool(workers, len(jobs)) as pool, build:
        results = pool(_decode_job, jobs)
        for source_file in files:
            if source_file.relpath in done_in_partial:
                continue
            record = previous.records.get(source_file.relpath)
            if source_file.relpath in reuse:
                outcome = "reuse"
            else:
                outcome = next(results)
                if outcome == "unchanged":  # touched but identical content
                    outcome = "reuse"
            st = stats[source_file.relpath]
            if outcome == "reuse":
                build.append_reused(source_file, st, record, previous)
                reused += 1
            else:
                build.append_decoded(source_file, st, outcome, series_metadata)
                decoded += 1
            bar(source_file.relpath)
    dataset = _finalise(partial, target, build.n_slices, name, kind, source, settings, extra_manifest)
    return IngestResult(dataset, False, decoded, reused, len(done_in_partial), time.perf_counter() - start, _skip_counts(dataset.files))


def _same_stat(record: dict | None, st: os.stat_result | None) -> bool:
    return record is not None and st is not None and int(record["size"]) == st.st_size and int(record["mtime_ns"]) == st.st_mtime_ns


def _skip_counts(files: pd.DataFrame) -> dict[str, int]:
    return files.loc[files["status"] == "skipped", "reason"].value_counts().to_dict()


# --- worker side --------------------------------------------------------------------


def _decode_job(job: tuple[str, str, ImageOptions]) -> dict | str:
    """Decode one file in a worker; never raises (a bug becomes a skip reason too)."""
    path, known_digest, options = job
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # failures go to the ingest report instead
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return {"digest": "", "reason": "unreadable file", "detail": f"{type(exc).__name__}: {exc}"}
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    if digest == known_digest:
        return "unchanged"
    try:
        slices: DicomSlices = decode(data, options)
    except SkippedFile as skip:
        return {"digest": digest, "reason": skip.reason, "detail": skip.detail}
    except Exception as exc:  # a bug in hashbench or a library: report, do not crash the ingest
        detail = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=-1).strip().splitlines()[-1]}"
        return {"digest": digest, "reason": "internal error", "detail": detail}
    return {"digest": digest, "header": slices.header, "images": np.stack(slices.images), "stats": [image_stats(i) for i in slices.images]}


class _WorkerPool:
    """An ordered parallel map over jobs; runs in-process for one worker or few jobs."""

    def __init__(self, workers: int | None, n_jobs: int):
        self.workers = max(1, min(workers or os.cpu_count() or 1, n_jobs))
        self.executor: ProcessPoolExecutor | None = None

    def __enter__(self):
        if self.workers > 1:
            self.executor = ProcessPoolExecutor(self.workers)
            return lambda fn, jobs: self.executor.map(fn, jobs, chunksize=4)
        return lambda fn, jobs: map(fn, jobs)

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


class _ProgressBar:
    """A rich progress bar over files, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda _: None
        columns = (TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("files"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self.progress = Progress(*columns)
        self.progress.start()
        task = self.progress.add_task("ingest", total=self.total)
        return lambda _: self.progress.advance(task)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()


# --- the cache being built -----------------------------------------------------------


@dataclass
class _Previous:
    """The last complete build, when its settings match: a source of reusable slices."""

    dataset: Dataset | None = None
    records: dict[str, dict] = field(default_factory=dict)


def _previous_build(target: Path, settings: dict) -> _Previous:
    if not (target / MANIFEST).exists():
        return _Previous()
    dataset = Dataset(target)
    if {k: dataset.manifest.get(k) for k in settings} != settings:
        return _Previous()
    return _Previous(dataset, dataset.files.set_index("path", drop=False).to_dict("index"))


class _Partial:
    """The append-only build folder: images, index rows and file records, flushed often."""

    def __init__(self, records: dict[str, dict], size: int, n_slices: int):
        self.records, self.size, self.n_slices = records, size, n_slices
        self.last_flush = time.monotonic()

    def start(self, folder: Path, settings: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_json(folder / MANIFEST, settings)
        fresh = not self.records
        self.images = open(folder / IMAGES, "ab")
        self.index_file = open(folder / INDEX, "a", newline="")
        self.files_file = open(folder / FILES, "a", newline="")
        self.index_rows, self.file_rows = csv.writer(self.index_file), csv.writer(self.files_file)
        if fresh:
            self.index_rows.writerow(INDEX_COLUMNS)
            self.file_rows.writerow(FILES_COLUMNS)

    def append_reused(self, source_file: SourceFile, st: os.stat_result, record: dict, previous: _Previous) -> None:
        first = int(record["first_slice"])
        rows = previous.dataset.index.loc[first : first + int(record["n_slices"]) - 1]
        images = previous.dataset.images[first : first + len(rows)] if len(rows) else None
        index_rows = rows.reset_index()[INDEX_COLUMNS[1:]].to_numpy().tolist()
        self._append(source_file, st, record["digest"], record["status"], record["reason"], record["detail"], images, index_rows)

    def append_decoded(self, source_file: SourceFile, st: os.stat_result, outcome: dict, series_metadata: dict) -> None:
        if "reason" in outcome:
            self._append(source_file, st, outcome["digest"], "skipped", outcome["reason"], outcome["detail"], None, [])
            return
        ids = _identifiers(source_file, outcome["header"], series_metadata)
        index_rows = [[*ids, source_file.relpath, frame, *(s[c] for c in STAT_COLUMNS)] for frame, s in enumerate(outcome["stats"])]
        self._append(source_file, st, outcome["digest"], "kept", "", "", outcome["images"], index_rows)

    def _append(self, source_file, st, digest, status, reason, detail, images, index_rows) -> None:
        first = self.n_slices
        if images is not None:
            self.images.write(np.ascontiguousarray(images, np.uint8).tobytes())
        for offset, row in enumerate(index_rows):
            self.index_rows.writerow([first + offset, *row])
        self.n_slices += len(index_rows)
        # The file record goes last: on resume, a file counts as done only once it is there.
        self.file_rows.writerow([source_file.relpath, st.st_size, st.st_mtime_ns, digest, status, reason, detail, first, len(index_rows)])
        if time.monotonic() - self.last_flush > FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        for handle in (self.images, self.index_file, self.files_file):
            handle.flush()
        self.last_flush = time.monotonic()

    def __enter__(self) -> "_Partial":
        return self

    def __exit__(self, *exc) -> None:
        """Close (and so flush) on success and on interrupt alike: finished files stay done."""
        for handle in (self.images, self.index_file, self.files_file):
            handle.close()


def _open_partial(folder: Path, settings: dict, stats: dict[str, os.stat_result], size: int) -> _Partial:
    """Recover what an interrupted ingest finished; start over if it cannot be trusted
    (other settings, or a file finished then has since changed or gone)."""
    try:
        if json.loads((folder / MANIFEST).read_text()) != settings:
            raise ValueError("different settings")
        files = pd.read_csv(folder / FILES, dtype=FILES_DTYPES, keep_default_na=False)
        records = files.set_index("path", drop=False).to_dict("index")
        if not all(_same_stat(record, stats.get(path)) for path, record in records.items()):
            raise ValueError("files changed or removed since")
        n_slices = int((files["first_slice"] + files["n_slices"]).max()) if len(files) else 0
        index = pd.read_csv(folder / INDEX, dtype=str, keep_default_na=False)
        index = index[index["slice_id"].astype(int) < n_slices]
        index.to_csv(folder / INDEX, index=False)
        with open(folder / IMAGES, "r+b") as handle:
            handle.truncate(n_slices * size * size)
        return _Partial(records, size, n_slices)
    except (OSError, ValueError, TypeError, KeyError, pd.errors.ParserError, json.JSONDecodeError):  # a hard kill mid-line
        shutil.rmtree(folder, ignore_errors=True)
        return _Partial({}, size, 0)


def _identifiers(source_file: SourceFile, header: dict[str, str], series_metadata: dict) -> list[str]:
    """label, label_source, patient, study, series, modality: the file's tags first."""
    by_series = series_metadata.get(header["series_tag"], {})
    if header["collection_tag"]:
        label, label_source = header["collection_tag"], "tag"
    elif source_file.csv_collection or by_series.get("collection"):
        label, label_source = source_file.csv_collection or by_series["collection"], "metadata.csv"
    else:
        label, label_source = source_file.collection, "folder"
    modality = header["modality"] or source_file.csv_modality or by_series.get("modality", "")
    return [label, label_source, header["patient_tag"] or source_file.patient, header["study_tag"] or source_file.study, header["series_tag"] or source_file.series, modality]


def _finalise(partial_dir: Path, target: Path, n_slices: int, name: str, kind: str, source: Path, settings: dict, extra: dict | None) -> Dataset:
    """Write the manifest and default splits, then swap the build into place."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    created = json.loads((target / MANIFEST).read_text()).get("created", now) if (target / MANIFEST).exists() else now
    manifest = {
        **settings,
        "name": name,
        "kind": kind,
        "source": str(source),
        "n_slices": n_slices,
        "created": created,
        "updated": now,
        "hashbench": hashbench.__version__,
        "fingerprint": content_fingerprint(partial_dir, settings),
        **(extra or {}),
    }
    atomic.write_json(partial_dir / MANIFEST, manifest)
    dataset = Dataset(partial_dir)
    if len(dataset.usable()):
        for protocol in ("patient", "slice"):
            dataset.split(protocol)
    old = target.with_name(f"{name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(partial_dir, target)
    shutil.rmtree(old, ignore_errors=True)
    return Dataset(target)

