"""open_clip models from a profile reference (open_clip's factory, with zsc's tiny config registered as data)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from zsc.models.hub import require_cached, require_dir, unavailable
from zsc.profiles import CONFIG_DIR
from zsc.seeding import seeded_init

# CLIP's single zero-shot prompt (the released code of every method here uses it where no template set is named).
DEFAULT_TEMPLATE = "a photo of a {}."
TEXT_CHUNK = 256  # prompts per text-encoder call: bounds the activations of a 10k-class request


if TYPE_CHECKING:

    class ClipModel(torch.nn.Module):
        """What zsc uses of an open_clip CLIP (or CustomTextCLIP) model, for the type checker: open_clip ships no
        annotations, and a plain Module types each of these as a submodule-or-tensor."""

        logit_scale: torch.nn.Parameter
        text_projection: torch.Tensor
        token_embedding: torch.nn.Embedding

        def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

        def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

else:
    ClipModel = torch.nn.Module


@dataclass
class ClipBundle:
    model: ClipModel
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[Image.Image], torch.Tensor]
    ref: str
    device: torch.device
    dtype: torch.dtype

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def token_embedding_dim(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])


@contextmanager
def _quiet() -> Iterator[None]:
    """open_clip logs through the root logger: a warning for every randomly initialized model (the point of the tiny
    profile) and an error for weights it cannot fetch (which zsc reports itself)."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(previous)


@lru_cache(maxsize=1)
def _register_tiny_configs() -> None:
    for path in sorted(CONFIG_DIR.glob("*-clip.json")):
        open_clip.add_model_config(path)


def create_clip(ref: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """Build or load an open_clip model, its tokenizer and its eval transform.

    ``tiny:<config>`` builds the architecture from ``profiles/configs/<config>.json`` with seeded random weights;
    ``open_clip:<arch>/<tag>``, ``hf-hub:<repo>`` and ``local-dir:<path>`` load real weights.
    """
    device = torch.device(device)
    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    kind, _, name = ref.partition(":")
    if kind == "tiny":
        _register_tiny_configs()
        with seeded_init(seed), _quiet():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, precision=precision)
        tokenizer = open_clip.get_tokenizer(name)
    else:
        if kind == "open_clip":
            arch, _, tag = name.partition("/")
            model_name, pretrained = arch, tag or None
        elif kind in ("hf-hub", "local-dir"):
            model_name, pretrained = ref, None
        else:
            raise ValueError(f"unknown CLIP reference {ref!r}: use tiny:, open_clip:, hf-hub: or local-dir:")
        require_clip_weights(ref)
        try:
            with _quiet():  # open_clip logs its own download failure; zsc's one line below says it all
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained, precision=precision, require_pretrained=True
                )
        except (OSError, RuntimeError, ValueError) as err:
            located = _hub_location(ref)
            raise unavailable("CLIP model", ref, err, repo=located[0] if located else None) from err
        tokenizer = open_clip.get_tokenizer(model_name)
    model = model.to(device).eval().requires_grad_(False)
    return ClipBundle(model=model, tokenizer=tokenizer, preprocess=preprocess, ref=ref, device=device, dtype=dtype)


def _hub_location(ref: str) -> tuple[str, list[str]] | None:
    """The hub repo id and the weight files (any one will do) that open_clip reads for ``ref``; None when ``ref``
    is not a hub reference or open_clip knows no hub entry for it (the loader then reports its own error)."""
    kind, _, name = ref.partition(":")
    if kind == "hf-hub":
        return name, ["open_clip_config.json"]
    if kind != "open_clip":
        return None
    arch, _, tag = name.partition("/")
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    # open_clip's convention: "org/repo/" (default file name) or "org/repo/file"; it prefers a safetensors twin.
    repo, filename = os.path.split(hub)
    filename = filename or open_clip.constants.HF_WEIGHTS_NAME
    if filename == open_clip.constants.HF_WEIGHTS_NAME:
        return repo, [open_clip.constants.HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def require_clip_weights(ref: str) -> None:
    """Raise zsc's one-line ModelUnavailable at once when the real weights ``ref`` names are not on this machine
    (``tiny:`` refs need none). A file-system look-up only: the server calls it before it starts listening."""
    kind, _, name = ref.partition(":")
    if kind == "local-dir":
        require_dir("CLIP model", ref, Path(name).expanduser(), "open_clip_config.json")
        return
    located = _hub_location(ref)
    if located is not None:
        require_cached("CLIP model", ref, *located)


@torch.no_grad()  # not inference_mode: the features become buffers that later training reads under autograd
def encode_texts(
    model: ClipModel, tokenizer: Callable[[list[str]], torch.Tensor], texts: Sequence[str]
) -> torch.Tensor:
    """L2-normalized float32 [N, D] CLIP text features of ``texts``, on the text tower's device, ``TEXT_CHUNK``
    prompts per call. ``model`` is anything with open_clip's ``encode_text`` (a CLIP, a prompt-learning wrapper)."""
    device = next(model.parameters()).device
    texts = list(texts)
    if not texts:  # the width of an empty result is the tower's, read off one placeholder prompt
        return torch.empty(0, encode_texts(model, tokenizer, [""]).shape[1], device=device)
    chunks = [
        model.encode_text(tokenizer(texts[i : i + TEXT_CHUNK]).to(device)).float()
        for i in range(0, len(texts), TEXT_CHUNK)
    ]
    return F.normalize(torch.cat(chunks), dim=-1)


def encode_class_names(
    model: ClipModel,
    tokenizer: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
) -> torch.Tensor:
    """The one class-text encoder: ``encode_texts`` of ``template.format(name)`` for each class, in order."""
    return encode_texts(model, tokenizer, [template.format(name) for name in class_names])
