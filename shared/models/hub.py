"""Resolving real weights without hangs and without silent fallbacks."""

from __future__ import annotations

import os
from pathlib import Path

from zsc.errors import ModelUnavailable


def hub_online() -> bool:
    """zsc reads only the local hub cache unless the user opts in to downloads with ZSC_HUB_ONLINE=1."""
    return os.environ.get("ZSC_HUB_ONLINE", "0") == "1" and os.environ.get("HF_HUB_OFFLINE", "0") != "1"


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def unavailable(what: str, ref: str, err: BaseException | None = None) -> ModelUnavailable:
    """One line: which model, where zsc looked, how to fix it."""
    where = ref if Path(ref).is_absolute() else f"the hub cache {hub_cache_dir()}"
    how = (
        "fill the hub cache where there is internet (ZSC_HUB_ONLINE=1 zsc up --profile paper, or `hf download <repo>`) "
        "and copy it here, or point the profile at a local directory"
    )
    detail = f" ({type(err).__name__})" if err is not None else ""
    return ModelUnavailable(f"{what} {ref!r} is not available{detail}: looked in {where}; {how}")
