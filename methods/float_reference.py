"""Float references: the features themselves, unhashed, ranked by cosine similarity or Euclidean distance.

The reference a binary code of the same features is measured against: what hashing them without training costs (a
hash trained on them, a head on frozen features, may do better than the raw features). Nothing is fitted and
there is no code length; a run plans one cell per seed whatever ``--bits`` says, stored as a cell of no code
(``0bits``) that holds the features in float32. Features: raw pixels by default (the nearest-neighbour floor on the
images), a frozen backbone's with ``--set float-cosine.features=backbone`` (the foundation track's reference).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hashbench.model.method import HashOutput, TrainingFreeMethod
from hashbench.model.registry import register_method


class FeatureHead(nn.Module):
    """The features as they are: the 'code' a float reference ranks."""

    def forward(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(features.float())


class FloatReference(TrainingFreeMethod):
    def build_head(self, in_features: int) -> nn.Module:
        return FeatureHead()

    def fit(self, head: nn.Module, features: np.ndarray) -> None:
        """Nothing to fit: the features are ranked as they are."""


@register_method("float-cosine")
class FloatCosine(FloatReference):
    paper = "float reference: unhashed features ranked by cosine similarity (the reference for codes of them)"
    float_distance = "cosine"


@register_method("float-l2")
class FloatL2(FloatReference):
    paper = "float reference: unhashed features ranked by Euclidean distance (the reference for codes of them)"
    float_distance = "euclidean"
