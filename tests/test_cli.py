"""The command line end to end: ingest (report, no-op re-run, errors) and the dataset listing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.cli import app
from hashbench.datasets import UnknownDatasetError, load_dataset

runner = CliRunner()
SERIES = ("01-01-2000-NA-CT ABDOMEN-12345", "2.000000-AX-67890")


def make_download(root, dicom):
    for patient in ("OV-1", "OV-2"):
        for i in range(3):
            pixels = np.full((32, 32), 1024 + 10 * i, np.uint16)
            dicom(root / "TCGA-OV" / patient / SERIES[0] / SERIES[1] / f"1-0{i}.dcm", pixels, patient=patient, RescaleIntercept=-1024, RescaleSlope=1)
    broken = root / "TCGA-OV" / "OV-2" / SERIES[0] / SERIES[1] / "broken.dcm"
    broken.write_text("not an image")
    return broken


def test_ingest_tcia_prints_what_was_kept_and_skipped_then_is_a_no_op(tmp_path, dicom):
    broken = make_download(tmp_path / "dl", dicom)
    result = runner.invoke(app, ["ingest", "tcia", str(tmp_path / "dl"), "--name", "cli-test", "--size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "kept 6 files -> 6 slices of 2 patients in 1 classes" in result.output
    assert "skipped 1 files" in result.output and "not DICOM" in result.output
    assert broken.relative_to(tmp_path / "dl").as_posix() in result.output.replace("\n", "")
    assert "files.csv" in result.output
    again = runner.invoke(app, ["ingest", "tcia", str(tmp_path / "dl"), "--name", "cli-test", "--size", "32"])
    assert again.exit_code == 0 and "up to date" in again.output
    listing = runner.invoke(app, ["datasets"])
    assert listing.exit_code == 0 and "cli-test" in listing.output


def test_ingest_errors_are_actionable(tmp_path):
    missing = runner.invoke(app, ["ingest", "tcia", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such folder" in missing.output
    bad_window = runner.invoke(app, ["ingest", "tcia", str(tmp_path), "--window", "bone"])
    assert bad_window.exit_code == 2 and "auto, percentile, minmax" in bad_window.output
    bad_profile = runner.invoke(app, ["ingest", "phantom", "--profile", "huge"])
    assert bad_profile.exit_code == 2 and "tiny, default, large" in bad_profile.output


def test_ingest_phantom_tiny_through_the_cli(tiny_phantom):
    result = runner.invoke(app, ["ingest", "phantom", "--profile", "tiny"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output and "TCGA-LUAD" in result.output


def test_unknown_dataset_lists_the_valid_names(tiny_phantom):
    with pytest.raises(UnknownDatasetError, match="valid: .*phantom.*phantom-tiny-seed0"):
        load_dataset("no-such-dataset")


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("hashbench")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ingest" in result.stdout
