"""DAFH: Deep Attention Fusion Hashing (Wu, Jin, Sun, Tang, Zhao; Bioengineering 2024, 11(7), 673).

No code is published; this is hashbench's reading of sections 3.3.1-3.3.5. Every
choice the paper leaves open is a named option (``--set dafh.KEY=VALUE``):

- Backbone: an EfficientNet: the run's backbone, or ``backbone``. The paper selected
  EfficientNet-B6 (section 3.3.1); the ``full`` profile runs it with ImageNet weights.
- AT (``attention``): CBAM on the output of the penultimate stage (EfficientNet:
  the penultimate MBConv stage, 344 x 7 x 7 for B6 and 192 x 7 x 7 for B0 at 224 px; ResNet: layer3), found
  from the timm model's stages at any input size. ``attention_inline`` (default on):
  the attended map also flows on through the last stage, so AT matters even without
  LF; off: CBAM only feeds the fusion.
  ``cbam``: as the CBAM authors' code (``reference``, default: biases in the channel
  MLP, BatchNorm after the spatial convolution) or the bare equations (``bare``).
- LF (``fusion``): F_concat = [F_CBAM, F_EfficientNet] -> Linear1 (``width`` 512)
  -> classifier (focal loss); [Linear1, flatten(F_CBAM)] -> Linear2 -> hash layer.
  Linear1 is affine, as the paper's equation writes it; ``linear1_activation=relu``
  puts a ReLU after it.
  ``fusion_pool``: F_CBAM enters Linear1 flattened (default) or average-pooled.
  Without LF only the backbone's pooled output feeds Linear1.
- Ptanh (``ptanh``): H = tanh(alpha * z + b), alpha learnable and kept > 1
  (alpha = 1.001 + softplus(p), starting at 2); without it a plain tanh.
- Classifier input (``classifier_input``): the paper conflicts with itself. Section
  3.3.2 puts the classifier on Linear1's output (``linear1``, default); Algorithm 1
  puts it on the hash codes (``hash``: a Linear(bits, classes) on the hash layer's
  output H, so the focal loss also trains the hash layer).
- Loss: lambda * (focal(anchor) + focal(positive) + focal(negative)) + beta *
  triplet(anchor, positive, negative); lambda 1/3, focal gamma 1.5, triplet margin
  0.5 on the L2 distance of hash outputs (Table 2); beta = 1 (unstated). Each focal
  term is a mean over its items. ``triplet_reduction``: the triplet term as the mean
  over the batch's B triplets (``mean``, default, torch's convention) or, as the paper
  writes it, their sum (``sum``); sum = B x mean, so at batch 32 the paper's form
  weighs the triplet term 32 times more against the focal terms.
- Triplets: the positive shares the anchor's class, the negative does not, drawn
  at random from the training split (``mining="batch-hard"``: hardest positive and
  negative within the batch instead). ``batch_size`` counts triplets.
- Adam, lr 1e-4, weight decay 1e-4, 50 epochs (Table 2).

Variants are registered names: the backbones of Table 4 and the ablations of Table 5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashbench.model.components import CBAM, Ptanh, batch_hard_triplets, focal_loss, triplet_batches
from hashbench.model.method import HashNetwork, HashOutput, Method, TrainSettings
from hashbench.model.options import option, with_defaults
from hashbench.model.registry import register_method


def penultimate_stage(model: nn.Module) -> nn.Module:
    """The stage whose output CBAM attends: EfficientNet's second-to-last MBConv stage, ResNet's layer3."""
    if isinstance(getattr(model, "blocks", None), nn.Sequential) and hasattr(model, "conv_head"):
        return model.blocks[-2]
    if hasattr(model, "layer3") and hasattr(model, "layer4"):
        return model.layer3
    raise ValueError(
        f"{type(model).__name__}: DAFH's attention needs an EfficientNet or ResNet backbone (stages not found)"
    )


class TappedBackbone(nn.Module):
    """A timm backbone whose penultimate stage output goes through ``attention`` and is kept for the fusion."""

    def __init__(
        self,
        backbone: nn.Module,
        attention: bool,
        inline: bool,
        image_size: int,
        reduction: int,
        kernel_size: int,
        cbam_reference: bool,
    ):
        super().__init__()
        self.backbone = backbone
        stage = penultimate_stage(self.backbone)
        self.mid_shape = self._stage_shape(stage, image_size)
        self.attention = CBAM(self.mid_shape[0], reduction, kernel_size, cbam_reference) if attention else None
        self.inline = inline
        self._mid: torch.Tensor | None = None
        stage.register_forward_hook(self._tap)

    def _stage_shape(self, stage: nn.Module, image_size: int) -> tuple[int, int, int]:
        shapes = []
        handle = stage.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(output.shape[1:])))
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            self.backbone(torch.zeros(1, 3, image_size, image_size))
        self.backbone.train(was_training)
        handle.remove()
        return shapes[0]

    def _tap(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        self._mid = self.attention(output) if self.attention is not None else output
        return self._mid if self.inline else output

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.backbone(images)
        mid, self._mid = self._mid, None
        return final, mid


class DualBackbone(nn.Module):
    """Table 4's 'ViT + ResNet-50 (feature fusion)': the two pooled feature vectors, concatenated."""

    def __init__(self, vit: nn.Module, cnn: nn.Module):
        super().__init__()
        self.vit, self.cnn = vit, cnn
        self.mid_shape = None
        self.num_features = self.vit.num_features + self.cnn.num_features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.cat([self.vit(images), self.cnn(images)], dim=1), None


class FusionHead(nn.Module):
    """Linear1 and Linear2 (-> hash layer), with or without the inter-layer fusion; the classifier reads Linear1 or the hash layer."""

    def __init__(
        self,
        final_dim: int,
        mid_shape,
        n_classes: int,
        bits: int,
        fusion: bool,
        fusion_pool: str,
        width: int,
        ptanh: bool,
        classifier_input: str,
        linear1_relu: bool,
    ):
        super().__init__()
        self.activation = nn.ReLU() if linear1_relu else nn.Identity()
        self.fusion, self.pool, self.classify_hash = fusion, fusion_pool == "pool", classifier_input == "hash"
        mid_flat = int(np.prod(mid_shape)) if fusion else 0
        mid_in = (mid_shape[0] if self.pool else mid_flat) if fusion else 0
        self.linear1 = nn.Linear(final_dim + mid_in, width)
        self.classifier = nn.Linear(bits if self.classify_hash else width, n_classes)
        self.linear2 = nn.Linear(width + mid_flat, bits, bias=not ptanh)
        self.hash = Ptanh(bits) if ptanh else nn.Tanh()

    def forward(self, features: tuple[torch.Tensor, torch.Tensor | None]) -> HashOutput:
        final, mid = features
        if self.fusion:
            flat = mid.flatten(1)
            hidden = self.activation(
                self.linear1(torch.cat([final, mid.mean(dim=(2, 3)) if self.pool else flat], dim=1))
            )
            code = self.hash(self.linear2(torch.cat([hidden, flat], dim=1)))
        else:
            hidden = self.activation(self.linear1(final))
            code = self.hash(self.linear2(hidden))
        return HashOutput(code, self.classifier(code if self.classify_hash else hidden))


class DafhLoss(nn.Module):
    def __init__(self, gamma: float, margin: float, lam: float, beta: float, mining: str, triplet_reduction: str):
        super().__init__()
        self.gamma, self.margin, self.lam, self.beta, self.mining = gamma, margin, lam, beta, mining
        self.triplet_reduction = triplet_reduction

    def forward(self, output, labels, indices, info):
        focal = sum(
            focal_loss(logits, targets, self.gamma) for logits, targets in zip(output.logits.chunk(3), labels.chunk(3))
        )
        if self.mining == "batch-hard":
            anchor, positive, negative = batch_hard_triplets(output.code, labels)
        else:
            anchor, positive, negative = output.code.chunk(3)
        triplet = F.triplet_margin_loss(
            anchor, positive, negative, margin=self.margin, reduction=self.triplet_reduction
        )
        return {"focal": self.lam * focal, "triplet": self.beta * triplet}


@register_method("dafh")
class DAFH(Method):
    paper = "Wu et al., Deep Attention Fusion Hashing (DAFH) Model for Medical Image Retrieval, Bioengineering 2024"
    not_freezable = (
        "its CBAM and inter-layer fusion read the backbone's feature maps, not one pooled feature vector: "
        "train it whole (drop --freeze-backbone)"
    )

    @dataclass(frozen=True)
    class Options:
        backbone: str | None = option(None, "the CNN (a timm name); none: the run's backbone")
        attention: bool = option(True, "AT: CBAM on the penultimate stage")
        attention_inline: bool = option(True, "the attended map also flows on through the last stage")
        fusion: bool = option(True, "LF: inter-layer fusion of the attended map with the final features")
        ptanh: bool = option(True, "Ptanh: learnable tanh slope; off: plain tanh")
        fusion_pool: Literal["flatten", "pool"] = option("flatten", "how the attended map enters Linear1")
        width: int = option(512, "width of Linear1", at_least=1)
        linear1_activation: Literal["none", "relu"] = option(
            "none", "after Linear1: nothing (the paper's affine layer) or a ReLU"
        )
        cbam_reduction: int = option(16, "CBAM channel reduction", at_least=1)
        cbam_kernel: int = option(7, "CBAM spatial kernel", at_least=1)
        cbam: Literal["reference", "bare"] = option(
            "reference", "CBAM as its authors' code (MLP biases, BatchNorm in the spatial gate) or the bare equations"
        )
        gamma: float = option(1.5, "focal loss gamma", at_least=0.0)
        margin: float = option(0.5, "triplet margin", at_least=0.0)
        lam: float = option(1 / 3, "weight of the focal terms", at_least=0.0)
        beta: float = option(1.0, "weight of the triplet term", at_least=0.0)
        mining: Literal["random", "batch-hard"] = option("random", "triplets as sampled, or the batch's hardest")
        vit: str | None = option(None, "a ViT (timm name) fused with the CNN (Table 4); none: CNN only")
        triplet_reduction: Literal["mean", "sum"] = option(
            "mean", "the triplet term as a mean (torch) or a sum (the paper's formula)"
        )
        classifier_input: Literal["linear1", "hash"] = option(
            "linear1", "the classifier reads Linear1 (section 3.3.2) or the hash codes (Algorithm 1)"
        )

    train = TrainSettings(optimizer="adam", lr=1e-4, weight_decay=1e-4, batch_size=32)

    def backbones(self, run_backbone: str) -> list[str]:
        cnn = self.opt.backbone or run_backbone
        return [self.opt.vit, cnn] if self.opt.vit else [cnn]

    def build(self, backbone: str) -> tuple[HashNetwork, nn.Module]:
        opt, size = self.opt, self.context.image_size
        models = [
            self.create_backbone(name, num_classes=0)  # a ViT built for the run's image size
            for name in self.backbones(backbone)
        ]
        if opt.vit:
            encoder = DualBackbone(*models)
            final_dim = encoder.num_features
        else:
            encoder = TappedBackbone(
                models[0],
                opt.attention,
                opt.attention_inline,
                size,
                opt.cbam_reduction,
                opt.cbam_kernel,
                opt.cbam == "reference",
            )
            final_dim = encoder.backbone.num_features
        head = FusionHead(
            final_dim,
            encoder.mid_shape,
            self.context.n_classes,
            self.bits,
            opt.fusion and encoder.mid_shape is not None,
            opt.fusion_pool,
            opt.width,
            opt.ptanh,
            opt.classifier_input,
            opt.linear1_activation == "relu",
        )
        return HashNetwork(encoder, head), self.training_loss()

    def build_loss(self) -> nn.Module:
        opt = self.opt
        return DafhLoss(opt.gamma, opt.margin, opt.lam, opt.beta, opt.mining, opt.triplet_reduction)

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        return triplet_batches(labels, batch_size, rng)


def _variant(name: str, paper_row: str, **options):
    """Register a DAFH variant: the same method with some options fixed."""
    fixed = with_defaults(DAFH.Options, name, **options)
    cls = type(
        name.replace("-", "_"),
        (DAFH,),
        {"Options": fixed, "paper": f"{DAFH.paper}; {paper_row}", "__doc__": f"DAFH variant: {paper_row}."},
    )
    register_method(name)(cls)


# Table 5: ablations at 32 bits (AT = attention, LF = inter-layer fusion, Ptanh = learnable tanh).
_variant("dafh-ab-base", "Table 5, EfficientNet", attention=False, fusion=False, ptanh=False)
_variant("dafh-ab-ptanh", "Table 5, EfficientNet + Ptanh", attention=False, fusion=False, ptanh=True)
_variant("dafh-ab-at", "Table 5, EfficientNet + AT", attention=True, fusion=False, ptanh=False)
_variant("dafh-ab-lf", "Table 5, EfficientNet + LF", attention=False, fusion=True, ptanh=False)
_variant("dafh-ab-ptanh-at", "Table 5, EfficientNet + Ptanh + AT", attention=True, fusion=False, ptanh=True)
_variant("dafh-ab-ptanh-lf", "Table 5, EfficientNet + Ptanh + LF", attention=False, fusion=True, ptanh=True)
_variant("dafh-ab-at-lf", "Table 5, EfficientNet + AT + LF", attention=True, fusion=True, ptanh=False)
# Table 4: other backbones inside DAFH (the EfficientNet row is dafh itself).
_variant("dafh-resnet50", "Table 4, ResNet-50", backbone="resnet50", attention=False)
_variant("dafh-resnet50-at", "Table 4, ResNet-50 + Attention", backbone="resnet50", attention=True)
_variant(
    "dafh-vit-resnet50",
    "Table 4, ViT + ResNet-50 (feature fusion)",
    backbone="resnet50",
    vit="vit_base_patch16_224",
    attention=False,
    fusion=False,
)
