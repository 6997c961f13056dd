"""What the f-CLSWGAN and TF-VAEGAN cores share: blocks, WGAN-GP, sampling, the held-out split (the seeded training
driver and its selection, which fits GZSL classifiers, are in ``training``).

Conventions of both generators:

- Real features are L2-normalized once before training (``normalize_features``, on by default) because they live
  in a CLIP-like cosine space and the generator's output is L2-normalized too.
- Conditioning text features are L2-normalized inside the modules, so callers pass raw text features.
- Every random draw comes from one ``torch.Generator`` seeded with ``config.seed`` (batches, noise, GP mixing);
  weights are initialized on the CPU under ``zsc.seeding.seeded_init`` (the global RNG, seeded under a process-wide
  lock, then given back), so a run is reproducible on a given device even beside other jobs.
- An *epoch* is ``ceil(N / batch_size)`` generator steps (times ``passes_per_epoch``), each preceded by
  ``critic_iters`` critic steps on fresh batches; batches are drawn with replacement, on the device. The generator
  step trains on the last critic batch (its features and text, with fresh noise), as both released loops do.
- The WGAN-GP weight lives on the trainer (``gp_weight``, a device tensor starting at ``config.gp_weight``);
  TF-VAEGAN adapts it after every step (:meth:`AdversarialTrainer.adapt_gp_weight`).

Model selection never looks at test data. With ``select_every > 0`` a seeded ``select_holdout_fraction`` of the
training classes becomes pseudo-novel and a ``select_val_fraction`` of every other class's samples is held out.
A generator is trained on the rest; every ``select_every`` epochs it synthesizes features for the pseudo-novel
classes, a quick GZSL classifier is fit on real + synthesized features, and H is measured on the held-out real
features (the held-out samples of the pseudo-seen classes and all samples of the pseudo-novel ones). The best
epoch's generator state is deep-copied. With ``select_refit`` (default) a fresh generator is then trained on all
training classes for that many epochs and returned; without it the selected state itself is returned (it has
never seen the pseudo-novel classes). ``select_every = 0`` trains on everything and returns the last epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsc.config import check_config, setting
from zsc.errors import Cancelled
from zsc.features import FeatureSet
from zsc.limits import MAX_LR
from zsc.seeding import seeded_init

__all__ = [
    "AdversarialTrainer",
    "ConditionalCritic",
    "ConditionalGenerator",
    "ConfigMixin",
    "EpochHook",
    "GeneratorConfig",
    "GeneratorTrainResult",
    "HoldoutSplit",
    "StopHook",
    "TrainingData",
    "clone_state_dict",
    "generate",
    "gradient_penalty",
    "holdout_class_count",
    "holdout_split",
    "init_weights",
    "make_adam",
    "prepare_training_data",
    "seeded_init",
]

EpochHook = Callable[[int, int, dict[str, float]], None]
"""``on_epoch(epoch, total, metrics)``: epoch counts from 1; ``total`` may change once selection has finished."""
StopHook = Callable[[], bool]
"""``should_stop()``: polled every step; returning True raises :class:`Cancelled`."""

_C = TypeVar("_C", bound="ConfigMixin")


class ConfigMixin:
    """``to_dict``/``from_dict`` for config dataclasses (for MLflow params and for rebuilding a model)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_C], values: Mapping[str, Any]) -> _C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**values)


# Bounds no run exceeds: widths and loop counts far above any published setting, learning rates torch's optimizers
# take without float32 overflow (zsc.limits).
MAX_EPOCHS = 100_000
MAX_BATCH = 1_000_000
MAX_WIDTH = 16_384
MAX_PER_CLASS = 100_000
FRACTION = {"gt": 0.0, "lt": 1.0}  # (0, 1)
BETA = {"ge": 0.0, "lt": 1.0}  # an Adam beta, [0, 1)
LR = {"gt": 0.0, "le": MAX_LR}


@dataclass
class GeneratorConfig(ConfigMixin):
    """Fields both generators share. ``noise_dim=None`` means: the text-feature dimension."""

    seed: int = setting(0, ge=0)
    epochs: int = setting(50, ge=1, le=MAX_EPOCHS)
    batch_size: int = setting(64, ge=1, le=MAX_BATCH)
    lr: float = setting(1e-4, **LR)
    beta1: float = setting(0.5, **BETA)
    beta2: float = setting(0.999, **BETA)
    hidden_dim: int = setting(1024, ge=1, le=MAX_WIDTH)
    noise_dim: int | None = setting(None, ge=1, le=MAX_WIDTH)
    critic_iters: int = setting(5, ge=1, le=100)
    gp_weight: float = setting(10.0, ge=0.0)
    normalize_features: bool = True
    select_every: int = setting(0, ge=0, le=MAX_EPOCHS)
    select_holdout_fraction: float = setting(0.2, **FRACTION)
    select_val_fraction: float = setting(0.2, **FRACTION)
    select_n_per_class: int = setting(200, ge=1, le=MAX_PER_CLASS)
    select_classifier_epochs: int = setting(10, ge=1, le=MAX_EPOCHS)
    select_classifier_lr: float = setting(1e-3, **LR)
    select_refit: bool = True

    def resolved_noise_dim(self, text_dim: int) -> int:
        return text_dim if self.noise_dim is None else self.noise_dim

    def check(self) -> None:
        """Raise ValueError (InvalidArgument) on values no run can use: every declared bound."""
        check_config(self)


# --------------------------------------------------------------------------------------------------------------
# Modules


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases for every Linear, as in the f-CLSWGAN and TF-VAEGAN code."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConditionalGenerator(nn.Module):
    """G(z, a): [z, normalize(a)] → Linear → LeakyReLU(0.2) (+ optional feedback) → Linear (→ L2 normalize)."""

    def __init__(
        self, noise_dim: int, cond_dim: int, hidden_dim: int, feature_dim: int, normalize_output: bool = True
    ) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.cond_dim = cond_dim
        self.feature_dim = feature_dim
        self.normalize_output = normalize_output
        self.fc1 = nn.Linear(noise_dim + cond_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, feature_dim)
        self.act = nn.LeakyReLU(0.2)
        init_weights(self)

    def forward(self, z: Tensor, a: Tensor, feedback: Tensor | None = None) -> Tensor:
        h = self.act(self.fc1(torch.cat((z, F.normalize(a, dim=-1)), dim=-1)))
        if feedback is not None:
            h = h + feedback
        x = self.fc2(h)
        return F.normalize(x, dim=-1) if self.normalize_output else x


class ConditionalCritic(nn.Module):
    """WGAN critic D(x, a): [x, normalize(a)] → Linear → LeakyReLU(0.2) → Linear → scalar."""

    def __init__(self, feature_dim: int, cond_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim + cond_dim, hidden_dim), nn.LeakyReLU(0.2), nn.Linear(hidden_dim, 1)
        )
        init_weights(self)

    def forward(self, x: Tensor, a: Tensor) -> Tensor:
        return self.net(torch.cat((x, F.normalize(a, dim=-1)), dim=-1)).squeeze(-1)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, cond: Tensor, alpha: Tensor) -> Tensor:
    """WGAN-GP term E[(||∇_x D(x̂, a)|| - 1)²] at x̂ = α·real + (1-α)·fake; ``alpha`` is [B, 1] in [0, 1)."""
    mixed = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed, cond).sum(), mixed, create_graph=True)
    return (grad.norm(2, dim=1) - 1.0).pow(2).mean()


def make_adam(
    module: nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0
) -> torch.optim.Adam:
    """Adam with the fused kernel: one pass over all parameters per step instead of torch's per-tensor loop
    (bench/generative.py times the training loop that uses it against a plain research-style loop)."""
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, weight_decay=weight_decay, fused=True)


def clone_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """A deep copy of ``module.state_dict()``: later training steps cannot change it."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def generate(
    generator: nn.Module,
    class_text_features: Tensor,
    n_per_class: int,
    seed: int,
    *,
    class_indices: Tensor | None = None,
    batch_size: int = 4096,
    should_stop: StopHook | None = None,
) -> tuple[Tensor, Tensor]:
    """Synthesize ``n_per_class`` features for each row of ``class_text_features`` [C, D_t].

    ``generator`` is any module with ``noise_dim``/``feature_dim`` attributes and ``forward(z, a)``. Noise comes from
    a generator seeded with ``seed``, so equal arguments give identical features. Labels are row indices 0..C-1, or
    ``class_indices[row]`` when given. Returns ([C·n, D], [C·n]) on the generator's device.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if class_text_features.ndim != 2:
        raise ValueError(f"class_text_features must be [C, D_t], got {tuple(class_text_features.shape)}")
    device = next(generator.parameters()).device
    text = class_text_features.to(device=device, dtype=torch.float32)
    rows = torch.arange(text.shape[0], device=device).repeat_interleave(n_per_class)
    # attributes of the generator modules (ConditionalGenerator and the SHIP decoder), not of nn.Module
    feature_dim, noise_dim = cast(int, generator.feature_dim), cast(int, generator.noise_dim)
    out = torch.empty(rows.numel(), feature_dim, device=device)
    rng = torch.Generator(device=device).manual_seed(seed)
    was_training = generator.training
    generator.eval()
    try:
        for start in range(0, rows.numel(), batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("training cancelled")
            r = rows[start : start + batch_size]
            z = torch.randn(r.numel(), noise_dim, device=device, generator=rng)
            out[start : start + r.numel()] = generator(z, text[r])
    finally:
        generator.train(was_training)
    if class_indices is not None:
        idx = torch.as_tensor(class_indices, dtype=torch.int64, device=device)
        if idx.numel() != text.shape[0]:
            raise ValueError(f"class_indices has {idx.numel()} entries for {text.shape[0]} classes")
        rows = idx[rows]
    return out, rows


# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class TrainingData:
    """Training features on the device, labels re-indexed to the K classes that have samples."""

    features: Tensor  # [N, D]
    labels: Tensor  # [N] in 0..K-1
    class_text: Tensor  # [K, D_t], L2-normalized
    classes: Tensor  # [K] indices of those classes in the source FeatureSet (CPU)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def text_dim(self) -> int:
        return int(self.class_text.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.class_text.shape[0])

    def take(self, index: Tensor) -> TrainingData:
        """The samples at ``index`` (all K classes stay listed)."""
        index = index.to(self.features.device)
        return TrainingData(self.features[index], self.labels[index], self.class_text, self.classes)


def prepare_training_data(data: FeatureSet, normalize: bool, device: torch.device) -> TrainingData:
    """Validate, move to ``device`` once, normalize once, and re-index labels to the classes present."""
    data.validate()
    if len(data) == 0:
        raise ValueError("cannot train a generator on an empty feature set")
    classes = data.labels.unique(sorted=True).cpu()
    remap = torch.full((data.num_classes,), -1, dtype=torch.int64)
    remap[classes] = torch.arange(classes.numel())
    features = data.features.to(device=device, dtype=torch.float32)
    if normalize:
        features = F.normalize(features, dim=-1)
    return TrainingData(
        features=features.contiguous(),
        labels=remap[data.labels.cpu()].to(device),
        class_text=F.normalize(data.text_features[classes].to(device=device, dtype=torch.float32), dim=-1),
        classes=classes,
    )


@dataclass
class HoldoutSplit:
    """Indices (local to a TrainingData) of the selection split; see the module docstring."""

    seen: Tensor  # pseudo-seen classes
    novel: Tensor  # pseudo-novel classes
    fit_index: Tensor  # samples the selection run trains on (pseudo-seen only)
    eval_index: Tensor  # held-out pseudo-seen samples + every pseudo-novel sample


def holdout_class_count(num_classes: int, holdout_fraction: float) -> int:
    """How many of ``num_classes`` (>= 2) classes :func:`holdout_split` makes pseudo-novel: at least one, and at
    least one stays pseudo-seen."""
    return min(num_classes - 1, max(1, round(holdout_fraction * num_classes)))


def holdout_split(data: TrainingData, holdout_fraction: float, val_fraction: float, seed: int) -> HoldoutSplit:
    """Seeded split of classes into pseudo-seen/pseudo-novel and of pseudo-seen samples into fit/held-out."""
    k = data.num_classes
    if k < 2:
        raise ValueError(f"selection needs at least 2 training classes, got {k}")
    rng = torch.Generator().manual_seed(seed)
    order = torch.randperm(k, generator=rng)
    n_novel = holdout_class_count(k, holdout_fraction)
    novel, seen = order[:n_novel].sort().values, order[n_novel:].sort().values
    labels = data.labels.cpu()
    fit, held = [], []
    for c in seen.tolist():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=rng)]
        n_val = 0 if idx.numel() < 2 else min(idx.numel() - 1, max(1, round(val_fraction * idx.numel())))
        held.append(idx[:n_val])
        fit.append(idx[n_val:])
    novel_samples = torch.isin(labels, novel).nonzero().squeeze(1)
    return HoldoutSplit(seen, novel, torch.cat(fit), torch.cat([*held, novel_samples]))


# --------------------------------------------------------------------------------------------------------------
# Training driver


class AdversarialTrainer:
    """One generator's models, optimizers and step; :func:`fit_generator` runs the shared loop around it.

    A subclass builds its modules in ``__init__``, sets ``sampler`` (the module :func:`generate` uses), and
    implements :meth:`step`, which returns the losses named in ``loss_names``. ``noise_draws`` [B, noise_dim]
    normal draws and ``critic_iters`` GP mixing weights are drawn per step in two fused calls and handed to it.
    """

    # The released adaptive GP rule (tfvaegan train_images.py): thresholds on the mean raw penalty and the factor.
    GP_RAISE_ABOVE, GP_LOWER_BELOW, GP_FACTOR = 1.05, 1.001, 1.1

    noise_draws: int
    passes_per_epoch: int = 1
    loss_names: tuple[str, ...]
    sampler: nn.Module

    def __init__(self, data: TrainingData, config: GeneratorConfig, should_stop: StopHook | None = None) -> None:
        self.data = data
        self.config = config
        self.should_stop = should_stop  # for the work a trainer does before its first step (a classifier's fit)
        self.noise_dim = config.resolved_noise_dim(data.text_dim)
        self.betas = (config.beta1, config.beta2)
        # A tensor, so that adapting it needs no host sync inside the loop.
        self.gp_weight = torch.tensor(float(config.gp_weight), device=data.features.device)

    def modules(self) -> dict[str, nn.Module]:
        """Every trained module by name."""
        raise NotImplementedError

    def batches(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Features [k, B, D], labels [k, B] and conditioning text [k, B, D_t] of a step, in one gather each."""
        labels = self.data.labels[index]
        return self.data.features[index], labels, self.data.class_text[labels]

    def step(self, index: Tensor, noise: Tensor, alpha: Tensor, pass_index: int) -> dict[str, Tensor]:
        """One generator step with its critic steps. ``index`` [critic_iters, B] selects the critic batches (the
        generator step reuses the last); returns detached scalar losses."""
        raise NotImplementedError

    def critic_update(
        self,
        critic: nn.Module,
        optimizer: torch.optim.Optimizer,
        real: Tensor,
        fake: Tensor,
        cond: Tensor,
        alpha: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One WGAN-GP critic step; ``fake`` must be detached. Returns (critic loss, Wasserstein estimate, raw
        penalty E[(||∇|| - 1)²] before its weight)."""
        # Real and fake rows share one critic pass (fewer kernel launches). The mixed rows get their own pass: in a
        # joint one the penalty's double backward would run over all rows, measured 1.5x slower on CPU.
        b = real.shape[0]
        out = critic(torch.cat((real, fake)), cond.repeat(2, 1))
        wasserstein = out[:b].mean() - out[b:].mean()
        gp = gradient_penalty(critic, real, fake, cond, alpha)
        loss = -wasserstein + self.gp_weight * gp
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach(), wasserstein.detach(), gp.detach()

    def adapt_gp_weight(self, mean_penalty: Tensor) -> None:
        """Multiply the GP weight by 1.1 if the critic steps' mean raw penalty is above 1.05, divide it by 1.1 if
        below 1.001 (methods.md §3 step 3; on device, no sync)."""
        up = self.gp_weight * self.GP_FACTOR
        down = self.gp_weight / self.GP_FACTOR
        self.gp_weight = torch.where(
            mean_penalty > self.GP_RAISE_ABOVE,
            up,
            torch.where(mean_penalty < self.GP_LOWER_BELOW, down, self.gp_weight),
        )


@dataclass
class GeneratorTrainResult:
    """What a generator training run returns.

    ``generator`` is the sampling module and ``state_dict`` a deep copy of its returned state; ``modules`` holds
    every trained part (their last state). ``history`` has one metrics dict per epoch of the returned run;
    ``selection_history`` those of the selection run (``select_`` prefixed, with S/U/H where scored). ``best_epoch``
    is the selected epoch (the last one without selection).
    """

    generator: nn.Module
    modules: dict[str, nn.Module]
    state_dict: dict[str, Tensor]
    history: list[dict[str, float]]
    best_epoch: int
    feature_dim: int
    text_dim: int
    selection_history: list[dict[str, float]] = field(default_factory=list)

    @property
    def epochs_run(self) -> int:
        """Selection and returned-run epochs together."""
        return len(self.selection_history) + len(self.history)

    def final_metrics(self) -> dict[str, float]:
        """The returned run's last epoch, with the selected epoch's held-out S/U/H when selection ran."""
        final = dict(self.history[-1]) if self.history else {}
        if self.selection_history:
            best = self.selection_history[self.best_epoch - 1]
            final.update({k: v for k, v in best.items() if k in ("select_S", "select_U", "select_H")})
        return final
