"""Fine-tuning CLIP on cached features, with or without SHIP's synthesized new-class features (methods.md §4 step 3).

Three methods, all on a :class:`~.bank.FeatureBank` of real base-class features (each image encoded once per
augmentation view; every epoch draws one view per image), never on images:

- **CoOp** (Zhou et al., IJCV 2022): 4 context tokens initialized from "a photo of a" go in front of every class
  name through the frozen text encoder (:class:`~zsc.models.prompt_learner.PromptLearner`); logits are
  100·cos(x, text(ctx, class)). SHIP's defaults: plain SGD lr 2e-3 on a per-step cosine schedule, batch 256,
  200 epochs (its ImageNet config: 20). The text encoder runs every step, since the prompt is what learns.
- **CLIP-Adapter** (Gao et al., IJCV 2023): a bottleneck MLP A (D → D/4 → D, ReLU after each, no biases) on the
  image feature, blended as f' = 0.2·A(f) + 0.8·f; logits 100·cos(f', w_c) with w_c the frozen zero-shot text
  features of "a photo of a {class}." (encoded once). methods.md gives no schedule; zsc takes the optimizer of
  CoOp's Dassl configs, the framework the released CLIP-Adapter trainer runs in: SGD lr 2e-3, momentum 0.9, weight
  decay 5e-4, cosine, batch 32, 200 epochs (without Dassl's one-epoch constant-lr warm-up).
- **Tip-Adapter-F** (Zhang et al., ECCV 2022): a cache whose keys are the L2-normalized features of the training
  images (the mean over their augmentation views, as Tip-Adapter builds it) and whose values are one-hot labels;
  logits = 100·x·Wᵀ + α·exp(−β(1 − x·Kᵀ))·V. The keys are learned: AdamW lr 1e-3 (eps 1e-4) on a cosine schedule,
  batch 256. The initial (α, β), the (α, β) search grid and the epochs are per dataset in the released configs;
  ``tip_adapter_preset`` picks one of them (:data:`TIP_ADAPTER_PRESETS`, default ``imagenet``: α = 1.17, β = 1,
  grid [0.1, 3) × [0.1, 7) of 20 × 200 points, 20 epochs). With synthesized features the cache also holds
  synthesized keys of every new class, as many per class as the median number of real images per base class (a
  balanced cache; ``cache_synthetic_per_class`` overrides it).

SHIP's recipe: each real batch of B features is joined by B synthesized features, each of a new class drawn
uniformly and a feature drawn uniformly from that class's synthesized pool (the pool stands in for drawing fresh
z ~ N(0, I) every step); the loss is the cross-entropy over base + new classes. Without synthesized features
(the comparison baseline) every method trains over the base classes only, as in the base-to-new protocol. The
same batch joining is used for all three methods.

**The released protocol is the default** (``val_fraction = 0``): every shot (16 per base class) is trained on and
the state after the last epoch is returned, as SHIP's released CoOp does (its only selection, of the VAE epoch by
test H, is the bug zsc leaves out). Tip-Adapter-F's released code keeps the epoch of best *test* accuracy and
searches (α, β) on the dataset's validation split (on ImageNet, its test set); the 16-shot protocol has no split
to spare, so by default zsc keeps the last epoch and the preset's initial α, β, and searches nothing.

**Held-out selection is an option that changes the protocol** (``val_fraction > 0``): a seeded ``val_fraction``
of each base class's images is held out (so fewer shots train); every ``select_every`` epochs the per-class mean
accuracy of their plain view, predicted among the base classes (as B is measured; no real new-class data exists
to measure N on), is computed, and the best epoch's state is deep-copied and returned. Tip-Adapter-F then searches
(α, β) over the preset's grid on the same held-out images. Selection never looks at test data.

Differences from the released code, on purpose: image features are L2-normalized before anything else (so
CLIP-Adapter blends normalized features, where its code blends raw encoder outputs); the zero-shot classifier uses
one template, not an ensemble. The result is a :class:`FineTunedClassifier` over **all** classes (base and new),
which scores features without CLIP: CoOp's learned prompts are encoded once at the end.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsc.config import check_config, setting
from zsc.errors import Cancelled
from zsc.evaluation import mean_per_class_accuracy
from zsc.limits import MAX_WEIGHT_DECAY
from zsc.models.clip import DEFAULT_TEMPLATE, TEXT_CHUNK, ClipModel, encode_class_names
from zsc.models.prompt_learner import DEFAULT_CTX_INIT, PromptLearner, text_tower

from .bank import FeatureBank
from .common import (
    BETA,
    LR,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_PER_CLASS,
    MAX_WIDTH,
    ConfigMixin,
    EpochHook,
    StopHook,
    clone_state_dict,
    seeded_init,
)

__all__ = [
    "METHODS",
    "TIP_ADAPTER_PRESETS",
    "FineTuneConfig",
    "FineTuneResult",
    "FineTunedClassifier",
    "build_classifier",
    "fine_tune",
]

METHODS = ("coop", "clip_adapter", "tip_adapter_f")

# Each method's defaults; FineTuneConfig.for_method applies them under the caller's overrides.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "coop": {"epochs": 200, "batch_size": 256, "lr": 2e-3, "momentum": 0.0, "weight_decay": 0.0},
    "clip_adapter": {"epochs": 200, "batch_size": 32, "lr": 2e-3, "momentum": 0.9, "weight_decay": 5e-4},
    "tip_adapter_f": {"epochs": 20, "batch_size": 256, "lr": 1e-3, "momentum": 0.0, "weight_decay": 0.01},
}


def _tip(alpha: float, beta_max: float, alpha_max: float, epochs: int = 20) -> dict[str, Any]:
    """One released Tip-Adapter config: init_alpha, search_scale = [beta_max, alpha_max], train_epoch (all of
    them start at β = 1 and search 200 β x 20 α values)."""
    return {
        "init_alpha": alpha,
        "init_beta": 1.0,
        "search_beta_max": beta_max,
        "search_beta_steps": 200,
        "search_alpha_max": alpha_max,
        "search_alpha_steps": 20,
        "epochs": epochs,
    }


# Tip-Adapter-F's per-dataset values, from the released configs (gaopengcuhk/Tip-Adapter configs/*.yaml; SHIP's
# coop-configs give the same alpha, beta and grids). Applied by FineTuneConfig.for_method under explicit settings.
TIP_ADAPTER_PRESETS: dict[str, dict[str, Any]] = {
    "caltech101": _tip(3.0, 12.0, 5.0),
    "dtd": _tip(2.0, 13.0, 13.0),
    "eurosat": _tip(2.0, 12.0, 10.0, epochs=100),
    "fgvc": _tip(5.0, 30.0, 30.0),
    "food101": _tip(1.17, 10.0, 10.0),
    "imagenet": _tip(1.17, 7.0, 3.0),
    "oxford_flowers": _tip(10.0, 50.0, 50.0),
    "oxford_pets": _tip(1.17, 7.0, 3.0),
    "stanford_cars": _tip(3.0, 20.0, 10.0),
    "sun397": _tip(1.17, 12.0, 10.0),
    "ucf101": _tip(3.0, 7.0, 3.0),
}
DEFAULT_TIP_ADAPTER_PRESET = "imagenet"


def _check_preset(name: str) -> None:
    if name not in TIP_ADAPTER_PRESETS:
        raise ValueError(
            f"unknown tip_adapter_preset {str(name)[:80]!r}; expected one of {', '.join(sorted(TIP_ADAPTER_PRESETS))}"
        )


@dataclass
class FineTuneConfig(ConfigMixin):
    """Settings of every method; build with :meth:`for_method` to get that method's defaults."""

    method: str = "coop"
    seed: int = setting(0, ge=0)
    epochs: int = setting(200, ge=1, le=MAX_EPOCHS)
    batch_size: int = setting(256, ge=1, le=MAX_BATCH)
    lr: float = setting(2e-3, **LR)
    momentum: float = setting(0.0, **BETA)  # SGD (CoOp, CLIP-Adapter)
    weight_decay: float = setting(0.0, ge=0.0, le=MAX_WEIGHT_DECAY)
    logit_scale: float = setting(100.0, gt=0.0)
    # 0: the released protocol (all shots, last epoch); > 0: held-out selection
    val_fraction: float = setting(0.0, ge=0.0, lt=1.0)
    select_every: int = setting(1, ge=1, le=MAX_EPOCHS)
    normalize_features: bool = True
    ctx_init: str = DEFAULT_CTX_INIT  # CoOp
    template: str = DEFAULT_TEMPLATE  # the zero-shot classifier of CLIP-Adapter and Tip-Adapter-F
    reduction: int = setting(4, ge=1, le=MAX_WIDTH)  # CLIP-Adapter bottleneck D/reduction
    ratio: float = setting(0.2, ge=0.0, le=1.0)  # CLIP-Adapter residual ratio
    tip_adapter_preset: str = DEFAULT_TIP_ADAPTER_PRESET  # Tip-Adapter-F; for_method applies its values
    init_alpha: float = setting(1.17, ge=0.0)  # the imagenet preset's values
    init_beta: float = setting(1.0, ge=0.0)
    adamw_eps: float = setting(1e-4, gt=0.0)
    search_alpha_max: float = setting(3.0, gt=0.0)
    search_alpha_steps: int = setting(20, ge=1, le=10_000)
    search_beta_max: float = setting(7.0, gt=0.0)
    search_beta_steps: int = setting(200, ge=1, le=10_000)
    # 0: the median number of real images per base class
    cache_synthetic_per_class: int = setting(0, ge=0, le=MAX_PER_CLASS)

    @classmethod
    def for_method(cls, method: str, **overrides: Any) -> FineTuneConfig:
        """The defaults of ``method`` (see the module docstring), for Tip-Adapter-F those of its
        ``tip_adapter_preset``, then ``overrides``."""
        if method not in METHOD_DEFAULTS:
            raise ValueError(f"unknown fine-tuning method {method!r}; expected one of {', '.join(METHODS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown fine-tuning settings: {', '.join(unknown)}")
        preset = overrides.get("tip_adapter_preset", DEFAULT_TIP_ADAPTER_PRESET)
        _check_preset(preset)
        dataset = TIP_ADAPTER_PRESETS[preset] if method == "tip_adapter_f" else {}
        return cls(**{**METHOD_DEFAULTS[method], **dataset, **overrides, "method": method})

    def check(self) -> None:
        """Raise ValueError (one line) on values no run can use."""
        if self.method not in METHODS:
            raise ValueError(f"unknown fine-tuning method {self.method!r}; expected one of {', '.join(METHODS)}")
        check_config(self)
        try:
            filled = self.template.format("class")
        except (IndexError, KeyError, ValueError):
            filled = ""
        if "{}" not in self.template or not filled:
            raise ValueError(f"template {self.template[:80]!r} must hold one {{}} for the class name, no other field")
        if not self.ctx_init.strip():
            raise ValueError("ctx_init must be a non-empty phrase")
        _check_preset(self.tip_adapter_preset)


# --------------------------------------------------------------------------------------------------------------
# The fine-tuned classifier: what is stored and scored


class Adapter(nn.Module):
    """CLIP-Adapter's bottleneck: Linear(D, h, no bias) → ReLU → Linear(h, D, no bias) → ReLU, h = D/reduction."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.ReLU()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class FineTunedClassifier(nn.Module):
    """Logits over C classes of any of the three methods; needs no CLIP at inference.

    Buffers: ``text_weights`` [C, D] (CoOp's learned prompts or the zero-shot features), ``seen_mask`` [C] (classes
    with real training images, for calibrated stacking), and per method ``adapter`` (CLIP-Adapter), ``cache_keys``
    [K, D] with ``cache_values`` [K, C] (Tip-Adapter-F), ``ctx`` [n_ctx, W] (CoOp, kept for reuse, not scoring).
    """

    # buffers (register_buffer), typed for the checker: a Module's attributes otherwise read as submodule-or-tensor
    text_weights: Tensor
    seen_mask: Tensor
    cache_keys: Tensor
    cache_values: Tensor
    ctx: Tensor

    def __init__(
        self,
        method: str,
        text_weights: Tensor,
        seen_mask: Tensor,
        *,
        logit_scale: float = 100.0,
        adapter: Adapter | None = None,
        ratio: float = 0.2,
        cache_keys: Tensor | None = None,
        cache_values: Tensor | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        ctx: Tensor | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        if text_weights.ndim != 2 or seen_mask.shape != (text_weights.shape[0],):
            raise ValueError("text_weights must be [C, D] and seen_mask [C]")
        if method == "clip_adapter" and adapter is None:
            raise ValueError("a CLIP-Adapter classifier needs its adapter")
        if method == "tip_adapter_f" and (cache_keys is None or cache_values is None):
            raise ValueError("a Tip-Adapter-F classifier needs its cache")
        self.method = method
        self.logit_scale = float(logit_scale)
        self.ratio = float(ratio)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.register_buffer("text_weights", F.normalize(text_weights.detach().float(), dim=-1).clone())
        self.register_buffer("seen_mask", seen_mask.detach().bool().clone())
        self.adapter = adapter
        if cache_keys is not None and cache_values is not None:
            if cache_keys.ndim != 2 or cache_values.shape != (cache_keys.shape[0], text_weights.shape[0]):
                raise ValueError("cache_keys must be [K, D] and cache_values [K, C]")
            self.register_buffer("cache_keys", cache_keys.detach().float().clone())
            self.register_buffer("cache_values", cache_values.detach().float().clone())
        if ctx is not None:
            self.register_buffer("ctx", ctx.detach().float().clone())

    @property
    def num_classes(self) -> int:
        return int(self.text_weights.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.text_weights.shape[1])

    def meta(self) -> dict[str, Any]:
        """The scalars that, with the state dict, rebuild this classifier (:func:`build_classifier`)."""
        return {
            "method": self.method,
            "logit_scale": self.logit_scale,
            "ratio": self.ratio,
            "alpha": self.alpha,
            "beta": self.beta,
        }

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(x.float(), dim=-1)
        w = self.text_weights
        if self.method == "clip_adapter":
            assert self.adapter is not None
            x = F.normalize(self.ratio * self.adapter(x) + (1 - self.ratio) * x, dim=-1)
        logits = self.logit_scale * x @ w.T
        if self.method == "tip_adapter_f":
            logits = logits + self.alpha * cache_logits(x, self.cache_keys, self.cache_values, self.beta)
        return logits

    @torch.no_grad()
    def scores(self, x: Tensor, gamma: float = 0.0, batch_size: int = 65536) -> Tensor:
        """Inference logits [N, C]; calibrated stacking subtracts ``gamma`` from the seen classes' logits."""
        x = x.to(device=self.text_weights.device, dtype=torch.float32)
        out = torch.cat([self(chunk) for chunk in x.split(batch_size)])
        return out - gamma * self.seen_mask.to(out.dtype)

    def predict(self, x: Tensor, gamma: float = 0.0) -> Tensor:
        return self.scores(x, gamma).argmax(dim=1)


def cache_logits(x: Tensor, keys: Tensor, values: Tensor, beta: float) -> Tensor:
    """Tip-Adapter's cache term exp(−β(1 − x·Kᵀ))·V for normalized features x [N, D]."""
    return torch.exp(-beta * (1 - x @ keys.T)) @ values


def build_classifier(state_dict: dict[str, Tensor], meta: dict[str, Any]) -> FineTunedClassifier:
    """Rebuild a stored classifier from its state dict and :meth:`FineTunedClassifier.meta`."""
    method = meta["method"]
    adapter = None
    if method == "clip_adapter":
        hidden, dim = (int(v) for v in state_dict["adapter.fc.0.weight"].shape)
        adapter = Adapter(dim, hidden)
    model = FineTunedClassifier(
        method,
        state_dict["text_weights"],
        state_dict["seen_mask"],
        logit_scale=float(meta["logit_scale"]),
        adapter=adapter,
        ratio=float(meta["ratio"]),
        cache_keys=state_dict.get("cache_keys"),
        cache_values=state_dict.get("cache_values"),
        alpha=float(meta["alpha"]),
        beta=float(meta["beta"]),
        ctx=state_dict.get("ctx"),
    )
    model.load_state_dict(state_dict)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Training


class _Method(nn.Module):
    """A method's trainable part: logits over the trained classes, and the final classifier over all classes."""

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def classifier(self, seen_mask: Tensor) -> FineTunedClassifier:
        raise NotImplementedError


class _CoOp(_Method):
    def __init__(
        self, clip_model: nn.Module, tokenizer: Callable, cfg: FineTuneConfig, names: list[str], all_names: list[str]
    ):
        super().__init__()
        self.prompt = PromptLearner(clip_model, tokenizer, ctx_init=cfg.ctx_init)
        self.names, self.all_names, self.scale = names, all_names, cfg.logit_scale
        self.prompt.prompts(all_names)  # a class name that does not fit fails before training

    def logits(self, x: Tensor) -> Tensor:
        return self.scale * x @ self.prompt(self.names).T

    def classifier(self, seen_mask: Tensor) -> FineTunedClassifier:
        with torch.no_grad():
            names = self.all_names
            text = torch.cat([self.prompt(names[i : i + TEXT_CHUNK]) for i in range(0, len(names), TEXT_CHUNK)])
        return FineTunedClassifier("coop", text, seen_mask, logit_scale=self.scale, ctx=self.prompt.ctx)


class _ClipAdapter(_Method):
    zero_shot: Tensor  # buffers
    trained: Tensor

    def __init__(self, cfg: FineTuneConfig, zero_shot: Tensor, trained: Tensor):
        super().__init__()
        with seeded_init(cfg.seed):
            self.adapter = Adapter(zero_shot.shape[1], max(1, zero_shot.shape[1] // cfg.reduction))
        self.adapter.to(zero_shot.device)
        self.register_buffer("zero_shot", zero_shot)
        self.register_buffer("trained", trained)
        self.ratio, self.scale = cfg.ratio, cfg.logit_scale

    def logits(self, x: Tensor) -> Tensor:
        f = F.normalize(self.ratio * self.adapter(x) + (1 - self.ratio) * x, dim=-1)
        return self.scale * f @ self.zero_shot[self.trained].T

    def classifier(self, seen_mask: Tensor) -> FineTunedClassifier:
        return FineTunedClassifier(
            "clip_adapter",
            self.zero_shot,
            seen_mask,
            logit_scale=self.scale,
            adapter=copy.deepcopy(self.adapter),
            ratio=self.ratio,
        )


class _TipAdapterF(_Method):
    zero_shot: Tensor  # buffers
    trained: Tensor
    key_labels: Tensor
    values: Tensor

    def __init__(self, cfg: FineTuneConfig, zero_shot: Tensor, trained: Tensor, keys: Tensor, key_labels: Tensor):
        super().__init__()
        self.keys = nn.Parameter(keys.clone())
        self.register_buffer("zero_shot", zero_shot)
        self.register_buffer("trained", trained)
        self.register_buffer("key_labels", key_labels)  # indices into all classes
        local = torch.full((zero_shot.shape[0],), -1, dtype=torch.int64, device=trained.device)
        local[trained] = torch.arange(trained.numel(), device=trained.device)
        self.register_buffer("values", F.one_hot(local[key_labels], trained.numel()).float())
        self.alpha, self.beta, self.scale = cfg.init_alpha, cfg.init_beta, cfg.logit_scale

    def logits(self, x: Tensor, alpha: float | None = None, beta: float | None = None) -> Tensor:
        a = self.alpha if alpha is None else alpha
        b = self.beta if beta is None else beta
        return self.scale * x @ self.zero_shot[self.trained].T + a * cache_logits(x, self.keys, self.values, b)

    def classifier(self, seen_mask: Tensor) -> FineTunedClassifier:
        values = F.one_hot(self.key_labels, self.zero_shot.shape[0]).float()
        return FineTunedClassifier(
            "tip_adapter_f",
            self.zero_shot,
            seen_mask,
            logit_scale=self.scale,
            cache_keys=self.keys.detach(),
            cache_values=values,
            alpha=self.alpha,
            beta=self.beta,
        )

    @torch.no_grad()
    def search(
        self, x: Tensor, y: Tensor, num_base: int, cfg: FineTuneConfig, should_stop: StopHook | None = None
    ) -> float:
        """Tip-Adapter's (α, β) grid search on held-out base features, scored like :func:`_accuracy`; keeps the
        current pair unless another one scores higher. Returns the best score."""
        base = slice(0, num_base)
        clip_logits = self.scale * x @ self.zero_shot[self.trained[base]].T
        affinity = x @ self.keys.T
        betas = [0.1 + i * (cfg.search_beta_max - 0.1) / cfg.search_beta_steps for i in range(cfg.search_beta_steps)]
        steps = range(cfg.search_alpha_steps)
        alphas = torch.tensor([0.1 + i * (cfg.search_alpha_max - 0.1) / cfg.search_alpha_steps for i in steps])
        alphas = alphas.to(x.device)
        # Per-class mean accuracy of many predictions at once: correct [A, N] @ one-hot [N, K] / support [K].
        onehot = F.one_hot(y, num_base).float()
        present = onehot.sum(dim=0) > 0
        support = onehot.sum(dim=0).clamp_min(1)

        def accuracy(pred: Tensor) -> Tensor:
            return ((pred == y).float() @ onehot / support)[..., present].mean(dim=-1)

        best = (float(accuracy(self.logits(x)[:, base].argmax(dim=1))), self.alpha, self.beta)
        for beta in betas:
            if should_stop is not None and should_stop():
                raise Cancelled("training cancelled")
            cache = torch.exp(-beta * (1 - affinity)) @ self.values[:, base]  # [N, K]
            preds = (clip_logits.unsqueeze(0) + alphas.view(-1, 1, 1) * cache.unsqueeze(0)).argmax(dim=2)
            scores = accuracy(preds)
            i = int(scores.argmax())
            if float(scores[i]) > best[0]:
                best = (float(scores[i]), float(alphas[i]), beta)
        self.alpha, self.beta = best[1], best[2]
        return best[0]


@dataclass
class FineTuneResult:
    """The classifier over all classes, a deep copy of its state dict, the selection record and per-epoch metrics."""

    classifier: FineTunedClassifier
    state_dict: dict[str, Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    val_accuracy: float  # held-out base accuracy of the returned state (NaN without held-out data)
    trained_classes: list[int]  # indices into class_names: base, then new classes with synthesized features
    n_fit: int  # real images trained on
    n_val: int  # real images held out
    n_synthetic: int
    extra: dict[str, float] = field(default_factory=dict)  # e.g. Tip-Adapter-F's searched alpha and beta


def _split(labels: Tensor, fraction: float, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """Seeded per-class split of image indices into (fit, val); a class keeps at least one image to fit on."""
    fit, val = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=rng)]
        n_val = 0 if fraction == 0 or idx.numel() < 2 else min(idx.numel() - 1, max(1, round(fraction * idx.numel())))
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


def _check_inputs(
    bank: FeatureBank, class_names: Sequence[str], synthetic: tuple[Tensor, Tensor] | None, dim: int
) -> None:
    names = list(class_names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError("class names must be non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique")
    if bank.images == 0:
        raise ValueError("the real feature bank is empty; fine-tuning needs base-class images")
    if bank.dim != dim:
        raise ValueError(f"the features have D={bank.dim} but the CLIP text encoder outputs D={dim}")
    if not bool(torch.isfinite(bank.features).all()):
        raise ValueError("the real features contain NaN or Inf")
    if int(bank.labels.min()) < 0 or int(bank.labels.max()) >= len(names):
        raise ValueError(f"real labels must index the {len(names)} classes")
    if synthetic is None:
        return
    x, y = synthetic
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"synthesized features must be [M >= 1, D] with labels [M], got {tuple(x.shape)}")
    if x.shape[1] != dim:
        raise ValueError(f"the synthesized features have D={x.shape[1]} but the real ones have D={dim}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the synthesized features contain NaN or Inf")
    if int(y.min()) < 0 or int(y.max()) >= len(names):
        raise ValueError(f"synthesized labels must index the {len(names)} classes")
    overlap = torch.isin(y.unique(), bank.labels.unique())
    if bool(overlap.any()):
        name = names[int(y.unique()[overlap][0])]
        raise ValueError(f"class {name!r} has real images and synthesized features; synthesize new classes only")


def fine_tune(
    clip_model: ClipModel,
    tokenizer: Callable[[list[str]], Tensor],
    bank: FeatureBank,
    class_names: Sequence[str],
    config: FineTuneConfig,
    synthetic: tuple[Tensor, Tensor] | None = None,
    *,
    on_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
) -> FineTuneResult:
    """Fine-tune with ``config.method`` on real base features ``bank`` (+ optional synthesized (features, labels)).

    Labels of both index ``class_names`` (every class the result classifies: base and new). Runs on the CLIP text
    tower's device; the tower stays frozen. Raises ValueError (one line) on bad input and
    :class:`Cancelled` when ``should_stop()`` turns True.
    """
    config.check()
    names = list(class_names)
    device = text_tower(clip_model).token_embedding.weight.device
    dim = text_tower(clip_model).output_dim
    _check_inputs(bank, names, synthetic, dim)
    rng = torch.Generator(device="cpu").manual_seed(config.seed)
    fit_idx, val_idx = _split(bank.labels.cpu(), config.val_fraction, rng)

    features = bank.features.to(device=device, dtype=torch.float32)
    if config.normalize_features:
        features = F.normalize(features, dim=-1)
    base = bank.labels.unique(sorted=True).to(device)
    syn_x = syn_y = None
    new = torch.zeros(0, dtype=torch.int64, device=device)
    if synthetic is not None:
        syn_x = synthetic[0].to(device=device, dtype=torch.float32)
        syn_x = F.normalize(syn_x, dim=-1) if config.normalize_features else syn_x
        syn_y = synthetic[1].to(device=device, dtype=torch.int64)
        order = syn_y.argsort(stable=True)  # grouped by class: a class's pool is one contiguous range
        syn_x, syn_y = syn_x[order], syn_y[order]
        new = syn_y.unique(sorted=True)
    trained = torch.cat([base, new])
    local = torch.full((len(names),), -1, dtype=torch.int64, device=device)
    local[trained] = torch.arange(trained.numel(), device=device)
    full = FeatureBank(features, local[bank.labels.to(device)])
    fit, val = full.take(fit_idx), full.take(val_idx)

    method = _build_method(clip_model, tokenizer, config, names, trained, fit, syn_x, syn_y, new)
    if config.method == "tip_adapter_f":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            method.parameters(), lr=config.lr, eps=config.adamw_eps, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            method.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    steps = math.ceil(fit.images / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs * steps)
    if syn_y is not None:
        counts = torch.bincount(syn_y, minlength=len(names))[new]
        starts = torch.cumsum(counts, 0) - counts
    gen = torch.Generator(device=device).manual_seed(config.seed)
    val_x, val_y = val.plain(), val.labels
    selecting = val.images > 0
    best_acc, best_epoch, best_state = -math.inf, config.epochs, None
    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(fit.images, device=device, generator=gen)
        totals = torch.zeros(2, device=device)
        for s in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled(f"training cancelled during epoch {epoch}")
            idx = order[s * config.batch_size : (s + 1) * config.batch_size]
            x, y = fit.draw(idx, gen), fit.labels[idx]
            if syn_x is not None:
                pick = torch.randint(0, new.numel(), (idx.numel(),), device=device, generator=gen)
                offset = (torch.rand(idx.numel(), device=device, generator=gen) * counts[pick]).long()
                x = torch.cat([x, syn_x[starts[pick] + offset]])
                y = torch.cat([y, local[new[pick]]])
            logits = method.logits(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            totals += torch.stack([loss.detach(), (logits.detach().argmax(dim=1) == y).float().mean()])
        record = dict(zip(("loss", "train_accuracy"), (totals / steps).tolist(), strict=True))
        if selecting and (epoch % config.select_every == 0 or epoch == config.epochs):
            acc = _accuracy(method, val_x, val_y, base.numel())
            record["val_accuracy"] = acc
            if acc > best_acc:
                best_acc, best_epoch, best_state = acc, epoch, clone_state_dict(method)
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, dict(record))
    extra: dict[str, float] = {}
    if best_state is not None:
        method.load_state_dict(best_state)
    if isinstance(method, _TipAdapterF):
        if selecting:
            best_acc = method.search(val_x, val_y, base.numel(), config, should_stop)
        extra = {"alpha": method.alpha, "beta": method.beta}
    seen_mask = torch.zeros(len(names), dtype=torch.bool)
    seen_mask[base.cpu()] = True
    classifier = method.classifier(seen_mask.to(device)).eval()
    return FineTuneResult(
        classifier=classifier,
        state_dict=clone_state_dict(classifier),
        history=history,
        best_epoch=best_epoch if selecting else config.epochs,
        val_accuracy=best_acc if selecting else math.nan,
        trained_classes=trained.tolist(),
        n_fit=fit.images,
        n_val=val.images,
        n_synthetic=0 if syn_x is None else int(syn_x.shape[0]),
        extra=extra,
    )


@torch.no_grad()
def _accuracy(method: _Method, x: Tensor, y: Tensor, num_base: int) -> float:
    """Per-class mean accuracy of held-out base features predicted among the base classes (B's protocol)."""
    pred = method.logits(x)[:, :num_base].argmax(dim=1)
    return mean_per_class_accuracy(y.cpu(), pred.cpu(), y.unique().cpu(), num_base)


def _build_method(
    clip_model: ClipModel,
    tokenizer: Callable,
    cfg: FineTuneConfig,
    names: list[str],
    trained: Tensor,
    fit: FeatureBank,
    syn_x: Tensor | None,
    syn_y: Tensor | None,
    new: Tensor,
) -> _Method:
    if cfg.method == "coop":
        return _CoOp(clip_model, tokenizer, cfg, [names[i] for i in trained.tolist()], names)
    zero_shot = encode_class_names(clip_model, tokenizer, names, cfg.template)
    if cfg.method == "clip_adapter":
        return _ClipAdapter(cfg, zero_shot, trained)
    # Tip-Adapter-F: real keys = normalized mean over views; synthesized keys = a seeded balanced draw per class.
    keys = [F.normalize(fit.mean_views(), dim=-1)]
    key_labels = [trained[fit.labels]]
    if syn_x is not None and syn_y is not None:
        per_class = cfg.cache_synthetic_per_class or int(torch.bincount(fit.labels).float().median().clamp_min(1))
        rng = torch.Generator().manual_seed(cfg.seed)
        for c in new.tolist():
            pool = (syn_y == c).nonzero().squeeze(1)
            take = pool[torch.randperm(pool.numel(), generator=rng)[:per_class].to(pool.device)]
            keys.append(syn_x[take])
            key_labels.append(syn_y[take])
    return _TipAdapterF(cfg, zero_shot, trained, torch.cat(keys), torch.cat(key_labels))
