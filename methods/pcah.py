"""PCAH: the top principal directions of the training features, thresholded at zero (Wang, Kumar, Chang, CVPR 2010, as a baseline).

Training-free: codes = sign((x - mean) P), P the ``bits`` leading principal
directions (scikit-learn's PCA). Needs at least ``bits`` feature dimensions.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hashbench.model.method import TrainingFreeMethod
from hashbench.model.registry import register_method


def principal_directions(features: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training mean and the ``count`` leading principal directions as columns (d, count); scikit-learn is imported
    here, where it is used, so that listing methods does not wait for it."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=count, svd_solver="full", random_state=seed).fit(features)
    return pca.mean_, pca.components_.T


@register_method("pcah")
class PCAH(TrainingFreeMethod):
    paper = "Wang, Kumar, Chang, Semi-Supervised Hashing for Scalable Image Retrieval, CVPR 2010 (PCA hashing baseline)"

    def fit(self, head: nn.Module, features: np.ndarray) -> None:
        self.check_dimensions(min(features.shape), self.bits)
        mean, directions = principal_directions(features, self.bits, self.context.seed)
        head.mean.copy_(torch.from_numpy(mean))
        head.projection.copy_(torch.from_numpy(directions))
