"""Weight sources: hub resolution through timm's configs, weight files, the Hugging Face cache and failing fast offline.

Every test runs against an empty temporary Hugging Face cache in offline mode, with the hub
endpoint pointed at a closed local port: nothing here can reach the network.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import time

import httpx2
import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import RemoteEntryNotFoundError
from huggingface_hub.file_download import repo_folder_name

from hashbench.model.weights import (
    WeightSource,
    WeightsUnavailableError,
    architectures,
    cached_revision,
    create_backbone,
    ensure_available,
    is_cached,
    parse_weights_option,
    resolve,
)

TEST_HUB_ID = "timm/test_efficientnet.r160_in1k"  # timm's default weights for test_efficientnet


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline mode, and a hub endpoint that refuses connections."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    return cache


def put_in_hub_cache(cache, repo_id: str, filename: str, tensors: dict[str, torch.Tensor]) -> None:
    """Lay a weights file out as huggingface_hub's cache does: a snapshot per commit, and refs/main naming it."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / filename
    if filename.endswith(".safetensors"):
        safetensors.torch.save_file(tensors, target)
    else:
        torch.save(tensors, target)


def seeded_state(model: str = "test_efficientnet", seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(model, pretrained=False, num_classes=0).state_dict()


def save(state: dict[str, torch.Tensor], path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(state, path)
    else:
        torch.save(state, path)
    return path


def assert_holds(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = network.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[name], state[name]) for name in state)


def test_offline_with_an_empty_cache_fails_at_once_naming_the_fixes():
    source = resolve("test_efficientnet", True)
    assert not is_cached(source)
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as caught:
        ensure_available([source])
    assert time.perf_counter() - started < 2
    message = str(caught.value)
    for part in (
        "test_efficientnet",
        TEST_HUB_ID,
        "offline",
        "--weights test_efficientnet=PATH",
        "--no-pretrained",
        f"hf download {TEST_HUB_ID}",
    ):
        assert part in message
    with pytest.raises(WeightsUnavailableError):
        create_backbone(source, num_classes=0)


def test_an_unreachable_hub_fails_at_once_with_the_underlying_error(monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="download failed") as caught:
        ensure_available([resolve("test_efficientnet", True)])
    assert time.perf_counter() - started < 5
    assert "--no-pretrained" in str(caught.value)


def test_a_missing_format_falls_back_to_the_next_and_each_source_is_fetched_once(hub_cache, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    probed, downloaded = [], []

    def probe(url, timeout=None):
        probed.append(url.rsplit("/", 1)[1])
        if url.endswith("/model.safetensors"):
            raise RemoteEntryNotFoundError(
                "404: no such file", response=httpx2.Response(404, request=httpx2.Request("HEAD", url))
            )

    def download(repo_id, filename, revision=None):
        downloaded.append(filename)
        put_in_hub_cache(hub_cache, repo_id, filename, seeded_state())

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", probe)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    source = resolve("test_efficientnet", True)
    ensure_available([source, source, resolve("test_efficientnet", False)])
    assert (probed, downloaded) == (["model.safetensors", "pytorch_model.bin"], ["pytorch_model.bin"])
    assert (
        is_cached(source) and cached_revision(source) == "0123456789abcdef0123456789abcdef01234567"
    )  # the commit a record names
    assert cached_revision(resolve("test_efficientnet", False)) == ""
    ensure_available([source])
    assert len(probed) == 2


def test_the_first_failure_to_reach_the_hub_is_final(monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    probed = []

    def refused(url, timeout=None):
        probed.append(url)
        raise ConnectionError("connection refused\nsecond line")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", refused)
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *args, **kwargs: pytest.fail("downloaded after a failed probe")
    )
    with pytest.raises(WeightsUnavailableError, match=r"ConnectionError: connection refused\)"):
        ensure_available([resolve("test_efficientnet", True)])
    assert len(probed) == 1


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_weights_in_the_hub_cache_are_found_and_loaded_offline(hub_cache, filename):
    source = resolve("test_efficientnet", True)
    state = seeded_state()
    put_in_hub_cache(hub_cache, TEST_HUB_ID, filename, state)
    assert is_cached(source)
    ensure_available([source])
    torch.manual_seed(2)
    assert_holds(create_backbone(source, num_classes=0), state)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_file_named_for_the_model_is_loaded_exactly_and_identified_by_content(tmp_path, suffix):
    state = seeded_state()
    path = save(state, tmp_path / f"weights{suffix}")
    source = resolve("test_efficientnet", False, parse_weights_option([f"test_efficientnet={path}"]))
    assert (source.kind, source.location) == ("file", str(path.resolve()))
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.identity() == f"file:sha256:{source.sha256}"
    torch.manual_seed(2)
    assert not torch.equal(
        timm.create_model("test_efficientnet", num_classes=0).conv_stem.weight, state["conv_stem.weight"]
    )
    torch.manual_seed(2)
    assert_holds(create_backbone(source, num_classes=0), state)


def test_a_directory_is_searched_with_the_tag_first(tmp_path):
    tagged, untagged = seeded_state(seed=1), seeded_state(seed=3)
    save(tagged, tmp_path / "test_efficientnet.r160_in1k.pth")
    save(untagged, tmp_path / "test_efficientnet.safetensors")
    files = parse_weights_option([str(tmp_path)])
    with_tag, without_tag = (
        resolve("test_efficientnet.r160_in1k", False, files),
        resolve("test_efficientnet", False, files),
    )
    assert with_tag.location.endswith("test_efficientnet.r160_in1k.pth")
    assert without_tag.location.endswith("test_efficientnet.safetensors")
    assert_holds(create_backbone(with_tag, num_classes=0), tagged)
    assert_holds(create_backbone(without_tag, num_classes=0), untagged)
    assert resolve("test_resnet", False, files).kind == "random"


def test_a_bare_file_is_for_the_default_backbone_only(tmp_path):
    state = seeded_state()
    files = parse_weights_option([str(save(state, tmp_path / "w.safetensors"))])
    source = resolve("test_efficientnet", True, files, default_model="test_efficientnet")
    assert source.kind == "file"
    assert_holds(create_backbone(source, num_classes=0), state)
    assert resolve("test_resnet", False, files, default_model="test_efficientnet").kind == "random"
    with pytest.raises(ValueError, match="MODEL=FILE"):
        resolve("test_efficientnet", False, files)


def test_identity_follows_the_content_and_describe_names_the_path(tmp_path):
    first = save(seeded_state(), tmp_path / "a" / "w.safetensors")
    second = shutil.copy(first, tmp_path / "b.safetensors")
    one, other = (
        resolve("test_efficientnet", False, parse_weights_option([f"test_efficientnet={path}"]))
        for path in (first, second)
    )
    assert one.location != other.location
    assert one.identity() == other.identity()
    assert str(first.resolve()) in one.describe() and one.sha256[:12] in one.describe()
    different = save(seeded_state(seed=4), tmp_path / "c.safetensors")
    assert (
        resolve("test_efficientnet", False, parse_weights_option([f"test_efficientnet={different}"])).identity()
        != one.identity()
    )


def test_a_file_changed_after_resolving_is_refused(tmp_path):
    path = save(seeded_state(), tmp_path / "w.safetensors")
    source = resolve("test_efficientnet", False, parse_weights_option([f"test_efficientnet={path}"]))
    save(seeded_state(seed=5), path)
    with pytest.raises(ValueError, match="changed"):
        create_backbone(source, num_classes=0)


def test_a_file_whose_names_do_not_match_the_model_is_refused_not_ignored(tmp_path):
    prefixed = {f"encoder.{name}": value for name, value in seeded_state().items()}
    path = save(prefixed, tmp_path / "network.safetensors")
    with pytest.raises(ValueError, match="conv_stem.weight"):
        create_backbone(
            resolve("test_efficientnet", False, parse_weights_option([f"test_efficientnet={path}"])), num_classes=0
        )


def test_hub_sources_follow_timms_pretrained_configs():
    default = resolve("resnet50", True)
    assert default.kind == "hub" and default.location.startswith("timm/resnet50")
    assert default.identity() == f"hub:{default.location}" and default.location in default.describe()
    assert resolve("resnet50.a1_in1k", True).location == "timm/resnet50.a1_in1k"
    assert resolve("resnet50", False) == WeightSource("resnet50", "random")
    assert resolve("resnet50", False).describe() == "random init"
    with pytest.raises(ValueError, match="tf_efficientnet_b6"):
        resolve("efficientnet_b6", True)
    assert resolve("efficientnet_b6", False).kind == "random"
    with pytest.raises(ValueError, match="did you mean.*resnet50"):
        resolve("resnet5O", True)
    with pytest.raises(ValueError, match="resnet50.a1_in1k"):
        resolve("resnet50.no_such_tag", False)


def test_weights_timm_fetches_from_a_plain_url_are_refused_with_the_url():
    cfg = timm.models.get_pretrained_cfg("gcvit_tiny")
    assert not cfg.hf_hub_id and cfg.url
    with pytest.raises(ValueError, match="--weights gcvit_tiny=PATH") as caught:
        resolve("gcvit_tiny", True)
    assert cfg.url in str(caught.value)


def test_architectures_reports_the_timm_models_that_ran():
    network = torch.nn.ModuleDict(
        {
            "first": timm.create_model("test_resnet", pretrained=False, num_classes=0),
            "second": torch.nn.Sequential(
                timm.create_model("test_efficientnet", pretrained=False, num_classes=0), torch.nn.Linear(4, 2)
            ),
            "again": timm.create_model("test_resnet", pretrained=False, num_classes=0),
        }
    )
    assert architectures(network) == [
        "test_resnet",
        "test_efficientnet",
    ]  # architectures only: timm tags even random init
    assert architectures(torch.nn.Linear(2, 2)) == []


def test_weights_options_that_cannot_work_are_rejected_when_read(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ValueError, match="missing.safetensors"):
        parse_weights_option([str(missing)])
    with pytest.raises(ValueError, match="missing.safetensors"):
        parse_weights_option([f"test_efficientnet={missing}"])
    with pytest.raises(ValueError, match="no file"):
        parse_weights_option(["test_efficientnet="])
    present = save(seeded_state(), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="did you mean"):
        parse_weights_option([f"test_efficientnett={present}"])
    with pytest.raises(ValueError, match="is a directory"):
        parse_weights_option([f"test_efficientnet={tmp_path}"])
    with pytest.raises(ValueError, match="two files"):
        parse_weights_option([str(present), str(present)])
