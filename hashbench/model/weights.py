"""Where a backbone's starting weights come from, settled before any training starts.

Training clusters are often offline. A run that asks for pretrained weights it cannot
fetch must stop before the first epoch with a message that names the fix, not fail an
hour in or quietly train from random init; and a result can only be compared with
another if it records truthfully which weights it started from. Weights come from one
of three sources:

- ``hub``: the Hugging Face hub repository timm names for the model (``resnet50`` ->
  ``timm/resnet50.a1_in1k``), read from the Hugging Face cache and downloaded into it
  first where the machine is online;
- ``file``: a local file named with ``--weights``, identified by its sha256, not its path,
  so that the same weights give the same result identity on every machine;
- ``random``: no pretrained weights.

A backbone is a timm name (``resnet50``, ``vit_small_patch14_dinov2.lvd142m``) or a timm-format model on the
Hugging Face hub, ``hf-hub:ORG/NAME`` (UNI, say), whose ``config.json`` names its architecture and preprocessing: read
from the Hugging Face cache, downloaded into it first where the machine is online; or the image tower of an
open_clip-format hub model, ``open-clip:hf-hub:ORG/NAME`` (BiomedCLIP; :mod:`hashbench.model.clip_towers`).

``--weights`` may be repeated and takes ``FILE`` (the run's default backbone),
``MODEL=FILE``, or ``DIR`` (searched for ``<model>.safetensors``, ``.pth``, ``.pt`` or
``.bin``, the model named with its timm tag, then without). A file given for a model
wins over ``--pretrained/--no-pretrained``.

timm (and torchvision beneath it: seconds to import) is imported where a backbone or its configuration is needed,
so that listing methods or reading their options does not wait for it.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import huggingface_hub
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import RemoteEntryNotFoundError

from hashbench.model import clip_towers
from hashbench.model.hub import hub_file, split_revision
from hashbench.store.digest import file_sha256

if TYPE_CHECKING:
    from timm.models import PretrainedCfg

KINDS = ("random", "hub", "file")
HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader reads, in its order
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_MODEL = "hf-hub:"  # the prefix of a timm-format model named by its hub repository


@dataclass(frozen=True)
class WeightSource:
    """Where one backbone's starting weights come from: enough to load them again and to say so."""

    model: str  # the timm name as used, possibly with a tag ("resnet50.a1_in1k")
    kind: str  # "random" | "hub" | "file"
    location: str = ""  # the hub repository id, or the file's absolute path
    sha256: str = ""  # the file's digest

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"weight source kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def describe(self) -> str:
        """For captions and records: where the weights came from, in words."""
        if self.kind == "hub":
            return f"pretrained weights from the Hugging Face hub ({self.location})"
        if self.kind == "file":
            return f"weights from file {self.location} (sha256 {self.sha256[:12]}…)"
        return "random init"

    def identity(self) -> str:
        """For a result's identity hash: the same weights give the same identity on any machine."""
        if self.kind == "hub":
            return f"hub:{self.location}"
        if self.kind == "file":
            return f"file:sha256:{self.sha256}"
        return "random"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that can be neither found in the cache nor downloaded; the message names the fixes."""

    def __init__(self, source: WeightSource, reason: str):
        self.source, self.reason = source, reason
        repo_id, revision = split_revision(source.location)
        filename = hub_filenames(source.model)[0]
        download = f"hf download {repo_id} {filename}" + (f" --revision {revision}" if revision else "")
        url = huggingface_hub.hf_hub_url(repo_id, filename, revision=revision)
        super().__init__(
            f"Pretrained weights for {source.model} (Hugging Face hub {source.location}) are not available: {reason}.\n"
            f"Fix: where there is internet, download them (`{download}`, or {url}), copy the file here and run with "
            f"--weights {source.model}=PATH"
            + (
                ""
                if ":" in source.model
                else f" (or --weights DIR with the file saved as DIR/{source.model}.safetensors)"
            )
            + "; or train from random init with --no-pretrained."
        )


@dataclass(frozen=True)
class WeightFiles:
    """The weight files named with ``--weights``: per model (key None: the run's default backbone), and directories to search."""

    by_model: dict[str | None, Path] = field(default_factory=dict)
    directories: tuple[Path, ...] = ()

    def models(self) -> set[str]:
        """The models named with MODEL=FILE (a bare FILE and directories name none)."""
        return {model for model in self.by_model if model is not None}

    def for_model(self, model: str, default_model: str | None = None) -> Path | None:
        """The file for ``model``: named for it (with or without its tag), the bare file if it is the default backbone, or found in a directory."""
        names = tuple(dict.fromkeys((model, model.split(".")[0])))
        for name in names:
            if name in self.by_model:
                return self.by_model[name]
        if None in self.by_model:
            if default_model is None:
                raise ValueError(
                    f"--weights {self.by_model[None]} names no model and there is no default backbone; write --weights MODEL=FILE"
                )
            if model == default_model:
                return self.by_model[None]
        for directory in self.directories:
            for name in names:
                for suffix in WEIGHT_SUFFIXES:
                    candidate = directory / f"{name}{suffix}"
                    if candidate.is_file():
                        return candidate
        return None


def parse_weights_option(values: Iterable[str]) -> WeightFiles:
    """Read ``--weights`` values (``FILE``, ``MODEL=FILE`` or ``DIR``); a path that does not exist is an error now, not after training."""
    by_model: dict[str | None, Path] = {}
    directories: list[Path] = []
    for value in values:
        model, has_model, path_text = value.partition("=")
        if not has_model or Path(value).exists():  # a path may itself contain "="
            model, path_text = None, value
        elif not path_text:
            raise ValueError(f"--weights {value}: no file after '='")
        else:
            _timm_cfg(model)  # an unknown model name fails here, with suggestions
        path = Path(path_text).expanduser().resolve()
        if not path.exists():
            raise ValueError(f"--weights {value}: {path} does not exist")
        if path.is_dir():
            if model is not None:
                raise ValueError(f"--weights {value}: {path} is a directory; name the weights file")
            directories.append(path)
            continue
        if model in by_model:
            raise ValueError(
                f"--weights names two files for {model or 'the default backbone'}: {by_model[model]} and {path}"
            )
        by_model[model] = path
    return WeightFiles(by_model, tuple(directories))


def _timm_cfg(model: str) -> PretrainedCfg:
    """timm's pretrained config for ``model`` (honouring a tag; a hub model's, an open_clip tower's from their
    repositories); an unknown name or tag is a ValueError with suggestions."""
    import timm
    from timm.models import PretrainedCfg, get_pretrained_cfg

    if model.startswith(HUB_MODEL):
        return _hub_model_cfg(model)
    if model.startswith(clip_towers.PREFIX):
        mean, std, size = clip_towers.preprocessing(clip_towers.read_config(model))
        repo_id, revision = clip_towers.repository(model)
        hub_id = repo_id + (f"@{revision}" if revision else "")
        return PretrainedCfg(architecture=model, hf_hub_id=hub_id, mean=mean, std=std, input_size=(3, size, size))
    architecture = model.split(".")[0]
    if not timm.is_model(model):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=3)
        raise ValueError(f"timm has no model {model!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        return get_pretrained_cfg(model)
    except RuntimeError as error:  # timm's answer to an unknown tag
        tagged = timm.list_pretrained(f"{architecture}.*")
        raise ValueError(
            f"timm has no tag {model.partition('.')[2]!r} for {architecture}; its tagged weights are: {', '.join(tagged) or 'none'}"
        ) from error


def _hub_model_cfg(model: str) -> PretrainedCfg:
    """The pretrained config of a timm-format hub model, from its ``config.json``; ValueError where it cannot be read
    or the repository is not a timm model's."""
    from timm.models import PretrainedCfg

    repo_id, revision = split_revision(model.removeprefix(HUB_MODEL))
    path = hub_file(model, repo_id, revision, "config.json")
    config = json.loads(Path(path).read_text())
    if "architecture" not in config:
        raise ValueError(f"{model}: {repo_id} is not a timm model (its config.json names no architecture)")
    settings = config.get("pretrained_cfg", config)
    known = {f.name for f in fields(PretrainedCfg)} - {"architecture", "hf_hub_id"}
    return PretrainedCfg(
        **{k: v for k, v in settings.items() if k in known},
        architecture=config["architecture"],
        hf_hub_id=repo_id + (f"@{revision}" if revision else ""),  # a pinned revision is another model
    )


def architecture(model: str) -> str:
    """The architecture a backbone name builds (``resnet50.a1_in1k`` -> ``resnet50``; a hub model's from its config;
    an open_clip tower is named by its repository)."""
    if model.startswith(clip_towers.PREFIX):
        return model
    return _timm_cfg(model).architecture if model.startswith(HUB_MODEL) else model.split(".")[0]


def hub_filenames(model: str) -> tuple[str, ...]:
    """The weight files a hub repository of ``model``'s kind holds, in the order they are read."""
    return clip_towers.WEIGHT_FILES if model.startswith(clip_towers.PREFIX) else HUB_FILENAMES


def fixed_input_size(model: str) -> bool:
    """Whether the backbone is built for one input size (a ViT's position embeddings): it must be built for the
    run's, its pretrained position embeddings resampled to it."""
    return bool(_timm_cfg(model).fixed_input_size)


def resolve(
    model: str, pretrained: bool, files: WeightFiles | None = None, default_model: str | None = None
) -> WeightSource:
    """Decide where ``model``'s weights come from: a file given for it, else timm's hub weights if ``pretrained``, else random init."""
    cfg = _timm_cfg(model)
    path = files.for_model(model, default_model) if files is not None else None
    if path is not None:
        return WeightSource(model, "file", str(path), file_sha256(path))
    if not pretrained:
        return WeightSource(model, "random")
    if cfg.hf_hub_id:
        return WeightSource(model, "hub", cfg.hf_hub_id)  # a tag's repository, or the hub model's own
    if cfg.url:
        raise ValueError(
            f"timm fetches {model}'s weights from {cfg.url}, outside the Hugging Face cache, so they cannot be checked "
            f"before training: download that file and run with --weights {model}=PATH, or run with --no-pretrained"
        )
    import timm

    with_weights = timm.list_pretrained(f"*{cfg.architecture}*")[:10]
    suggestion = (
        f"models with weights: {', '.join(with_weights)}"
        if with_weights
        else "timm.list_pretrained() lists the models with weights"
    )
    raise ValueError(f"timm has no pretrained weights for {model}; {suggestion}; or run with --no-pretrained")


def is_cached(source: WeightSource) -> bool:
    """Whether the weights can be loaded without the network."""
    if source.kind == "hub":
        repo_id, revision = split_revision(source.location)
        return any(
            isinstance(huggingface_hub.try_to_load_from_cache(repo_id, name, revision=revision), str)
            for name in hub_filenames(source.model)
        )
    if source.kind == "file":
        return Path(source.location).is_file()
    return True


def ensure_available(sources: Iterable[WeightSource]) -> None:
    """Download every hub source's weights not yet cached (so each once), so that a machine without them stops before training."""
    for source in sources:
        if source.kind == "hub" and not is_cached(source):
            _download(source)


def _download(source: WeightSource) -> None:
    """Fetch the file timm will load into the Hugging Face cache; the first failure to reach the hub is final."""
    if hub_constants.HF_HUB_OFFLINE:
        raise WeightsUnavailableError(
            source, f"offline (HF_HUB_OFFLINE is set) and not in the Hugging Face cache {hub_constants.HF_HUB_CACHE}"
        )
    repo_id, revision = split_revision(source.location)
    filenames = hub_filenames(source.model)
    for filename in filenames:
        try:
            # One request without retries first: hf_hub_download retries an unreachable hub for about 20 s.
            huggingface_hub.get_hf_file_metadata(
                huggingface_hub.hf_hub_url(repo_id, filename, revision=revision),
                timeout=hub_constants.HF_HUB_ETAG_TIMEOUT,
            )
            huggingface_hub.hf_hub_download(repo_id, filename, revision=revision)
            return
        except RemoteEntryNotFoundError:
            continue  # the repository lacks this format; timm would read the next
        except Exception as error:  # unreachable, unknown repository, gated: no weights either way
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise WeightsUnavailableError(
                source, f"the download failed ({type(error).__name__}: {first_line})"
            ) from error
    raise WeightsUnavailableError(source, f"the repository holds none of {', '.join(filenames)}")


def create_backbone(source: WeightSource, **kwargs) -> torch.nn.Module:
    """``timm.create_model`` with the weights ``source`` names; timm adapts them (``num_classes=0`` drops the classifier).
    An open_clip tower is built by :mod:`hashbench.model.clip_towers` (it has no classifier to drop)."""
    import timm

    if source.model.startswith(clip_towers.PREFIX):
        if source.kind == "hub":
            ensure_available([source])
        _check_unchanged(source)
        path = {"random": None, "hub": clip_towers.weights_file(source.model), "file": Path(source.location)}
        if source.kind != "random" and path[source.kind] is None:
            raise WeightsUnavailableError(source, "no checkpoint in the Hugging Face cache after the download")
        return clip_towers.build(source.model, path[source.kind])
    if source.kind == "random":
        return timm.create_model(source.model, pretrained=False, **kwargs)
    if source.kind == "hub":
        ensure_available([source])
        return timm.create_model(source.model, pretrained=True, **kwargs)
    _check_unchanged(source)
    network = timm.create_model(  # source '': the file, even for a hub model, whose config says 'hf-hub'
        source.model, pretrained=True, pretrained_cfg_overlay=dict(file=source.location, source=""), **kwargs
    )
    _check_file_loaded(network, source)
    return network


def _check_unchanged(source: WeightSource) -> None:
    """A weights file must be the one chosen when the run was planned (its identity is its digest)."""
    if source.kind == "file" and file_sha256(Path(source.location)) != source.sha256:
        raise ValueError(
            f"{source.location} changed since it was chosen (sha256 {source.sha256[:12]}…); start the run again"
        )


def _check_file_loaded(network: torch.nn.Module, source: WeightSource) -> None:
    """timm loads a file leniently when it adapts the classifier, so a file whose tensor names differ (another model, a prefix) would leave the backbone random."""
    from timm.models import load_state_dict

    in_file = set(load_state_dict(source.location))
    classifiers = network.pretrained_cfg.get("classifier") or ()
    classifier_prefixes = tuple(
        f"{name}." for name in ((classifiers,) if isinstance(classifiers, str) else classifiers)
    )
    missing = [
        name
        for name in network.state_dict()
        if name not in in_file and not name.endswith("num_batches_tracked") and not name.startswith(classifier_prefixes)
    ]
    if missing:
        raise ValueError(
            f"{source.location} has no values for {len(missing)} of {source.model}'s tensors (e.g. {', '.join(missing[:3])}): "
            f"it holds another model, or its names carry a prefix; save the backbone's own state_dict"
        )


IMAGENET_STATISTICS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def pretrained_statistics(network: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The channel means and stds the first timm model in ``network`` was pretrained with, where they are not
    ImageNet's (CLIP's, SigLIP's, ...); None for ImageNet's, or for a network without a timm model."""
    for module in network.modules():
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("mean") and cfg.get("std"):
            statistics = (tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"]))
            return None if statistics == IMAGENET_STATISTICS else statistics
    return None


def architectures(network: torch.nn.Module) -> list[str]:
    """The timm architectures inside ``network``, in module order: what actually ran.

    Without timm's tag: timm sets one even for random init, so it says nothing about the
    weights; the WeightSource (and :func:`cached_revision`) does.
    """
    names, inside = [], []
    for path, module in network.named_modules():
        cfg = getattr(module, "pretrained_cfg", None)
        if any(path.startswith(outer) for outer in inside):  # a timm trunk inside an open_clip tower: the tower ran
            continue
        if isinstance(cfg, dict) and cfg.get("architecture"):
            names.append(cfg["architecture"])
            inside.append(f"{path}." if path else "")
    return list(dict.fromkeys(names))


def cached_revision(source: WeightSource) -> str:
    """The hub commit of the cached weights a hub source loads ('' for other sources or when not cached)."""
    if source.kind != "hub":
        return ""
    repo_id, revision = split_revision(source.location)
    for name in hub_filenames(source.model):
        path = huggingface_hub.try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(path, str):
            return Path(path).parent.name  # .../snapshots/<commit>/<file>
    return ""


def declared_backbones_ran(network: torch.nn.Module, declared: str, method: str) -> list[str]:
    """The timm models ``network`` holds, checked against the `` + ``-joined ones the method declared: a cell's config says what ran."""
    ran = architectures(network)
    expected = [architecture(name) for name in declared.split(" + ") if name]
    if ran != expected:
        raise RuntimeError(
            f"{method} built {', '.join(ran) or 'no timm model'} but declared {declared}: its backbones() must list what build() creates"
        )
    return ran
