"""Resolving real weights without hangs and without silent fallbacks."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from zsc.errors import ModelUnavailable


def hub_online() -> bool:
    """zsc reads only the local hub cache unless the user opts in to downloads with ZSC_HUB_ONLINE=1."""
    return os.environ.get("ZSC_HUB_ONLINE", "0") == "1" and os.environ.get("HF_HUB_OFFLINE", "0") != "1"


def stay_offline() -> None:
    """Put the Hugging Face hub in offline mode unless the user opted in to downloads (ZSC_HUB_ONLINE=1), so cached
    weights load without a request and a missing model fails at once with one clear line instead of hanging on the
    network. Called where zsc loads hub weights and by the `zsc` entry point, never at import; an explicit
    HF_HUB_OFFLINE in the environment wins."""
    if os.environ.get("ZSC_HUB_ONLINE") == "1":
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "huggingface_hub.constants" in sys.modules and os.environ["HF_HUB_OFFLINE"] == "1":
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # the hub read its environment when it was imported


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def unavailable(
    what: str, ref: str, err: BaseException | None = None, *, repo: str | None = None, local: Path | None = None
) -> ModelUnavailable:
    """One line: which model, its hub repo id, where zsc looked, and the command that fills the cache.

    ``local`` is the directory a local reference names (then there is no repo to download); ``repo`` the hub repo id
    when it differs from ``ref`` (open_clip tags live in timm's repos)."""
    detail = f" ({type(err).__name__})" if err is not None else ""
    if local is not None:
        return ModelUnavailable(
            f"{what} {ref!r} is not available{detail}: looked in {local}; point the profile at a directory that holds "
            "the model's files"
        )
    repo = repo or ref
    cache = hub_cache_dir()
    return ModelUnavailable(
        f"{what} {ref!r} (hub repo {repo}) is not available{detail}: looked in the hub cache {cache}; fill it where "
        f"there is internet with `hf download {repo}` and copy it here, or point the profile at a local directory"
    )


def require_cached(what: str, ref: str, repo: str, filenames: Sequence[str]) -> None:
    """Raise ``unavailable`` unless one of ``filenames`` of hub ``repo`` is in the local cache.

    A pure file-system look-up: no network, no logging, so a missing model fails in milliseconds with one line
    instead of after the libraries' own retries and warnings. With ZSC_HUB_ONLINE=1 the loaders may download, so
    nothing is required here."""
    stay_offline()
    if hub_online():
        return
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return
    raise unavailable(what, ref, repo=repo)


def require_dir(what: str, ref: str, path: Path, marker: str) -> None:
    """Raise ``unavailable`` unless ``path`` is a directory holding ``marker`` (e.g. model_index.json)."""
    if not (path / marker).is_file():
        raise unavailable(what, ref, local=path)
