"""DFZSL step 2: FLPT, feature-language prompt tuning (Tang et al., AAAI 2024).

Virtual base features x (from vMF recovery) and CLIP's text encoder are pulled together:

- 4 shared learnable context tokens ctx [n_ctx, W], initialized from the token embeddings of "a photo of a", go in
  front of every class name in the frozen text encoder (the shared :class:`zsc.models.prompt_learner.PromptLearner`);
- an MLP is applied to **each** context token and the residual r is the mean of its outputs (the authors'
  ``t2i(ctx).mean(dim=0)``); every feature becomes x' = x + residual_scale * r (residual_scale 0.005 by default);
- the loss is cross-entropy over the base classes of logit_scale * cos(x', text(ctx, class)).

The MLP is Linear(W, 4W) -> QuickGELU -> Linear(4W, D), run on every one of the n_ctx tokens [n_ctx, W], so r =
mean_i MLP(ctx_i) has the feature dimension D. Because of the GELU this is not the MLP of the mean token. W is the
token embedding width and D the text projection's output; they differ in general (the tiny profile: W=64, D=32) and
coincide for CLIP ViT-B/16 (512) and ViT-L/14 (768). The hidden width follows the MLP's input (4W), as in the
authors' code. The first layer starts N(0, 0.02) with zero bias; the last layer starts at zero, so r = 0 and x' = x
at step 0. The optimizer is AdamW with torch's default weight decay (0.01: the authors pass only the lr) and the
batches follow the input order (the authors' loader does not shuffle; ``shuffle=True`` is zsc's seeded option).
The authors train under CUDA autocast; zsc trains in the CLIP model's dtype (fp32 on CPU).

The residual depends only on ctx, so it is one shared shift of every feature; the aligned features are x + s*r, not
re-normalized (the loss normalizes, as the authors do). Text features come out L2-normalized for the base *and*
novel classes. Pure PyTorch: no gRPC, MLflow or progress-bar imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import nn

from zsc.config import check_config, setting
from zsc.errors import Cancelled
from zsc.limits import MAX_LR, MAX_WEIGHT_DECAY, check_bounded
from zsc.models.clip import TEXT_CHUNK, ClipModel
from zsc.models.prompt_learner import DEFAULT_CTX_INIT, PromptLearner, text_tower

from .recover import check_epochs

__all__ = ["AlignResult", "FlptConfig", "FlptModel", "align_features"]


@dataclass
class FlptConfig:
    """FLPT settings; defaults are the released code's (AdamW lr 3e-3 with torch's default weight decay, batch 4 in
    input order, 1 epoch, residual scale 0.005)."""

    ctx_init: str = DEFAULT_CTX_INIT  # the phrase whose token embeddings start the context (its token count = n_ctx)
    residual_scale: float = setting(0.005, ge=0)  # x' = x + residual_scale * r
    lr: float = 3e-3
    weight_decay: float = setting(0.01, ge=0, le=MAX_WEIGHT_DECAY)  # AdamW's default, which the authors keep
    batch_size: int = 4
    epochs: int = 1
    seed: int = 0
    logit_scale: float | None = setting(None, gt=0)  # None: the CLIP model's exp(logit_scale)
    log_every: int = 10  # steps between on_step calls (the last step always reports)
    shuffle: bool = False  # the authors' loader keeps the input order; True: a seeded shuffle per epoch

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with a one-line message on any bad setting: the bounds declared with ``setting`` above
        and the rules they cannot express (whole counts, the phrase, the flag)."""
        if not isinstance(self.ctx_init, str) or not self.ctx_init.strip():
            raise ValueError("ctx_init must be a non-empty phrase")
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"shuffle must be a bool, got {self.shuffle!r}")
        check_bounded("lr", self.lr, MAX_LR, positive=True)
        for name in ("batch_size", "log_every"):
            value = getattr(self, name)
            if int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        check_epochs(self.epochs)
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        check_config(self)


class FlptModel(nn.Module):
    """The learnable part of FLPT: the shared context (a PromptLearner) and the context-to-residual MLP."""

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        ctx_init: str = DEFAULT_CTX_INIT,
        residual_scale: float = 0.005,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.prompt = PromptLearner(clip_model, tokenizer, ctx_init=ctx_init)
        width, dim = self.prompt.width, self.prompt.output_dim
        device = self.prompt.ctx.device
        first, last = nn.Linear(width, 4 * width, device=device), nn.Linear(4 * width, dim, device=device)
        self.mlp = nn.Sequential(first, QuickGELU(), last)
        with torch.no_grad():
            nn.init.normal_(first.weight, std=0.02, generator=generator)
            nn.init.zeros_(first.bias)
            nn.init.zeros_(last.weight)  # r = 0 at the start: training begins from the unaligned features
            nn.init.zeros_(last.bias)
        self.residual_scale = float(residual_scale)

    def residual(self) -> torch.Tensor:
        """r = mean over the context tokens of MLP(token), shape [D]."""
        return self.mlp(self.prompt.ctx).mean(dim=0)

    def align(self, features: torch.Tensor) -> torch.Tensor:
        """x' = x + residual_scale * r for features [N, D]."""
        return features + self.residual_scale * self.residual().to(features.dtype)

    def text_features(self, class_names: Sequence[str]) -> torch.Tensor:
        """L2-normalized [C, D] text features of the prompts with the current context."""
        return self.prompt(class_names)


@dataclass
class AlignResult:
    """What FLPT produces. Tensors are detached float32 CPU copies."""

    features: torch.Tensor  # [N, D] aligned features x + s*r, same row order as the input
    labels: torch.Tensor  # [N] int64, the input labels (indices into base_names)
    class_names: list[str]  # base names, then novel names
    text_features: torch.Tensor  # [len(class_names), D] aligned, L2-normalized
    residual: torch.Tensor  # [D] the final r (before scaling)
    ctx: torch.Tensor  # [n_ctx, W] the learned context
    logit_scale: float
    loss_curve: list[float] = field(default_factory=list)  # training loss at every step
    final_loss: float = math.nan  # loss at the last step (nan when no step ran)
    steps_run: int = 0

    def in_order(self, class_names: Sequence[str]) -> AlignResult:
        """The same result with its classes listed as ``class_names`` (a reordering of base then novel, e.g. the
        caller's order): the labels index the new list and the text features follow it; features stay as they are."""
        position = {name: i for i, name in enumerate(class_names)}
        if len(position) != len(class_names) or set(position) != set(self.class_names):
            raise ValueError("class_names must list the result's classes, each once")
        order = torch.tensor([position[name] for name in self.class_names])
        text = torch.empty_like(self.text_features)
        text[order] = self.text_features
        return replace(self, labels=order[self.labels], class_names=list(class_names), text_features=text)


def _check_inputs(
    features: torch.Tensor, labels: torch.Tensor, base_names: Sequence[str], novel_names: Sequence[str], dim: int
) -> None:
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or not features.is_floating_point():
        raise ValueError("features must be a floating [N, D] tensor")
    if features.shape[0] < 1:
        raise ValueError("features is empty; FLPT needs at least one base feature")
    if features.shape[1] != dim:
        raise ValueError(f"features have D={features.shape[1]} but the CLIP text encoder outputs D={dim}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or Inf")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError("labels must be a 1-D integer tensor")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but labels has {labels.shape[0]}")
    names = [*base_names, *novel_names]
    if not base_names:
        raise ValueError("FLPT needs at least one base class")
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError("class names must be non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique across base and novel classes")
    if int(labels.min()) < 0 or int(labels.max()) >= len(base_names):
        raise ValueError(f"labels must index the {len(base_names)} base classes")


def align_features(
    clip_model: ClipModel,
    tokenizer: Callable[[list[str]], torch.Tensor],
    features: torch.Tensor,
    labels: torch.Tensor,
    base_names: Sequence[str],
    novel_names: Sequence[str] = (),
    config: FlptConfig | None = None,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AlignResult:
    """Run FLPT on virtual base features; return aligned features and aligned text features of all classes.

    Args:
        clip_model: an open_clip CLIP; its text tower stays frozen (bit-identical) and runs on its own device.
        tokenizer: the model's tokenizer.
        features: [N, D] virtual base features; labels: [N] indices into ``base_names``.
        base_names: the classes of the cross-entropy; novel_names: classes that only get aligned text features.
        config: settings; FlptConfig() when None.
        on_step: on_step(step, total, loss) every ``log_every`` steps and at the last one.
        should_stop: polled before every step; Cancelled is raised when it returns True.

    Raises ValueError (one line) on bad input. Deterministic for a given seed on a given device.
    """
    cfg = config if config is not None else FlptConfig()
    cfg.validate()
    base_names, novel_names = list(base_names), list(novel_names)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    device = text_tower(clip_model).token_embedding.weight.device
    init_gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = FlptModel(clip_model, tokenizer, cfg.ctx_init, cfg.residual_scale, generator=init_gen)
    _check_inputs(features, labels, base_names, novel_names, model.prompt.output_dim)

    x_all = features.detach().to(device=device, dtype=torch.float32)
    y_all = labels.detach().to(device=device, dtype=torch.int64)
    scale = float(cfg.logit_scale) if cfg.logit_scale is not None else float(clip_model.logit_scale.detach().exp())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    count = x_all.shape[0]
    per_epoch = math.ceil(count / cfg.batch_size)
    total = per_epoch * cfg.epochs
    losses = torch.empty(total, dtype=torch.float32, device=device)
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(count, generator=gen).to(device) if cfg.shuffle else torch.arange(count, device=device)
        for batch in order.split(cfg.batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled(f"alignment cancelled after {step} of {total} steps")
            text = model.text_features(base_names)  # only base classes enter the loss, so only they are encoded
            x = F.normalize(model.align(x_all[batch]), dim=-1)
            loss = F.cross_entropy(scale * x @ text.T, y_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[step] = loss.detach()
            step += 1
            if on_step is not None and (step % cfg.log_every == 0 or step == total):
                on_step(step, total, float(losses[step - 1]))

    names = base_names + novel_names
    with torch.no_grad():
        text_all = torch.cat([model.text_features(names[i : i + TEXT_CHUNK]) for i in range(0, len(names), TEXT_CHUNK)])
        residual = model.residual().float()
        aligned = model.align(x_all)
    curve = losses.tolist()
    return AlignResult(
        features=aligned.to("cpu", torch.float32),
        labels=y_all.to("cpu"),
        class_names=names,
        text_features=text_all.to("cpu", torch.float32),
        residual=residual.to("cpu"),
        ctx=model.prompt.ctx.detach().to("cpu", torch.float32, copy=True),
        logit_scale=scale,
        loss_curve=curve,
        final_loss=curve[-1] if curve else math.nan,
        steps_run=step,
    )
