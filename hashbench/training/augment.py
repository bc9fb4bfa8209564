"""Random augmentation of training images: rotation, scaling, blur, brightness and noise.

DAFH (Wu et al., 2024) augments its training images with rotation, scaling,
brightness adjustment, noise and blur but gives no magnitudes, so the magnitudes
are a setting here (``PAPER_AUGMENTATION`` is hashbench's moderate choice) and are
recorded with every result. Augmentation runs on the device, on a whole batch at
once, after resizing and before normalisation, and only on training batches: query
and database images are never augmented. Every random draw comes from one
generator, which the engine seeds per (seed, epoch), so a resumed run sees the same
augmented batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

SMALLEST_SIGMA = 1e-3  # px: a Gaussian this narrow is the identity in float32, and no division by zero


@dataclass(frozen=True)
class Augmentation:
    """Magnitudes of each random transform; 0 turns a transform off.

    Applied in this order, each image drawing its own parameters: rotation and
    scaling together (one bilinear resampling about the centre, black outside),
    then Gaussian blur, then a brightness shift, then Gaussian noise, then clamping
    to [0, 1].

    rotation: degrees; each image is rotated by an angle uniform in [-rotation, +rotation].
    scale: each image is zoomed by a factor uniform in [1 - scale, 1 + scale]; below 1.
    brightness: intensity units of [0, 1]; each image is shifted by uniform [-brightness, +brightness].
    noise: standard deviation of additive Gaussian noise, intensity units of [0, 1].
    blur: pixels at the training size; each image is blurred with a sigma uniform in [0, blur].
    """

    rotation: float = 0.0
    scale: float = 0.0
    brightness: float = 0.0
    noise: float = 0.0
    blur: float = 0.0

    def __post_init__(self) -> None:
        for name in _field_names():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"augmentation {name}={value!r} is not a number; valid keys: {_valid_keys()}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"augmentation {name}={value!r} must be a finite number >= 0; valid keys: {_valid_keys()}"
                )
            object.__setattr__(self, name, float(value))
        if self.scale >= 1:
            raise ValueError(
                f"augmentation scale={self.scale!r} must be below 1: the smallest zoom factor is 1 - scale"
            )

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in _field_names())

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def scaled(self, strength: float) -> Augmentation:
        """Every magnitude times ``strength`` (0 to 1): a weaker view of the same transforms."""
        return Augmentation(**{name: getattr(self, name) * strength for name in _field_names()})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Augmentation:
        """The inverse of ``to_dict``; unknown keys are errors, missing keys are off."""
        unknown = sorted(set(values) - set(_field_names()))
        if unknown:
            raise ValueError(
                f"unknown augmentation key(s) {', '.join(map(repr, unknown))}; valid keys: {_valid_keys()}"
            )
        return cls(**values)

    @classmethod
    def parse(cls, text: str) -> Augmentation:
        """``none``, ``paper``, or ``key=value`` pairs separated by commas (unnamed keys are off)."""
        spec = text.strip()
        if spec.lower() == "none":
            return cls()
        if spec.lower() == "paper":
            return PAPER_AUGMENTATION
        values: dict[str, Any] = {}
        for pair in spec.split(","):
            key, separator, value = (part.strip() for part in pair.partition("="))
            if not separator or not key:
                raise ValueError(
                    f"augmentation {pair.strip()!r} is not key=value; give none, paper or key=value pairs with valid keys: {_valid_keys()}"
                )
            if key in values:
                raise ValueError(f"augmentation key {key!r} given twice; valid keys: {_valid_keys()}")
            try:
                values[key] = float(value)
            except ValueError:
                values[key] = value  # reported as not a number, once the key is known to be valid
        return cls.from_dict(values)

    def describe(self) -> str:
        """One line for logs and reports, e.g. ``rotation ±10°, noise σ 0.02``; ``none`` when off."""
        parts = {
            "rotation": f"rotation ±{self.rotation:g}°",
            "scale": f"scale ±{self.scale:g}",
            "brightness": f"brightness ±{self.brightness:g}",
            "noise": f"noise σ {self.noise:g}",
            "blur": f"blur σ ≤ {self.blur:g} px",
        }
        return ", ".join(part for name, part in parts.items() if getattr(self, name) > 0) or "none"


def _field_names() -> tuple[str, ...]:
    return tuple(field.name for field in fields(Augmentation))


def _valid_keys() -> str:
    return ", ".join(_field_names())


# The paper names the transforms but not their magnitudes; these moderate ones are hashbench's choice.
PAPER_AUGMENTATION = Augmentation(rotation=10.0, scale=0.1, brightness=0.1, noise=0.02, blur=1.0)


def augment(images: torch.Tensor, augmentation: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Randomly transformed copies of float images (B, C, H, W) in [0, 1], on their own device.

    Every draw comes from ``generator`` (which must live on the images' device), so
    the same generator state gives the same output. With nothing enabled the input
    itself is returned.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"augment expects float images (B, C, H, W), not {images.dtype} {tuple(images.shape)}")
    if not augmentation.enabled:
        return images
    x = images
    if augmentation.rotation > 0 or augmentation.scale > 0:
        x = _rotate_and_scale(x, augmentation.rotation, augmentation.scale, generator)
    if augmentation.blur > 0:
        x = _blur(x, augmentation.blur, generator)
    if x is images:  # what follows works in place, never on the caller's tensor
        x = images.clone()
    if augmentation.brightness > 0:
        x.add_(augmentation.brightness * _uniform_signed((len(x), 1, 1, 1), x, generator))
    if augmentation.noise > 0:
        x.add_(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), alpha=augmentation.noise)
    return x.clamp_(0.0, 1.0)


def _uniform_signed(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform in [-1, 1)."""
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) * 2 - 1


def _rotate_and_scale(
    x: torch.Tensor, max_degrees: float, max_scale: float, generator: torch.Generator
) -> torch.Tensor:
    """One resampling per batch: each image rotated and zoomed about its centre, zeros outside."""
    batch, _, height, width = x.shape
    angle = torch.deg2rad(max_degrees * _uniform_signed((batch,), x, generator))
    zoom = 1 + max_scale * _uniform_signed((batch,), x, generator)
    # The sampling grid maps each output pixel to where it reads the input, in coordinates normalised per
    # axis to [-1, 1] (pixel centres, as affine_grid with align_corners=False): sampling at R(-angle) / zoom
    # shows the image rotated by angle and zoomed by zoom. The aspect factors keep the rotation rigid in
    # pixels when H != W. Built by broadcasting: affine_grid's batched matmul costs several times more on a CPU.
    cos, sin = (torch.cos(angle) / zoom)[:, None, None], (torch.sin(angle) / zoom)[:, None, None]
    xs = ((torch.arange(width, device=x.device, dtype=x.dtype) * 2 + 1) / width - 1)[None, None, :]
    ys = ((torch.arange(height, device=x.device, dtype=x.dtype) * 2 + 1) / height - 1)[None, :, None]
    grid = torch.stack([cos * xs + sin * (height / width) * ys, cos * ys - sin * (width / height) * xs], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blur(x: torch.Tensor, max_sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with a sigma per image, as grouped convolutions over the batch."""
    batch, channels, height, width = x.shape
    sigma = max_sigma * torch.rand((batch,), generator=generator, device=x.device, dtype=x.dtype)
    radius = min(math.ceil(3 * max_sigma), height - 1, width - 1)  # reflect padding needs radius < size
    kernels = _gaussian_kernels(sigma, radius).repeat_interleave(channels, dim=0)  # (B*C, 2r+1)
    planes = x.reshape(1, batch * channels, height, width)
    planes = F.conv2d(
        F.pad(planes, (radius, radius, 0, 0), mode="reflect"), kernels[:, None, None, :], groups=batch * channels
    )
    planes = F.conv2d(
        F.pad(planes, (0, 0, radius, radius), mode="reflect"), kernels[:, None, :, None], groups=batch * channels
    )
    return planes.reshape(batch, channels, height, width)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussians (len(sigma), 2 * radius + 1); sigma 0 gives the identity kernel."""
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    weights = torch.exp(-0.5 * (offsets / sigma.clamp(min=SMALLEST_SIGMA)[:, None]) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)
