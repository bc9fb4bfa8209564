"""Training-image augmentation: each transform alone on images with known geometry, determinism, parsing."""

from __future__ import annotations

import math

import pytest
import torch

from hashbench.training.augment import PAPER_AUGMENTATION, Augmentation, _gaussian_kernels, augment

SIZE = 64
CENTRE = (SIZE - 1) / 2  # the rotation centre in pixel coordinates (align_corners=False)


def pixel_grid(height: int = SIZE, width: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    rows, columns = torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32)
    return torch.meshgrid(rows, columns, indexing="ij")  # y, x


def disc(batch: int, radius: float = 14.0, edge: float = 1.0) -> torch.Tensor:
    """A phantom-like slice: a bright disc with a soft edge and a darker smooth insert, on a dark background."""
    y, x = pixel_grid()
    distance = torch.hypot(x - CENTRE, y - CENTRE)
    body = torch.sigmoid((radius - distance) / edge)
    insert = torch.exp(-((x - CENTRE - 4) ** 2 + (y - CENTRE + 3) ** 2) / 18)
    image = 0.1 + 0.6 * body - 0.2 * insert * body
    return image.expand(batch, 1, SIZE, SIZE).clone()


def dot(batch: int, x0: float, y0: float, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """A small Gaussian spot centred at the continuous pixel position (x0, y0)."""
    y, x = pixel_grid(height, width)
    spot = torch.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * 1.5**2))
    return spot.expand(batch, 1, height, width).clone()


def centroids(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y, x = pixel_grid(*images.shape[-2:])
    mass = images.sum(dim=(1, 2, 3))
    return (images * x).sum(dim=(1, 2, 3)) / mass, (images * y).sum(dim=(1, 2, 3)) / mass


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_rotation_alone_moves_an_off_centre_dot_along_its_circle_by_at_most_the_angle():
    radius, degrees = 20.0, 10.0
    images = dot(64, CENTRE + radius, CENTRE)
    x, y = centroids(augment(images, Augmentation(rotation=degrees), seeded()))
    assert torch.hypot(x - CENTRE, y - CENTRE).sub(radius).abs().max() < 0.1
    angles = torch.rad2deg(torch.atan2(y - CENTRE, x - CENTRE))
    assert angles.abs().max() <= degrees + 0.1
    assert angles.min() < -degrees / 2 and angles.max() > degrees / 2  # spread over the range, both ways


def test_rotation_is_rigid_in_pixels_on_non_square_images():
    height, width = 48, 96
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    images = torch.cat(
        [dot(16, centre_x + 15, centre_y, height, width), dot(16, centre_x, centre_y + 15, height, width)]
    )
    x, y = centroids(augment(images, Augmentation(rotation=20.0), seeded()))
    assert torch.hypot(x - centre_x, y - centre_y).sub(15).abs().max() < 0.1


def test_rotation_alone_keeps_a_centred_disc_and_its_radial_profile():
    images = (
        torch.sigmoid((14.0 - torch.hypot(*(c - CENTRE for c in pixel_grid()))) / 1.0).expand(16, 1, SIZE, SIZE).clone()
    )
    rotated = augment(images, Augmentation(rotation=30.0), seeded())
    assert (rotated - images).abs().max() < 0.03  # bilinear resampling of a 1-px edge
    assert rotated.mean(dim=(1, 2, 3)) == pytest.approx(images.mean(dim=(1, 2, 3)), rel=1e-3)
    phantom = disc(16)
    assert (augment(phantom, Augmentation(rotation=30.0), seeded()) - phantom).abs().max() > 0.05  # the insert moves


def test_scale_alone_changes_the_disc_radius_within_the_range():
    scale, radius = 0.2, 14.0
    images = (
        torch.sigmoid((radius - torch.hypot(*(c - CENTRE for c in pixel_grid()))) / 1.0)
        .expand(64, 1, SIZE, SIZE)
        .clone()
    )
    scaled = augment(images, Augmentation(scale=scale), seeded())
    ratios = torch.sqrt(scaled.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3)))  # radius from the disc's area
    assert ratios.min() >= 1 - scale - 0.01 and ratios.max() <= 1 + scale + 0.01
    assert ratios.min() < 1 - scale / 2 and ratios.max() > 1 + scale / 2
    x, y = centroids(scaled)
    assert (x - CENTRE).abs().max() < 0.05 and (y - CENTRE).abs().max() < 0.05  # about the centre


def test_brightness_alone_shifts_every_pixel_of_an_image_by_one_bounded_amount():
    images = disc(64)
    brightened = augment(images, Augmentation(brightness=0.1), seeded())
    shift = brightened - images
    per_image = shift.mean(dim=(1, 2, 3))
    assert (shift - per_image[:, None, None, None]).abs().max() < 1e-6
    assert per_image.abs().max() <= 0.1 + 1e-6
    assert per_image.min() < -0.05 and per_image.max() > 0.05


def test_noise_alone_has_the_asked_standard_deviation_on_flat_grey():
    images = torch.full((32, 1, SIZE, SIZE), 0.5)
    noisy = augment(images, Augmentation(noise=0.02), seeded())
    residual = noisy - images
    count = residual.numel()
    assert residual.std().item() == pytest.approx(0.02, rel=5 / math.sqrt(2 * count))  # 5 standard errors
    assert abs(residual.mean().item()) < 5 * 0.02 / math.sqrt(count)
    assert residual[0].flatten().std() > 0 and not torch.equal(residual[0], residual[1])


def test_blur_alone_never_adds_high_frequencies_and_keeps_flat_images():
    y, x = pixel_grid()
    checkerboard = (0.25 + 0.5 * ((x + y) % 2)).expand(32, 1, SIZE, SIZE).clone()
    blurred = augment(checkerboard, Augmentation(blur=1.0), seeded())
    before, after = checkerboard.var(dim=(1, 2, 3)), blurred.var(dim=(1, 2, 3))
    assert (after <= before + 1e-6).all()
    ratio = after / before  # sigma 0.4 px halves a 1-px checkerboard's variance, 0.7 px leaves under 1e-3
    assert 0.35 < (ratio < 0.5).float().mean() < 0.85  # about 60 % of sigmas uniform in [0, 1] exceed 0.4
    assert ratio.min() < 1e-3 and ratio.max() > 0.9  # each image draws its own sigma
    flat = torch.full((8, 1, SIZE, SIZE), 0.37)
    assert torch.allclose(augment(flat, Augmentation(blur=2.5), seeded()), flat, atol=1e-6)


def test_blur_with_a_tiny_sigma_is_the_identity_without_nans():
    kernels = _gaussian_kernels(torch.tensor([0.0, 1e-9, 0.05]), radius=2)
    assert torch.equal(kernels, torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]).expand(3, -1))
    images = disc(8)
    blurred = augment(images, Augmentation(blur=1e-6), seeded())
    assert torch.isfinite(blurred).all() and torch.allclose(blurred, images, atol=1e-6)


def test_nothing_enabled_returns_the_input_values_exactly():
    images = disc(4)
    assert torch.equal(augment(images, Augmentation(), seeded()), disc(4))


def test_the_same_generator_state_repeats_the_output_and_other_seeds_do_not():
    images, original = disc(16), disc(16)
    generator = seeded(7)
    state = generator.get_state()
    with torch.no_grad():
        first = augment(images, PAPER_AUGMENTATION, generator)
        following = augment(images, PAPER_AUGMENTATION, generator)
        generator.set_state(state)
        resumed = augment(images, PAPER_AUGMENTATION, generator)
    assert torch.equal(first, resumed) and torch.equal(first, augment(images, PAPER_AUGMENTATION, seeded(7)))
    assert not torch.equal(first, following) and not torch.equal(first, augment(images, PAPER_AUGMENTATION, seeded(8)))
    assert torch.equal(images, original)  # the input is left alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_keeps_shape_and_dtype_and_is_clamped_to_the_unit_range(dtype):
    images = torch.cat([torch.zeros(8, 1, 48, 40), torch.ones(8, 1, 48, 40)]).to(dtype)
    with torch.inference_mode():
        augmented = augment(images, PAPER_AUGMENTATION, seeded())
    assert augmented.shape == images.shape and augmented.dtype == dtype
    assert augmented.min() == 0 and augmented.max() == 1  # reached, and not passed
    assert 0 < augmented[:8].mean() < 0.1 and 0.6 < augmented[8:].mean() < 1  # black corners after rotation


def test_non_image_input_is_refused():
    with pytest.raises(ValueError, match=r"float images \(B, C, H, W\)"):
        augment(torch.zeros(2, SIZE, SIZE), PAPER_AUGMENTATION, seeded())


@pytest.mark.parametrize("text", ["none", "paper", "rotation=5,noise=0.01", " blur = 1.5 , scale=0.05 "])
def test_parse_round_trips_through_the_dict(text):
    augmentation = Augmentation.parse(text)
    assert Augmentation.from_dict(augmentation.to_dict()) == augmentation


def test_parse_reads_the_named_settings_and_leaves_the_rest_off():
    assert Augmentation.parse("none") == Augmentation() and not Augmentation().enabled
    assert Augmentation.parse("paper") == PAPER_AUGMENTATION and PAPER_AUGMENTATION.enabled
    assert Augmentation.parse("rotation=5,noise=0.01").to_dict() == {
        "rotation": 5.0,
        "scale": 0.0,
        "brightness": 0.0,
        "noise": 0.01,
        "blur": 0.0,
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rotate=5", "unknown augmentation key"),
        ("rotation=-5", "must be a finite number >= 0"),
        ("noise=lots", "is not a number"),
        ("noise=nan", "must be a finite number >= 0"),
        ("rotation", "is not key=value"),
        ("", "is not key=value"),
        ("blur=1,blur=2", "given twice"),
    ],
)
def test_parse_refuses_bad_settings_and_lists_the_valid_keys(text, problem):
    with pytest.raises(ValueError, match=problem) as error:
        Augmentation.parse(text)
    assert "valid keys: rotation, scale, brightness, noise, blur" in str(error.value)


def test_from_dict_refuses_unknown_keys_and_the_constructor_refuses_bad_values():
    with pytest.raises(ValueError, match="unknown augmentation key.*'contrast'.*valid keys: rotation"):
        Augmentation.from_dict({"rotation": 5.0, "contrast": 0.1})
    with pytest.raises(ValueError, match="scale=1.0 must be below 1"):
        Augmentation(scale=1.0)
    with pytest.raises(ValueError, match="not a number"):
        Augmentation(noise=True)


def test_describe_names_only_the_enabled_transforms():
    assert PAPER_AUGMENTATION.describe() == "rotation ±10°, scale ±0.1, brightness ±0.1, noise σ 0.02, blur σ ≤ 1 px"
    assert Augmentation(noise=0.05).describe() == "noise σ 0.05"
    assert Augmentation().describe() == "none"
