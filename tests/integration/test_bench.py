"""`hashbench bench`: the loader keeps up with training, and the projection follows from the measured rates."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from hashbench.cli import app, expand_multi_value_options
from hashbench.runner import bench

runner = CliRunner()


def test_the_cached_loader_delivers_ten_times_what_efficientnet_b0_trains_on_at_224_px(tiny_phantom):
    # HashNet: B0 and one linear layer, the fastest consumer of images, so the strictest test of the loader
    rates = bench.measure(
        tiny_phantom.dataset, "efficientnet_b0", 224, torch.device("cpu"), method="hashnet", batch_size=8, steps=1
    )
    assert rates.loading >= 10 * rates.training, (rates.loading, rates.training)
    assert rates.loader_margin == pytest.approx(rates.loading / rates.training)
    assert 0 < rates.training < rates.encoding  # a training step also runs backward
    assert rates.images_per_slice == (372_004 // 8 * 8) / 372_004  # one image a slice, in whole batches of 8
    hours = rates.projected_hours(372_004, 50)
    assert hours == pytest.approx((372_004 // 8 * 8 * 50 / rates.training + 372_004 / rates.encoding) / 3600, rel=1e-12)
    assert rates.peak_memory_mib["process_rss_peak_so_far_mib"] > 0 and rates.execution["precision"] == "float32"


def test_the_command_prints_and_writes_the_rates_and_refuses_a_training_free_method(tiny_phantom, tmp_path):
    out = tmp_path / "rates.json"
    argv = [
        "bench",
        "--dataset",
        "phantom-tiny-seed0",
        "--backbones",
        "test_efficientnet",
        "--image-sizes",
        "32",
        "48",
        "--method",
        "dpsh",
        "--batch-size",
        "8",
        "--steps",
        "1",
        "--slices",
        "1000",
        "--epochs",
        "2",
        "--json",
        str(out),
    ]
    result = runner.invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert [rate["image_size"] for rate in written["rates"]] == [32, 48] and written["projection"] == {
        "slices": 1000,
        "epochs": 2,
    }
    for rate in written["rates"]:
        assert rate["loading"] > 0 and rate["training"] > 0 and rate["encoding"] > 0
        per_slice = rate["images_per_slice"]  # one image a slice, the 1,000 slices in whole batches of 8
        assert per_slice == 1000 // 8 * 8 / 1000
        assert rate["projected_hours"] == pytest.approx(
            (1000 * per_slice * 2 / rate["training"] + 1000 / rate["encoding"]) / 3600, rel=1e-12
        )
        assert f"{rate['projected_hours']:,.1f} h" in result.output
    assert written["synthetic"] is True and "1,000 x 2 epochs" in result.output
    refused = runner.invoke(
        app, ["bench", "--dataset", "phantom-tiny-seed0", "--method", "itq", "--backbones", "test_efficientnet"]
    )
    assert refused.exit_code == 2 and "training-free" in refused.output and "Traceback" not in refused.output


def test_the_projection_counts_the_images_a_methods_sampler_draws_per_slice(tiny_phantom):
    """DAFH's steps take triplets: an epoch trains on three images per slice, and a paper-scale run takes three times
    the time of one image per slice."""
    rates = bench.measure(
        tiny_phantom.dataset, "test_efficientnet", 32, torch.device("cpu"), method="dafh", batch_size=8, steps=2
    )
    assert rates.images_per_slice == 3 * (372_004 // 8 * 8) / 372_004  # whole batches of triplets, at the paper's size
    hours = rates.projected_hours(1000, 2)
    assert hours == pytest.approx(
        (1000 * rates.images_per_slice * 2 / rates.training + 1000 / rates.encoding) / 3600, rel=1e-12
    )


def test_the_projection_of_a_method_sampling_a_fixed_number_per_epoch(tiny_phantom):
    """ADSH's epochs draw passes x sample_size images whatever the data set's size: per slice of the paper's data set,
    3 x 2,000 / 372,004; of a data set smaller than its sample, three passes over all of it."""
    for slices, per_slice in ((372_004, 3 * 2000 / 372_004), (1000, 3.0)):
        rates = bench.measure(
            tiny_phantom.dataset,
            "test_efficientnet",
            32,
            torch.device("cpu"),
            method="adsh",
            batch_size=8,
            steps=2,
            slices=slices,
        )
        assert rates.images_per_slice == pytest.approx(per_slice, rel=1e-12)
