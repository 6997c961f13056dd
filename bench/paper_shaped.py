"""Paper-shaped dry run: every ``paper`` code path once, on random-weight models of the exact published architectures.

    python bench/paper_shaped.py                       # build (once, into ~/.cache/zsc/paper-shaped) and run all
    python bench/paper_shaped.py --root /data/ps --threads 2 --unet-reps 2

Builds SD 1.4, SD 2.0 base and OpenCLIP ViT-B/16 with seeded random weights (zsc.models.paper_shaped), writes a
profile JSON pointing at them, and through that profile's loaders (the ones the services call) runs: synthesis of 2
images, the Diffusion Classifier on 1 image with a 2-timestep schedule, CLIP zero-shot of 2 images and feature
extraction. It prints each stage's seconds and peak resident memory (VmHWM, reset between stages) and seconds per UNet
pass at paper size (batch 1, 64x64 latents, 512 px). **These are loading-and-shape checks, not accuracy**: the weights
are random, so every prediction is meaningless.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from zsc.data import ImageFolder
from zsc.models import paper_shaped
from zsc.models.clip import create_clip, require_clip_weights
from zsc.models.diffusion import create_sd_components, require_sd_weights
from zsc.profiles import Profile, get_profile
from zsc_classification.core.clip_zeroshot import ClipZeroShot
from zsc_classification.core.diffusion_classifier import DiffusionClassifier, DiffusionClassifierOptions
from zsc_classification.core.extract import clip_extractors, extract_features, weights_fingerprint
from zsc_synthesis.core.generator import GenerationConfig, ImageGenerator
from zsc_synthesis.core.planner import make_plan

CLASSES = ("cat", "dog")


def _dc_bench() -> Any:
    """bench/diffusion_classifier.py, the sibling script (its ``unet_call_seconds`` times a bare UNet call)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.append(here)  # bench/ is not a package; appended, so its scripts shadow no installed module
    import diffusion_classifier

    return diffusion_classifier


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux: ``5`` to clear_refs), so each stage reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """Peak resident memory (VmHWM). tracemalloc and getrusage miss or lag torch's allocations; VmHWM sees them."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


@dataclass
class Stage:
    name: str
    seconds: float
    peak_rss_gib: float
    facts: dict[str, Any] = field(default_factory=dict)


def _stage(name: str, fn: Callable[[], dict[str, Any]], stages: list[Stage]) -> dict[str, Any]:
    gc.collect()
    reset_peak_rss()
    start = time.perf_counter()
    facts = fn()
    stages.append(Stage(name, time.perf_counter() - start, peak_rss_gib(), facts))
    gc.collect()
    return facts


def _sd_facts(parts: Any) -> dict[str, Any]:
    return {
        "unet_params": paper_shaped.parameter_count(parts.unet),
        "vae_params": paper_shaped.parameter_count(parts.vae),
        "text_params": paper_shaped.parameter_count(parts.text_encoder),
        "text_width": int(parts.text_encoder.config.hidden_size),
        "cross_attention_dim": parts.unet.config.cross_attention_dim,
        "attention_head_dim": parts.unet.config.attention_head_dim,
        "native_resolution": parts.native_resolution,
        "pad_token": parts.tokenizer.pad_token,
    }


def _unet_pass(parts: Any, reps: int) -> float:
    """Seconds of one UNet pass at batch 1 at the model's native latent size (best of ``reps`` after a warm-up)."""
    text = DiffusionClassifier(parts).encode_prompts(["a photo of a cat."])
    return _dc_bench().unet_call_seconds(parts, 1, text, reps=reps)


def run(
    root: Path | None = None,
    *,
    seed: int = 0,
    steps: int = 2,
    unet_reps: int = 1,
    work: Path | None = None,
) -> dict[str, Any]:
    """Build the models (or reuse a build), then run each paper code path once; returns the stages and facts."""
    root = Path(root) if root is not None else paper_shaped.default_root()
    stages: list[Stage] = []
    _stage("build", lambda: {k: str(v) for k, v in paper_shaped.build_all(root, seed).items()}, stages)
    profile: Profile = get_profile(str(paper_shaped.write_profile(root)))
    device, dtype = profile.torch_device(), profile.torch_dtype()
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="zsc-paper-shaped-"))
    images_root = work / "synthetic"
    unet_seconds: dict[str, float] = {}

    def synthesis() -> dict[str, Any]:
        assert profile.text_to_image
        require_sd_weights(profile.text_to_image)  # the synthesis server's precondition check
        parts = create_sd_components(profile.text_to_image, device, dtype, seed=profile.seed)
        generator = ImageGenerator(parts, GenerationConfig(steps=steps, size=32))
        jobs = make_plan(list(CLASSES), 1, "random_guidance")
        images = generator.generate(jobs)
        for job, image in zip(jobs, images, strict=True):
            (images_root / job.class_name).mkdir(parents=True, exist_ok=True)
            image.save(images_root / job.class_name / "0000.png")
        unet_seconds["sd-1-4"] = _unet_pass(parts, unet_reps)
        return {**_sd_facts(parts), "images": len(images), "image_size": list(images[0].size)}

    def diffusion_classifier() -> dict[str, Any]:
        assert profile.diffusion_classifier
        require_sd_weights(profile.diffusion_classifier)
        parts = create_sd_components(profile.diffusion_classifier, device, dtype, seed=profile.seed)
        classifier = DiffusionClassifier(parts, compile=profile.compile_unet or False)
        options = DiffusionClassifierOptions.from_preset("cifar10", stages=((2, 1),), seed=seed)
        image = ImageFolder.open(images_root).samples[0][0]
        [prediction] = classifier.classify([Image.open(image).convert("RGB")], list(CLASSES), options)
        unet_seconds["sd-2-base"] = _unet_pass(parts, unet_reps)
        return {**_sd_facts(parts), "label": prediction.label, "unet_passes": prediction.unet_passes}

    def clip_zero_shot() -> dict[str, Any]:
        assert profile.clip
        require_clip_weights(profile.clip)
        bundle = create_clip(profile.clip, device, dtype, seed=profile.seed)
        dataset = ImageFolder.open(images_root)
        images = [Image.open(path).convert("RGB") for path, _ in dataset.samples]
        logits = ClipZeroShot(bundle).logits(images, CLASSES, ("a photo of a {}.",))
        result = extract_features(
            dataset, clip_extractors(bundle, weights_fingerprint(bundle.model)), class_names=list(CLASSES)
        )
        return {
            "clip_params": paper_shaped.parameter_count(bundle.model),
            "embed_dim": bundle.embed_dim,
            "logits_shape": list(logits.shape),
            "image_features_shape": list(result.features.features.shape),
            "text_features_shape": list(result.features.text_features.shape),
        }

    _stage("synthesis (SD 1.4, 2 images)", synthesis, stages)
    _stage("diffusion classifier (SD 2.0 base, 1 image, 2 timesteps)", diffusion_classifier, stages)
    _stage("CLIP zero-shot + features (ViT-B/16, 2 images)", clip_zero_shot, stages)
    return {"stages": stages, "unet_pass_seconds": unet_seconds, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="model folder (default: $ZSC_PAPER_SHAPED_DIR or ~/.cache/zsc/paper-shaped)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2, help="synthesis sampler steps")
    parser.add_argument("--unet-reps", type=int, default=1, help="timed UNet passes per model (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.root, seed=args.seed, steps=args.steps, unet_reps=args.unet_reps)
    print("paper-shaped dry run: random weights, exact architectures; loading-and-shape checks, NOT accuracy")
    print(f"torch {torch.__version__}, {result['threads']} threads, CPU fp32")
    for stage in result["stages"]:
        print(f"{stage.name:58s} {stage.seconds:8.1f} s   peak RSS {stage.peak_rss_gib:6.2f} GiB")
        if stage.name != "build":
            print("    " + json.dumps(stage.facts))
    for name, seconds in result["unet_pass_seconds"].items():
        print(f"UNet pass at paper size, {name}, batch 1, 64x64 latent: {seconds:.2f} s")
    if args.json:
        args.json.write_text(
            json.dumps({**result, "stages": [vars(s) for s in result["stages"]]}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
