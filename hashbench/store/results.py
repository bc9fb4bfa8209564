"""The results store: one directory per cell, owned by :class:`Cell`; nothing else knows the layout.

``<out>/<dataset>/<method>/<bits>bits/seed<seed>-<identity hash>/`` holds

- ``config.json``     everything that determines the result (:class:`CellConfig`); its hash
                      names the directory, so another protocol, data version or split is
                      another cell
- ``train_log.jsonl`` loss terms per epoch, each line with the cell's identity
- ``checkpoint.pt``   while training: model, optimiser and loss state after the last epoch,
                      and the cell's identity
- ``codes.npz``       packed binary codes, labels and slice ids of queries and database,
                      the continuous codes (float16: search, case means, float rankings),
                      per-query metric values; any other metric is computed from the codes
                      (by hashbench.evaluation.stored), so new metrics never need retraining.
                      A float reference (``0bits``: no code) holds its features instead, in
                      float32, and codes of zero bits; and the cell's identity
- ``model.pt``        the trained weights and the cell's identity
- ``metrics.json``    the record: the cell's identity, metrics, tie diagnostics, the
                      evaluator's tie rule, provenance (backbones that ran, weights, git,
                      versions, device, time, memory) and the checksums of ``config.json``,
                      ``train_log.jsonl``, ``codes.npz`` and ``model.pt``; written last, it
                      marks the cell as finished
- ``failed.json``     why the last attempt failed, with its traceback
- ``.lock``           held by the process working on the cell
- ``.rerun/``         a forced re-run (``--force``) of a finished cell trains here, beside
                      the result it will replace: its log, checkpoint, codes, weights and,
                      last, its record; only then are they moved into place, the record
                      last. Until then readers see the old result; a kill at any point
                      leaves either the old result or the new one, never a mix

A cell's identity is its path under the results root, ``<dataset>/<method>/<bits>bits/
seed<seed>-<identity hash>``: every file above carries it, so a file copied from another
cell (a hand merge of shard outputs, a copy gone wrong) is foreign however plausible its
contents. Every file is written to a temporary name and renamed. A file that cannot be
read as what it should be (truncated, garbled, of another cell, a record whose fields have
the wrong types, arrays whose shapes disagree with the config) raises :class:`CellError`
naming the file and the fix; it is never read as data, and ``run`` trains the cell again.
A checkpoint or log that cannot be resumed is set aside (kept under another name) by the
engine. Keys written by a newer hashbench are ignored with a warning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from hashbench.store import atomic, locks
from hashbench.store.digest import file_sha256, file_version

CONFIG, RECORD, CODES, MODEL, CHECKPOINT, FAILURE, LOG, LOCK = (
    "config.json",
    "metrics.json",
    "codes.npz",
    "model.pt",
    "checkpoint.pt",
    "failed.json",
    "train_log.jsonl",
    ".lock",
)
RERUN = ".rerun"
RESULT_FILES = (LOG, CODES, MODEL)  # moved into place before the record when a re-run replaces a result
CODE_ARRAYS = (
    "query_codes",
    "database_codes",
    "query_labels",
    "database_labels",
    "query_ids",
    "database_ids",
    "class_names",
    "bits",
)
GROUP_LEVELS = ("patient", "study", "series")  # the columns of query_groups / database_groups: ids per slice
# the columns of query_attributes / database_attributes: what is known of each slice, '' where unknown
ATTRIBUTES = ("modality", "body_part", "sex", "age", "manufacturer", "slice_thickness")
FIX = "run the same command again (a damaged cell is trained again) or delete the cell's directory"
IDENTITY_EXCLUDES = ("dataset", "method", "bits", "seed")  # already in the directory's path
ADDED_FIELDS = {"frozen_backbone": False}  # fields added later: at these values, left out so identities stay
NO_CODE = 0  # the code length of a float reference's cell: it ranks features, it has no code


class CellError(Exception):
    """A cell file that cannot be used: the message names the file, what is wrong and what to do."""


@dataclass
class CellConfig:
    """Everything that determines a cell's result.

    ``backbone`` is what this method actually builds (a Table 4 variant brings its own);
    ``run_backbone`` is the one the run gave every method, by which tables are grouped.
    ``weights`` maps each backbone to where its initial weights came from, path-free.
    """

    dataset: str
    method: str
    bits: int
    seed: int
    backbone: str
    epochs: int
    image_size: int
    split: str
    validation: float = 0.0  # share of the training side held out to watch training
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    run_backbone: str = ""
    weights: dict[str, str] = field(default_factory=dict)
    augment: dict[str, float] = field(default_factory=dict)
    profile: str = ""
    split_seed: int = 0
    dataset_fingerprint: str = ""
    split_hash: str = ""
    frozen_backbone: bool = False  # the backbone never trained: the head learned on its cached features

    def __post_init__(self) -> None:
        self.run_backbone = self.run_backbone or self.backbone

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "a stored config") -> "CellConfig":
        """Read a stored config: keys of other (newer) versions are ignored with a warning, missing ones take their defaults."""
        known = {f.name for f in fields(cls)}
        values = dict(values)
        if "pretrained" in values and "weights" not in values:  # written before weights were recorded per backbone
            values["weights"] = {
                values.get("backbone", ""): "imagenet (source not recorded)" if values["pretrained"] else "random"
            }
        unknown = sorted(set(values) - known - {"pretrained"})
        if unknown:
            warnings.warn(f"{source}: ignoring {', '.join(unknown)} (written by a newer hashbench?)", stacklevel=2)
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def pretrained(self) -> bool:
        return any(source != "random" for source in self.weights.values())

    def identity_hash(self) -> str:
        identity = {
            k: v
            for k, v in asdict(self).items()
            if k not in IDENTITY_EXCLUDES and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])
        }
        return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def identity(self) -> str:
        """The cell's identity, carried by each of its files: its path under the results root."""
        return f"{self.dataset}/{self.method}/{self.bits}bits/seed{self.seed}-{self.identity_hash()}"

    def directory(self, out: Path) -> Path:
        return Path(out) / self.identity()

    def label(self) -> str:
        length = "float features" if self.bits == NO_CODE else f"{self.bits} bits"
        return f"{self.dataset}/{self.method}/{length}/seed {self.seed}"


@lru_cache(maxsize=32)
def _read_json(path: str, inode: int, mtime_ns: int, size: int) -> Any:
    return json.loads(Path(path).read_text())


@lru_cache(maxsize=16)
def _read_codes(path: str, inode: int, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        arrays = dict(data)
    for array in arrays.values():
        array.flags.writeable = False  # cached: shared by every reader of this file version
    return arrays


@dataclass(frozen=True)
class Decision:
    """What a sweep does with a cell it holds: ``train`` it (``replace``: beside its finished result), or leave it with
    ``status`` skipped or failed."""

    train: bool
    status: str = ""
    note: str = ""
    error: str = ""
    replace: bool = False


class Cell:
    """One cell's directory: reads, verifies and writes every file in it.

    Metrics recomputed from the stored codes are hashbench.evaluation.stored's; the trained network rebuilt from
    model.pt is hashbench.model.trained's.
    """

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"Cell({str(self.directory)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and self.directory == other.directory

    def __hash__(self) -> int:
        return hash(self.directory)

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def rerun_directory(self) -> Path:
        return self.directory / RERUN

    def result_path(self, name: str) -> Path:
        """Where the current result's file ``name`` is: a re-run's, if its record is complete and not yet all moved into place."""
        staged = self.rerun_directory / name
        if name in (RECORD, *RESULT_FILES) and (self.rerun_directory / RECORD).exists() and staged.exists():
            return staged
        return self.path(name)

    # --- reading -------------------------------------------------------------------

    def _json(self, name: str) -> Any:
        path = self.result_path(name)
        try:
            return copy.deepcopy(_read_json(*file_version(path)))
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise CellError(f"{path} is damaged ({type(exc).__name__}: {exc}); {FIX}") from None

    @cached_property
    def config(self) -> CellConfig:
        """Cached for this object's life: the run writes a config only while holding the cell's lock (and resets
        the cache), and readers take a new Cell per read."""
        values = self._json(CONFIG)
        try:
            config = CellConfig.from_dict(values, str(self.path(CONFIG)))
        except (TypeError, ValueError, AttributeError) as exc:
            raise CellError(f"{self.path(CONFIG)} is not a cell configuration ({exc}); {FIX}") from None
        where = self.identity_from_path()
        if where and config.identity() != where:
            raise CellError(f"{self.path(CONFIG)} belongs to another cell ({config.identity()}, not {where}); {FIX}")
        return config

    def identity_from_path(self) -> str:
        """The identity the directory's place in a results root gives ('' for a cell directory outside one)."""
        parts = self.directory.parts[-4:]
        if len(parts) < 4 or not (parts[2].endswith("bits") and parts[3].startswith("seed") and "-" in parts[3]):
            return ""
        return "/".join(parts)

    @property
    def identity(self) -> str:
        """Whose files this directory may hold: its place in the results root, else its config's."""
        return self.identity_from_path() or self.config.identity()

    @property
    def record(self) -> dict[str, Any]:
        """metrics.json, checked against its schema and for being this cell's."""
        record = self._json(RECORD)
        wrong = record_problem(record)
        if wrong:
            raise CellError(f"{self.result_path(RECORD)} is damaged ({wrong}); {FIX}")
        if "cell" in record and record["cell"] != self.identity:
            raise CellError(f"{self.result_path(RECORD)} belongs to another cell ({record['cell']}); {FIX}")
        return record

    def status(self, check_model: bool = False) -> str:
        """finished | failed | damaged | incomplete (started, or interrupted, and not finished)."""
        if self.problem(check_model):
            return "damaged"
        if self.result_path(RECORD).exists():
            return "finished"
        return "failed" if self.path(FAILURE).exists() else "incomplete"

    def problem(self, check_model: bool = False) -> str:
        """Why the cell's files cannot be read as data (naming the file and the fix), else ''.

        ``check_model`` also verifies model.pt against its checksum: the run does, before it skips a finished cell;
        readers of metrics do not need the weights and skip the cost.
        """
        try:
            self.config
            if self.result_path(RECORD).exists():
                self.codes()  # reads the record too
                if check_model:
                    self.verified_model_path()
        except CellError as exc:
            return str(exc)
        except FileNotFoundError:  # removed while we looked: not damaged, just not there
            return ""
        return ""

    def failure(self) -> dict[str, str]:
        try:
            return self._json(FAILURE)
        except (FileNotFoundError, CellError):
            return {"error": "failed (failed.json unreadable)", "traceback": ""}

    def codes(self) -> dict[str, np.ndarray]:
        """codes.npz, verified against the checksum the record holds and the config's shapes (cached per file version)."""
        path = self.result_path(CODES)
        if not path.exists():
            raise CellError(f"{path} is missing; {FIX}")
        version = file_version(path)
        record = self.record
        for name in (CODES, CONFIG, LOG):
            self._check_against_record(name, record)
        try:
            arrays = _read_codes(*version)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise CellError(f"{path} is damaged ({type(exc).__name__}: {exc}); {FIX}") from None
        wrong = _codes_problem(arrays, self.config.bits, record, self.identity)
        if wrong:
            raise CellError(f"{path} does not fit its cell ({wrong}); {FIX}")
        return arrays

    @property
    def class_names(self) -> list[str]:
        return [str(n) for n in self.codes()["class_names"]]

    def query_ids(self) -> np.ndarray:
        return self.codes()["query_ids"]

    def database_bits(self) -> np.ndarray:
        codes = self.codes()
        return np.unpackbits(codes["database_codes"], axis=1)[:, : int(codes["bits"])].astype(bool)

    def evaluation_rule(self) -> dict[str, Any]:
        """The tie rule the stored per-query values were computed with (cells from before: database index)."""
        return self.record.get("evaluation", {"tie_break": "index", "tie_seed": 0})

    @property
    def float_distance(self) -> str:
        """How a float reference's features are ranked ('cosine', 'euclidean'); '' for a cell of binary codes."""
        return self.record.get("float_distance", "") if self.config.bits == NO_CODE else ""

    def collapse(self) -> str:
        """'' for healthy codes, else what is degenerate (:func:`collapse_note`): from the record, or counted in the
        stored codes for cells from before the record held it (neither depends on a tie rule)."""
        if self.config.bits == NO_CODE:
            return ""
        ties = self.record.get("ties")
        ties = ties if isinstance(ties, dict) else {}
        codes = self.codes()
        class_share = ties.get("largest_class_share")
        if class_share is None:
            class_share = largest_class_share(codes["database_labels"])
        if "dead_bits" in ties and "largest_bucket_share" in ties:
            dead, share = int(ties["dead_bits"]), float(ties["largest_bucket_share"])
        else:
            database = self.database_bits()
            _, sizes = np.unique(codes["database_codes"], axis=0, return_counts=True)
            share = float(sizes.max() / len(database)) if len(database) else 0.0
            dead = int((~database.any(axis=0) | database.all(axis=0)).sum())
        return collapse_note(dead, self.config.bits, share, class_share)

    def changed_since(self, name: str, moment: float) -> bool:
        """Whether file ``name`` was written at or after ``moment`` (a time.time()): by another process during this sweep."""
        try:
            return self.path(name).stat().st_mtime >= moment
        except FileNotFoundError:
            return False

    @property
    def multi_label(self) -> bool:
        return self.codes()["query_labels"].ndim == 2

    def verified_model_path(self) -> Path:
        """Where model.pt is, checked against the record's checksum; a missing one is not damage (weights are often
        not kept, e.g. in git), so the path may not exist: whoever loads it says so."""
        self._check_against_record(MODEL, self.record)
        return self.result_path(MODEL)

    def _check_against_record(self, name: str, record: dict[str, Any]) -> None:
        """File ``name``, if there, is the one the record was written with (records from before a checksum was kept:
        unchecked). Weights and logs may be left out of a copy (git, an archive): their absence is no damage."""
        expected = record.get(CHECKSUM_FIELDS[name])
        path = self.path(CONFIG) if name == CONFIG else self.result_path(name)
        if expected and path.exists() and file_sha256(path) != expected:
            raise CellError(f"{path} does not match its cell's record (checksum differs: replaced or damaged); {FIX}")

    # --- writing (the run) ---------------------------------------------------------

    @contextmanager
    def claim(self, wait: bool) -> Iterator[bool]:
        """Hold the cell's lock while working on it; yields False if another process holds it and ``wait`` is off.

        Claiming first completes a re-run's replacement that a kill interrupted.
        """
        with locks.exclusive(self.path(LOCK), wait) as held:
            if held:
                self._complete_replacement()
            yield held

    def decide(self, force: bool, since: float) -> Decision:
        """Train this claimed cell, or leave it as it is.

        A cell that another process finished or failed at or after ``since`` (the sweep's start) is left as it is, even
        with ``force``: two processes sharing a sweep never train a cell twice.
        """
        status = self.status(check_model=True)
        if status == "finished" and self.changed_since(RECORD, since):
            return Decision(False, "skipped", "finished by another process")
        if status == "failed" and self.changed_since(FAILURE, since):
            return Decision(False, "failed", "failed in another process", self.failure()["error"])
        if status == "finished" and not force:
            return Decision(False, "skipped", "finished earlier (--force to re-run)")
        if status == "finished":  # trained beside the finished result, which stays until the new one is complete
            return Decision(True, note="resumed an interrupted re-run" if self.rerun_pending() else "", replace=True)
        damaged = f"was damaged ({self.problem(check_model=True)}); trained it again" if status == "damaged" else ""
        return Decision(True, note=damaged)

    def start(self, config: CellConfig, replace: bool = False) -> None:
        """Write the config and forget a previous failure (the attempt starting now replaces it).

        ``replace`` (a finished cell re-run with ``--force``): train in ``.rerun/`` beside the finished result, which stays
        until the new one is complete; a re-run that was interrupted resumes there.
        """
        if not replace:  # a re-run keeps the finished result's config: same identity, and its record holds its checksum
            atomic.write_json(self.path(CONFIG), asdict(config))
            self.__dict__.pop("config", None)
        self.path(FAILURE).unlink(missing_ok=True)
        self.follow(replace)
        self.work_directory.mkdir(parents=True, exist_ok=True)

    def follow(self, replace: bool = False) -> None:
        """Work where :meth:`start` would, writing nothing: the other processes of a multi-process cell read its checkpoint there."""
        self.work_directory = self.rerun_directory if replace else self.directory

    def epochs_logged(self, replace: bool = False) -> int:
        """Epochs an interrupted attempt logged beside its checkpoint (in ``.rerun/`` for a re-run): where it resumes
        unless the checkpoint turns out unusable; 0 when there is none."""
        work = self.rerun_directory if replace else self.directory
        try:
            if not (work / CHECKPOINT).is_file():
                return 0
            return sum(1 for line in (work / LOG).read_text().splitlines() if line.strip())
        except (FileNotFoundError, UnicodeDecodeError):
            return 0

    def work_path(self, name: str) -> Path:
        """Where the attempt in progress writes ``name``."""
        return getattr(self, "work_directory", self.directory) / name

    def finish(self, arrays: dict[str, np.ndarray], save_model: Callable[[Any], None], record: dict[str, Any]) -> None:
        """Codes, weights, then the record with their checksums; a re-run's files are then moved into place, the record last."""
        atomic.atomic_write(
            self.work_path(CODES), lambda handle: np.savez_compressed(handle, **arrays, cell=np.array(self.identity))
        )
        atomic.atomic_write(self.work_path(MODEL), save_model)
        record = {
            "cell": self.identity,
            **record,
            "config_sha256": file_sha256(self.path(CONFIG)),
            **({"log_sha256": file_sha256(self.work_path(LOG))} if self.work_path(LOG).exists() else {}),
            "codes_sha256": file_sha256(self.work_path(CODES)),
            "model_sha256": file_sha256(self.work_path(MODEL)),
        }
        atomic.write_json(self.work_path(RECORD), record)
        self.work_path(CHECKPOINT).unlink(missing_ok=True)
        self._complete_replacement()
        self.path(FAILURE).unlink(missing_ok=True)

    def _complete_replacement(self) -> None:
        """Move a complete re-run's files into place, the record last (safe to repeat after a kill at any point)."""
        staged = self.rerun_directory
        if not (staged / RECORD).exists():
            if (
                staged.is_dir() and not (staged / CHECKPOINT).exists()
            ):  # emptied by a replacement cut before its last step
                shutil.rmtree(staged, ignore_errors=True)
            return
        for name in RESULT_FILES:
            if (staged / name).exists():
                os.replace(staged / name, self.path(name))
        os.replace(staged / RECORD, self.path(RECORD))
        shutil.rmtree(staged, ignore_errors=True)

    def rerun_pending(self) -> bool:
        """A forced re-run was interrupted: its progress waits in ``.rerun/`` (the next ``--force`` resumes it)."""
        return (self.rerun_directory / CHECKPOINT).exists() and not (self.rerun_directory / RECORD).exists()

    def fail(self, error: str, traceback_text: str) -> None:
        atomic.write_json(self.path(FAILURE), {"error": error, "traceback": traceback_text})


def _codes_problem(arrays: dict[str, np.ndarray], bits: int, record: dict[str, Any], identity: str) -> str:
    """What in a codes file disagrees with its cell (identity, arrays missing, shapes, counts, classes), else ''."""
    if "cell" in arrays and str(arrays["cell"]) != identity:
        return f"it belongs to another cell ({arrays['cell']})"
    missing = [name for name in CODE_ARRAYS if name not in arrays]
    if missing:
        return f"no {', '.join(missing)}"
    if int(arrays["bits"]) != bits:
        return f"{int(arrays['bits'])}-bit codes in a {bits}-bit cell"
    n_classes = len(arrays["class_names"])
    for side in ("query", "database"):
        codes, labels, ids = arrays[f"{side}_codes"], arrays[f"{side}_labels"], arrays[f"{side}_ids"]
        if codes.ndim != 2 or codes.shape[1] != (bits + 7) // 8:
            return f"{side} codes of shape {codes.shape}, not (n, {(bits + 7) // 8})"
        if len(labels) != len(codes) or len(ids) != len(codes):
            return f"{len(codes)} {side} codes but {len(labels)} labels and {len(ids)} ids"
        if labels.ndim == 2 and labels.shape[1] != n_classes:
            return f"{side} labels are rows of {labels.shape[1]} classes, not {n_classes}"
        if labels.ndim == 1 and len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            return f"{side} labels outside the {n_classes} classes"
        expected = record.get(f"n_{side}")
        if expected is not None and expected != len(codes):
            return f"{len(codes)} {side} codes, the record says {expected}"
    if "classes" in record and [str(n) for n in arrays["class_names"]] != list(record["classes"]):
        return "class names differ from the record's"
    return ""


CHECKSUM_FIELDS = {CONFIG: "config_sha256", LOG: "log_sha256", CODES: "codes_sha256", MODEL: "model_sha256"}
NUMBER = (int, float)
RECORD_SCHEMA: dict[str, type | tuple[type, ...]] = {  # the record's fields readers rely on, and their types
    "cell": str,
    "metrics": dict,
    "cost": dict,  # retrieval cost (hashbench.evaluation.cost); cells from before have none
    "ties": dict,
    "evaluation": dict,
    "float_distance": str,
    "classes": list,
    "n_query": int,
    "n_database": int,
    "n_train": int,
    "seconds": NUMBER,
    "train_seconds": NUMBER,
    "synthetic": bool,
    "origin": str,
    "paper": str,
    "split_description": str,
    "published_metric": (str, type(None)),
    **{name: str for name in CHECKSUM_FIELDS.values()},
}
REQUIRED_FIELDS = ("metrics", "codes_sha256")


def record_problem(record: Any) -> str:
    """What makes a metrics.json unusable as a record (not an object, a required field missing, a field or a metric
    of the wrong type, a checksum that is not one), else ''."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        return f"no {', '.join(missing)}"
    for name, kind in RECORD_SCHEMA.items():
        value = record.get(name)
        if name in record and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
            return f"{name} is {type(value).__name__} {json.dumps(value, default=str)[:40]}, not {_kind_name(kind)}"
    for section in ("metrics", "ties"):
        for key, value in record.get(section, {}).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, NUMBER)):
                return f"{section} {key} is {json.dumps(value, default=str)[:40]}, not a number"
    for name in CHECKSUM_FIELDS.values():
        digest = record.get(name, "0" * 64)
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            return f"{name} {digest[:40]!r} is not a SHA-256 checksum"
    return ""


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if kind == NUMBER:
        return "a number"
    names = {int: "a whole number", str: "text", dict: "an object", list: "a list", bool: "true or false"}
    return " or ".join(names.get(k, "null") for k in (kind if isinstance(kind, tuple) else (kind,)))


CROWDED_BUCKET = 0.5  # one code shared by this share of the database: most of each ranking is the tie order's


def largest_class_share(labels: np.ndarray) -> float:
    """The share of the database its most common class (label set, for multi-label rows) holds: what one code may
    hold in a perfect model."""
    if not len(labels):
        return 0.0
    _, counts = np.unique(labels, axis=0, return_counts=True)
    return float(counts.max() / len(labels))


def collapse_note(dead_bits: int, bits: int, largest_bucket_share: float = 0.0, class_share: float = 0.0) -> str:
    """'' for healthy codes; else what is degenerate: bits constant over the database, or one code holding most of
    it, more than its largest class does (a perfect model gives each class one code, so a code may hold a class)."""
    if bits == NO_CODE:
        return ""
    if dead_bits >= bits:
        return f"collapsed: {dead_bits}/{bits} dead bits"
    parts = [f"partly collapsed: {dead_bits}/{bits} dead bits"] if dead_bits else []
    if largest_bucket_share >= CROWDED_BUCKET and largest_bucket_share > class_share + 1e-9:
        parts.append(f"one code holds {largest_bucket_share:.0%} of the database")
    return "; ".join(parts)


class ResultsStore:
    """All cells under one results root."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def cell(self, config: CellConfig) -> Cell:
        return Cell(config.directory(self.root))

    def cells(self) -> list[Cell]:
        """Every cell directory under the root (one that holds a config.json), in path order."""
        return [Cell(path.parent) for path in sorted(self.root.glob(f"*/*/*bits/seed*/{CONFIG}"))]

    def table(
        self,
        dataset: str | None = None,
        methods: list[str] | None = None,
        statuses: tuple[str, ...] = ("finished", "failed", "damaged"),
    ) -> pd.DataFrame:
        """One row per cell: its config, status, stored metrics and a note (failure, damage or collapse)."""
        rows = []
        for cell in self.cells():
            try:
                row = _row(cell, cell.status())
            except FileNotFoundError:  # removed, or moved into place by a writer, while we read: not there this time
                continue
            except CellError as exc:  # changed by a writer between two reads
                row = _row(cell, "damaged", str(exc))
            if (
                row["status"] in statuses
                and (dataset is None or row["dataset"] == dataset)
                and (methods is None or row["method"] in methods)
            ):
                rows.append(row)
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame["synthetic"] = frame.get("synthetic", pd.Series(False, index=frame.index)).fillna(False).astype(bool)
        return frame

    def select(self, name: str, bits: int | None = None, dataset: str | None = None) -> list[Cell]:
        """The finished cells one side of a comparison names: a cell directory, or a method (all its seeds), picked
        from several groups by :func:`pick` (``METHOD@HASH`` or ``METHOD@OPTION=VALUE``).

        Raises ValueError when nothing matches or when the named cells span several groups (data versions, code
        lengths, configurations), listing each with what tells it apart and how to pick it.
        """
        if Path(name).is_dir():
            target = Path(name).resolve()
            chosen = [c for c in self.cells() if c.directory.resolve() == target and c.status() == "finished"]
            if not chosen:
                raise ValueError(f"{name} is not a finished cell under {self.root}")
            return chosen
        table = self.table(dataset, statuses=("finished",))
        if table.empty:
            raise ValueError(f"no finished cells under {self.root}")
        chosen = pick(table, name)
        method = name.partition("@")[0]
        if bits is not None:  # a float reference has no code length: it answers every one
            chosen = chosen[chosen["bits"].isin([bits, NO_CODE])]
        if chosen.empty:
            known = ", ".join(sorted(table["method"].unique())) or "none"
            raise ValueError(f"no finished cells of {name!r} with these filters; methods with results: {known}")
        told_apart = group_differences(chosen)
        if len(told_apart) > 1:
            listed = "\n".join(f"  {method}@{identity}: {what}" for identity, what in told_apart)
            raise ValueError(
                f"{name!r} names {len(told_apart)} cell groups; pick one as {method}@HASH or {method}@OPTION=VALUE, "
                f"narrow with --bits / --dataset, or name cell directories:\n{listed}"
            )
        return [Cell(d) for d in chosen["directory"]]


def pick(table: pd.DataFrame, selector: str) -> pd.DataFrame:
    """The rows of a cell table a selector names: ``METHOD``, ``METHOD@HASH`` (a configuration hash, or its start, as
    in the cell's directory name ``seedS-HASH``) or ``METHOD@OPTION=VALUE`` (a configuration value, named as ``--set``
    names it: ``epochs=2``, ``batch_size=32``, ``alpha=0.1`` or ``options.alpha=0.1``). ValueError for a malformed one."""
    method, _, chosen = selector.partition("@")
    rows = table[table["method"] == method]
    if not chosen:
        return rows
    if "=" not in chosen:
        return rows[rows["identity"].str.startswith(chosen)]
    option, _, wanted = chosen.partition("=")
    if not option or not wanted:
        raise ValueError(f"{selector!r}: pick a group as METHOD@HASH or METHOD@OPTION=VALUE, e.g. {method}@epochs=30")
    keep = [
        any(
            name == option or name.endswith(f".{option}")
            for name, value in _flat_config(row).items()
            if _equal(value, wanted)
        )
        for row in rows.to_dict("records")
    ]
    return rows[keep]


def group_differences(table: pd.DataFrame) -> list[tuple[str, str]]:
    """Per cell group of a cell table (dataset, code length and configuration hash; seeds share a group): its hash and
    the settings in which it differs from the others, as "key value, ..." (dataset and code length first)."""
    representatives = [
        (identity, {"dataset": dataset, "bits": bits, **_flat_config(rows.iloc[0].to_dict())})
        for (dataset, bits, identity), rows in table.groupby(["dataset", "bits", "identity"], sort=False)
    ]
    keys = dict.fromkeys(key for _, flat in representatives for key in flat)
    differing = [
        key for key in keys if len({json.dumps(flat.get(key), default=str) for _, flat in representatives}) > 1
    ]
    return [
        (identity, ", ".join(f"{key} {_shown(flat.get(key))}" for key in differing) or "the same settings")
        for identity, flat in representatives
    ]


def group_notes(table: pd.DataFrame) -> pd.Series:
    """Per row of a cell table, what tells its group apart where a method has several at one dataset and code length
    ("HASH: epochs 30, ..."); '' where it has one."""
    notes = pd.Series("", index=table.index, dtype=object)
    for _, rows in table.groupby(["dataset", "method", "bits"]):
        if rows["identity"].nunique() > 1:
            described = dict(group_differences(rows))
            notes[rows.index] = [f"{identity}: {described[identity]}" for identity in rows["identity"]]
    return notes


def _flat_config(row: dict[str, Any]) -> dict[str, Any]:
    """A cell's configuration from its table row, nested settings as ``train.batch_size``, ``options.alpha``."""
    flat: dict[str, Any] = {}
    for item in fields(CellConfig):
        if item.name in IDENTITY_EXCLUDES or item.name not in row:
            continue
        value = row[item.name]
        if isinstance(value, dict):
            flat.update({f"{item.name}.{key}": inner for key, inner in value.items()})
        else:
            flat[item.name] = value
    return flat


def _equal(value: Any, text: str) -> bool:
    """A stored setting against a value typed on the command line."""
    if isinstance(value, bool):
        return text.lower() in (("true", "1", "yes") if value else ("false", "0", "no"))
    if isinstance(value, (int, float)):
        try:
            return float(text) == value
        except ValueError:
            return False
    return str(value) == text


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value)


def _row(cell: Cell, status: str, problem: str = "") -> dict[str, Any]:
    """One cell's table row: config, status, metrics when finished, and the note (collapse, failure or damage)."""
    try:
        config = asdict(cell.config)
    except CellError:
        config = _config_from_path(cell.directory)
    row = {
        **config,
        "status": status,
        "directory": str(cell.directory),
        "identity": cell.directory.name.rpartition("-")[2],
        "note": "",
        "pretrained": False,
    }
    if status == "finished":
        record = cell.record
        row.update(record["metrics"])
        row.update(
            seconds=record.get("seconds"),
            origin=record.get("origin"),
            synthetic=record.get("synthetic", False),
            pretrained=cell.config.pretrained,
            split_description=record.get("split_description"),
            published_metric=record.get("published_metric"),
        )
        later_failure = (
            cell.path(FAILURE).exists()
            and cell.path(FAILURE).stat().st_mtime > cell.result_path(RECORD).stat().st_mtime
        )
        pending = (
            "an interrupted re-run (--force) waits in .rerun/: this is the earlier result"
            if cell.rerun_pending()
            else ""
        )
        row["note"] = "; ".join(
            filter(
                None,
                [
                    cell.collapse(),
                    "a later re-run failed: this is the earlier result" if later_failure else "",
                    pending,
                ],
            )
        )
    elif status == "failed":
        error = (cell.failure().get("error") or "unknown").splitlines()[0]
        row["note"] = f"failed: {error if len(error) <= 100 else error[:99] + '…'}"
    else:
        row["note"] = f"damaged: {problem or cell.problem()}"
    return row


def _config_from_path(directory: Path) -> dict[str, Any]:
    """What a cell's path says, for a cell whose config.json is damaged."""
    seed = directory.name.partition("-")[0].removeprefix("seed")
    bits = directory.parent.name.removesuffix("bits")
    config = CellConfig(
        directory.parents[2].name,
        directory.parents[1].name,
        int(bits) if bits.isdigit() else 0,
        int(seed) if seed.isdigit() else -1,
        "?",
        0,
        0,
        "?",
    )
    return asdict(config)
