"""Small files of Hugging Face hub repositories (a model's config), read from the cache or downloaded where online."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants


def split_revision(hub_id: str) -> tuple[str, str | None]:
    """(repository, revision) of ``ORG/NAME[@REVISION]``, as timm names hub weights."""
    repo_id, at, revision = hub_id.partition("@")
    if "@" in revision:
        raise ValueError(f"{hub_id}: a hub repository is named ORG/NAME or ORG/NAME@REVISION (one @)")
    return repo_id, revision if at else None


def hub_file(model: str, repo_id: str, revision: str | None, filename: str) -> Path:
    """A small file of a hub repository (a config), from the Hugging Face cache or downloaded where online;
    ValueError naming the fix where it is neither."""
    path = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(path, str):
        return Path(path)
    fix = (
        f"where there is internet, download the repository (`hf download {repo_id}`) and copy the Hugging Face "
        f"cache ({hub_constants.HF_HUB_CACHE}) here"
    )
    if hub_constants.HF_HUB_OFFLINE:
        raise ValueError(f"{model}: its {filename} is not in the Hugging Face cache and the hub is offline; {fix}")
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision))
    except Exception as error:  # unreachable, unknown, gated, or not this kind of repository
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(
            f"{model}: its {filename} could not be read ({type(error).__name__}: {first_line}); {fix}"
        ) from None
