"""Batched text-to-image generation over ``SDComponents`` with per-sample classifier-free guidance.

diffusers' pipelines take one guidance scale per call, so a batch of images with different scales (the random
guidance trick) would need one call per image. This loop follows ``StableDiffusionPipeline`` step by step but
applies guidance per sample, ``noise = uncond + g[:, None, None, None] * (cond - uncond)``, and runs the
unconditional branch only for the samples that use it (g > 1, diffusers' rule), all in one UNet batch per step.

Reproducibility: each image's initial latent comes from its own CPU ``torch.Generator`` seeded with the job seed,
drawn in float32 and then moved, and each prompt is encoded alone (then cached), so an image does not depend on
which other images share its batch beyond floating-point kernel differences.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zsc.config import check_config, setting
from zsc.errors import Cancelled, FailedPrecondition, InvalidArgument
from zsc.model_cache import ModelCache
from zsc.models.diffusion import SCHEDULERS, SDComponents, check_steps, make_scheduler
from zsc_synthesis.core.planner import Job

DOWNSAMPLERS = ("lanczos", "bicubic", "bilinear")
MAX_STEPS = 1000  # SD's number of training timesteps
MAX_RESOLUTION = 2048  # target and native: far above SD's 768, far below an out-of-memory request
StopFn = Callable[[], bool]


@dataclass(frozen=True)
class GenerationConfig:
    """Sampler settings. ``native_resolution`` None = the model's; ``size`` None = no downsampling.

    ``downsample``: ``lanczos`` resizes the 8-bit image with PIL's Lanczos filter; ``bicubic`` and ``bilinear``
    resize the float image with torch's anti-aliased interpolation and quantize once.
    """

    steps: int = setting(40, ge=1, le=MAX_STEPS)
    scheduler: str = "ddim"
    native_resolution: int | None = setting(None, ge=1, le=MAX_RESOLUTION)
    size: int | None = setting(None, ge=1, le=MAX_RESOLUTION)
    downsample: str = "lanczos"

    def __post_init__(self) -> None:
        for name in ("steps", "native_resolution", "size"):
            value = getattr(self, name)
            if (value is not None or name == "steps") and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
        check_config(self)
        if self.scheduler not in SCHEDULERS:
            raise InvalidArgument(f"unknown scheduler {self.scheduler!r}; supported: {', '.join(SCHEDULERS)}")
        if self.downsample not in DOWNSAMPLERS:
            raise InvalidArgument(f"unknown downsampling {self.downsample!r}; supported: {', '.join(DOWNSAMPLERS)}")


class ImageGenerator:
    """Generates the images of planned jobs with one model and one ``GenerationConfig``."""

    def __init__(
        self,
        parts: SDComponents,
        config: GenerationConfig | None = None,
        *,
        decode_batch_size: int = 8,
        prompt_cache_size: int = 1024,
    ) -> None:
        self.parts = parts
        self.config = config or GenerationConfig()
        if parts.unet.config.get("time_cond_proj_dim") is not None:
            raise FailedPrecondition(
                f"model {parts.ref!r} embeds the guidance scale in the UNet (LCM-style); per-sample CFG does not apply"
            )
        check_steps(self.config.scheduler, dict(parts.scheduler.config), self.config.steps)
        self.native_resolution = self.config.native_resolution or parts.native_resolution
        if self.native_resolution % parts.vae_scale_factor:
            raise InvalidArgument(
                f"native resolution {self.native_resolution} is not a multiple of the VAE factor "
                f"{parts.vae_scale_factor}"
            )
        self.size = self.config.size or self.native_resolution
        self.decode_batch_size = decode_batch_size
        self._prompt_cache: ModelCache[str, torch.Tensor] = ModelCache(
            prompt_cache_size, "prompt embedding", log_evictions=False
        )

    @property
    def model(self) -> str:
        return self.parts.ref

    def generate(self, jobs: Sequence[Job], should_stop: StopFn | None = None) -> list[Image.Image]:
        """RGB images at the target size, in job order."""
        images = self.generate_tensors(
            [j.prompt for j in jobs],
            [j.negative_prompt for j in jobs],
            [j.guidance for j in jobs],
            [j.seed for j in jobs],
            should_stop,
        )
        return to_pil(images, self.size, self.config.downsample)

    def preview(
        self, jobs: Sequence[Job], batch_size: int, should_stop: StopFn | None = None
    ) -> Iterator[tuple[Job, Image.Image]]:
        """Each job of a plan (class-major, by index) with its image, batched on the dataset's chunk grid
        (class, index // batch_size), so a preview shows the very pixels a dataset of that batch size holds."""
        for _, group in itertools.groupby(jobs, key=lambda j: (j.class_name, j.index // batch_size)):
            chunk = list(group)
            yield from zip(chunk, self.generate(chunk, should_stop), strict=True)

    @torch.inference_mode()
    def generate_tensors(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        guidance: Sequence[float],
        seeds: Sequence[int],
        should_stop: StopFn | None = None,
    ) -> torch.Tensor:
        """Decoded images at the native resolution: float32 on CPU, [N, 3, H, W] in [0, 1].

        Raises ``Cancelled`` when ``should_stop()`` turns true between denoising steps.
        """
        n = len(prompts)
        if not (n == len(negative_prompts) == len(guidance) == len(seeds)) or n == 0:
            raise InvalidArgument("prompts, negative prompts, guidance and seeds must be non-empty and equally long")
        parts, device = self.parts, self.parts.device
        scheduler = make_scheduler(self.config.scheduler, parts.scheduler.config)
        scheduler.set_timesteps(self.config.steps, device=device)

        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        latent = self.native_resolution // parts.vae_scale_factor
        shape = (1, parts.unet.config["in_channels"], latent, latent)
        noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
        latents = noise.to(device=device, dtype=parts.dtype) * scheduler.init_noise_sigma

        scales = torch.tensor([float(g) for g in guidance], dtype=torch.float32)
        cfg = torch.nonzero(scales > 1.0).flatten()
        cfg_dev = cfg.to(device)
        scale = scales[cfg].to(device)[:, None, None, None]
        embeds = self._encode(prompts)
        if len(cfg):
            embeds = torch.cat([embeds, self._encode([negative_prompts[i] for i in cfg.tolist()])])
        # stochastic samplers (ddpm) draw step noise per sample from the same per-image generators
        step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}

        for t in scheduler.timesteps:
            if should_stop is not None and should_stop():
                raise Cancelled("synthesis cancelled")
            model_input = scheduler.scale_model_input(latents, t)
            if len(cfg):
                model_input = torch.cat([model_input, model_input[cfg_dev]])
            out = parts.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
            noise_pred = out[:n]
            if len(cfg):
                cond, uncond = noise_pred[cfg_dev].float(), out[n:].float()
                noise_pred = noise_pred.clone()
                noise_pred[cfg_dev] = (uncond + scale * (cond - uncond)).to(noise_pred.dtype)
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
        return self._decode(latents)

    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings [N, L, D]; each distinct prompt is encoded alone so its embedding is batch-independent."""
        return torch.cat([self._prompt_cache.get(p, partial(self._encode_one, p)) for p in prompts])

    def _encode_one(self, prompt: str) -> torch.Tensor:
        tokenizer, encoder = self.parts.tokenizer, self.parts.text_encoder
        tokens = tokenizer(
            [prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(encoder.device)
        hidden = encoder(tokens.input_ids.to(encoder.device), attention_mask=mask)[0]
        return hidden.to(device=self.parts.device, dtype=self.parts.dtype)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.parts.vae
        images = []
        for chunk in latents.split(self.decode_batch_size):
            decoded = vae.decode(chunk / vae.config["scaling_factor"], return_dict=False)[0]
            images.append((decoded.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(images)


def to_pil(images: torch.Tensor, size: int, method: str = "lanczos") -> list[Image.Image]:
    """[N, 3, H, W] floats in [0, 1] to RGB images of ``size`` x ``size``, downsampled with anti-aliasing."""
    if method not in DOWNSAMPLERS:
        raise InvalidArgument(f"unknown downsampling {method!r}; supported: {', '.join(DOWNSAMPLERS)}")
    images = images.float().cpu()
    resize = images.shape[-1] != size or images.shape[-2] != size
    if resize and method != "lanczos":
        images = F.interpolate(images, size=(size, size), mode=method, antialias=True, align_corners=False)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]
    if resize and method == "lanczos":
        out = [im.resize((size, size), Image.Resampling.LANCZOS) for im in out]
    return out
