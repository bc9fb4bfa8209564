"""open_clip-format image towers as backbones (BiomedCLIP, say): ``open-clip:hf-hub:ORG/NAME``.

Only the image tower is built, from the repository's ``open_clip_config.json``, and only its weights are loaded (the
checkpoint's ``visual.*``): the text tower, its tokenizer and their own downloads are never needed. Its output is the
image embedding after the tower's projection, the space the model was trained to compare images in. The tower sees
images at its own input size, resized from the run's (as its own preprocessing does), normalised with its own
statistics. Needs the optional extra ``hashbench[openclip]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import torch
from torch import nn

from hashbench.model.hub import hub_file, split_revision

PREFIX = "open-clip:"
HUB_PREFIX = "hf-hub:"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's order


def repository(model: str) -> tuple[str, str | None]:
    """(repo id, revision) of ``open-clip:hf-hub:ORG/NAME[@REVISION]``; ValueError for any other form."""
    name = model.removeprefix(PREFIX)
    if not name.startswith(HUB_PREFIX):
        raise ValueError(f"{model}: an open_clip backbone is named open-clip:hf-hub:ORG/NAME (its hub repository)")
    return split_revision(name.removeprefix(HUB_PREFIX))


def read_config(model: str) -> dict:
    """The repository's open_clip config, from the Hugging Face cache or downloaded where online; ValueError naming
    the fix where it is neither."""
    repo_id, revision = repository(model)
    path = hub_file(model, repo_id, revision, CONFIG_FILE)
    config = json.loads(Path(path).read_text())
    if "vision_cfg" not in config.get("model_cfg", {}):
        raise ValueError(f"{model}: {CONFIG_FILE} of {repo_id} describes no image tower (model_cfg.vision_cfg)")
    return config


def preprocessing(config: dict) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """(means, stds, input size in pixels) the tower was trained with."""
    preprocess = config.get("preprocess_cfg", {})
    size = config["model_cfg"]["vision_cfg"].get("image_size", 224)
    return (
        tuple(float(m) for m in preprocess.get("mean", (0.48145466, 0.4578275, 0.40821073))),  # open_clip's default
        tuple(float(s) for s in preprocess.get("std", (0.26862954, 0.26130258, 0.27577711))),
        int(size if isinstance(size, int) else size[0]),
    )


class ClipImageTower(nn.Module):
    """An open_clip image tower behaving as a timm backbone without classifier: images in, (B, num_features) out;
    its ``pretrained_cfg`` names it and its preprocessing, as timm's models do."""

    def __init__(self, tower: nn.Module, model: str, config: dict):
        super().__init__()
        self.tower = tower
        self.num_features = int(config["model_cfg"]["embed_dim"])
        mean, std, self.input_size = preprocessing(config)
        self.pretrained_cfg = {
            "architecture": model,
            "mean": mean,
            "std": std,
            "input_size": (3, *[self.input_size] * 2),
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = nn.functional.interpolate(
                images, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False, antialias=True
            )
        return self.tower(images)


def build(model: str, weights: Path | None) -> ClipImageTower:
    """The image tower of ``model``, its weights from ``weights`` (an open_clip checkpoint; None: random init)."""
    try:
        from open_clip.model import CLIPVisionCfg, _build_vision_tower
    except ImportError:
        raise ValueError(f"{model}: open_clip is not installed; pip install 'hashbench[openclip]'") from None
    config = read_config(model)
    vision = {**config["model_cfg"]["vision_cfg"], "timm_model_pretrained": False}  # the checkpoint holds its weights
    tower = _build_vision_tower(
        config["model_cfg"]["embed_dim"], CLIPVisionCfg(**vision), config["model_cfg"].get("quick_gelu", False)
    )
    if weights is not None:
        from timm.models import load_state_dict

        state = {
            k.removeprefix("visual."): v for k, v in load_state_dict(str(weights)).items() if k.startswith("visual.")
        }
        missing, unexpected = tower.load_state_dict(state, strict=False)
        if missing or unexpected or not state:
            raise ValueError(
                f"{weights} does not hold {model}'s image tower ({len(missing)} tensors missing, e.g. "
                f"{', '.join(missing[:3]) or '-'}; {len(unexpected)} unexpected): it is another model's checkpoint"
            )
    return ClipImageTower(tower, model, config)


def weights_file(model: str) -> Path | None:
    """The cached checkpoint of ``model`` (None: not cached)."""
    repo_id, revision = repository(model)
    for name in WEIGHT_FILES:
        path = huggingface_hub.try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(path, str):
            return Path(path)
    return None
