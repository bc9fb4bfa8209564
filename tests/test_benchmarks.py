"""Throughput benchmarks, not in the default run: `pytest -m perf -s`.

Each compares hashbench with a plain baseline in the same run and reports the ratio,
so the numbers mean something on any machine.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from hashbench.datasets import phantom
from hashbench.datasets.tcia import ingest_tcia
from hashbench.dicom import ImageOptions

pytestmark = pytest.mark.perf


def naive_png_conversion(files, out_dir, size=224):
    """What most projects do: one process, pydicom + PIL, one PNG per slice."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slices = 0
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
        low, high = values.min(), values.max()
        grey = ((values - low) / max(high - low, 1e-9) * 255).astype(np.uint8)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            grey = 255 - grey
        Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR).save(out_dir / f"{i}.png")
        slices += 1
    return slices


def best_of(rounds, fn):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_ingest_throughput_against_naive_png_conversion(benchmark, tmp_path_factory):
    source = phantom.generate(tmp_path_factory.mktemp("bench") / "phantom", "default", seed=0)
    files = sorted(source.rglob("*.dcm"))
    scratch = tmp_path_factory.mktemp("scratch")

    def ours():
        shutil.rmtree(scratch / "cache", ignore_errors=True)
        return ingest_tcia(source, "bench", scratch / "cache", ImageOptions(size=224))

    def naive():
        shutil.rmtree(scratch / "png", ignore_errors=True)
        return naive_png_conversion(files, scratch / "png")

    result = benchmark.pedantic(ours, rounds=3, iterations=1)
    ours_s = benchmark.stats.stats.min
    naive_s = best_of(3, naive)
    slices = len(result.dataset.index)
    ratio = naive_s / ours_s
    benchmark.extra_info.update(files=len(files), slices=slices, cores=os.cpu_count(), naive_s=naive_s, ours_s=ours_s, ratio=ratio)
    print(f"\ningest {len(files)} files -> {slices} slices on {os.cpu_count()} cores: hashbench {slices / ours_s:.0f} slices/s, naive pydicom+PIL PNG {slices / naive_s:.0f} slices/s, ratio {ratio:.2f}x")
    assert ratio > 1.2
