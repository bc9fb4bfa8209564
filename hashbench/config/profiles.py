"""Profiles: the defaults a run starts from (backbone, weights, image size, epochs, augmentation, optimiser)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hashbench.training.augment import PAPER_AUGMENTATION, Augmentation

PAPER_BACKBONE = "tf_efficientnet_b6.aa_in1k"  # timm's efficientnet_b6 has no ImageNet weights; this is B6 ported from TensorFlow, ImageNet-1k


@dataclass(frozen=True)
class Profile:
    """Defaults a run starts from; every value is recorded in each cell and shown in captions."""

    description: str
    backbone: str
    epochs: int
    image_size: int
    pretrained: bool
    augment: Augmentation
    train: dict[str, Any] = field(default_factory=dict)  # overrides of every method's optimiser settings

    def image_size_for(self, stored_size: int) -> int:
        """A pretrained backbone's own input size; from random weights, no upsampling beyond the stored images (28-px MedMNIST trains at 28)."""
        return self.image_size if self.pretrained else min(self.image_size, stored_size)


PROFILES: dict[str, Profile] = {
    "full": Profile(
        "the paper's training protocol: EfficientNet-B6 with ImageNet weights, 224 px, 50 epochs, augmented training images, each method's own optimiser and schedule",
        PAPER_BACKBONE,
        50,
        224,
        True,
        PAPER_AUGMENTATION,
    ),
    "full-b0": Profile(
        "the full profile on EfficientNet-B0: a cheaper backbone than the paper's B6",
        "efficientnet_b0",
        50,
        224,
        True,
        PAPER_AUGMENTATION,
    ),
    "quick": Profile(
        "a CPU budget for the synthetic phantom: timm's tiny test EfficientNet from random weights, 64 px (or the stored size if smaller), 30 epochs, "
        "no augmentation, Adam 1e-3 with batch 32 and a constant rate for every method (the authors' fine-tuning optimisers need ImageNet weights)",
        "test_efficientnet",
        30,
        64,
        False,
        Augmentation(),
        {
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 1e-5,
            "head_lr_scale": 1.0,
            "batch_size": 32,
            "lr_schedule": "constant",
        },
    ),
}


def default_profile(synthetic: bool, device_type: str) -> str:
    """quick for synthetic data on a CPU, else the paper's protocol."""
    return "quick" if synthetic and device_type == "cpu" else "full"


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    return PROFILES[name]
