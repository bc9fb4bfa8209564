"""Ingest on a bad day: SIGKILL at random points, unsafe names, two ingests at once, damaged caches, trees without images."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hashbench.cli import app
from hashbench.data.dataset import Dataset, DatasetError
from hashbench.data.dicom import ImageOptions
from hashbench.data.ingest import EmptyDatasetError
from hashbench.datasets import load_dataset, tcia
from hashbench.store import atomic
from hashbench.store.paths import datasets_dir

runner = CliRunner()
OPTIONS = ImageOptions(size=32)

# Ingests argv[1] as dataset argv[3] under argv[2] once a line arrives on stdin, committing every argv[5] seconds
# (often, so that kills land between commits and mid-batch).
INGEST_SCRIPT = """
import os
import sys
import time
from pathlib import Path
import hashbench.data.ingest
from hashbench.datasets import tcia
from hashbench.data.dicom import ImageOptions
hashbench.data.ingest.COMMIT_EVERY_S = float(sys.argv[5])
if os.environ.get("DECODE_DELAY_S"):  # a build slow enough that a second ingest surely meets it
    decode = hashbench.data.ingest._decode_job
    hashbench.data.ingest._decode_job = lambda job: time.sleep(float(os.environ["DECODE_DELAY_S"])) or decode(job)
if len(sys.argv) > 6:
    import multiprocessing
    multiprocessing.set_start_method(sys.argv[6])
print("ready", flush=True)
sys.stdin.readline()  # the go
result = tcia.ingest_tcia(Path(sys.argv[1]), sys.argv[3], Path(sys.argv[2]), ImageOptions(size=32), workers=int(sys.argv[4]))
print("decoded", result.decoded, "up-to-date", result.up_to_date, flush=True)
"""


def start_ingest(
    source: Path,
    destination: Path,
    name: str,
    workers: int = 1,
    commit_every: float = 0.02,
    go: bool = True,
    start_method: str = "",
    decode_delay: float = 0.0,
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-c",
        INGEST_SCRIPT,
        str(source),
        str(destination),
        name,
        str(workers),
        str(commit_every),
        *([start_method] if start_method else []),
    ]
    env = {**os.environ, **({"DECODE_DELAY_S": str(decode_delay)} if decode_delay else {})}
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout.readline().strip() == "ready", process.stderr.read()
    if go:
        say_go(process)
    return process


def say_go(process: subprocess.Popen) -> None:
    process.stdin.write("go\n")
    process.stdin.flush()


def contents(dataset: Dataset) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, dict[str, pd.Series]]:
    files = dataset.files.drop(columns=["mtime_ns"])
    return (
        dataset.index,
        np.asarray(dataset.images),
        files,
        {protocol: dataset.split(protocol) for protocol in ("patient", "slice")},
    )


def assert_same_dataset(got: Dataset, expected: Dataset) -> None:
    (index, images, files, splits), (index0, images0, files0, splits0) = contents(got), contents(expected)
    pd.testing.assert_frame_equal(index, index0)
    pd.testing.assert_frame_equal(files, files0)
    np.testing.assert_array_equal(images, images0)
    for protocol in splits0:
        pd.testing.assert_series_equal(splits[protocol], splits0[protocol])


def test_sigkill_at_random_points_then_resume_ends_identical_to_a_clean_ingest(tiny_phantom, tmp_path):
    source = Path(tiny_phantom.dataset.manifest["source"])
    built = tcia.ingest_tcia(source, "clean", tmp_path / "clean", OPTIONS, workers=1)
    clean, build_seconds = built.dataset, built.seconds
    rng = random.Random(20261123)
    interrupted_builds = 0
    for round_number, commit_every in enumerate(
        (0.02, 2.0, 0.02)
    ):  # 2 s, the default: kills before the first commit after the header
        destination = tmp_path / f"round{round_number}"
        for _ in range(5):
            process = start_ingest(source, destination, "victim", commit_every=commit_every)
            time.sleep(rng.uniform(0.0, 0.6) * build_seconds)  # within the build, however fast this machine is
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            interrupted_builds += (destination / ".victim@partial").exists()
        finish = start_ingest(source, destination, "victim")
        out, err = finish.communicate(timeout=120)
        assert finish.returncode == 0, err
        assert_same_dataset(Dataset(destination / "victim").verify(), clean)
        again = tcia.ingest_tcia(source, "victim", destination, OPTIONS, workers=1)
        assert again.up_to_date
    assert interrupted_builds >= 5, (
        f"only {interrupted_builds} of 15 kills landed mid-build"
    )  # most kills landed mid-build, not before it started or after it ended


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_a_killed_ingest_leaves_no_worker_behind(tiny_phantom, tmp_path, start_method):
    if not Path("/proc").is_dir():
        pytest.skip("finds the workers through /proc")
    source = Path(tiny_phantom.dataset.manifest["source"])
    finished = start_ingest(source, tmp_path, "whole", workers=2, start_method=start_method)
    out, err = finished.communicate(timeout=120)
    assert finished.returncode == 0 and "decoded 187" in out, err  # the workers do their work under every start method
    process = start_ingest(source, tmp_path, "orphans", workers=2, commit_every=2.0, start_method=start_method)
    deadline, workers = time.monotonic() + 30, []
    while len(workers) < 2 and time.monotonic() < deadline:  # under forkserver: the server's children
        table = processes()
        children = {pid for pid, (parent, _) in table.items() if parent == process.pid}
        helpers = {pid for pid in children if _is_helper(_command(pid))}  # the fork server's children are workers
        workers = sorted((children - helpers) | {pid for pid, (parent, _) in table.items() if parent in helpers})
        time.sleep(0.05)
    assert workers, "the ingest started no worker processes"
    assert process.poll() is None, "the ingest ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(processes().get(pid, (0, "Z"))[1] != "Z" for pid in workers):  # gone, or dead and waiting to be reaped
        assert time.monotonic() < deadline, f"workers {workers} outlived their ingest"
        time.sleep(0.1)


def _is_helper(command: str) -> bool:
    """multiprocessing's own helper processes (the fork server, the resource tracker), not pool workers."""
    return "forkserver import main" in command or "resource_tracker" in command


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return found


@pytest.mark.parametrize("name", [".", "..", "a/b", "../escape", "/tmp/absolute", "", ".hidden", "x" * 101])
def test_unsafe_dataset_names_are_refused_and_nothing_moves(tiny_phantom, tmp_path, name):
    home = datasets_dir().parent
    before = sorted(str(p) for p in home.rglob("*"))
    result = runner.invoke(app, ["ingest", "tcia", tiny_phantom.dataset.manifest["source"], "--name", name])
    assert result.exit_code == 2 and "is not allowed" in result.output
    assert sorted(str(p) for p in home.rglob("*")) == before
    refused = runner.invoke(app, ["run", "--methods", "dpn", "--dataset", name, "--dry-run"])
    assert refused.exit_code == 2 and "is not allowed" in refused.output


def test_two_ingests_of_one_name_at_once_make_one_writer_and_no_duplicated_work(tiny_phantom, tmp_path):
    source = Path(tiny_phantom.dataset.manifest["source"])
    # each build takes about 2 s (10 ms a file); the second is told to go once the first holds the dataset's lock,
    # so it always meets that lock, however slowly either process started
    first, second = (
        start_ingest(source, tmp_path, "shared", commit_every=2.0, go=False, decode_delay=0.01) for _ in range(2)
    )
    say_go(first)
    lock, deadline = tmp_path / ".shared@lock", time.monotonic() + 60
    while not (lock.exists() and lock.read_text().startswith("process")) and time.monotonic() < deadline:
        time.sleep(0.01)
    say_go(second)
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    decoded = sorted(int(out.split()[1]) for out, _ in outputs)
    n_files = len(Dataset(tmp_path / "shared").files)
    assert decoded == [0, n_files]  # one decoded everything, the other found it done
    assert any("waiting: dataset shared is being ingested by process" in err for _, err in outputs)
    assert_same_dataset(
        Dataset(tmp_path / "shared").verify(),
        tcia.ingest_tcia(source, "clean", tmp_path / "clean", OPTIONS, workers=1).dataset,
    )


def test_a_damaged_dataset_is_reported_with_the_command_that_rebuilds_it(tiny_phantom, tmp_path):
    source = Path(tiny_phantom.dataset.manifest["source"])
    clean = tcia.ingest_tcia(source, "clean", tmp_path, OPTIONS, workers=2).dataset
    built = tcia.ingest_tcia(source, "damaged", datasets_dir(), OPTIONS, workers=2).dataset
    images = built.root / "images.u8"
    with open(images, "r+b") as handle:
        handle.truncate(images.stat().st_size - 32 * 32 * 3)
    with pytest.raises(
        DatasetError,
        match=r"images.u8 has .* bytes, not .*Rebuild it: hashbench ingest tcia '.*phantom-tiny-seed0' --name damaged --size 32",
    ):
        load_dataset("damaged")
    listing = runner.invoke(app, ["datasets"])
    assert listing.exit_code == 0 and "damaged: dataset damaged" in listing.output.replace("\n", " ")
    refused = runner.invoke(app, ["run", "--methods", "dpn", "--dataset", "damaged", "--dry-run"])
    assert refused.exit_code == 2 and "Rebuild it" in refused.output
    rebuilt = tcia.ingest_tcia(source, "damaged", datasets_dir(), OPTIONS, workers=2)
    assert (
        rebuilt.decoded == len(rebuilt.dataset.files) and not rebuilt.up_to_date
    )  # nothing of the damaged build was reused
    assert_same_dataset(load_dataset("damaged"), clean)
    index = load_dataset("damaged").root / "index.csv"
    index.write_text(index.read_text().replace("TCGA-LUAD", "TCGA-LUSC", 1))
    with pytest.raises(DatasetError, match="index.csv was changed"):
        load_dataset("damaged")


def test_a_swap_cut_between_its_two_renames_is_settled_by_the_next_ingest(tiny_phantom, tmp_path):
    source = Path(tiny_phantom.dataset.manifest["source"])
    clean = tcia.ingest_tcia(source, "clean", tmp_path / "clean", OPTIONS, workers=1).dataset
    tcia.ingest_tcia(source, "swapped", tmp_path, OPTIONS, workers=1)
    os.replace(
        tmp_path / "swapped", tmp_path / ".swapped@replaced-1-1"
    )  # the old build moved aside, the new one never moved in
    for other in (
        "swapped.b",
        "swapped.replaced-x",
    ):  # other names' (a name may look like a prefix): not this ingest's to touch
        (tmp_path / f".{other}@replaced-1-1").mkdir()
    again = tcia.ingest_tcia(source, "swapped", tmp_path, OPTIONS, workers=1)
    assert again.up_to_date and again.decoded == 0
    assert_same_dataset(again.dataset, clean)
    assert not (tmp_path / ".swapped@replaced-1-1").exists()
    assert (tmp_path / ".swapped.b@replaced-1-1").exists() and (tmp_path / ".swapped.replaced-x@replaced-1-1").exists()


def test_a_tree_of_non_images_is_refused_with_the_reasons(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        path = tmp_path / "junk" / "COLL" / f"P{i}" / "study" / "series" / f"{i}.dcm"
        path.parent.mkdir(parents=True)
        path.write_bytes(rng.bytes(2000))
    (tmp_path / "junk" / "COLL" / "P0" / "study" / "series" / "empty.dcm").write_bytes(b"")
    result = runner.invoke(app, ["ingest", "tcia", str(tmp_path / "junk"), "--name", "junk"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "none of its 5 files gave a slice, so no dataset 'junk' was stored" in message
    assert "not DICOM: 4 (e.g. COLL/P0/study/series/0.dcm" in message and "empty file: 1" in message
    assert not (datasets_dir() / "junk").exists()
    with pytest.raises(EmptyDatasetError):
        tcia.ingest_tcia(tmp_path / "junk", "junk", tmp_path / "cache", OPTIONS, workers=1)


def test_stale_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "metrics.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".metrics.json.{atomic.HOST}.{dead.pid}.tmp"
    live = tmp_path / f".metrics.json.{atomic.HOST}.{os.getppid()}.tmp"
    elsewhere = tmp_path / f".metrics.json.another-node.{dead.pid}.tmp"  # a shared root: that pid means nothing here
    for path, text in (
        (stale, "half a file"),
        (live, "another writer, still at work"),
        (elsewhere, "a writer on another node"),
    ):
        path.write_text(text)
    atomic.write_json(target, {"ok": True})
    assert not stale.exists() and live.exists() and elsewhere.exists() and target.read_text().startswith("{")
