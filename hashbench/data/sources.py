"""Data sources: what ``hashbench ingest SOURCE`` reads, each one a class in one file, registered by name.

A source is a :class:`Source` subclass registered with ``@register_source("name")``. The name is the
``hashbench ingest`` subcommand and the ``kind`` its datasets' manifests record. It declares:

- ``summary``: one line, what ``hashbench datasets`` lists;
- ``Options``: a frozen dataclass of typed options, declared with :func:`hashbench.model.options.option` as
  methods declare theirs; each becomes a flag of its command (``top_k`` -> ``--top-k``, a bool ->
  ``--clean/--no-clean``); :func:`argument` marks the positional argument; a field without a default is
  required. ``__post_init__`` refuses bad values with a message that names the fix;
- ``ingest(options, name, destination, workers, progress)``: build or update ``destination/name``, usually by
  listing :class:`hashbench.data.ingest.SourceFile` s and calling :func:`hashbench.data.ingest.build_dataset`
  (with the slice attributes a CSV file beside the data states, for data without tags of its own:
  :func:`hashbench.data.attributes.read_attributes`);
- ``rebuild_command(manifest, name)``: the command that builds the dataset again (every damage report names it);
- ``dataset_name(options)``: the dataset's name when ``--name`` is not given (None: ``--name`` is required);
- ``decode_part(data, part, image_options)``: only for files that hold several images (an npz's parts),
  named by a SourceFile's ``decoder``.

Sources follow the plugin rules of methods (:class:`hashbench.model.registry.PluginRegistry`): built-ins in
``datasets/``, installed packages through the entry-point group ``hashbench.datasets`` (found without importing),
local files through ``hashbench ingest SOURCE --plugin FILE``; a name registered twice is an error and a plugin
that fails to load is recorded as broken, never breaking the others.

Every ``hashbench ingest`` and ``hashbench datasets`` imports every built-in source to build its commands, so a
source file imports its decoding libraries (pydicom, pandas, PIL, scipy) inside the functions that use them, not at
the top: ``ingest --help`` then stays a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from hashbench.config.limits import MAX_PIXELS, check_range
from hashbench.data.manifest import Manifest
from hashbench.model.registry import PluginRegistry
from hashbench.store.paths import checked_name, datasets_dir

if TYPE_CHECKING:  # the builder imports the decoders, which look sources up here; pydicom loads only to read files
    from hashbench.data.dicom import DicomSlices, ImageOptions
    from hashbench.data.ingest import IngestResult

ENTRY_POINT_GROUP = "hashbench.datasets"
SIZE_HELP = "Images are resized to SIZE x SIZE pixels."
WINDOW_HELP = "auto (the file's window, else CT 40/400, else percentiles), percentile, or minmax."
COLOUR_HELP = (
    "luma: colour images to grey; rgb: keep colour (grey images repeated); skip: leave colour images out (reported)."
)
ASPECT_HELP = "pad: keep the aspect ratio; stretch: resize directly."
MAX_PIXELS_HELP = (
    "A file whose header declares more pixels (width x height x frames x samples) is skipped unread, and reported."
)
FOLLOW_SYMLINKS_HELP = "Read symbolic links that lead to a regular file inside the source folder (by default every link is skipped, and reported)."
RANGED_OPTIONS = {"size": "image_size"}  # a source's options checked against hashbench.config.limits by name


class UnknownSourceError(LookupError):
    """Raised with the valid names, so the user can pick one."""


class DuplicateSourceError(ValueError):
    """Two plugins registered the same source name."""


class BrokenSourceError(RuntimeError):
    """A source whose plugin failed to load; the message carries origin and cause."""


def argument(help: str) -> Any:
    """The positional argument of a source's command (a dataclass field without default, so required)."""
    return field(metadata={"help": help, "argument": True})


@dataclass(frozen=True)
class NoOptions:
    """Options of a source that takes none."""


class Source:
    """One kind of data that becomes a dataset; see the module's docstring for what a subclass declares."""

    name: ClassVar[str] = ""  # set by @register_source
    origin: ClassVar[str] = ""  # built-in, a distribution, or file:PATH; set by the registry
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def dataset_name(self, options: Any) -> str | None:
        """The dataset's name when none is given; None makes ``--name`` required."""
        return None

    def ingest(
        self, options: Any, name: str, destination: Path, workers: int | None = None, progress: bool = False
    ) -> IngestResult:
        raise NotImplementedError(f"source {self.name!r} does not implement ingest()")

    def rebuild_command(self, manifest: Manifest, name: str) -> str:
        return f"hashbench ingest {self.name} '{manifest.source}' --name {name}"

    def decode_part(self, data: bytes, part: str, image_options: ImageOptions) -> DicomSlices:
        raise NotImplementedError(f"source {self.name!r} has no decoder for parts of a file (decode_part)")


class SourceRegistry(PluginRegistry):
    """The data sources: built-ins in ``datasets/``, entry points of ``hashbench.datasets``, ``--plugin`` files."""

    kind = "source"
    base = Source
    entry_point_group = ENTRY_POINT_GROUP
    built_in_package = "hashbench.datasets"
    unknown_error = UnknownSourceError
    duplicate_error = DuplicateSourceError
    broken_error = BrokenSourceError


SOURCES = SourceRegistry()


def register_source(name: str) -> Callable[[type[Source]], type[Source]]:
    """Class decorator: ``@register_source("tcia")`` on a :class:`Source` subclass."""

    def decorate(source_class: type[Source]) -> type[Source]:
        return SOURCES.register(name, source_class)

    return decorate


def source(name: str) -> Source:
    """The registered source ``name``; UnknownSourceError names the valid ones, BrokenSourceError the plugin's failure."""
    return SOURCES.get(name)()


def reading_flags(manifest: Manifest) -> str:
    """The flags that read files as the dataset's ingest did (a raised --max-pixels, --follow-symlinks): a rebuild
    without them would skip files the dataset holds."""
    max_pixels = manifest.reading.get("max_pixels", MAX_PIXELS)
    return (f" --max-pixels {max_pixels}" if max_pixels != MAX_PIXELS else "") + (
        " --follow-symlinks" if manifest.reading.get("follow_symlinks") else ""
    )


@dataclass(frozen=True)
class SourceListing:
    """A source as ``hashbench datasets`` lists it: its summary, or why it cannot be used."""

    name: str
    origin: str
    summary: str
    error: str = ""


def list_sources() -> list[SourceListing]:
    """Every registered source, installed plugins loaded; a broken one is listed with its cause."""
    found = []
    for name in SOURCES.names():
        entry = SOURCES.entry(name)
        found.append(SourceListing(name, entry.origin, entry.plugin.summary if entry.plugin else "", entry.error))
    return found


def ingest(
    source_name: str,
    *,
    name: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    destination: Path | None = None,
    **options: Any,
) -> IngestResult:
    """Ingest (or update) with source ``source_name`` as dataset ``name``: the one entry point, for the CLI and scripts.

    ``options`` are the source's ``Options`` fields; a bad one is a ValueError naming it and what is valid.
    """
    if workers is not None:
        check_range("workers", workers, "--workers")
    chosen = source(source_name)
    try:
        parsed = chosen.Options(**options)
    except TypeError as exc:  # an unknown or missing field
        raise ValueError(f"ingest {source_name}: {exc}") from None
    for option_name, limit in RANGED_OPTIONS.items():  # refused before anything is read, fetched or generated
        value = getattr(parsed, option_name, None)
        if value is not None:
            check_range(limit, value, f"--{option_name.replace('_', '-')}")
    dataset = chosen.dataset_name(parsed) if name is None else name
    if dataset is None:
        raise ValueError(f"ingest {source_name} needs a dataset name: add --name NAME")
    return chosen.ingest(parsed, checked_name(dataset), destination or datasets_dir(), workers, progress)
