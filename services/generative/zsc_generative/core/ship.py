"""SHIP's prompt VAE (Wang et al., ICCV 2023; methods.md §4 steps 1-2): image features from class names alone.

- Encoder E: image feature x (D) → Linear(D, 2048) → ReLU → μ and log σ² (two Linear(2048, 512)).
- Generator G: z (512) → Linear(512, 4096) → ReLU → Linear(4096, W): a bias b of the token-embedding width W.
- Decoder: the prompt [SOS] [ctx_1 + b] … [ctx_4 + b] [class name] . [EOS] goes through CLIP's **frozen** text
  encoder (the shared :class:`~zsc.models.prompt_learner.PromptLearner`); its L2-normalized output is x̂. The 4
  context tokens are learned, initialized N(0, 0.02²).
- Loss: ||x̂ − x||² (summed over D) + KL(N(μ, σ²) || N(0, I)) (summed over the latent), both averaged over the batch;
  AdamW lr 1e-3 (weight decay 0.01, AdamW's default, as the released code keeps), batch 256, 50 epochs.
- Synthesis: z ~ N(0, I), b = G(z), x = normalize(text([ctx + b][class name])), for any class name: the class enters
  only through its name, so new classes need nothing but the name.

Linear layers start N(0, 0.02) with zero bias, as in the released code. Gradients reach only the context tokens,
E and G: the text tower is frozen in place and not even registered as a submodule, so ``state_dict()`` holds
exactly the trained parameters and the CLIP weights stay bit-identical.

Every random draw (init, batch order, view choice, ε of the reparameterization, synthesis noise) comes from
``torch.Generator`` objects seeded with ``config.seed``; module weights are initialized under a forked global RNG.
Training reads a :class:`~.bank.FeatureBank` (each image once per augmentation view), never images. The released
code selects the VAE epoch by the test H of a CoOp run every 10 epochs; zsc returns the last epoch (no selection
on test data; :mod:`.finetune` keeps its last epoch too, and selects on held-out base data only when asked).
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsc.config import check_config, setting
from zsc.errors import Cancelled
from zsc.features import FeatureSet
from zsc.limits import MAX_WEIGHT_DECAY
from zsc.models.prompt_learner import PromptLearner, text_tower

from .bank import FeatureBank
from .common import (
    BETA,
    LR,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_WIDTH,
    ConfigMixin,
    EpochHook,
    GeneratorTrainResult,
    StopHook,
    clone_state_dict,
    init_weights,
    seeded_init,
)

__all__ = [
    "ShipConfig",
    "ShipEncoder",
    "ShipGenerator",
    "ShipVAE",
    "build_ship_vae",
    "synthesize",
    "text_fingerprint",
    "train_ship_vae",
]

# Classes whose prompts one synthesis call encodes at most (bounds the [rows, L, W] activations).
_SYNTH_BATCH = 1024


@dataclass
class ShipConfig(ConfigMixin):
    """methods.md §4 defaults (the released code's)."""

    seed: int = setting(0, ge=0)
    epochs: int = setting(50, ge=1, le=MAX_EPOCHS)
    batch_size: int = setting(256, ge=1, le=MAX_BATCH)
    lr: float = setting(1e-3, **LR)
    weight_decay: float = setting(0.01, ge=0.0, le=MAX_WEIGHT_DECAY)
    beta1: float = setting(0.9, **BETA)
    beta2: float = setting(0.999, **BETA)
    latent_dim: int = setting(512, ge=1, le=MAX_WIDTH)
    encoder_hidden: int = setting(2048, ge=1, le=MAX_WIDTH)
    generator_hidden: int = setting(4096, ge=1, le=MAX_WIDTH)
    n_ctx: int = setting(4, ge=1, le=64)
    ctx_init_std: float = setting(0.02, gt=0.0)
    kl_weight: float = setting(1.0, ge=0.0)
    normalize_features: bool = True

    def check(self) -> None:
        """Raise ValueError (InvalidArgument, one line) on values no run can use: every declared bound."""
        check_config(self)


class ShipEncoder(nn.Module):
    """E(x) → (μ, log σ²). Unconditional: the released encoder ignores the class (its text input is unused)."""

    def __init__(self, feature_dim: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        init_weights(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)


class ShipGenerator(nn.Module):
    """G(z) → a bias of the token width, added to every context token."""

    def __init__(self, latent_dim: int, hidden: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, width))
        init_weights(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class ShipVAE(nn.Module):
    """The trained parts (context, E, G) around a frozen open_clip text tower that is referenced, not owned."""

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        feature_dim: int,
        config: ShipConfig,
    ) -> None:
        super().__init__()
        device = text_tower(clip_model).token_embedding.weight.device
        init_rng = torch.Generator(device=device).manual_seed(config.seed)
        self.prompt = PromptLearner(
            clip_model,
            tokenizer,
            n_ctx=config.n_ctx,
            ctx_init=None,
            init_std=config.ctx_init_std,
            generator=init_rng,
        )
        if feature_dim != self.prompt.output_dim:
            raise ValueError(
                f"the features have D={feature_dim} but the CLIP text encoder outputs D={self.prompt.output_dim}"
            )
        with seeded_init(config.seed):
            self.encoder = ShipEncoder(feature_dim, config.encoder_hidden, config.latent_dim)
            self.generator = ShipGenerator(config.latent_dim, config.generator_hidden, self.prompt.width)
        self.encoder.to(device)
        self.generator.to(device)
        self.latent_dim = config.latent_dim

    @property
    def feature_dim(self) -> int:
        return self.prompt.output_dim

    @property
    def device(self) -> torch.device:
        return self.prompt.ctx.device

    def decode(self, z: Tensor, class_names: Sequence[str], class_index: Tensor) -> Tensor:
        """L2-normalized features [B, D] of latents z [B, latent] for classes ``class_names[class_index]``."""
        return self.prompt(class_names, bias=self.generator(z), class_index=class_index)

    def forward(
        self, x: Tensor, class_names: Sequence[str], class_index: Tensor, eps: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(x̂, μ, log σ²) of features x [B, D] of classes ``class_index``, with z = μ + σ·eps."""
        mu, logvar = self.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z, class_names, class_index), mu, logvar


_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def text_fingerprint(clip_model: nn.Module) -> str:
    """sha256 over the text tower's tensors (dtype, shape, bytes; fixed order), cached per model: a SHIP generator
    only makes sense with the text encoder it was trained through."""
    cached = _FINGERPRINTS.get(clip_model)
    if cached is None:
        digest = hashlib.sha256()
        for tensor in text_tower(clip_model).parameters():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{t.dtype}|{tuple(t.shape)}\n".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        cached = _FINGERPRINTS[clip_model] = digest.hexdigest()
    return cached


def build_ship_vae(
    clip_model: nn.Module, tokenizer: Callable[[list[str]], Tensor], config: ShipConfig, feature_dim: int
) -> ShipVAE:
    """An untrained :class:`ShipVAE` on the text tower's device; load a trained ``state_dict`` into it."""
    config.check()
    return ShipVAE(clip_model, tokenizer, feature_dim, config)


def vae_loss(recon: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, kl_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """(total, reconstruction, KL): squared error summed over D and KL summed over the latent, batch means."""
    rec = (recon - x).pow(2).sum(dim=1).mean()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1).mean()
    return rec + kl_weight * kl, rec, kl


def train_ship_vae(
    clip_model: nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    data: FeatureSet,
    config: ShipConfig,
    *,
    on_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
) -> GeneratorTrainResult:
    """Train the prompt VAE on every class with samples in ``data`` (a feature set or a flattened feature bank).

    Returns the trained :class:`ShipVAE` as ``generator`` (use it with :func:`synthesize`), a deep copy of its
    state dict and per-epoch mean losses; ``text_dim`` is the feature dimension (it conditions on names, not text
    features). Runs on the text tower's device. Raises ValueError (one line) on bad input and
    :class:`Cancelled` when ``should_stop()`` turns True.
    """
    config.check()
    data.validate()
    if len(data) == 0:
        raise ValueError("cannot train SHIP's VAE on an empty feature set")
    bank = FeatureBank.from_feature_set(data)
    model = build_ship_vae(clip_model, tokenizer, config, data.dim)
    device = model.device
    classes = bank.labels.unique(sorted=True)
    names = [data.class_names[i] for i in classes.tolist()]
    remap = torch.full((data.num_classes,), -1, dtype=torch.int64)
    remap[classes] = torch.arange(classes.numel())
    features = bank.features.to(device=device, dtype=torch.float32)
    if config.normalize_features:
        features = F.normalize(features, dim=-1)
    bank = FeatureBank(features, remap[bank.labels].to(device))
    model.prompt.prompts(names)  # tokenize now: a class name that does not fit fails before any step

    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
        fused=True,  # one pass over all parameters per step, not one per tensor
    )
    rng = torch.Generator(device=device).manual_seed(config.seed)
    n, b = bank.images, config.batch_size
    steps = math.ceil(n / b)
    history: list[dict[str, float]] = []
    model.train()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, device=device, generator=rng)
        totals = torch.zeros(4, device=device)
        for s in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled(f"training cancelled during epoch {epoch}")
            idx = order[s * b : (s + 1) * b]
            x = bank.draw(idx, rng)
            eps = torch.randn(idx.numel(), config.latent_dim, device=device, generator=rng)
            recon, mu, logvar = model(x, names, bank.labels[idx], eps)
            loss, rec, kl = vae_loss(recon, x, mu, logvar, config.kl_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            cosine = (recon.detach() * x).sum(dim=1).mean()
            totals += torch.stack([loss.detach(), rec.detach(), kl.detach(), cosine])
        record = dict(zip(("loss", "loss_rec", "loss_kl", "recon_cosine"), (totals / steps).tolist(), strict=True))
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, dict(record))
    model.eval()
    return GeneratorTrainResult(
        generator=model,
        modules={"vae": model},
        state_dict=clone_state_dict(model),
        history=history,
        best_epoch=config.epochs,
        feature_dim=data.dim,
        text_dim=data.dim,
    )


@torch.no_grad()
def synthesize(
    model: ShipVAE,
    class_names: Sequence[str],
    per_class: int,
    seed: int,
    batch_size: int = _SYNTH_BATCH,
    should_stop: StopHook | None = None,
) -> tuple[Tensor, Tensor]:
    """``per_class`` features of each class, from its name alone: ([K·n, D], labels [K·n] in 0..K-1), grouped by
    class in ``class_names`` order. Equal arguments give identical features on a given device."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    names = list(class_names)
    device = model.device
    model.prompt.prompts(names)  # a name that does not fit fails before any work
    rows = torch.arange(len(names), device=device).repeat_interleave(per_class)
    out = torch.empty(rows.numel(), model.feature_dim, device=device)
    rng = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, rows.numel(), batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("training cancelled")
            r = rows[start : start + batch_size]
            z = torch.randn(r.numel(), model.latent_dim, device=device, generator=rng)
            out[start : start + r.numel()] = model.decode(z, names, r)
    finally:
        model.train(was_training)
    return out, rows
