"""Sweeps as files: a TOML file whose keys are the flags of ``hashbench run`` without their dashes.

A file holds what a command line would (``methods = ["dafh", "hashnet"]`` for ``--methods dafh,hashnet``,
``set = ["hashnet.alpha=0.1"]`` for ``--set hashnet.alpha=0.1``), so the command line reads and checks both the
same way: this module only reads and writes the files and translates a request or a stored cell into their terms.
The command decides which keys exist (its flags) and what each value must be (what its flag takes).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from hashbench.runner.plan import RunRequest, augment_option
from hashbench.store import atomic
from hashbench.store.results import CONFIG, NO_CODE, Cell, CellConfig, CellError
from hashbench.training.augment import Augmentation

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

SWEEPS = "sweeps"  # under the results root: every sweep file a run was given, by name and content


def read_sweep(path: Path, keys: Iterable[str]) -> dict[str, Any]:
    """The settings of a sweep file by flag name (``split_seed`` is read as ``split-seed``); ValueError naming the
    file, the key and the fix for a file that cannot be read, is not TOML or has a key ``keys`` lacks."""
    try:
        values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; give the path of a sweep file, e.g. examples/sweep.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read ({exc}); give the path of a readable TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc}); see examples/sweep.toml for the form") from None
    valid = list(keys)
    settings = {key.replace("_", "-"): value for key, value in values.items()}
    unknown = [key for key in settings if key not in valid]
    if unknown:
        raise ValueError(
            f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    return settings


def request_settings(request: RunRequest) -> dict[str, Any]:
    """A request as sweep-file settings: what the flags that build it would say."""
    execution = request.execution
    return {
        "methods": list(request.methods),
        "bits": list(request.bits),
        "seeds": list(request.seeds),
        "dataset": request.dataset,
        "profile": request.profile,
        "backbone": list(request.backbones),
        "pretrained": request.pretrained,
        "weights": list(request.weights),
        "epochs": request.epochs,
        "image-size": request.image_size,
        "split": request.split,
        "split-seed": request.split_seed,
        "validation": request.validation,
        "augment": request.augment,
        "freeze-backbone": request.freeze_backbone,
        "set": override_texts(request.overrides),
        "metrics": list(request.metrics),
        "device": request.device,
        "precision": execution.precision,
        "channels-last": execution.channels_last,
        "compile": execution.compile is not None,
        "shard": "/".join(map(str, request.shard)) if request.shard else None,
    }


def cell_settings(directory: Path) -> dict[str, Any]:
    """The settings that plan the cell stored in ``directory`` again, into the results root it sits in: its method,
    code length, seed, data, split, profile, backbone, training, options (as ``set``), augmentation and frozen
    backbone. ValueError naming the fix where the directory holds no readable configuration.

    Weights are recorded by digest, not path: a cell that started from a local file needs ``--weights`` again (else
    the hub's weights are planned, another cell); a float reference's code length is every one's.
    """
    cell = Cell(Path(directory))
    if not cell.path(CONFIG).is_file():
        raise ValueError(
            f"{directory}: no {CONFIG} there; --like takes a cell's directory, e.g. runs/phantom/lsh/16bits/seed0-<hash>"
        )
    try:
        config = cell.config
    except CellError as exc:
        raise ValueError(str(exc)) from None
    return {
        "methods": [config.method],
        **({} if config.bits == NO_CODE else {"bits": [config.bits]}),
        "seeds": [config.seed],
        "dataset": config.dataset,
        "profile": config.profile,
        "backbone": [config.run_backbone],
        "pretrained": config.pretrained,
        "epochs": config.epochs,
        "image-size": config.image_size,
        "split": config.split,
        "split-seed": config.split_seed,
        "validation": config.validation,
        "augment": augment_option(Augmentation.from_dict(config.augment)),
        "freeze-backbone": config.frozen_backbone,
        "set": override_texts({config.method: {**config.options, **config.train}}),
        **({"out": str(cell.directory.parents[3])} if cell.identity_from_path() else {}),  # <out>/<identity>
    }


def override_texts(overrides: dict[str, dict[str, Any]]) -> list[str]:
    """``--set`` texts (``method.key=value``, ``key=value`` for every method) that read back as ``overrides``."""
    return [
        f"{'' if method == '*' else method + '.'}{key}={_option_text(value)}"
        for method, values in overrides.items()
        for key, value in values.items()
    ]


def _option_text(value: Any) -> str:
    """A typed option value as a method option reads it back (none, true/false, numbers exactly)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def to_toml(settings: dict[str, Any]) -> str:
    """Settings as a sweep file; a value of None (the flag's default, which TOML cannot write) is left out."""
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in settings.items() if value is not None)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def keep_copy(path: Path, out: Path) -> Path:
    """Copy the sweep file a run was given into ``<out>/sweeps/<name>-<content hash>.toml``: the name says which
    sweep, the hash which version of it, so a changed file never replaces the copy an earlier run kept."""
    data = Path(path).read_bytes()
    target = Path(out) / SWEEPS / f"{Path(path).stem}-{hashlib.sha256(data).hexdigest()[:12]}.toml"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.atomic_write(target, lambda handle: handle.write(data))
    return target


def differences(stored: CellConfig, planned: CellConfig) -> dict[str, tuple[Any, Any]]:
    """The fields in which a planned cell differs from a stored one: (stored value, planned value)."""
    old, new = asdict(stored), asdict(planned)
    return {name: (old[name], new[name]) for name in old if old[name] != new[name]}
