"""The training engine: augmentation on training batches only, the learning-rate schedule, a resumable log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hashbench.api import RunRequest, run_grid
from hashbench.model.method import LrSchedule
from hashbench.model.trained import load_trained_network
from hashbench.store.results import Cell
from hashbench.training import engine
from hashbench.training.augment import PAPER_AUGMENTATION, Augmentation


def test_each_augmentation_changes_training_images(tiny_phantom):
    dataset = tiny_phantom.dataset
    batch = torch.from_numpy(dataset.images[dataset.usable().index[:16]])
    plain = engine.to_input(batch, torch.device("cpu"), 64)
    for key, value in PAPER_AUGMENTATION.to_dict().items():
        augmented = engine.to_input(
            batch, torch.device("cpu"), 64, Augmentation(**{key: value}), torch.Generator().manual_seed(0)
        )
        change = (
            (augmented - plain).abs().amax(dim=(1, 2, 3))
        )  # per image, in normalised units (one grey level is 0.017)
        assert augmented.shape == plain.shape and change.max() > 0.2 and (change > 0.017).float().mean() >= 0.5, (
            key,
            change,
        )
    assert torch.equal(engine.to_input(batch, torch.device("cpu"), 64, Augmentation(), torch.Generator()), plain)


def test_training_batches_are_augmented_and_queries_and_database_never(tiny_phantom, tmp_path, monkeypatch):
    calls = []
    real = engine.augment

    def spy(images, augmentation, generator):
        augmented = real(images, augmentation, generator)
        calls.append((len(images), bool((augmented != images).any())))
        return augmented

    monkeypatch.setattr(engine, "augment", spy)
    dataset = tiny_phantom.dataset
    outcome = run_grid(RunRequest(["dsh"], [8], dataset=dataset.name, epochs=2, augment="paper"), dataset, tmp_path)[0]
    assert outcome.status == "done", outcome.error
    cell = Cell(outcome.config.directory(tmp_path))
    n_train, batch = len(cell.codes()["database_ids"]), cell.config.train["batch_size"]
    assert len(calls) == 2 * (
        n_train // batch
    )  # every training step of both epochs, nothing else: encoding queries and database adds none
    assert all(size == batch and changed for size, changed in calls)
    assert cell.config.augment == PAPER_AUGMENTATION.to_dict()
    # the stored database codes are those of the plain images
    network = load_trained_network(cell, "cpu")
    ids = cell.codes()["database_ids"]
    plain = engine.encode(
        network, engine.ImageSource(dataset.images, ids, torch.device("cpu")), ids, cell.config.image_size
    )
    np.testing.assert_array_equal(plain.astype(np.float16), cell.codes()["database_embeddings"])


@pytest.mark.parametrize(
    "text, steps, expected",
    [
        ("constant", [0, 999, 5000], [1.0, 1.0, 1.0]),
        ("step:2000it:0.5", [0, 1999, 2000, 4000, 6500], [1.0, 1.0, 0.5, 0.25, 0.125]),
        ("step:2ep:0.1", [0, 19, 20, 40], [1.0, 1.0, 0.1, 0.01]),  # 10 steps an epoch
        ("step:50%:0.1", [0, 49, 50, 99], [1.0, 1.0, 0.1, 0.1]),  # 10 epochs of 10 steps: x0.1 at half
    ],
)
def test_learning_rate_schedules(text, steps, expected):
    schedule = LrSchedule.parse(text)
    assert [schedule.multiplier(step, 10, 10) for step in steps] == pytest.approx(expected)


@pytest.mark.parametrize("text", ["step:0it:0.5", "step:10:0.5", "cosine", "step:10it"])
def test_a_bad_schedule_names_the_valid_forms(text):
    with pytest.raises(ValueError, match="constant or step:<every><it|ep|%>:<factor>"):
        LrSchedule.parse(text)


def test_the_engine_follows_the_schedule_and_a_resume_keeps_one_log_line_per_epoch(tiny_phantom, tmp_path):
    dataset = tiny_phantom.dataset
    request = RunRequest(
        ["dsh"], [8], dataset=dataset.name, epochs=3, overrides={"dsh": {"lr_schedule": "step:1ep:0.5"}}
    )
    outcome = run_grid(request, dataset, tmp_path)[0]
    log = Cell(outcome.config.directory(tmp_path)).path("train_log.jsonl")
    lrs = [json.loads(line)["lr"] for line in log.read_text().splitlines()]
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4])  # the quick profile's 1e-3, halved each epoch

    # a kill between an epoch's log line and its checkpoint leaves one line too many: the resume trims it
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines + [lines[-1]]) + "\n")
    network = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    checkpoint = tmp_path / "checkpoint.pt"
    engine._save(checkpoint, network, torch.nn.Module(), optimizer, 2)
    assert engine._resume(checkpoint, log, network, torch.nn.Module(), optimizer) == engine.Start(2)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]


def test_pretrained_weights_get_the_statistics_they_were_trained_with():
    """CLIP-like statistics from the timm model's pretrained config when its weights are pretrained; a random init and
    ImageNet's statistics keep the default path."""
    import timm

    from hashbench.methods.hashnet import HashNet
    from hashbench.model.method import MethodContext
    from hashbench.model.weights import IMAGENET_STATISTICS, WeightSource, pretrained_statistics

    clip = timm.create_model("test_vit", pretrained=False, num_classes=0)
    statistics = ((0.481, 0.458, 0.408), (0.269, 0.261, 0.276))
    clip.pretrained_cfg = {**clip.pretrained_cfg, "mean": statistics[0], "std": statistics[1]}
    assert pretrained_statistics(torch.nn.Sequential(clip)) == statistics
    imagenet = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    assert pretrained_statistics(imagenet) is None and pretrained_statistics(torch.nn.Linear(2, 2)) is None
    hub = MethodContext(16, 3, 100, weights={"test_vit": WeightSource("test_vit", "hub", "timm/test_vit")})
    assert HashNet(hub).input_statistics("test_vit", clip) == statistics
    assert HashNet(MethodContext(16, 3, 100)).input_statistics("test_vit", clip) is None  # random init
    grey = torch.full((1, 4, 4), 128, dtype=torch.uint8)
    x = engine.to_input(grey, torch.device("cpu"), 4, normalisation=statistics)
    expected = (128 / 255 - torch.tensor(statistics[0])) / torch.tensor(statistics[1])
    torch.testing.assert_close(x[0, :, 0, 0], expected)  # the grey image repeated over the channels, each its own
    colour = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    default = engine.to_input(colour, torch.device("cpu"), 4)
    same = engine.to_input(colour, torch.device("cpu"), 4, normalisation=IMAGENET_STATISTICS)
    torch.testing.assert_close(same, default)  # ImageNet's statistics given explicitly are the default path's
