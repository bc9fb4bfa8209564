"""`hashbench bench`: the loader keeps up with training, and the projection follows from the measured rates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hashbench import api
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


def test_a_backbone_whose_training_would_not_fit_is_skipped_with_its_reason_and_the_others_kept(
    tiny_phantom, tmp_path, monkeypatch
):
    """The free memory faked between the two estimates: B6's parameters, gradients and Adam state alone take 650 MB."""
    cpu = torch.device("cpu")
    small, big = (
        bench.training_memory(tiny_phantom.dataset, backbone, 32, cpu, batch_size=8, steps=1).needed
        for backbone in ("test_efficientnet", "tf_efficientnet_b6.aa_in1k")
    )
    assert big > small + 200 * 2**20, (small, big)
    monkeypatch.setattr(bench, "available_memory", lambda device: ((small + big) // 2, "RAM available"))
    out = tmp_path / "rates.json"
    argv = ["bench", "--dataset", "phantom-tiny-seed0", "--backbones", "tf_efficientnet_b6.aa_in1k,test_efficientnet"]
    argv += ["--image-sizes", "32", "--batch-size", "8", "--steps", "1", "--json", str(out)]
    result = runner.invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert [rate["backbone"] for rate in written["rates"]] == ["test_efficientnet"]
    (skipped,) = written["skipped"]
    assert (skipped["backbone"], skipped["image_size"], skipped["batch_size"]) == ("tf_efficientnet_b6.aa_in1k", 32, 8)
    assert skipped["available_mib"] * 2**20 == (small + big) // 2 < skipped["needed_mib"] * 2**20  # probed again
    reason = skipped["reason"]
    needed, available = (f"{skipped[key] / 2**10:.1f} GiB" for key in ("needed_mib", "available_mib"))
    assert f"at batch 8 (24 images a step) needs about {needed}, RAM available: {available}" in reason  # triplets
    assert "smaller --batch-size or --image-sizes" in reason and "GPU" in reason
    printed = " ".join(result.output.split())  # rich wraps long lines
    assert f"tf_efficientnet_b6.aa_in1k at 32 px: {reason}" in printed
    assert "test_efficientnet 32 8" in printed and "Traceback" not in result.output


def test_without_the_memory_check_a_backbone_is_measured_however_little_memory_is_free(tiny_phantom, monkeypatch):
    monkeypatch.setattr(bench, "available_memory", lambda device: (0, "RAM available"))
    arguments = dict(dataset=tiny_phantom.dataset, backbones=["test_efficientnet"], image_sizes=[32], device="cpu")
    arguments |= dict(batch_size=8, steps=1)
    (checked,) = api.bench(**arguments)
    assert isinstance(checked, api.Skipped) and checked.available_mib == 0
    (measured,) = api.bench(**arguments, memory_check=False)
    assert isinstance(measured, api.Rates) and measured.training > 0


def test_a_backbone_timm_does_not_know_is_refused_as_bad_input_though_the_memory_probe_meets_it_first(tiny_phantom):
    argv = ["bench", "--dataset", "phantom-tiny-seed0", "--backbones", "efficientnet_b", "--image-sizes", "32"]
    refused = runner.invoke(app, expand_multi_value_options(argv))
    assert refused.exit_code == 2 and "timm has no model 'efficientnet_b'" in refused.output
    assert "Traceback" not in refused.output


def test_a_failing_measurement_leaves_the_finished_ones_in_the_json_file(tiny_phantom, tmp_path, monkeypatch):
    from hashbench import api

    measured = []

    def measure_then_fail(*args, **kwargs):
        if measured:
            raise RuntimeError("the second measurement failed")
        measured.append(bench.measure(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(api, "measure", measure_then_fail)
    monkeypatch.setattr(bench, "available_memory", lambda device: None)  # no memory check: not what is tested
    out = tmp_path / "rates.json"
    argv = ["bench", "--dataset", "phantom-tiny-seed0", "--backbones", "test_efficientnet", "--image-sizes", "32"]
    argv += ["48", "--batch-size", "8", "--steps", "1", "--json", str(out)]
    result = runner.invoke(app, expand_multi_value_options(argv))
    assert isinstance(result.exception, RuntimeError) and "test_efficientnet" in result.output
    (kept,) = json.loads(out.read_text())["rates"]
    assert kept["image_size"] == 32 and kept["training"] == measured[0].training


PEAK_GROWTH = """
import json, sys
from pathlib import Path
import torch
from hashbench.api import load_dataset
from hashbench.runner import bench

def resident(key):
    return next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(key))

dataset = load_dataset("phantom-tiny-seed0")
Path("/proc/self/clear_refs").write_text("5")
before = resident("VmRSS")
bench.measure(dataset, "efficientnet_b0", 64, torch.device("cpu"), batch_size=8, steps=1)
print(resident("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads the resident peak as Linux keeps it")
def test_the_memory_estimate_bounds_what_training_takes(tiny_phantom):
    """DAFH on EfficientNet-B0 at 64 px, 8 triplets a step: the estimate against the resident peak of the whole
    measurement (loader, two epochs, encoding) in a fresh process, like the probe's."""
    need = bench.training_memory(
        tiny_phantom.dataset, "efficientnet_b0", 64, torch.device("cpu"), batch_size=8, steps=1
    )
    run = subprocess.run([sys.executable, "-c", PEAK_GROWTH], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    growth = int(run.stdout.splitlines()[-1])
    assert need.images == 24 and growth <= need.needed < 3 * growth, (need.needed / 2**20, growth / 2**20)


def cgroup(folder, limit, usage, stat):
    """One cgroup's memory files (v2 names, or v1 where ``stat`` says total_inactive_file)."""
    folder.mkdir(parents=True, exist_ok=True)
    v1 = "total_" in stat
    (folder / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(f"{limit}\n")
    (folder / ("memory.usage_in_bytes" if v1 else "memory.current")).write_text(f"{usage}\n")
    (folder / "memory.stat").write_text(stat)


def test_the_free_memory_is_the_room_under_the_tightest_cgroup_limit_above_the_process(tmp_path):
    """A container's limit sits on the root it sees, a batch job's on the job's own cgroup, below roots without one."""
    membership = tmp_path / "cgroup"
    membership.write_text("0::/\n")
    v2 = tmp_path / "v2"
    cgroup(v2, 8 * 2**30, 6 * 2**30, "anon 5368709120\ninactive_file 1073741824\n")
    assert bench._cgroup_room(v2, membership) == 3 * 2**30  # the limit less what is used, inactive cache reclaimable
    (v2 / "memory.max").write_text("max\n")
    assert bench._cgroup_room(v2, membership) is None
    # a job's step inside a job inside the root: the job's limit, the tightest, holds
    membership.write_text("0::/slurm/job_7/step_0\n")
    cgroup(v2 / "slurm" / "job_7", 4 * 2**30, 3 * 2**30, "inactive_file 0\n")
    cgroup(v2 / "slurm" / "job_7" / "step_0", "max", 3 * 2**30, "inactive_file 0\n")
    assert bench._cgroup_room(v2, membership) == 2**30
    (v2 / "memory.max").write_text(f"{7 * 2**30}\n")  # the root's room: 7 GiB less 6 used, plus 1 reclaimable
    assert bench._cgroup_room(v2, membership) == 2**30
    # v1: the memory controller's own tree; other controllers' lines are not memory limits
    membership.write_text("5:cpu,cpuacct:/elsewhere\n4:memory:/docker/abc\n")
    v1 = tmp_path / "v1"
    cgroup(v1 / "memory", 9223372036854771712, 2**30, "total_inactive_file 0\n")  # v1's "no limit"
    assert bench._cgroup_room(v1, membership) is None
    cgroup(v1 / "memory" / "docker" / "abc", 4 * 2**30, 3 * 2**30, "total_inactive_file 0\n")
    assert bench._cgroup_room(v1, membership) == 2**30
    # a container that sees its own cgroup as the root (no folder for the path /proc lists): the root's limit
    membership.write_text("4:memory:/docker/def\n")
    cgroup(v1 / "memory", 6 * 2**30, 2**30, "total_inactive_file 0\n")
    assert bench._cgroup_room(v1, membership) == 5 * 2**30
