"""Seeded random-weight models with the exact published architectures of the ``paper`` profile's models.

They are saved as local model directories in the formats the paper profile loads (a diffusers pipeline folder with
``model_index.json``; an open_clip ``local-dir:`` folder with ``open_clip_config.json``), and a profile JSON points at
them. Running the paper code paths on them checks loading, shapes, memory and speed at paper size without the real
weights (which need internet). **Their outputs are meaningless: these are loading-and-shape checks, not accuracy.**

Sources of every config (the hub's own files; their values are copied below field by field):

- SD 2.0 base (the Diffusion Classifier's model, Li et al. 2023):
  https://huggingface.co/stabilityai/stable-diffusion-2-base/blob/main/{unet,vae,text_encoder,scheduler,tokenizer}/
  (``unet/config.json``: block_out_channels [320, 640, 1280, 1280], attention_head_dim [5, 10, 20, 20] (diffusers
  names the head *count* so: 64-channel heads, as ``num_head_channels: 64`` in Stability-AI/stablediffusion
  ``configs/stable-diffusion/v2-inference.yaml``), cross_attention_dim 1024, use_linear_projection true; the text
  encoder is OpenCLIP ViT-H/14's text tower up to its penultimate layer (``FrozenOpenCLIPEmbedder(layer="penultimate")``
  in that yaml), i.e. open_clip's ``model_configs/ViT-H-14.json`` text_cfg (width 1024, heads 16, 24 layers) minus
  one layer, GELU; its tokenizer pads with ``!`` as open_clip's does).
- SD 1.4 (synthesis): https://huggingface.co/CompVis/stable-diffusion-v1-4/blob/main/{unet,vae,text_encoder,
  scheduler,tokenizer}/ (attention_head_dim 8, cross_attention_dim 768; the text encoder is OpenAI CLIP ViT-L/14's,
  https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json ``text_config``: 768 wide, 12 layers,
  12 heads, 3072, quick_gelu; open_clip's ``model_configs/ViT-L-14.json`` text_cfg agrees; pads with the end token).
- The SD VAE (same in both): ``vae/config.json`` of either repo: block_out_channels [128, 256, 512, 512],
  layers_per_block 2, latent_channels 4, scaling factor 0.18215 (diffusers' default, the LDM ``scale_factor``).
- The scheduler (same in both): ``scheduler/scheduler_config.json``: PNDM, 1000 training steps, scaled_linear betas
  0.00085-0.012, epsilon prediction, steps_offset 1.
- OpenCLIP ViT-B/16 (openai), CLIP zero-shot and features: open_clip's own ``model_configs/ViT-B-16.json`` (installed
  with open_clip) with ``quick_gelu`` set, as open_clip's pretrained entry ``ViT-B-16/openai`` forces it
  (``open_clip/pretrained.py``), and OpenAI's image mean/std.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch

from zsc.seeding import seeded_init

# Bumped whenever a config below changes, so a cached build of older configs is rebuilt.
BUILD_VERSION = 1

# Shared by SD 1.4's and SD 2.0 base's unet/config.json.
_UNET_COMMON: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
}
SD14_UNET: dict[str, Any] = {**_UNET_COMMON, "cross_attention_dim": 768, "attention_head_dim": 8}
SD2_BASE_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
}
SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# transformers CLIPTextConfig fields; bos/eos/pad ids as in the hub files (eos 2 keeps transformers' legacy pooling).
_TEXT_COMMON: dict[str, Any] = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
SD14_TEXT: dict[str, Any] = {
    **_TEXT_COMMON,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
SD2_TEXT: dict[str, Any] = {
    **_TEXT_COMMON,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
    "hidden_act": "gelu",
}
SD_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

# name -> (unet config, text encoder config, tokenizer pad token, what it stands for)
SD_MODELS: dict[str, tuple[dict[str, Any], dict[str, Any], str, str]] = {
    "sd-1-4": (SD14_UNET, SD14_TEXT, "<|endoftext|>", "CompVis/stable-diffusion-v1-4"),
    "sd-2-base": (SD2_BASE_UNET, SD2_TEXT, "!", "stabilityai/stable-diffusion-2-base"),
}
CLIP_DIR = "clip-vit-b-16"


def clip_b16_config() -> dict[str, Any]:
    """open_clip's ViT-B-16 model config as installed, with the QuickGELU the ``openai`` weights need."""
    import open_clip

    path = Path(open_clip.__file__).parent / "model_configs" / "ViT-B-16.json"
    return {**json.loads(path.read_text()), "quick_gelu": True}


def default_root() -> Path:
    """Where the built models live: ``$ZSC_PAPER_SHAPED_DIR``, else a cache folder outside the repository."""
    env = os.environ.get("ZSC_PAPER_SHAPED_DIR")
    return Path(env) if env else Path.home() / ".cache" / "zsc" / "paper-shaped"


def _done(path: Path, seed: int) -> bool:
    stamp = path / ".zsc-paper-shaped.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == {"version": BUILD_VERSION, "seed": seed}


def _mark_done(path: Path, seed: int) -> None:
    (path / ".zsc-paper-shaped.json").write_text(json.dumps({"version": BUILD_VERSION, "seed": seed}))


def build_sd(name: str, out: Path, seed: int = 0) -> Path:
    """Build SD model ``name`` (a key of SD_MODELS) with seeded random weights and save it as a diffusers folder."""
    from diffusers.schedulers.scheduling_pndm import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from zsc.models.diffusion import AutoencoderKL, UNet2DConditionModel, clip_bpe_tokenizer, make_pipeline

    if _done(out, seed):
        return out
    unet_cfg, text_cfg, pad_token, _ = SD_MODELS[name]
    with seeded_init(seed):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**SD_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    tokenizer = copy.deepcopy(clip_bpe_tokenizer())  # the shared cached tokenizer must keep its own pad token
    tokenizer.pad_token = pad_token
    pipe = make_pipeline(unet, vae, text_encoder, tokenizer, PNDMScheduler(**SD_SCHEDULER))
    pipe.save_pretrained(out, safe_serialization=True)
    _mark_done(out, seed)
    return out


def build_clip(out: Path, seed: int = 0) -> Path:
    """Build OpenCLIP ViT-B/16 with seeded random weights and save it as an open_clip ``local-dir:`` folder."""
    import open_clip
    from safetensors.torch import save_file

    from zsc.models.clip import _quiet

    if _done(out, seed):
        return out
    cfg = clip_b16_config()
    with seeded_init(seed), _quiet():
        model = open_clip.CLIP(**cfg)
    out.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=2))
    # contiguous copies: safetensors refuses tensors that share storage
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    _mark_done(out, seed)
    return out


def build_all(root: Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Build (or reuse, when already built with this seed and version) every paper-shaped model under ``root``."""
    root = Path(root) if root is not None else default_root()
    paths = {name: build_sd(name, root / name, seed) for name in SD_MODELS}
    paths[CLIP_DIR] = build_clip(root / CLIP_DIR, seed)
    return paths


def write_profile(root: Path, path: Path | None = None, *, device: str = "cpu", dtype: str = "float32") -> Path:
    """A profile JSON (the fields of ``zsc.profiles.Profile``) that points each paper role at the built folders."""
    root = Path(root).resolve()
    profile = {
        "name": "paper-shaped",
        "description": "Random weights in the paper profile's exact architectures (loading-and-shape checks; every "
        "output is meaningless).",
        "clip": f"local-dir:{root / CLIP_DIR}",
        "text_to_image": str(root / "sd-1-4"),
        "diffusion_classifier": str(root / "sd-2-base"),
        "downstream_arch": "resnet50",
        "device": device,
        "dtype": dtype,
    }
    path = Path(path) if path is not None else root / "profile.json"
    path.write_text(json.dumps(profile, indent=2))
    return path


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
