"""Stable Diffusion components from a profile reference: tiny seeded random weights, or real diffusers weights."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import torch

# From the defining modules, not `from diffusers import ...`: under TYPE_CHECKING diffusers' lazy __init__ also
# star-imports its torch-less placeholder classes of the same names, and a type checker takes those.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from zsc.errors import InvalidArgument
from zsc.models.hub import require_cached, require_dir, unavailable
from zsc.profiles import CONFIG_DIR
from zsc.seeding import seeded_init


class Scheduler(Protocol):
    """What zsc drives of a diffusers noise scheduler: each scheduler class defines these, their common base
    (SchedulerMixin) does not. A timestep is Any: diffusers annotates it int, float or Tensor by scheduler, and its
    pipelines (and zsc) pass the 0-d tensors of ``timesteps``."""

    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def init_noise_sigma(self) -> float | torch.Tensor: ...

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = ...) -> None: ...

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor: ...

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any: ...

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> Scheduler | tuple[Scheduler, dict[str, Any]]: ...


SCHEDULERS: dict[str, tuple[type[Scheduler], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
}


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion model that zsc's cores drive directly."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: Scheduler
    ref: str

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config["block_out_channels"]) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config["sample_size"]) * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype


def make_scheduler(name: str, config: dict[str, Any]) -> Scheduler:
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; supported: {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    scheduler = cls.from_config(config, **overrides)
    assert not isinstance(scheduler, tuple)  # a tuple only with return_unused_kwargs=True
    return scheduler


def max_steps(name: str, config: dict[str, Any]) -> int:
    """The most sampling steps scheduler ``name`` takes with this model's scheduler ``config``.

    diffusers refuses more steps than ``num_train_timesteps``, and with "leading" spacing and ``steps_offset`` k
    (SD's configs: 1) the last of T steps is timestep T - 1 + k, past the end of ``alphas_cumprod`` (DDIM, DDPM
    index it); so the bound is the largest n whose timesteps all lie below T. Found by trying, from T down."""
    total = int(config.get("num_train_timesteps", 1000))
    for n in range(total, 0, -1):
        scheduler = make_scheduler(name, config)
        try:
            scheduler.set_timesteps(n)
        except ValueError:
            continue
        if int(scheduler.timesteps.max()) < total:
            return n
    return 0


def check_steps(name: str, config: dict[str, Any], steps: int) -> None:
    """InvalidArgument unless ``steps`` fit scheduler ``name`` with ``config`` (see :func:`max_steps`)."""
    limit = max_steps(name, config)
    if steps > limit:
        raise InvalidArgument(
            f"steps {steps} is over the limit of {limit} for the {name} scheduler of this model "
            f"(num_train_timesteps {config.get('num_train_timesteps', 1000)}, "
            f"steps_offset {config.get('steps_offset', 0)})"
        )


@lru_cache(maxsize=1)
def clip_bpe_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """CLIP's real BPE tokenizer, built from the vocabulary that open_clip ships, so the tiny profile needs no hub.

    The vocabulary order is CLIP's own (bytes, bytes + </w>, merges, then the two special tokens), so token ids equal
    those of the hub's ``openai/clip-vit-*`` tokenizers.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    # merges as pairs, the form tokenizers' BPE takes (transformers annotates them list[str])
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)},
        merges=merges,  # type: ignore[arg-type]
        model_max_length=max_length,
    )


def _tiny_config(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no tiny diffusion config {name!r} in {CONFIG_DIR}")
    return json.loads(path.read_text())


def _build_tiny(name: str, seed: int) -> SDComponents:
    cfg = _tiny_config(name)
    with seeded_init(seed):
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    scheduler = DDIMScheduler(**cfg["scheduler"])
    return SDComponents(unet, vae, text_encoder, clip_bpe_tokenizer(), scheduler, ref=f"tiny:{name}")


def require_sd_weights(ref: str) -> None:
    """Raise zsc's one-line ModelUnavailable at once when the diffusers model ``ref`` (a hub id or a local directory)
    is not on this machine (``tiny:`` refs need none). A file-system look-up only: the server calls it before it
    starts listening, so diffusers' and the hub's own warnings never come up."""
    if ref.startswith("tiny:"):
        return
    local = Path(ref).expanduser()
    if local.is_absolute() or ref.startswith(".") or local.exists():
        require_dir("Stable Diffusion model", ref, local, "model_index.json")
    else:
        require_cached("Stable Diffusion model", ref, ref, ["model_index.json"])


def _load_real(ref: str, dtype: torch.dtype) -> SDComponents:
    require_sd_weights(ref)
    local = Path(ref).expanduser()
    source = str(local) if local.is_dir() else ref
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as err:
        raise unavailable("Stable Diffusion model", ref, err, local=local if local.is_dir() else None) from err
    return SDComponents(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, ref=ref)


def create_sd_components(
    ref: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> SDComponents:
    """Build (``tiny:<config>``) or load (hub id or local diffusers dir) a Stable Diffusion model, in eval mode."""
    kind, _, name = ref.partition(":")
    parts = _build_tiny(name, seed) if kind == "tiny" else _load_real(ref, dtype)
    # as torch Modules: diffusers and transformers wrap .to in decorators whose types lose the bound instance
    modules: tuple[torch.nn.Module, ...] = (parts.unet, parts.vae, parts.text_encoder)
    for module in modules:
        module.to(device)
        if module.dtype != dtype:  # a no-op cast still makes diffusers warn
            module.to(dtype=dtype)
        module.eval().requires_grad_(False)
    # SDPA is diffusers' default attention processor in torch 2; set it explicitly so a loaded checkpoint that
    # pinned another processor cannot silently fall back to the slow path.
    from diffusers.models.attention_processor import AttnProcessor2_0

    parts.unet.set_attn_processor(AttnProcessor2_0())
    parts.vae.set_attn_processor(AttnProcessor2_0())
    return parts


def make_pipeline(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    scheduler: Scheduler,
) -> StableDiffusionPipeline:
    """A diffusers text-to-image pipeline over these parts, with no safety checker, its progress bar off."""
    # untyped here: diffusers annotates scheduler as its enum of scheduler names, and the optional parts without None
    loose: dict[str, Any] = {"scheduler": scheduler, "safety_checker": None, "feature_extractor": None}
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, requires_safety_checker=False, **loose
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_to_image_pipeline(parts: SDComponents, scheduler: str = "ddim") -> StableDiffusionPipeline:
    """A diffusers pipeline over the components, with the chosen sampler."""
    sampler = make_scheduler(scheduler, parts.scheduler.config)
    return make_pipeline(parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, sampler)
