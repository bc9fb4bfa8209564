"""Backbones named by their hub repository (``hf-hub:ORG/NAME``, timm format): architecture, preprocessing and weights
from the repository as the Hugging Face cache holds it, offline; a missing one stops the run at once with the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from hashbench import api

REPOSITORY = "hashbench-tests/tiny-vit"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def snapshot_folder(cache: Path, repository: str) -> Path:
    """Where the Hugging Face cache holds the files of ``repository`` at its main revision (COMMIT), created."""
    folder = cache / f"models--{repository.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    return snapshot


def on_backbone(dataset, backbone: str, methods=("float-cosine",), bits=(16,), **settings) -> api.RunRequest:
    """A quick CPU run of ``methods`` on the frozen features of ``backbone``."""
    return api.RunRequest(
        methods=list(methods),
        bits=list(bits),
        dataset=dataset.name,
        profile="quick",
        device="cpu",
        backbones=[backbone],
        overrides={"*": {"features": "backbone"}},
        **settings,
    )


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding one timm-format repository, offline: a tiny ViT for 160 px inputs alone (as most
    pretrained ViTs are), with its own input statistics."""
    from huggingface_hub import constants
    from timm.models import save_for_hf

    cache = tmp_path / "hub"
    snapshot = snapshot_folder(cache, REPOSITORY)
    torch.manual_seed(3)
    model = timm.create_model("test_vit", num_classes=0, dynamic_img_size=False)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.25, 0.25, 0.25), "std": (0.5, 0.5, 0.5)}
    save_for_hf(model, str(snapshot), safe_serialization=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return model


def test_a_hub_model_runs_offline_with_its_own_weights_statistics_and_the_runs_image_size(
    hub_cache, tiny_phantom, tmp_path
):
    dataset = tiny_phantom.dataset
    backbone = f"hf-hub:{REPOSITORY}"
    request = on_backbone(dataset, backbone, pretrained=True)
    (spec,) = api.plan(request, dataset)
    assert spec.weights[backbone].identity() == f"hub:{REPOSITORY}"
    network, _ = spec.method(spec.context).build(backbone)
    loaded = network.encoder.backbone
    assert torch.equal(loaded.cls_token, hub_cache.cls_token)  # the repository's weights, not a random init
    assert loaded.patch_embed.img_size == (64, 64)  # built for the run's 64 px, not the checkpoint's 160
    assert network.normalisation == ((0.25, 0.25, 0.25), (0.5, 0.5, 0.5))  # its config's statistics
    (outcome,) = api.run_grid(request, dataset, tmp_path / "runs")
    assert outcome.status == "done", outcome.error
    record = api.cells(tmp_path / "runs").iloc[0]
    assert record["backbone"] == backbone and record["weights"] == {backbone: f"hub:{REPOSITORY}"}
    assert np.isfinite(outcome.metrics["map@10"])


def test_a_hub_model_missing_from_the_cache_stops_the_run_at_once_with_the_fix(hub_cache, tiny_phantom, tmp_path):
    from typer.testing import CliRunner

    from hashbench.cli import app

    argv = ["run", "--methods", "lsh", "--bits", "16", "--dataset", tiny_phantom.dataset.name, "--set"]
    argv += ["lsh.features=backbone", "--backbone", "hf-hub:nobody/absent", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "hf download nobody/absent" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


CLIP_REPOSITORY = "hashbench-tests/tiny-clip"
CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 12,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_pool": "", "timm_proj": "linear", "image_size": 48},
        "text_cfg": {"hf_model_name": "never/downloaded", "context_length": 8},
    },
    "preprocess_cfg": {"mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]},
}


@pytest.fixture
def clip_cache(hub_cache):
    """An open_clip-format repository beside the timm one: its config and a checkpoint of both towers' weights."""
    import json

    from huggingface_hub import constants
    from open_clip.model import CLIPVisionCfg, _build_vision_tower
    from safetensors.torch import save_file

    snapshot = snapshot_folder(Path(constants.HF_HUB_CACHE), CLIP_REPOSITORY)
    (snapshot / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG))
    torch.manual_seed(5)
    tower = _build_vision_tower(12, CLIPVisionCfg(**CLIP_CONFIG["model_cfg"]["vision_cfg"]))
    state = {f"visual.{k}": v.contiguous() for k, v in tower.state_dict().items()}
    save_file({**state, "text.proj": torch.ones(3)}, str(snapshot / "open_clip_model.safetensors"))
    return tower


def test_an_open_clip_image_tower_runs_offline_at_its_own_input_size_without_its_text_tower(
    clip_cache, tiny_phantom, tmp_path
):
    dataset = tiny_phantom.dataset
    backbone = f"open-clip:hf-hub:{CLIP_REPOSITORY}"
    request = on_backbone(dataset, backbone, ["float-cosine", "pcarr"], [8], pretrained=True)
    specs = api.plan(request, dataset)
    assert specs[0].weights[backbone].identity() == f"hub:{CLIP_REPOSITORY}"
    network, _ = specs[0].method(specs[0].context).build(backbone)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = clip_cache.eval()(
            torch.nn.functional.interpolate(images, size=(48, 48), mode="bicubic", antialias=True)
        )
        assert torch.allclose(network.encoder(images), expected, atol=1e-6)  # its weights, at its 48 px
    assert network.normalisation == ((0.4, 0.4, 0.4), (0.3, 0.3, 0.3))
    outcomes = api.run_grid(request, dataset, tmp_path / "runs")
    assert [o.status for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
    record = api.cells(tmp_path / "runs").iloc[0]
    assert record["backbone"] == backbone and record["weights"] == {backbone: f"hub:{CLIP_REPOSITORY}"}


def test_a_weights_file_given_for_a_hub_model_is_the_one_loaded_and_a_pinned_revision_is_its_own_model(
    hub_cache, tiny_phantom, tmp_path
):
    from safetensors.torch import save_file

    torch.manual_seed(9)
    other = timm.create_model("test_vit", num_classes=0, dynamic_img_size=False)
    path = tmp_path / "fine-tuned.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    dataset = tiny_phantom.dataset
    backbone = f"hf-hub:{REPOSITORY}"
    (spec,) = api.plan(on_backbone(dataset, backbone, weights=[f"{backbone}={path}"]), dataset)
    network, _ = spec.method(spec.context).build(backbone)
    assert torch.equal(network.encoder.backbone.cls_token, other.cls_token)  # the file's, not the hub's
    pinned = f"{backbone}@{COMMIT}"
    (spec,) = api.plan(on_backbone(dataset, pinned, pretrained=True), dataset)
    assert spec.weights[pinned].identity() == f"hub:{REPOSITORY}@{COMMIT}"
