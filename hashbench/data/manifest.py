"""The typed view of a dataset's manifest.json: what hashbench reads of it, whichever source wrote it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Manifest:
    """The manifest's keys that hashbench reads, typed (``manifest.json`` itself keeps its format)."""

    name: str
    kind: str  # the source that built it (its registered name)
    source: str  # where it was built from
    options: dict  # ImageOptions as a dict
    clean: bool  # IQR outliers dropped
    n_slices: int
    updated: str = ""
    fingerprint: str = ""
    integrity: dict | None = None  # absent in datasets ingested before it was recorded
    synthetic: bool = False
    protocols: dict[str, dict] = field(default_factory=dict)  # declared split protocols (hashbench.data.splits)
    default_split: str = "patient"
    multi_label: bool = False
    patients: str = ""  # how patients were found ("one per image" for image files)
    notices: tuple[str, ...] = ()  # what a user must know about the data, said at ingest
    unlabelled_files: tuple[str, ...] = ()  # images left out for want of a class folder
    reading: dict = field(default_factory=dict)  # max_pixels and follow_symlinks of the last ingest that read files
    # every key as stored, a source's own ones included (phantom, lists, file)
    stored: dict = field(default_factory=dict)


def read_manifest(stored: dict) -> Manifest:
    """The typed view of a manifest as stored; KeyError or TypeError for one that lacks what every dataset has."""
    return Manifest(
        name=stored["name"],
        kind=stored["kind"],
        source=str(stored.get("source", "")),
        options=dict(stored["options"]),
        clean=bool(stored["clean"]),
        n_slices=int(stored["n_slices"]),
        updated=stored.get("updated", ""),
        fingerprint=stored.get("fingerprint") or "",
        integrity=stored.get("integrity"),
        synthetic=bool(stored.get("synthetic", False)),
        protocols=dict(stored.get("protocols", {})),
        default_split=stored.get("default_split", "patient"),
        multi_label=bool(stored.get("multi_label", False)),
        patients=str(stored.get("patients", "")),
        notices=tuple(stored.get("notices", ())),
        unlabelled_files=tuple(stored.get("unlabelled_files", ())),
        reading=dict(stored.get("reading", {})),
        stored=stored,
    )
