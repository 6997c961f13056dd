"""REFERENCE ONLY, not used by the service: the Diffusion Classifier written as literally as the paper's procedure.

One image at a time; for each stage, for each remaining prompt, for each batch of that prompt's new timesteps
(``batch_size=32`` as in the authors' script), one UNet call. Tests and ``bench/diffusion_classifier.py`` run it next
to the batched core (``diffusion_classifier.py``) to check that the core gives the same errors and predictions for
the same noise, and to measure how much faster the core is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from zsc.models.diffusion import SDComponents

if TYPE_CHECKING:
    from zsc_classification.core.diffusion_classifier import DiffusionClassifierOptions


@dataclass(frozen=True)
class ReferenceResult:
    """``prompt_errors[k]`` maps each prompt evaluated at stage k to its mean error over all its timesteps so far."""

    best_prompt: int
    prompt_errors: list[dict[int, float]]
    unet_passes: int

    def class_errors(self, prompt_class: Sequence[int]) -> list[dict[int, float]]:
        """Per stage, each class's error: the minimum over its prompts evaluated at that stage."""
        stages = []
        for errors in self.prompt_errors:
            per_class: dict[int, float] = {}
            for prompt, error in errors.items():
                label = prompt_class[prompt]
                per_class[label] = min(error, per_class.get(label, float("inf")))
            stages.append(dict(sorted(per_class.items())))
        return stages


@torch.inference_mode()
def reference_classify(
    parts: SDComponents,
    pixels: torch.Tensor,
    prompts: Sequence[str],
    stages: Sequence[tuple[int, int]],
    loss: str,
    noise: torch.Tensor,
    batch_size: int = 32,
    n_trials: int = 1,
) -> ReferenceResult:
    """Classify one preprocessed image (``[3, r, r]`` in [-1, 1]) among ``prompts``.

    ``noise[j * n_trials + k]`` is the noise of trial k of the j-th distinct timestep evaluated (the authors'
    ``all_noise``).
    """
    device, dtype = parts.device, parts.dtype
    T = parts.scheduler.config["num_train_timesteps"]
    alphas_cumprod = parts.scheduler.alphas_cumprod.float()

    tokens = parts.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    text_embeddings = parts.text_encoder(tokens.input_ids.to(device))[0]

    x0 = parts.vae.encode(pixels[None].to(device, dtype)).latent_dist.mean.float()
    x0 = x0 * parts.vae.config["scaling_factor"]

    max_n_samples = max(n for n, _ in stages)
    step = T // max_n_samples
    t_to_eval = list(range(step // 2, T, step))[:max_n_samples]

    evaluated: list[int] = []
    errors: dict[int, list[float]] = {p: [] for p in range(len(prompts))}
    remaining = list(range(len(prompts)))
    prompt_errors: list[dict[int, float]] = []
    passes = 0
    for n_samples, to_keep in stages:
        stride = len(t_to_eval) // n_samples
        stage_ts = t_to_eval[stride // 2 :: stride][:n_samples]
        new_ts = [t for t in stage_ts if t not in evaluated]
        first_slot = len(evaluated)
        evaluated.extend(new_ts)
        # every (timestep, trial) in the authors' order: timestep-major, trial-minor
        rows = [(t, (first_slot + j) * n_trials + k) for j, t in enumerate(new_ts) for k in range(n_trials)]
        for prompt in remaining:
            for b in range(0, len(rows), batch_size):
                ts = torch.tensor([t for t, _ in rows[b : b + batch_size]])
                eps = noise[[r for _, r in rows[b : b + batch_size]]].to(device)
                abar = alphas_cumprod[ts].view(-1, 1, 1, 1).to(device)
                x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
                cond = text_embeddings[prompt : prompt + 1].expand(len(ts), -1, -1)
                eps_hat = parts.unet(x_t.to(dtype), ts.to(device), encoder_hidden_states=cond).sample.float()
                if loss == "l1":
                    err = F.l1_loss(eps, eps_hat, reduction="none")
                elif loss == "l2":
                    err = F.mse_loss(eps, eps_hat, reduction="none")
                elif loss == "huber":
                    err = F.huber_loss(eps, eps_hat, reduction="none")
                else:
                    raise ValueError(f"unknown loss {loss!r}")
                errors[prompt].extend(err.mean(dim=(1, 2, 3)).cpu().tolist())
                passes += len(ts)
        means = {p: torch.tensor(errors[p]).mean().item() for p in remaining}
        prompt_errors.append(means)
        remaining = sorted(remaining, key=lambda p: (means[p], p))[:to_keep]
    return ReferenceResult(remaining[0], prompt_errors, passes)


def reference_classify_as_the_core(
    parts: SDComponents,
    pixels: torch.Tensor,
    prompts: Sequence[str],
    options: DiffusionClassifierOptions,
    batch_size: int = 32,
) -> list[ReferenceResult]:
    """:func:`reference_classify` on each preprocessed image of ``pixels`` ([N, 3, r, r]) with the stages, loss,
    trials and noise that ``DiffusionClassifier.classify`` uses for image i under ``options``: the comparison the
    tests and the bench make."""
    from zsc_classification.core.diffusion_classifier import draw_noise

    config = parts.unet.config
    latent_shape = (int(config["in_channels"]), int(config["sample_size"]), int(config["sample_size"]))
    n_noise = options.stages[-1][0] * options.n_trials
    return [
        reference_classify(
            parts,
            pixels[i],
            prompts,
            options.stages,
            options.loss,
            draw_noise(options.seed, i, n_noise, latent_shape),
            batch_size=batch_size,
            n_trials=options.n_trials,
        )
        for i in range(len(pixels))
    ]
