"""f-CLSWGAN (Xian et al., CVPR 2018): a conditional WGAN-GP with a classification loss on generated features.

G(z, a) and D(x, a) are one-hidden-layer MLPs (:mod:`.common`). Per generator step the critic takes
``critic_iters`` (5) WGAN-GP steps (lambda ``gp_weight`` = 10, fixed); the generator then minimizes -D(G(z, a), a)
plus ``cls_weight`` (0.01) times the cross-entropy of a frozen classifier pre-trained on the training (base)
features, on the last critic batch's text and labels with fresh noise. Adam lr 1e-4, β1 0.5, batch 64, noise as
wide as the text features. All of this is the reference loop's (checked against Xian et al.'s training script).

Differences from it: the pre-trained classifier is the cosine classifier of :mod:`.gzsl` (no logit adjustment)
where theirs is a linear softmax; its schedule is theirs (Adam lr 1e-3, β1 0.5, batch 100, 50 epochs). Their
generator ends in a ReLU for non-negative ResNet features; here the output is L2-normalized by default
(``normalize_output``) because zsc's features are CLIP features, and the text conditioning is L2-normalized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsc.config import setting
from zsc.features import FeatureSet

from .common import (
    LR,
    MAX_EPOCHS,
    AdversarialTrainer,
    ConditionalCritic,
    ConditionalGenerator,
    EpochHook,
    GeneratorConfig,
    GeneratorTrainResult,
    StopHook,
    TrainingData,
    make_adam,
    seeded_init,
)
from .gzsl import CosineClassifier, GZSLConfig, fit_gzsl_classifier
from .training import fit_generator

__all__ = ["CLSWGANConfig", "build_generator", "train_clswgan"]


@dataclass
class CLSWGANConfig(GeneratorConfig):
    """f-CLSWGAN hyper-parameters (the authors' defaults; hidden 1024 suits 512-D CLIP features)."""

    epochs: int = setting(50, ge=1, le=MAX_EPOCHS)
    lr: float = setting(1e-4, **LR)
    cls_weight: float = setting(0.01, ge=0.0)
    cls_epochs: int = setting(50, ge=1, le=MAX_EPOCHS)
    cls_lr: float = setting(1e-3, **LR)
    cls_temperature: float = setting(0.01, gt=0.0)
    normalize_output: bool = True


def build_generator(config: CLSWGANConfig, feature_dim: int, text_dim: int) -> ConditionalGenerator:
    """An untrained generator of the right shape; load a trained ``state_dict`` into it."""
    with seeded_init(config.seed):
        return ConditionalGenerator(
            config.resolved_noise_dim(text_dim), text_dim, config.hidden_dim, feature_dim, config.normalize_output
        )


class _CLSWGANTrainer(AdversarialTrainer):
    loss_names = ("loss_d", "wasserstein", "loss_g", "loss_cls")

    def __init__(self, data: TrainingData, config: CLSWGANConfig, should_stop: StopHook | None = None) -> None:
        super().__init__(data, config, should_stop)
        self.cfg = config
        self.noise_draws = config.critic_iters + 1
        device = data.features.device
        self.generator = build_generator(config, data.feature_dim, data.text_dim).to(device)
        with seeded_init(config.seed + 1):
            self.critic = ConditionalCritic(data.feature_dim, data.text_dim, config.hidden_dim).to(device)
        self.sampler = self.generator
        self.opt_g = make_adam(self.generator, config.lr, self.betas)
        self.opt_d = make_adam(self.critic, config.lr, self.betas)
        self.classifier = self._pretrain_classifier()

    def _pretrain_classifier(self) -> CosineClassifier:
        cfg = GZSLConfig(
            seed=self.cfg.seed,
            epochs=self.cfg.cls_epochs,
            lr=self.cfg.cls_lr,
            temperature=self.cfg.cls_temperature,
            logit_adjustment=False,
            batch_size=100,  # the reference pre-training: Adam lr 1e-3, beta1 0.5, batch 100, 50 epochs
        )
        k = self.data.num_classes
        data = self.data
        clf = fit_gzsl_classifier(
            data.features, data.labels, data.class_text, range(k), cfg, should_stop=self.should_stop
        ).classifier
        return clf.requires_grad_(False).eval()

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "critic": self.critic, "classifier": self.classifier}

    def step(self, index: Tensor, noise: Tensor, alpha: Tensor, pass_index: int) -> dict[str, Tensor]:
        k = self.cfg.critic_iters
        real, labels, cond = self.batches(index)
        with torch.no_grad():  # G is fixed during the critic iterations: all their fakes in one pass
            fakes = self.generator(noise[:k].flatten(0, 1), cond[:k].flatten(0, 1)).view(k, *real.shape[1:])
        for j in range(k):
            loss_d, wasserstein, _ = self.critic_update(self.critic, self.opt_d, real[j], fakes[j], cond[j], alpha[j])

        self.critic.requires_grad_(False)  # no critic weight gradients during the generator step
        # The generator step reuses the last critic batch's text and labels with fresh noise, as Xian et al.'s code.
        fake = self.generator(noise[k], cond[k - 1])
        adv = -self.critic(fake, cond[k - 1]).mean()
        cls = F.cross_entropy(self.classifier(fake), labels[k - 1])
        loss_g = adv + self.cfg.cls_weight * cls
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.critic.requires_grad_(True)
        return {"loss_d": loss_d, "wasserstein": wasserstein, "loss_g": loss_g.detach(), "loss_cls": cls.detach()}


def train_clswgan(
    data: FeatureSet,
    config: CLSWGANConfig,
    *,
    on_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
    device: str | torch.device | None = None,
) -> GeneratorTrainResult:
    """Train f-CLSWGAN on every class with samples in ``data`` (conditioning on their text features).

    Returns the generator (use it with :func:`.common.generate`), the critic and the frozen classifier, per-epoch
    losses, and a deep-copied generator ``state_dict``. See :mod:`.common` for selection and seeding.
    """
    return fit_generator(data, config, _CLSWGANTrainer, on_epoch=on_epoch, should_stop=should_stop, device=device)
