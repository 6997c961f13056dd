"""TF-VAEGAN (Narayan et al., ECCV 2020) with the DFZSL defaults of methods.md §3 step 3.

Parts: a VAE encoder E(x, a) → (mu, logvar); a generator G(z, a) with an L2-normalized output; a WGAN-GP critic
D(x, a); a semantic decoder Dec(x) → â, whose hidden layer is the feedback signal; a feedback module F mapping
that hidden layer to a term added (times a weight) to the generator's hidden layer.

Each epoch runs ``feedback_loop`` (2) passes over the data. Per generator step: ``critic_iters`` (5) iterations
on fresh batches, each updating Dec on real features (``recon_weight`` · weighted L1 between Dec(x) and a) and
the critic with WGAN-GP on fakes G(z, a); then, on the last critic batch, E, G (and, in passes after the first, F)
minimize the VAE loss (squared error on the unit sphere + ``kl_weight`` · KL), ``adv_weight`` · -D(fake, a) and
``recon_weight`` · the decoder's loss on the fake (Dec is frozen there unless ``freeze_decoder`` is off). With
``adaptive_gp`` (the released loop) the GP weight starts at ``gp_weight`` and after every step is multiplied by 1.1
when the critic iterations' mean raw penalty E[(||∇|| - 1)²] is above 1.05 and divided by 1.1 when it is below
1.001. Adam β1 0.5 for the critic, G, F and Dec; the encoder's Adam keeps torch's default betas, as released.
With ``encoded_noise`` (DFZSL's setting) the critic's fakes use z from the encoder and the generator's fake is the
VAE reconstruction; without it both use z ~ N(0, I). From the second pass on, every fake goes through the
feedback path: x = G(z, a); h = Dec.hidden(x) (detached); x = G(z, a, feedback=w·F(h)). Synthesis samples
z ~ N(0, I) and uses the same path with ``generation_feedback_weight`` (:class:`FeedbackGenerator`).

Differences from the authors' code: without encoded noise, the fake's feedback comes from decoding the fake
itself (their code decodes the reconstruction); the critic's fakes of one generator step come from one batched
pass before its critic iterations (E, G and F do not change during them; the feedback reads the decoder as it
is at the start of the step, not after each of its k small updates); their gammaD (10), which scales the whole
critic loss, is left out because Adam is invariant to that scale (up to its epsilon).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsc.config import setting
from zsc.features import FeatureSet

from .common import (
    BETA,
    LR,
    MAX_EPOCHS,
    MAX_WIDTH,
    AdversarialTrainer,
    ConditionalCritic,
    ConditionalGenerator,
    EpochHook,
    GeneratorConfig,
    GeneratorTrainResult,
    StopHook,
    TrainingData,
    init_weights,
    make_adam,
    seeded_init,
)
from .training import fit_generator

__all__ = [
    "FeedbackGenerator",
    "FeedbackModule",
    "SemanticDecoder",
    "TFVAEGANConfig",
    "VAEEncoder",
    "build_generator",
    "train_tfvaegan",
    "weighted_l1",
]


@dataclass
class TFVAEGANConfig(GeneratorConfig):
    """methods.md's DFZSL settings; the rest follow DFZSL's AWA2 TF-VAEGAN script and loop (gammaG = ``adv_weight``
    10, a1 = a2 = 0.01, feedback lr 7e-4, decoder lr 5e-4, frozen decoder in the generator step, encoded noise,
    the adaptive GP weight, Adam β1 0.5 except the encoder's ``encoder_beta1``)."""

    epochs: int = setting(120, ge=1, le=MAX_EPOCHS)
    lr: float = setting(3e-5, **LR)
    noise_dim: int | None = setting(512, ge=1, le=MAX_WIDTH)
    recon_weight: float = setting(0.1, ge=0.0)
    adv_weight: float = setting(10.0, ge=0.0)
    kl_weight: float = setting(1.0, ge=0.0)
    feedback_loop: int = setting(2, ge=1, le=100)
    feedback_weight: float = setting(0.01, ge=0.0)
    generation_feedback_weight: float = setting(0.01, ge=0.0)
    feedback_lr: float = setting(7e-4, **LR)
    decoder_lr: float = setting(5e-4, **LR)
    freeze_decoder: bool = True
    encoded_noise: bool = True
    adaptive_gp: bool = True
    encoder_beta1: float = setting(0.9, **BETA)  # torch's default: the released encoder optimizer sets no betas


class VAEEncoder(nn.Module):
    """E(x, a) → (mu, logvar): [x, normalize(a)] → hidden → 2·latent → (mu, logvar), LeakyReLU(0.2)."""

    def __init__(self, feature_dim: int, cond_dim: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(feature_dim + cond_dim, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_dim, 2 * latent_dim),
            nn.LeakyReLU(0.2),
        )
        self.mu = nn.Linear(2 * latent_dim, latent_dim)
        self.logvar = nn.Linear(2 * latent_dim, latent_dim)
        init_weights(self)

    def forward(self, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(torch.cat((x, F.normalize(a, dim=-1)), dim=-1))
        return self.mu(h), self.logvar(h)


class SemanticDecoder(nn.Module):
    """Dec(x) → â (L2-normalized); :meth:`hidden` is the layer the feedback module reads."""

    def __init__(self, feature_dim: int, hidden_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(feature_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, cond_dim)
        self.act = nn.LeakyReLU(0.2)
        init_weights(self)

    def hidden(self, x: Tensor) -> Tensor:
        return self.act(self.fc1(x))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.fc2(self.hidden(x)), dim=-1)


class FeedbackModule(nn.Module):
    """F(h): two LeakyReLU(0.2) layers of the generator's hidden width."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.LeakyReLU(0.2), nn.Linear(hidden_dim, hidden_dim), nn.LeakyReLU(0.2)
        )
        init_weights(self)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class FeedbackGenerator(nn.Module):
    """G with the decoder → feedback loop: the module TF-VAEGAN samples with and the one :func:`generate` takes."""

    def __init__(
        self,
        generator: ConditionalGenerator,
        decoder: SemanticDecoder,
        feedback: FeedbackModule,
        feedback_weight: float,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.decoder = decoder
        self.feedback = feedback
        self.feedback_weight = feedback_weight

    @property
    def noise_dim(self) -> int:
        return self.generator.noise_dim

    @property
    def feature_dim(self) -> int:
        return self.generator.feature_dim

    def forward(self, z: Tensor, a: Tensor, feedback_weight: float | None = None) -> Tensor:
        w = self.feedback_weight if feedback_weight is None else feedback_weight
        x = self.generator(z, a)
        if w == 0:
            return x
        h = self.decoder.hidden(x).detach()
        return self.generator(z, a, feedback=w * self.feedback(h))


def weighted_l1(pred: Tensor, target: Tensor) -> Tensor:
    """TF-VAEGAN's weighted L1: each |error| weighted by its squared error over the row's error norm; batch mean."""
    diff = pred - target
    weight = diff.pow(2) / diff.pow(2).sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    return (weight * diff.abs()).sum() / pred.shape[0]


def build_generator(config: TFVAEGANConfig, feature_dim: int, text_dim: int) -> FeedbackGenerator:
    """An untrained :class:`FeedbackGenerator` of the right shape; load a trained ``state_dict`` into it."""
    h = config.hidden_dim
    with seeded_init(config.seed):
        gen = ConditionalGenerator(config.resolved_noise_dim(text_dim), text_dim, h, feature_dim, normalize_output=True)
        dec = SemanticDecoder(feature_dim, h, text_dim)
        fb = FeedbackModule(h)
    return FeedbackGenerator(gen, dec, fb, config.generation_feedback_weight)


class _TFVAEGANTrainer(AdversarialTrainer):
    loss_names = ("loss_d", "wasserstein", "loss_g", "loss_vae", "loss_dec", "gradient_penalty", "gp_weight")

    def __init__(self, data: TrainingData, config: TFVAEGANConfig, should_stop: StopHook | None = None) -> None:
        super().__init__(data, config, should_stop)
        self.cfg = config
        # One draw per critic fake, the VAE's epsilon, and the prior noise of the generator's fake unless encoded.
        self.noise_draws = config.critic_iters + (1 if config.encoded_noise else 2)
        self.passes_per_epoch = config.feedback_loop
        device = data.features.device
        self.sampler = build_generator(config, data.feature_dim, data.text_dim).to(device)
        self.generator, self.decoder, self.feedback = (
            self.sampler.generator,
            self.sampler.decoder,
            self.sampler.feedback,
        )
        with seeded_init(config.seed + 1):
            self.critic = ConditionalCritic(data.feature_dim, data.text_dim, config.hidden_dim).to(device)
            self.encoder = VAEEncoder(data.feature_dim, data.text_dim, config.hidden_dim, self.noise_dim).to(device)
        self.opt_g = make_adam(self.generator, config.lr, self.betas)
        self.opt_e = make_adam(self.encoder, config.lr, (config.encoder_beta1, config.beta2))
        self.opt_d = make_adam(self.critic, config.lr, self.betas)
        self.opt_dec = make_adam(self.decoder, config.decoder_lr, self.betas)
        self.opt_f = make_adam(self.feedback, config.feedback_lr, self.betas)

    def modules(self) -> dict[str, nn.Module]:
        return {
            "generator": self.sampler,
            "encoder": self.encoder,
            "critic": self.critic,
            "decoder": self.decoder,
            "feedback": self.feedback,
        }

    def _encode(self, real: Tensor, cond: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reparameterized latent z = mu + sigma·eps, with mu and logvar."""
        mu, logvar = self.encoder(real, cond)
        return mu + torch.exp(0.5 * logvar) * eps, mu, logvar

    def step(self, index: Tensor, noise: Tensor, alpha: Tensor, pass_index: int) -> dict[str, Tensor]:
        cfg = self.cfg
        k = cfg.critic_iters
        w = cfg.feedback_weight if pass_index >= 1 else 0.0
        reals, _, conds = self.batches(index)
        # E, G and F are fixed during the critic iterations, so all their fakes come from one batched pass (the
        # feedback path reads the decoder as it is at the start of the step).
        with torch.no_grad():
            r, c = reals[:k].flatten(0, 1), conds[:k].flatten(0, 1)
            z = self._encode(r, c, noise[:k].flatten(0, 1))[0] if cfg.encoded_noise else noise[:k].flatten(0, 1)
            fakes = self.sampler(z, c, feedback_weight=w).view(k, *reals.shape[1:])
        gp_weight = self.gp_weight  # the weight these critic steps used, for the log
        penalties = []
        for j in range(k):
            loss_dec = cfg.recon_weight * weighted_l1(self.decoder(reals[j]), conds[j])
            self.opt_dec.zero_grad(set_to_none=True)
            loss_dec.backward()
            self.opt_dec.step()
            loss_d, wasserstein, gp = self.critic_update(
                self.critic, self.opt_d, reals[j], fakes[j], conds[j], alpha[j]
            )
            penalties.append(gp)
        mean_penalty = torch.stack(penalties).mean()
        if cfg.adaptive_gp:
            self.adapt_gp_weight(mean_penalty)

        real, cond = reals[k - 1], conds[k - 1]
        self.critic.requires_grad_(False)
        if cfg.freeze_decoder:
            self.decoder.requires_grad_(False)
        z, mu, logvar = self._encode(real, cond, noise[k])
        recon = self.sampler(z, cond, feedback_weight=w)
        loss_rec = (recon - real).pow(2).sum(dim=1).mean()
        loss_kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1).mean()
        # With encoded noise the adversarial and semantic losses act on the reconstruction, as in DFZSL's script.
        fake = recon if cfg.encoded_noise else self.sampler(noise[k + 1], cond, feedback_weight=w)
        adv = -self.critic(fake, cond).mean()
        loss_sem = weighted_l1(self.decoder(fake), cond)
        loss_g = loss_rec + cfg.kl_weight * loss_kl + cfg.adv_weight * adv + cfg.recon_weight * loss_sem
        for opt in (self.opt_e, self.opt_g, self.opt_f, self.opt_dec):
            opt.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_e.step()
        self.opt_g.step()
        if w != 0:
            self.opt_f.step()
        if not cfg.freeze_decoder:
            self.opt_dec.step()
        self.critic.requires_grad_(True)
        self.decoder.requires_grad_(True)
        return {
            "loss_d": loss_d,
            "wasserstein": wasserstein,
            "loss_g": loss_g.detach(),
            "loss_vae": (loss_rec + loss_kl).detach(),
            "loss_dec": loss_dec.detach(),
            "gradient_penalty": mean_penalty,
            "gp_weight": gp_weight,
        }


def train_tfvaegan(
    data: FeatureSet,
    config: TFVAEGANConfig,
    *,
    on_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
    device: str | torch.device | None = None,
) -> GeneratorTrainResult:
    """Train TF-VAEGAN on every class with samples in ``data`` (conditioning on their text features).

    ``result.generator`` is a :class:`FeedbackGenerator` (use it with :func:`.common.generate`); ``result.modules``
    also holds the encoder, critic, decoder and feedback module. See :mod:`.common` for selection and seeding.
    """
    return fit_generator(data, config, _TFVAEGANTrainer, on_epoch=on_epoch, should_stop=should_stop, device=device)
