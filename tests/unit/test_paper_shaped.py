"""Paper-shaped models: the published architectures, loaded through a profile JSON as the ``paper`` profile loads real
weights, and every paper code path run once on CPU (bench/paper_shaped.py). Loading-and-shape checks, not accuracy.

The parameter counts are the published models' (the hub checkpoints hold exactly these many values): a config field
off by one layer or width changes them. The dry run builds ~10 GB of models once into ``$ZSC_PAPER_SHAPED_DIR`` (or
``~/.cache/zsc/paper-shaped``), about 3 minutes on 2 CPU cores, and then runs for about 3 more (bench/README.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import load_bench

from zsc.models import paper_shaped

pytestmark = pytest.mark.paper_shaped

REPO = Path(__file__).resolve().parents[2]

# The published checkpoints' parameter counts (unet, vae, text encoder of SD 1.4 and SD 2.0 base; OpenCLIP ViT-B/16).
SD14_UNET_PARAMS = 859_520_964
SD2_UNET_PARAMS = 865_910_724
SD_VAE_PARAMS = 83_653_863
CLIP_L14_TEXT_PARAMS = 123_060_480
OPENCLIP_H14_TEXT_23_PARAMS = 340_387_840
CLIP_B16_PARAMS = 149_620_737


def test_configs_have_the_published_parameter_counts() -> None:
    """Built on the meta device (no memory, no time): the architecture alone fixes the counts."""
    import open_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    count = paper_shaped.parameter_count
    with torch.device("meta"):
        assert count(UNet2DConditionModel(**paper_shaped.SD14_UNET)) == SD14_UNET_PARAMS
        assert count(UNet2DConditionModel(**paper_shaped.SD2_BASE_UNET)) == SD2_UNET_PARAMS
        assert count(AutoencoderKL(**paper_shaped.SD_VAE)) == SD_VAE_PARAMS
        assert count(CLIPTextModel(CLIPTextConfig(**paper_shaped.SD14_TEXT))) == CLIP_L14_TEXT_PARAMS
        assert count(CLIPTextModel(CLIPTextConfig(**paper_shaped.SD2_TEXT))) == OPENCLIP_H14_TEXT_23_PARAMS
        assert count(open_clip.CLIP(**paper_shaped.clip_b16_config())) == CLIP_B16_PARAMS


def test_profile_json_points_every_paper_role_at_the_folders(tmp_path: Path) -> None:
    from zsc.profiles import get_profile

    profile = get_profile(str(paper_shaped.write_profile(tmp_path)))
    assert profile.clip == f"local-dir:{tmp_path.resolve() / 'clip-vit-b-16'}"
    assert profile.text_to_image == str(tmp_path.resolve() / "sd-1-4")
    assert profile.diffusion_classifier == str(tmp_path.resolve() / "sd-2-base")
    assert (profile.torch_device().type, profile.torch_dtype()) == ("cpu", torch.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_without_cuda_in_one_line() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py")], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: CUDA is not available")


@pytest.fixture(scope="session")
def dry_run() -> dict[str, Any]:
    """bench/paper_shaped.py's run (the models are built once into the cache and reused by later sessions)."""
    bench = load_bench("paper_shaped")
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the suite's one thread would double a 6-minute test
    try:
        result = bench.run(unet_reps=1)
    finally:
        torch.set_num_threads(before)
    return {stage.name.split(" (")[0]: stage.facts for stage in result["stages"]}


@pytest.mark.slow
def test_synthesis_runs_on_sd14_shaped_model(dry_run: dict[str, Any]) -> None:
    facts = dry_run["synthesis"]
    assert (facts["images"], facts["image_size"]) == (2, [32, 32])
    assert (facts["unet_params"], facts["vae_params"], facts["text_params"]) == (
        SD14_UNET_PARAMS,
        SD_VAE_PARAMS,
        CLIP_L14_TEXT_PARAMS,
    )
    assert (facts["text_width"], facts["cross_attention_dim"], facts["attention_head_dim"]) == (768, 768, 8)
    assert (facts["native_resolution"], facts["pad_token"]) == (512, "<|endoftext|>")


@pytest.mark.slow
def test_diffusion_classifier_runs_on_sd2_base_shaped_model(dry_run: dict[str, Any]) -> None:
    facts = dry_run["diffusion classifier"]
    assert facts["unet_passes"] == 4  # 2 classes x 2 timesteps
    assert facts["label"] in (0, 1)
    assert (facts["unet_params"], facts["vae_params"], facts["text_params"]) == (
        SD2_UNET_PARAMS,
        SD_VAE_PARAMS,
        OPENCLIP_H14_TEXT_23_PARAMS,
    )
    assert (facts["text_width"], facts["cross_attention_dim"]) == (1024, 1024)
    assert list(facts["attention_head_dim"]) == [5, 10, 20, 20]
    assert (facts["native_resolution"], facts["pad_token"]) == (512, "!")  # open_clip pads with token 0, "!"


@pytest.mark.slow
def test_clip_zero_shot_and_features_run_on_vit_b16_shaped_model(dry_run: dict[str, Any]) -> None:
    facts = dry_run["CLIP zero-shot + features"]
    assert (facts["clip_params"], facts["embed_dim"]) == (CLIP_B16_PARAMS, 512)
    assert facts["logits_shape"] == [2, 2]
    assert facts["image_features_shape"] == [2, 512]
    assert facts["text_features_shape"] == [2, 512]
