"""Typed options: one coercion path for method options and train settings, every bad value named."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from hashbench.model import options
from hashbench.model.method import Method, MethodContext, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import REGISTRY


@dataclass(frozen=True)
class Example:
    flag: bool = option(False, "a switch")
    count: int = option(3, "a count", at_least=1)
    rate: float = option(0.5, "a rate", above=0.0)
    mode: Literal["a", "b"] = option("a", "a choice")
    scale: float | None = option(None, "derived when none", above=0.0)
    name: str | None = option(None, "off when none")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("flag", "false", False),
        ("flag", "False", False),
        ("flag", "no", False),
        ("flag", "off", False),
        ("flag", "0", False),
        ("flag", "true", True),
        ("flag", "ON", True),
        ("flag", "1", True),
        ("flag", True, True),
        ("count", "7", 7),
        ("count", 7, 7),
        ("count", 7.0, 7),
        ("count", "7.0", 7),
        ("rate", "0.25", 0.25),
        ("rate", 2, 2.0),
        ("rate", "1e-3", 0.001),
        ("mode", "b", "b"),
        ("mode", " b ", "b"),
        ("scale", "none", None),
        ("scale", "None", None),
        ("scale", None, None),
        ("scale", "2", 2.0),
        ("name", "resnet50", "resnet50"),
        ("name", "null", None),
    ],
)
def test_values_from_the_command_line_or_a_config_get_the_declared_type(key, value, expected):
    parsed = getattr(options.parse(Example, {key: value}, "example"), key)
    assert parsed == expected and type(parsed) is type(expected)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("flag", "maybe", "true or false"),
        ("flag", 1, "true or false"),  # a number is not a switch
        ("count", "2.5", "a whole number >= 1"),
        ("count", 0.5, "a whole number >= 1"),
        ("count", "0", "a whole number >= 1"),
        ("count", True, "a whole number >= 1"),  # true is not a number
        ("rate", "0", "a number > 0"),
        ("rate", "-1", "a number > 0"),
        ("rate", "inf", "a number > 0"),
        ("rate", "nan", "a number > 0"),
        ("rate", "fast", "a number > 0"),
        ("rate", None, "a number > 0"),
        ("mode", "c", "one of a, b"),
        ("scale", "0", "a number > 0, or none"),
        ("name", 5, "text, or none"),
    ],
)
def test_a_value_that_does_not_fit_names_the_option_the_value_and_what_is_valid(key, value, expected):
    with pytest.raises(ValueError) as caught:
        options.parse(Example, {key: value}, "example")
    assert str(caught.value) == f"example.{key}={options.shown(value)} is not valid; expected {expected}"


def test_values_are_shown_as_typed():
    assert [options.shown(v) for v in ("0.5", "adagrad", "", " x", None, 0.5, True)] == [
        "0.5",
        "adagrad",
        "''",
        "' x'",
        "none",
        "0.5",
        "True",
    ]


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"example: unknown option\(s\) cuont; valid: count, flag, mode, name, rate, scale"
    ):
        options.parse(Example, {"cuont": 2}, "example")


def test_a_variant_is_the_same_options_with_other_defaults_and_a_bad_default_fails_when_declared():
    variant = options.with_defaults(Example, "variant", count=5, mode="b")
    assert options.parse(variant, {}, "variant") == variant(
        flag=False, count=5, rate=0.5, mode="b", scale=None, name=None
    )
    assert options.type_hints(variant) == options.type_hints(Example)
    with pytest.raises(ValueError, match="variant.mode=z is not valid"):
        options.with_defaults(Example, "variant", mode="z")


def test_train_settings_use_the_same_path_and_keep_the_methods_defaults():
    hashnet = REGISTRY.get("hashnet").train
    settings = hashnet.with_overrides({"nesterov": "off", "batch_size": "16", "lr": 1}, "hashnet")
    assert (settings.nesterov, settings.batch_size, settings.lr, settings.optimizer) == (False, 16, 1.0, "sgd")
    with pytest.raises(ValueError, match=r"hashnet.batch_size=0.5 is not valid; expected a whole number >= 2"):
        hashnet.with_overrides({"batch_size": 0.5}, "hashnet")
    assert TrainSettings().with_overrides({}) == TrainSettings()


def test_a_method_reads_its_options_typed_and_derives_what_is_none():
    hashnet = REGISTRY.get("hashnet")
    method = hashnet(MethodContext(32, 3, 12, {"alpha": None, "beta_step": "50"}))
    assert method.opt.alpha is None and method.opt.beta_step == 50
    assert method.build_loss().alpha == pytest.approx(10 / 32)
    assert hashnet(MethodContext(32, 3, 12, {"alpha": "0.2"})).build_loss().alpha == pytest.approx(0.2)


def test_a_method_without_options_refuses_any():
    with pytest.raises(ValueError, match=r"plain: unknown option\(s\) x; valid: none"):
        type("Plain", (Method,), {"name": "plain"})(MethodContext(8, 2, 4, {"x": 1}))


def test_every_registered_method_declares_typed_options_with_help():
    for name in REGISTRY.names():
        for key, kind, default, meaning in options.rows(REGISTRY.get(name).Options):
            assert kind and default and meaning, (name, key)
