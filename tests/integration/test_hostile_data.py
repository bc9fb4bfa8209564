"""Ingest against hostile input: a tiny file declaring a huge image, files that are not files, a full disk, bad
counts, and a swap cut by a kill, each met with a skip reason or one line of error, never a hang or a crash."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, RLELossless, generate_uid
from typer.testing import CliRunner

from hashbench.cli import app, main
from hashbench.data import ingest as ingest_module
from hashbench.data.dataset import Dataset, lock_path, settle_swap
from hashbench.data.dicom import ImageOptions
from hashbench.datasets import ingest, load_dataset
from hashbench.datasets.folder import ingest_folder
from hashbench.store import locks
from hashbench.store.paths import datasets_dir

runner = CliRunner()
SIZE = 16

# Runs argv[1] in a fresh Python under a 2 GiB address-space cap: a regression that reads /dev/zero without end fails
# there with a MemoryError (a decoder's failed allocation aborts it), never filling the machine; the caller's timeout
# ends one that blocks on a FIFO.
CAPPED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
exec(sys.argv[1])
"""


def run_capped(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CAPPED, code], capture_output=True, text=True, timeout=timeout)


def write_pngs(folder: Path, n: int, brightness: int, side: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(brightness)
    for i in range(n):
        grey = np.clip(rng.normal(brightness, 10, (side, side)), 0, 255).astype(np.uint8)
        Image.fromarray(grey).save(folder / f"{i}.png")


def write_dicom_bomb(path: Path) -> Path:
    """A DICOM of under a kilobyte, RLE Lossless, whose header declares 65535 x 65535 pixels: decoding it would
    allocate 4.3 GB (and abort a process under a memory cap) before finding the one run of its pixel data."""
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "BOMB"
    ds.Rows = ds.Columns = 65535
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    rle_header = struct.pack("<16L", 1, 64, *[0] * 14)  # one segment, starting right after the header
    ds.PixelData = encapsulate([rle_header + b"\x81\x00"])  # a single run of 128 zeros
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def skips(dataset: Dataset) -> dict[str, tuple[str, str]]:
    return {row.path: (row.reason, row.detail) for row in dataset.skipped.itertuples()}


def test_a_tiny_dicom_declaring_65535_squared_pixels_is_skipped_fast_under_a_memory_cap(tmp_path, dicom):
    root = tmp_path / "download"
    for patient in ("P1", "P2"):
        dicom(
            root / "COLL" / patient / "study" / "series" / "1.dcm", np.full((32, 32), 1100, np.uint16), patient=patient
        )
    bomb = write_dicom_bomb(root / "COLL" / "P3" / "study" / "series" / "1.dcm")
    assert bomb.stat().st_size < 1024
    code = f"""
import json, time
from pathlib import Path
from hashbench.data.dicom import ImageOptions, SkippedFile
from hashbench.data.images import decode_file
from hashbench.datasets.tcia import ingest_tcia
bomb = Path({str(bomb)!r})
start = time.perf_counter()
try:
    decode_file(bomb, bomb.read_bytes(), ImageOptions(size=32))  # as `search` decodes a query file
except SkippedFile as skip:
    print(json.dumps({{"seconds": time.perf_counter() - start, "reason": skip.reason}}))
ingest_tcia(Path({str(root)!r}), "bomb", Path({str(tmp_path / "cache")!r}), ImageOptions(size=32), workers=1)
"""
    finished = run_capped(code)
    assert finished.returncode == 0, finished.stderr[-2000:]
    decoded = json.loads(finished.stdout.splitlines()[0])
    assert decoded["reason"] == "too many pixels" and decoded["seconds"] < 1.0
    dataset = Dataset(tmp_path / "cache" / "bomb").verify()
    assert len(dataset.index) == 2
    assert skips(dataset) == {
        "COLL/P3/study/series/1.dcm": (
            "too many pixels",
            "declares 65535 x 65535 pixels (4.3e9), above the limit 2^28; raise it with --max-pixels",
        )
    }


def test_the_pixel_limit_is_an_ingest_option_and_raising_it_decodes_what_it_skipped(tmp_path):
    tree = tmp_path / "tree"
    for label, brightness in (("dark", 40), ("bright", 200)):
        write_pngs(tree / label, 2, brightness, side=10)
        write_pngs(tree / label / "large", 1, brightness, side=20)
    command = ["ingest", "folder", str(tree), "--name", "limited", "--size", str(SIZE), "--workers", "1"]
    limited = runner.invoke(app, [*command, "--max-pixels", "300"])
    assert limited.exit_code == 0, limited.output
    assert "too many pixels" in limited.output and "raise it with --max-pixels" in limited.output
    dataset = load_dataset("limited")
    assert skips(dataset)["dark/large/0.png"] == (
        "too many pixels",
        "declares 20 x 20 pixels (4.0e2), above the limit 300; raise it with --max-pixels",
    )
    assert dataset.rebuild_command().endswith("--max-pixels 300")
    raised = runner.invoke(app, command)  # the default limit, far above 400 pixels: the skipped files are read now
    assert raised.exit_code == 0, raised.output
    assert "2 decoded, 4 unchanged and reused" in raised.output
    assert load_dataset("limited").skipped.empty and len(load_dataset("limited").index) == 6
    assert "up to date" in runner.invoke(app, command).output


def test_fifos_devices_and_links_are_skipped_with_reasons_and_the_other_images_ingest(tmp_path):
    tree, outside = tmp_path / "tree", tmp_path / "elsewhere"
    write_pngs(tree / "dark", 2, 40)
    write_pngs(tree / "bright", 2, 200)
    write_pngs(outside, 1, 120)
    (tree / "dark" / "zero.png").symlink_to("/dev/zero")
    (tree / "dark" / "outside.png").symlink_to(outside / "0.png")
    (tree / "bright" / "inside.png").symlink_to(tree / "dark" / "0.png")
    os.mkfifo(tree / "bright" / "pipe.png")

    decoded = []

    def ingest_tree(follow_symlinks: bool) -> Dataset:
        code = f"""
from pathlib import Path
from hashbench.data.dicom import ImageOptions
from hashbench.datasets.folder import ingest_folder
result = ingest_folder(Path({str(tree)!r}), "hostile", Path({str(tmp_path / "cache")!r}), ImageOptions(size={SIZE}),
                       workers=2, follow_symlinks={follow_symlinks})
print(result.decoded)
"""
        finished = run_capped(code)
        assert finished.returncode == 0, finished.stderr[-2000:]
        decoded.append(int(finished.stdout.split()[-1]))
        return Dataset(tmp_path / "cache" / "hostile").verify()

    refused = {
        "dark/zero.png": ("symbolic link", "a symbolic link to /dev/zero, outside the source folder"),
        "dark/outside.png": ("symbolic link", f"a symbolic link to {outside / '0.png'}, outside the source folder"),
        "bright/pipe.png": ("not a regular file", "a FIFO; only regular files are read"),
    }
    by_default = ingest_tree(follow_symlinks=False)
    assert skips(by_default) == {
        **refused,
        "bright/inside.png": (
            "symbolic link",
            f"a symbolic link to {tree / 'dark' / '0.png'}; --follow-symlinks reads links that stay inside the source folder",
        ),
    }
    assert set(by_default.skipped["digest"]) == {""} and decoded == [4]  # none of them was read, nor counted decoded
    assert sorted(by_default.index["path"]) == ["bright/0.png", "bright/1.png", "dark/0.png", "dark/1.png"]
    followed = ingest_tree(follow_symlinks=True)
    assert skips(followed) == refused
    assert "bright/inside.png" in set(followed.index["path"])
    assert skips(ingest_tree(follow_symlinks=False)) == skips(by_default)  # the followed link is not kept over


def test_a_tcia_tree_and_a_list_naming_a_fifo_or_a_device_ingest_without_blocking(tmp_path, dicom):
    root = tmp_path / "download" / "COLL"
    for patient in ("P1", "P2"):
        dicom(root / patient / "study" / "series" / "1.dcm", np.full((32, 32), 1100, np.uint16), patient=patient)
    os.mkfifo(root / "P1" / "study" / "series" / "2.dcm")
    os.mkfifo(root / "P1" / "study" / "series" / "3")  # no suffix: the scan would open it to look for a preamble
    images = tmp_path / "images"
    write_pngs(images, 2, 100)
    os.mkfifo(images / "pipe.png")
    (images / "zero.png").symlink_to("/dev/zero")
    rows = "".join(f"{name} 1 0\n" for name in ("0.png", "pipe.png")) + "".join(
        f"{name} 0 1\n" for name in ("1.png", "zero.png")
    )
    (images / "list.txt").write_text(rows)
    code = f"""
from pathlib import Path
from hashbench.data.dicom import ImageOptions
from hashbench.datasets.imagelist import ingest_lists
from hashbench.datasets.tcia import ingest_tcia
cache = Path({str(tmp_path / "cache")!r})
ingest_tcia(Path({str(root.parent)!r}), "tcia", cache, ImageOptions(size=32), workers=1)
lists = {{"query": Path({str(images / "list.txt")!r}), "database": Path({str(images / "list.txt")!r})}}
ingest_lists(lists, Path({str(images)!r}), "lists", cache, options=ImageOptions(size={SIZE}), workers=1)
"""
    finished = run_capped(code)
    assert finished.returncode == 0, finished.stderr[-2000:]
    tcia = Dataset(tmp_path / "cache" / "tcia").verify()
    assert len(tcia.index) == 2
    assert skips(tcia) == {"COLL/P1/study/series/2.dcm": ("not a regular file", "a FIFO; only regular files are read")}
    lists = Dataset(tmp_path / "cache" / "lists").verify()
    assert len(lists.index) == 4  # two images, each listed as a query and in the database
    assert {path: reason for path, (reason, _) in skips(lists).items()} == {
        "query:pipe.png": "not a regular file",
        "database:pipe.png": "not a regular file",
        "query:zero.png": "symbolic link",
        "database:zero.png": "symbolic link",
    }


def cli(monkeypatch, *args: str) -> int:
    """``hashbench ARGS`` through the console entry point (where a full disk becomes one line); its exit code."""
    monkeypatch.setattr(sys, "argv", ["hashbench", *args])
    try:
        main()
    except SystemExit as exit:
        return exit.code or 0
    return 0


class FillingDisk:
    """A build's image file on a disk that fills after ``room`` bytes: the write that crosses it stores what fits and
    fails as write() does on a full disk, naming no file."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data: bytes) -> int:
        left = self.room - self.handle.tell()
        if len(data) > left:
            self.handle.write(data[:left])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)

    def __getattr__(self, name: str):
        return getattr(self.handle, name)


def test_a_full_disk_is_one_line_and_the_same_command_resumes_to_the_same_dataset(tmp_path, monkeypatch, capsys):
    tree = tmp_path / "tree"
    write_pngs(tree / "dark", 4, 40)
    write_pngs(tree / "bright", 4, 200)
    command = ("ingest", "folder", str(tree), "--size", str(SIZE), "--workers", "1")
    real_start = ingest_module._Partial.start

    def start_on_a_filling_disk(self, folder, settings):
        real_start(self, folder, settings)
        self.images = FillingDisk(self.images, room=3 * SIZE * SIZE + 100)  # three files' slices, and part of one

    monkeypatch.setattr(ingest_module, "COMMIT_EVERY_S", 0.0)
    monkeypatch.setattr(ingest_module._Partial, "start", start_on_a_filling_disk)
    capsys.readouterr()
    assert cli(monkeypatch, *command, "--name", "full") == 2
    error = capsys.readouterr().err
    partial = datasets_dir() / ".full@partial"
    assert error.splitlines() == [
        f"error: {partial}: No space left on device; free space there, or write elsewhere "
        "(--out for results, $HASHBENCH_HOME for datasets)"
    ]
    assert not (datasets_dir() / "full").exists()  # nothing where a reader looks

    monkeypatch.setattr(ingest_module._Partial, "start", real_start)
    assert cli(monkeypatch, *command, "--name", "full") == 0
    assert "3 from an interrupted run" in capsys.readouterr().out
    assert cli(monkeypatch, *command, "--name", "full-clean") == 0
    resumed, clean = load_dataset("full"), load_dataset("full-clean")
    pd.testing.assert_frame_equal(resumed.index, clean.index)
    pd.testing.assert_frame_equal(resumed.files.drop(columns="mtime_ns"), clean.files.drop(columns="mtime_ns"))
    np.testing.assert_array_equal(resumed.images, clean.images)
    assert not partial.exists()


@pytest.mark.parametrize(
    "flag, value, valid",
    [("--size", "100000", "16 to 2048"), ("--workers", "0", "1 to 256"), ("--workers", "-2", "1 to 256")],
)
def test_sizes_and_worker_counts_out_of_range_are_refused_before_anything_is_read(tmp_path, flag, value, valid):
    refused = runner.invoke(app, ["ingest", "folder", str(tmp_path / "absent"), "--name", "bounds", flag, value])
    assert refused.exit_code == 2
    assert f"Invalid value for '{flag}': {value} is outside the valid range {valid}" in refused.output
    option = {"--size": "size", "--workers": "workers"}[flag]
    with pytest.raises(ValueError, match=f"{flag} {value} is outside the valid range {valid}"):
        ingest("folder", path=tmp_path / "absent", name="bounds", **{option: int(value)})
    options = ImageOptions(size=int(value)) if flag == "--size" else ImageOptions(size=SIZE)
    workers = int(value) if flag == "--workers" else 1
    write_pngs(tmp_path / "tree" / "dark", 1, 40)
    write_pngs(tmp_path / "tree" / "bright", 1, 200)
    with pytest.raises(ValueError, match=f"{flag} {value} is outside the valid range {valid}"):
        ingest_folder(tmp_path / "tree", "bounds", tmp_path / "cache", options, workers=workers)
    assert not (tmp_path / "cache").exists()


def test_a_swap_cut_between_its_two_renames_is_settled_by_the_datasets_listing_and_by_loading(tmp_path):
    tree = tmp_path / "tree"
    write_pngs(tree / "dark", 2, 40)
    write_pngs(tree / "bright", 2, 200)
    target = datasets_dir() / "cut"
    built = ingest_folder(tree, "cut", datasets_dir(), ImageOptions(size=SIZE), workers=1).dataset
    retired = datasets_dir() / ".cut@replaced-1-1"
    os.replace(target, retired)  # the old build moved aside; the kill came before the new one moved in
    with locks.exclusive(lock_path(target), wait=True):  # an ingest holds the dataset: it may be between its renames
        settle_swap(target)
        assert retired.exists() and not target.exists()
    listing = runner.invoke(app, ["datasets"])
    assert listing.exit_code == 0 and " cut " in listing.output
    assert not retired.exists()
    pd.testing.assert_frame_equal(Dataset(target).verify().index, built.index)
    os.replace(target, retired)  # cut again: the next `run` loads the dataset
    assert load_dataset("cut").fingerprint == built.fingerprint and not retired.exists()
