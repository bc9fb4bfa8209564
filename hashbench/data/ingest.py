"""Ingest: decode a tree of DICOM (or plain image) files once, in parallel, into a dataset cache.

Every source file is decoded by a worker process into uint8 slices that are
appended to one raw array, so training never touches DICOM again. Four rules:

- incremental: a file whose size and mtime (or, failing that, content digest) match
  the last ingest is not decoded again; an unchanged tree is a no-op;
- crash-safe: the build is appended to a hidden ``.<name>@partial/`` folder and
  committed every few seconds by a journal written last (how many files, slices and
  bytes are complete); an ingest resumed after any interruption, SIGKILL included,
  cuts everything after the last commit and redoes it, so it ends identical to a
  clean ingest; the finished build replaces the old one by renames, and a finished
  dataset carries checksums that are verified whenever it is opened;
- one writer: a lock per dataset name; a second ingest of the same name waits;
- never crashes on data: every file that gives no slice is recorded in the ingest
  report (``files.csv``) with its path and reason; a tree that gives no usable slice
  is refused, with the reasons, rather than stored as an empty dataset. Only regular
  files are opened (a FIFO, a device, a socket or a symbolic link, unless followed to a
  regular file inside the source, is a skip reason), and a file whose header declares
  more pixels than the limit is skipped before any pixel is read;
- a full disk ends an ingest with one line naming the build folder (what was committed
  stays there, and the same command resumes once there is room).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import hashbench
from hashbench.config.limits import MAX_PIXELS, check_range
from hashbench.data.attributes import ATTRIBUTE_COLUMNS, StatedAttributes
from hashbench.data.cleaning import STAT_COLUMNS, image_stats
from hashbench.data.dataset import (
    FILES,
    FILES_DTYPES,
    FORMAT_VERSION,
    IMAGES,
    INDEX,
    MANIFEST,
    RETIRED,
    Dataset,
    DatasetError,
    content_fingerprint,
    finish_swap,
    integrity,
    lock_path,
)
from hashbench.data.dicom import TOO_MANY_PIXELS, DicomSlices, ImageOptions, SkippedFile
from hashbench.data.images import decode_file
from hashbench.store import atomic, locks
from hashbench.store.paths import checked_name

IDENTIFIER_COLUMNS = ["label", "label_source", "patient", "study", "series", "modality"]
INDEX_COLUMNS = ["slice_id", *IDENTIFIER_COLUMNS, *ATTRIBUTE_COLUMNS, "path", "frame", *STAT_COLUMNS]
FILES_COLUMNS = ["path", "size", "mtime_ns", "digest", "status", "reason", "detail", "first_slice", "n_slices"]
COMMIT_EVERY_S = 2.0
JOURNAL = "journal.json"
NOT_REGULAR, SYMBOLIC_LINK = "not a regular file", "symbolic link"  # skip reasons decided before a file is opened
FILE_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


class EmptyDatasetError(ValueError):
    """The source gave no usable slice: nothing is stored under the name; the message says why each file was skipped."""


@dataclass(frozen=True)
class SourceFile:
    """One file of a source tree (or one part of a file that holds several), with the identifiers its location implies.

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
    part: str = ""  # which part of a file that holds several (an npz's train, val or test)
    decoder: str = (
        ""  # the registered source whose decode_part reads this part; none: an image file or DICOM, by suffix
    )
    label_names: tuple[str, ...] = ()  # names for the class numbers the decoder gives (CIFAR's batches.meta)
    label: str = (
        ""  # a label the source states for this file (a list file's row): wins over tags and folders, also when reused
    )


@dataclass
class IngestResult:
    dataset: Dataset
    up_to_date: bool
    decoded: int
    reused: int
    resumed: int
    seconds: float
    skipped_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestJob:
    """One build or update of a dataset: the files a source listed, how to decode them, and where the dataset goes.

    ``series_metadata`` maps a SeriesInstanceUID to metadata.csv fields (``collection``, ``modality``) for files
    whose folder moved; ``attributes`` are the slices' attributes as the source states them (an attributes file),
    in place of the files' own; ``extra_manifest`` is what the source records beside the generic manifest.
    ``max_pixels`` and ``follow_symlinks`` say how files are read (recorded, not part of the data's identity): a file
    declaring more decoded pixels is skipped unread; a symbolic link is read only when followed and it leads to a
    regular file inside ``source``.
    """

    name: str
    kind: str  # the source's registered name, recorded in the manifest
    source: Path
    files: Iterable[SourceFile]
    destination: Path
    options: ImageOptions = ImageOptions()
    clean: bool = True
    series_metadata: dict[str, dict[str, str]] | None = None
    workers: int | None = None
    progress: bool = False
    extra_manifest: dict | None = None
    attributes: StatedAttributes | None = None
    max_pixels: int = MAX_PIXELS
    follow_symlinks: bool = False


def build_dataset(job: IngestJob) -> IngestResult:
    """Build or update the dataset ``job.destination/job.name`` from ``job.files``; one writer at a time per name."""
    name = checked_name(job.name)
    check_range("image_size", job.options.size, "--size")
    if job.workers is not None:
        check_range("workers", job.workers, "--workers")
    if job.max_pixels < 1:
        raise ValueError(f"--max-pixels {job.max_pixels}: the limit must be at least 1 (the default is 2^28)")
    job.destination.mkdir(parents=True, exist_ok=True)
    with locks.exclusive(
        lock_path(job.destination / name),
        wait=True,
        on_wait=lambda who: print(f"waiting: dataset {name} is being ingested by {who}", file=sys.stderr),
    ):
        extra = job.extra_manifest or {}
        if job.attributes is not None and job.attributes.file.is_file():
            extra = {**extra, "attributes_file": str(job.attributes.file)}
        return _ingest(job, name, extra)


def _ingest(job: IngestJob, name: str, extra_manifest: dict) -> IngestResult:
    start = time.perf_counter()
    files = sorted(job.files, key=lambda f: f.relpath)
    if len({f.relpath for f in files}) != len(files):
        raise ValueError("two source files share one relative path")
    options, stated = job.options, job.attributes
    target = job.destination / name
    partial = job.destination / f".{name}@partial"
    finish_swap(target)
    settings = {"options": options.to_dict(), "clean": job.clean, "format": FORMAT_VERSION}
    reading = {"max_pixels": job.max_pixels, "follow_symlinks": job.follow_symlinks}
    root = Path(job.source).resolve()
    refused = {f.relpath: why for f in files if (why := _refusal(f.path, root, job.follow_symlinks))}
    stats = {f.relpath: os.lstat(f.path) if f.relpath in refused else os.stat(f.path) for f in files}
    previous = _previous_build(target, settings)
    last_limit = previous.dataset.info.reading.get("max_pixels", MAX_PIXELS) if previous.dataset else MAX_PIXELS
    limit_raised = job.max_pixels > last_limit
    build_settings = {**settings, "reading": reading}  # a build is resumed only by an ingest that reads files alike
    build = _open_partial(partial, build_settings, stats, options.size**2 * options.channels)
    done_in_partial = set(build.records)
    reuse = {
        p
        for p, r in previous.records.items()
        if p not in done_in_partial and _same_stat(r, stats.get(p)) and _reusable(r, refused.get(p), limit_raised)
    }
    pending = [f for f in files if f.relpath not in done_in_partial and f.relpath not in reuse]
    to_decode = [f for f in pending if f.relpath not in refused]
    if (
        previous.dataset is not None
        and not pending
        and not done_in_partial
        and set(previous.records) == set(stats)
        and not _relabelled(files, previous.dataset)
        and not _reattributed(stated, previous.dataset)
    ):
        shutil.rmtree(partial, ignore_errors=True)
        return IngestResult(
            previous.dataset, True, 0, len(reuse), 0, time.perf_counter() - start, _skip_counts(previous.dataset.files)
        )

    def known_digest(relpath: str) -> str:
        """The last build's digest of a file whose outcome it can stand for: identical content is then not decoded."""
        record = previous.records.get(relpath)
        return record["digest"] if record is not None and _reusable(record, None, limit_raised) else ""

    jobs = [(str(f.path), f.decoder, f.part, known_digest(f.relpath), options, job.max_pixels) for f in to_decode]
    series_metadata = job.series_metadata or {}
    decoded = reused = 0
    with _naming(partial):
        build.start(partial, build_settings)
        with (
            _ProgressBar(job.progress, len(files) - len(done_in_partial)) as bar,
            _WorkerPool(job.workers, len(jobs)) as pool,
            build,
        ):
            results = pool(_decode_job, jobs)
            for source_file in files:
                if source_file.relpath in done_in_partial:
                    continue
                record = previous.records.get(source_file.relpath)
                if source_file.relpath in reuse:
                    outcome = "reuse"
                elif source_file.relpath in refused:
                    outcome = refused[source_file.relpath]
                else:
                    outcome = next(results)
                    if outcome == "unchanged":  # touched but identical content
                        outcome = "reuse"
                st = stats[source_file.relpath]
                if outcome == "reuse":
                    build.append_reused(source_file, st, record, previous, stated)
                    reused += 1
                else:
                    build.append_decoded(source_file, st, outcome, series_metadata, stated)
                    decoded += source_file.relpath not in refused  # a refused file was never opened
                bar(source_file.relpath)
        _refuse_if_empty(partial, name, job.source)
        manifest = {**extra_manifest, "reading": reading}
        dataset = _finalise(partial, target, build.n_slices, name, job.kind, job.source, settings, manifest)
    return IngestResult(
        dataset, False, decoded, reused, len(done_in_partial), time.perf_counter() - start, _skip_counts(dataset.files)
    )


def _refusal(path: Path, root: Path, follow_symlinks: bool) -> dict | None:
    """Why ``path`` is not read, as a skip outcome; None for a regular file, or a followed link to one inside ``root``.

    Decided by lstat, before anything opens the path: opening a FIFO blocks, a device may read without end, and a
    link may lead anywhere (/etc/passwd).
    """
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        target = Path(os.path.realpath(path))
        link = f"a symbolic link to {target}"
        if not target.is_relative_to(root):
            return _skipped(SYMBOLIC_LINK, f"{link}, outside the source folder")
        if not follow_symlinks:
            return _skipped(SYMBOLIC_LINK, f"{link}; --follow-symlinks reads links that stay inside the source folder")
        try:
            mode = os.stat(target).st_mode
        except OSError:  # dangling, or a loop
            return _skipped(SYMBOLIC_LINK, f"{link}, which leads to no file")
        return None if stat.S_ISREG(mode) else _skipped(NOT_REGULAR, f"{link}, {_kind(mode)}")
    return None if stat.S_ISREG(mode) else _skipped(NOT_REGULAR, f"{_kind(mode)}; only regular files are read")


def _kind(mode: int) -> str:
    return FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _skipped(reason: str, detail: str) -> dict:
    return {"digest": "", "reason": reason, "detail": detail}


def _reusable(record: dict, refusal: dict | None, limit_raised: bool) -> bool:
    """Whether the last build's record of a file stands (its size and mtime unchanged): the same refusal made again,
    or an outcome that did not hang on how files were read (a link not followed, a pixel limit since raised)."""
    if refusal is not None:
        made_again = record["reason"] == refusal["reason"] and record["detail"] == refusal["detail"]
        return record["status"] == "skipped" and made_again
    if record["reason"] in (NOT_REGULAR, SYMBOLIC_LINK):
        return False
    return not (limit_raised and record["reason"] == TOO_MANY_PIXELS)


@contextlib.contextmanager
def _naming(folder: Path) -> Iterator[None]:
    """A write through an open file that fails (a full disk, a quota) names no file: name the build folder, so the
    one-line report says where; what was committed stays there, and the same command resumes once there is room."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(folder)) from exc


def _relabelled(files: list[SourceFile], dataset: Dataset) -> bool:
    """Whether a label the source states (a list row) differs from the one stored: the images are reused, the index is not."""
    stated = {f.relpath: f.label for f in files if f.label}
    if not stated:
        return False
    stored = dataset.index.groupby("path")["label"].first()
    return any(stored.get(path, label) != label for path, label in stated.items())


def _reattributed(stated: StatedAttributes | None, dataset: Dataset) -> bool:
    """Whether the attributes the source states (its attributes file) differ from those stored: the index is rebuilt."""
    if stated is None:
        return False
    index = dataset.index
    return not np.array_equal(index[ATTRIBUTE_COLUMNS].to_numpy(str), stated.of(index[stated.key]).to_numpy(str))


def _same_stat(record: dict | None, st: os.stat_result | None) -> bool:
    return (
        record is not None
        and st is not None
        and int(record["size"]) == st.st_size
        and int(record["mtime_ns"]) == st.st_mtime_ns
    )


def _skip_counts(files: pd.DataFrame) -> dict[str, int]:
    return files.loc[files["status"] == "skipped", "reason"].value_counts().to_dict()


# --- worker side --------------------------------------------------------------------


def _decode_job(job: tuple[str, str, str, str, ImageOptions, int]) -> dict | str:
    """Decode one file (or one named part of it) in a worker; never raises (a bug becomes a skip reason too)."""
    path, decoder, part, known_digest, options, max_pixels = job
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
        slices: DicomSlices = decode_file(path, data, options, part, decoder, max_pixels)
    except SkippedFile as skip:
        return {"digest": digest, "reason": skip.reason, "detail": skip.detail}
    except Exception as exc:  # a bug in hashbench or a library: report, do not crash the ingest
        detail = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=-1).strip().splitlines()[-1]}"
        return {"digest": digest, "reason": "internal error", "detail": detail}
    return {
        "digest": digest,
        "header": slices.header,
        "frames": slices.frames,
        "images": np.stack(slices.images),
        "stats": [image_stats(i) for i in slices.images],
    }


class _WorkerPool:
    """An ordered parallel map over jobs; runs in-process for one worker or few jobs."""

    def __init__(self, workers: int | None, n_jobs: int):
        self.workers = max(1, min(workers or os.cpu_count() or 1, n_jobs))
        self.executor: ProcessPoolExecutor | None = None

    def __enter__(self):
        if self.workers > 1:
            self.executor = ProcessPoolExecutor(self.workers, initializer=_exit_with_parent, initargs=(os.getpid(),))
            return lambda fn, jobs: self.executor.map(fn, jobs, chunksize=4)
        return lambda fn, jobs: map(fn, jobs)

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


def _exit_with_parent(ingest: int) -> None:
    """In each worker: exit as soon as the ingest that started it is gone, even after a SIGKILL: never linger as an orphan.

    Watches the ingest's process id, not the worker's parent: under the forkserver start method the parent is the server.
    """

    def watch() -> None:
        while locks.process_alive(ingest):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-ingest").start()


class _ProgressBar:
    """A rich progress bar over files, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda _: None
        columns = (
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("files"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
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
    """The finished dataset at ``target`` as a source of reusable slices, unless its settings differ or it is damaged."""
    if not (target / MANIFEST).exists():
        return _Previous()
    dataset = Dataset(target)
    try:
        dataset.verify()
    except DatasetError:  # rebuilt from the source, not reused
        return _Previous()
    if {k: dataset.manifest.get(k) for k in settings} != settings:
        return _Previous()
    return _Previous(dataset, dataset.files.set_index("path", drop=False).to_dict("index"))


class _Partial:
    """The append-only build folder: images, index rows and file records, committed every few seconds.

    The three files are appended independently, so after a kill any of them may hold more than the
    others. ``journal.json`` is the commit: written (atomically) only at a point where every file
    record's slices are complete, after the data reached the disk, it holds each file's committed
    length. A resume trusts the journal alone and cuts what lies beyond it.
    """

    def __init__(self, records: dict[str, dict], n_slices: int):
        self.records, self.n_slices = records, n_slices
        self.n_files = len(records)
        self.folder: Path | None = None
        self.settings: dict = {}
        self.consistent = True
        self.last_commit = time.monotonic()

    def start(self, folder: Path, settings: dict) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.settings = folder, settings
        self.images = open(folder / IMAGES, "ab")
        self.index_file = open(folder / INDEX, "a", newline="")
        self.files_file = open(folder / FILES, "a", newline="")
        self.index_rows, self.file_rows = csv.writer(self.index_file), csv.writer(self.files_file)
        for handle, writer, columns in (
            (self.index_file, self.index_rows, INDEX_COLUMNS),
            (self.files_file, self.file_rows, FILES_COLUMNS),
        ):
            if handle.tell() == 0:  # a new table (one committed with its header only keeps it)
                writer.writerow(columns)
        self.commit()

    def append_reused(
        self,
        source_file: SourceFile,
        st: os.stat_result,
        record: dict,
        previous: _Previous,
        stated: StatedAttributes | None,
    ) -> None:
        first = int(record["first_slice"])
        rows = previous.dataset.index.loc[first : first + int(record["n_slices"]) - 1]
        images = previous.dataset.images[first : first + len(rows)] if len(rows) else None
        rows = rows.assign(label=source_file.label, label_source="list") if source_file.label else rows
        if stated is not None:
            rows = rows.assign(**stated.of(rows[stated.key]))
        index_rows = rows.reset_index()[INDEX_COLUMNS[1:]].to_numpy().tolist()
        self._append(
            source_file, st, record["digest"], record["status"], record["reason"], record["detail"], images, index_rows
        )

    def append_decoded(
        self,
        source_file: SourceFile,
        st: os.stat_result,
        outcome: dict,
        series_metadata: dict,
        stated: StatedAttributes | None,
    ) -> None:
        if "reason" in outcome:
            self._append(source_file, st, outcome["digest"], "skipped", outcome["reason"], outcome["detail"], None, [])
            return
        header = outcome["header"]
        ids = dict(zip(IDENTIFIER_COLUMNS, _identifiers(source_file, header, series_metadata)))
        attributes = {column: header.get(column, "") for column in ATTRIBUTE_COLUMNS}
        frames = outcome.get("frames") or [{}] * len(outcome["stats"])
        if source_file.label_names:
            frames = [
                {**own, "label": source_file.label_names[int(own["label"])]}
                if int(own["label"]) < len(source_file.label_names)
                else own
                for own in frames
            ]
        rows = [
            {**ids, **attributes, **own, "path": source_file.relpath, "frame": frame, **stats}
            for frame, (stats, own) in enumerate(zip(outcome["stats"], frames))
        ]
        if stated is not None:
            rows = [{**row, **stated.for_image(row[stated.key])} for row in rows]
        index_rows = [[row[column] for column in INDEX_COLUMNS[1:]] for row in rows]
        self._append(source_file, st, outcome["digest"], "kept", "", "", outcome["images"], index_rows)

    def _append(self, source_file, st, digest, status, reason, detail, images, index_rows) -> None:
        self.consistent = False
        first = self.n_slices
        if images is not None:
            self.images.write(np.ascontiguousarray(images, np.uint8).tobytes())
        for offset, row in enumerate(index_rows):
            self.index_rows.writerow([first + offset, *row])
        self.file_rows.writerow(
            [source_file.relpath, st.st_size, st.st_mtime_ns, digest, status, reason, detail, first, len(index_rows)]
        )
        self.n_slices += len(index_rows)
        self.n_files += 1
        self.consistent = True
        if time.monotonic() - self.last_commit > COMMIT_EVERY_S:
            self.commit()

    def commit(self) -> None:
        """Make everything appended so far durable, then record its extent in the journal (written last)."""
        lengths = {}
        for name, handle in ((IMAGES, self.images), (INDEX, self.index_file), (FILES, self.files_file)):
            handle.flush()
            os.fsync(handle.fileno())
            lengths[name] = handle.tell()
        atomic.write_json(
            self.folder / JOURNAL,
            {"settings": self.settings, "files": self.n_files, "slices": self.n_slices, "bytes": lengths},
        )
        self.last_commit = time.monotonic()

    def __enter__(self) -> "_Partial":
        return self

    def __exit__(self, *exc) -> None:
        """Commit on success and on interrupt alike, if the last file was appended whole; then close."""
        try:
            if self.consistent:
                self.commit()
        finally:
            for handle in (self.images, self.index_file, self.files_file):
                with contextlib.suppress(OSError):  # a commit left nothing to flush; after a failure the journal rules
                    handle.close()


def _open_partial(folder: Path, settings: dict, stats: dict[str, os.stat_result], image_bytes: int) -> _Partial:
    """Recover what an interrupted ingest committed, cutting whatever was written after its last commit;
    start over if that cannot be trusted (other settings, a file shorter than committed, a finished file changed or gone)."""
    try:
        journal = json.loads((folder / JOURNAL).read_text())
        if journal["settings"] != settings:
            raise ValueError("different settings")
        for name, length in journal["bytes"].items():
            if (folder / name).stat().st_size < length:
                raise ValueError(f"{name} is shorter than committed")
            os.truncate(folder / name, length)
        files = pd.read_csv(folder / FILES, dtype=FILES_DTYPES, keep_default_na=False)
        if list(pd.read_csv(folder / INDEX, nrows=0).columns) != INDEX_COLUMNS:
            raise ValueError("index columns of another version")
        index = pd.read_csv(folder / INDEX, usecols=["slice_id"])
        n_slices = int(journal["slices"])
        if (
            len(files) != journal["files"]
            or len(index) != n_slices
            or (folder / IMAGES).stat().st_size != n_slices * image_bytes
        ):
            raise ValueError("the committed parts do not agree")
        if n_slices and not np.array_equal(index["slice_id"].to_numpy(), np.arange(n_slices)):
            raise ValueError("slice ids out of order")
        records = files.set_index("path", drop=False).to_dict("index")
        if not all(_same_stat(record, stats.get(path)) for path, record in records.items()):
            raise ValueError("files changed or removed since")
        return _Partial(records, n_slices)
    except (
        OSError,
        ValueError,
        TypeError,
        KeyError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        json.JSONDecodeError,
    ):
        shutil.rmtree(folder, ignore_errors=True)
        return _Partial({}, 0)


def _identifiers(source_file: SourceFile, header: dict[str, str], series_metadata: dict) -> list[str]:
    """label, label_source, patient, study, series, modality: the file's tags first."""
    by_series = series_metadata.get(header["series_tag"], {})
    if source_file.label:
        label, label_source = source_file.label, "list"
    elif header["collection_tag"]:
        label, label_source = header["collection_tag"], "tag"
    elif source_file.csv_collection or by_series.get("collection"):
        label, label_source = source_file.csv_collection or by_series["collection"], "metadata.csv"
    else:
        label, label_source = source_file.collection, "folder"
    modality = header["modality"] or source_file.csv_modality or by_series.get("modality", "")
    return [
        label,
        label_source,
        header["patient_tag"] or source_file.patient,
        header["study_tag"] or source_file.study,
        header["series_tag"] or source_file.series,
        modality,
    ]


def _refuse_if_empty(partial_dir: Path, name: str, source: Path) -> None:
    """A source that gives no labelled slice is not a dataset: say why each file was skipped (the build stays, to resume)."""
    index = pd.read_csv(partial_dir / INDEX, dtype=str, keep_default_na=False, usecols=["label"])
    if (index["label"] != "").any():
        return
    files = pd.read_csv(partial_dir / FILES, dtype=FILES_DTYPES, keep_default_na=False)
    skipped = files[files["status"] == "skipped"]
    reasons = "; ".join(
        f"{reason}: {len(rows)} (e.g. {rows.iloc[0]['path']}{', ' + rows.iloc[0]['detail'] if rows.iloc[0]['detail'] else ''})"
        for reason, rows in skipped.groupby("reason")
    )
    what = (
        f"none of its {len(files)} files gave a slice" if len(index) == 0 else f"its {len(index)} slices have no label"
    )
    raise EmptyDatasetError(
        f"{source}: {what}, so no dataset {name!r} was stored. Skipped: {reasons or 'none'}. Point the command at a folder of DICOM series, one folder per collection."
    )


def _finalise(
    partial_dir: Path,
    target: Path,
    n_slices: int,
    name: str,
    kind: str,
    source: Path,
    settings: dict,
    extra: dict | None,
) -> Dataset:
    """Write the manifest (with the checksums that let every open verify the files), then swap the build into place."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        created = json.loads((target / MANIFEST).read_text()).get("created", now)
    except (OSError, ValueError, AttributeError):  # none yet, or the damaged build being replaced
        created = now
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
        "integrity": integrity(partial_dir),
        **(extra or {}),
    }
    atomic.write_json(partial_dir / MANIFEST, manifest)
    retired = target.with_name(f".{name}{RETIRED}{os.getpid()}-{time.time_ns()}")
    if target.exists():
        os.replace(target, retired)
    os.replace(partial_dir, target)
    (target / JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(retired, ignore_errors=True)
    return Dataset(target)
