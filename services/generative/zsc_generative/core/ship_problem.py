"""A SHIP problem with a known ground truth, for tests, the acceptance run and the bench.

"Real" image features of class c are defined as the output of CLIP's own text encoder for a prompt with a hidden
context: ``normalize(text([SOS] [H + δ_c + ε_i + ν_iv] [name_c] . [EOS]))``, with

- H [4, W]: one hidden context shared by all classes (the "domain" of the images): the token embeddings of
  ``anchor`` ("a photo of a") plus N(0, ctx_std²) noise, or pure noise without an anchor;
- δ_c [4, W]: a small class-specific context, N(0, class_std²), unknown for new classes;
- ε_i [W]: the image's own bias, added to every context token (the variation SHIP's generator models),
  N(0, sample_std²);
- ν_iv [W]: a smaller perturbation per augmentation view v of image i (view 0 has none), N(0, view_std²).

A VAE whose decoder is the same text encoder can represent this family exactly, so it can learn H and the spread of
ε from base classes and then synthesize new-class features from their names alone. The zero-shot classifier
("a photo of a {}.") does not know the offset of H from its own context, so it sits away from the real features
(on the tiny profile it gets roughly 30-90% of the new classes, depending on the seed); that gap is what
fine-tuning closes. The defaults make classes separable (a nearest-class-mean oracle is ~100% accurate).
Train features are base classes only, as a feature bank with ``views`` views per image; test features cover every
class (view 0). Everything is drawn from one seeded ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from zsc.features import FeatureSet
from zsc.models.clip import ClipModel, encode_class_names
from zsc.models.prompt_learner import DEFAULT_CTX_INIT, PromptLearner

from .bank import FeatureBank

__all__ = ["BASE_NAMES", "NEW_NAMES", "HiddenContextProblem", "hidden_context_problem"]

BASE_NAMES = ("apple", "bicycle", "castle", "dolphin", "forest", "guitar", "lamp", "mountain", "orange", "rabbit")
NEW_NAMES = ("rocket", "spider", "tractor", "volcano", "whale", "zebra", "bridge", "camel", "cloud", "tulip")


@dataclass
class HiddenContextProblem:
    class_names: list[str]  # base classes first, then new ones
    base: list[int]
    new: list[int]
    train: FeatureSet  # base classes only; a flattened feature bank (metadata zsc.views)
    test: FeatureSet  # fresh images of every class, one feature each
    hidden_context: Tensor  # H [n_ctx, W]
    class_context: Tensor  # δ [C, n_ctx, W]


@torch.no_grad()
def hidden_context_problem(
    clip_model: ClipModel,
    tokenizer: Callable[[list[str]], Tensor],
    base_names: Sequence[str] = BASE_NAMES,
    new_names: Sequence[str] = NEW_NAMES,
    *,
    shots: int = 16,
    views: int = 4,
    n_test: int = 50,
    n_ctx: int = 4,
    anchor: str | None = DEFAULT_CTX_INIT,
    ctx_std: float = 0.12,
    class_std: float = 0.002,
    sample_std: float = 0.003,
    view_std: float = 0.001,
    seed: int = 0,
) -> HiddenContextProblem:
    """Build the problem (see the module docstring). ``n_ctx`` applies without an anchor (the anchor's token count
    sets it otherwise). The files' text features are the zero-shot ones of "a photo of a {}."."""
    names = [*base_names, *new_names]
    if anchor:
        prompt = PromptLearner(clip_model, tokenizer, ctx_init=anchor)
    else:
        prompt = PromptLearner(clip_model, tokenizer, n_ctx=n_ctx, ctx_init=None)
    n_ctx, width, device = prompt.n_ctx, prompt.width, prompt.ctx.device
    g = torch.Generator(device="cpu").manual_seed(seed)
    start = prompt.ctx.detach().cpu() if anchor else torch.zeros(n_ctx, width)
    hidden = start + torch.randn(n_ctx, width, generator=g) * ctx_std
    prompt.ctx.copy_(hidden.to(device))
    class_ctx = torch.randn(len(names), n_ctx, width, generator=g) * class_std

    def encode(labels: Tensor, bias: Tensor) -> Tensor:
        full = class_ctx[labels] + bias.unsqueeze(1)  # [B, n_ctx, W]
        return prompt(names, bias=full.to(device), class_index=labels.to(device)).cpu()

    base = torch.arange(len(base_names))
    y_train = base.repeat_interleave(shots)
    eps = torch.randn(y_train.numel(), width, generator=g) * sample_std
    bank = []
    for v in range(views):
        nu = torch.randn(y_train.numel(), width, generator=g) * view_std if v else torch.zeros_like(eps)
        bank.append(encode(y_train, eps + nu))
    y_test = torch.arange(len(names)).repeat_interleave(n_test)
    x_test = encode(y_test, torch.randn(y_test.numel(), width, generator=g) * sample_std)

    text = encode_class_names(clip_model, tokenizer, names).cpu()
    meta = {"zsc.kind": "ship-hidden-context-problem", "seed": str(seed)}
    train = FeatureBank(torch.stack(bank), y_train).to_feature_set(names, text, meta)
    test = FeatureSet(x_test.contiguous(), y_test, names, text, dict(meta))
    return HiddenContextProblem(
        class_names=names,
        base=base.tolist(),
        new=list(range(len(base_names), len(names))),
        train=train,
        test=test,
        hidden_context=hidden,
        class_context=class_ctx,
    )
