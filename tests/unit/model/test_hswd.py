"""HSWD as every trained method's quantisation switch: its value by hand, zero at balanced codes, the term it replaces."""

from __future__ import annotations

import json

import pytest
import torch

from hashbench.methods.csq import CSQ
from hashbench.methods.hashnet import HashNet
from hashbench.methods.lsh import LSH
from hashbench.model.components import HSWDQuantization, hswd
from hashbench.model.method import HashOutput, MethodContext

U = [[0.9, -0.7], [0.4, 0.8], [-0.6, 0.2], [-1.1, -0.5]]


def test_hswd_by_hand_against_a_balanced_target():
    """Column 0 sorted (-1.1, -0.6, 0.4, 0.9) against (-1, -1, 1, 1): 0.01 + 0.16 + 0.36 + 0.01 = 0.54; column 1
    (-0.7, -0.5, 0.2, 0.8): 0.09 + 0.25 + 0.64 + 0.04 = 1.02; mean over the 8 entries 1.56 / 8 = 0.195."""
    assert hswd(torch.tensor(U, dtype=torch.float64), "balanced").item() == pytest.approx(0.195, abs=1e-12)


def test_hswd_is_zero_for_balanced_codes_at_plus_minus_one():
    codes = torch.tensor([[1.0, -1, 1], [-1, 1, 1], [1, 1, -1], [-1, -1, -1]])
    assert hswd(codes, "balanced").item() == 0.0
    assert hswd(codes[:, :1].repeat(1, 2), "balanced").item() == 0.0
    assert hswd(torch.tensor([[1.0], [1], [1], [-1]]), "balanced").item() == pytest.approx(4 / 4)  # one bit off: 2^2/4


def test_the_random_target_pulls_to_the_coin_flips_drawn_from_the_torch_generator():
    """At +/-1 codes the term is 4 / (N K) x the sum over bits of |#(+1 in U) - #(+1 in the draw)|."""
    codes = torch.tensor([[1.0, -1], [1, 1], [-1, 1], [-1, 1], [1, -1], [-1, -1]])
    torch.manual_seed(7)
    value = hswd(codes, "random").item()
    torch.manual_seed(7)
    draw = torch.where(torch.rand(6, 2) < 0.5, -1.0, 1.0)
    expected = 4 / 12 * ((codes > 0).sum(dim=0) - (draw > 0).sum(dim=0)).abs().sum().item()
    assert value == pytest.approx(expected, rel=2**-23)  # a float32 mean of exact squares: one rounding


def test_the_switch_replaces_a_methods_own_term_and_adds_to_a_method_without_one():
    labels = torch.eye(3)[[0, 1, 2, 0]]
    u = torch.tanh(torch.tensor(U).repeat(1, 4))  # 4 x 8
    for cls, own_term in ((CSQ, "quantisation"), (HashNet, None)):
        plain = cls(MethodContext(8, 3, 10, seed=0)).training_loss()
        switched = cls(MethodContext(8, 3, 10, {"quantization": "hswd", "hswd_target": "balanced"}, 0)).training_loss()
        assert isinstance(switched, HSWDQuantization) and not isinstance(plain, HSWDQuantization)
        info = None
        plain_terms = plain(HashOutput(u), labels, torch.arange(4), info)
        terms = switched(HashOutput(u), labels, torch.arange(4), info)
        kept = {k: v for k, v in plain_terms.items() if k != own_term}
        assert set(terms) == set(kept) | {"hswd"} and (own_term is None or own_term in plain_terms)
        for key, value in kept.items():
            assert terms[key].item() == pytest.approx(value.item(), abs=1e-12)
        assert terms["hswd"].item() == pytest.approx(0.1 * hswd(u, "balanced").item(), rel=2**-22)  # float32 x 0.1


def test_a_cell_stores_the_switch_only_when_it_is_thrown():
    options, _ = CSQ.resolve_options({})
    assert options == CSQ.default_options()  # the cells stored before the switch existed keep their identity
    options, _ = CSQ.resolve_options({"quantization": "hswd"})
    assert options == {**CSQ.default_options(), "quantization": "hswd"}
    with pytest.raises(ValueError, match="quantization"):
        LSH.resolve_options({"quantization": "hswd"})  # training-free: no loss to switch
    with pytest.raises(ValueError, match="hswd_target"):
        CSQ.resolve_options({"hswd_target": "uniform"})


def test_a_run_trains_with_hswd_in_place_of_the_methods_term(tiny_phantom, tmp_path):
    from hashbench.api import RunRequest, leaderboard, run_grid

    run = RunRequest(
        methods=["csq", "hashnet"],
        bits=[16],
        epochs=2,
        dataset="phantom-tiny-seed0",
        backbones=["test_efficientnet"],
        overrides={"*": {"quantization": "hswd", "batch_size": 32}},
    )
    for outcome in run_grid(run, tiny_phantom.dataset, tmp_path):
        assert outcome.status == "done", outcome.error
        directory = outcome.config.directory(tmp_path)
        epoch = json.loads((directory / "train_log.jsonl").read_text().splitlines()[-1])
        assert "hswd" in epoch and "quantisation" not in epoch
        assert json.loads((directory / "config.json").read_text())["options"]["quantization"] == "hswd"
    (board,) = leaderboard(tmp_path, metrics=("map@10",))
    assert sorted(board.table.index) == ["csq (HSWD)", "hashnet (HSWD)"]
