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


def test_engine_overhead_against_a_plain_pytorch_loop(benchmark, default_phantom, tmp_path):
    """One epoch of HashNet on the default phantom: the engine vs the same steps written by hand."""
    import torch
    import torch.nn.functional as F

    from hashbench import engine
    from hashbench.method import MethodContext, StepInfo
    from hashbench.registry import REGISTRY
    from hashbench.run import class_ids

    dataset = default_phantom.dataset
    side = dataset.split("patient")
    ids = side.index.to_numpy()[(side == "database").to_numpy()]
    labels, names = class_ids(dataset.index.loc[ids, "label"])
    device = torch.device("cpu")
    hashnet = REGISTRY.get("hashnet")
    settings = hashnet.train.with_overrides({"optimizer": "adam", "lr": 1e-3, "batch_size": 32})
    source = engine.ImageSource(dataset.images, ids, device)

    def fresh():
        engine.seed_everything(0)
        method = hashnet(MethodContext(16, len(names), len(ids), dict(hashnet.options), 0))
        network, loss = method.build("test_efficientnet", False)
        return method, network, loss

    def ours():
        method, network, loss = fresh()
        for name in ("checkpoint.pt", "log.jsonl"):
            (tmp_path / name).unlink(missing_ok=True)
        engine.train(method, network, loss, source, engine.TrainData(ids, labels, len(names)), settings, 1, 64, 0, tmp_path / "checkpoint.pt", tmp_path / "log.jsonl")

    def plain():
        method, network, loss = fresh()
        optimizer = engine.build_optimizer(network, settings)
        onehot = F.one_hot(torch.from_numpy(labels), len(names)).float()
        positions = list(method.batches(labels, settings.batch_size, np.random.default_rng([0, 0])))
        batches = [(torch.from_numpy(p), torch.from_numpy(np.ascontiguousarray(dataset.images[ids[p]]))) for p in positions]
        network.train()
        for step, (index, images) in enumerate(batches):
            method.schedule(network, StepInfo(0, step, len(batches), 1))
            x = F.interpolate((images.float() / 255).unsqueeze(1), size=(64, 64), mode="bilinear", antialias=True)
            x = (x - engine.GREY_MEAN) / engine.GREY_STD
            total = sum(loss(network(x.expand(-1, 3, -1, -1)), onehot[index], index, None).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()

    benchmark.pedantic(ours, rounds=3, iterations=1, warmup_rounds=1)
    ours_s = benchmark.stats.stats.min
    plain()
    plain_s = best_of(3, plain)
    overhead = ours_s / plain_s - 1
    benchmark.extra_info.update(ours_s=ours_s, plain_s=plain_s, overhead=overhead)
    print(f"\none HashNet epoch on the default phantom: engine {ours_s:.2f} s, plain loop {plain_s:.2f} s, overhead {overhead:+.1%}")
    assert overhead < 0.10
