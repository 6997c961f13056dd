"""Benchmark: the batched Diffusion Classifier core against the literal reference loop, same model, images and noise.

    python bench/diffusion_classifier.py                      # cifar10 preset, 10 classes, 4 CIFAR-10 test images
    python bench/diffusion_classifier.py --limit 2 --preset pets --batch-size 128
    python bench/diffusion_classifier.py --ref ~/.cache/zsc/paper-shaped/sd-2-base --device cuda --dtype float16 \
        --stages 10:2,20:1                            # another model (hub id or local dir), GPU, a short schedule

Prints UNet passes per image, seconds per image for both, the speed-up and whether the predictions are identical.
Timings are wall-clock; on a shared machine run it when the cores are idle, or use --repeats and read the best.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from zsc.models.diffusion import create_sd_components
from zsc.profiles import COMPILE_MODES
from zsc_classification.core.diffusion_classifier import (
    PRESETS,
    DiffusionClassifier,
    DiffusionClassifierOptions,
    build_prompts,
    preprocess_images,
    stage_grid_indices,
    unet_passes,
)
from zsc_classification.core.diffusion_reference import reference_classify_as_the_core

CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-test"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_images(root: Path, limit: int) -> tuple[list[torch.Tensor], list[int]]:
    """The first test image of each class in turn (class 0, 1, 2, ...), so a small limit still spans classes."""
    images, labels = [], []
    for i in range(limit):
        label = i % len(CIFAR10_CLASSES)
        path = root / CIFAR10_CLASSES[label] / f"{i // len(CIFAR10_CLASSES):04d}.jpg"
        images.append(pil_to_tensor(Image.open(path).convert("RGB")))
        labels.append(label)
    return images, labels


@torch.inference_mode()
def unet_call_seconds(parts, batch: int, text: torch.Tensor, reps: int = 10, unet=None) -> float:
    """Best wall time of one call of ``unet`` (default: the eager UNet) at ``batch`` (random latents, one prompt)."""
    unet = unet or parts.unet
    config, device = parts.unet.config, parts.device
    x = torch.randn(batch, config.in_channels, config.sample_size, config.sample_size, dtype=parts.dtype, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    cond = text[:1].expand(batch, -1, -1).contiguous()
    unet(x, t, encoder_hidden_states=cond)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        unet(x, t, encoder_hidden_states=cond)
        _sync(device)  # CUDA kernels are asynchronous: time their completion, not their launch
        best = min(best, time.perf_counter() - start)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_stages(text: str) -> tuple[tuple[int, int], ...]:
    """``"10:2,20:1"`` -> ((10, 2), (20, 1)): (n_samples, to_keep) per stage."""
    try:
        return tuple((int(n), int(keep)) for n, keep in (item.split(":") for item in text.split(",")))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"stages must look like 10:2,20:1, got {text!r}") from err


def reference_calls(stages: tuple[tuple[int, int], ...], n_candidates: int, batch: int) -> int:
    """UNet calls per image of the literal loop: per stage and prompt, ceil(new timesteps / batch)."""
    n_max = stages[-1][0]
    seen: set[int] = set()
    calls, alive = 0, n_candidates
    for n, keep in stages:
        new = set(stage_grid_indices(n, n_max)) - seen
        seen |= new
        calls += alive * -(-len(new) // batch)
        alive = keep
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar10", choices=sorted(PRESETS))
    parser.add_argument("--limit", type=int, default=4, help="number of CIFAR-10 test images")
    parser.add_argument("--batch-size", type=int, default=None, help="core UNet batch (default: the options' default)")
    parser.add_argument("--image-chunk", type=int, default=None, help="images the core evaluates together")
    parser.add_argument("--ref-batch-size", type=int, default=32, help="reference batch over timesteps (authors: 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate core/reference runs; report the best")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        help="torch.compile the core's UNet (inductor) in this mode (default mode when given without one)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=CIFAR10)
    parser.add_argument("--ref", default="tiny:zsc-tiny-sd", help="model: tiny:<config>, a hub id or a local dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the model's dtype")
    parser.add_argument("--stages", type=parse_stages, default=None, help="override the preset's, e.g. 10:2,20:1")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides: dict[str, Any] = {"seed": args.seed}
    if args.stages:
        overrides["stages"] = args.stages
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.image_chunk:
        overrides["image_chunk"] = args.image_chunk
    options = DiffusionClassifierOptions.from_preset(args.preset, **overrides)
    try:
        passes = unet_passes(options.stages, len(CIFAR10_CLASSES))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    parts = create_sd_components(args.ref, args.device, DTYPES[args.dtype])
    images, labels = load_images(args.data, args.limit)
    classifier = DiffusionClassifier(parts, compile=args.compile or False)
    prompts = [p for class_prompts in build_prompts(CIFAR10_CLASSES, options.templates) for p in class_prompts]
    pixels = preprocess_images(images, parts.native_resolution)

    # Warm both paths up (oneDNN primitives, allocator) on one image and a short schedule.
    warm = DiffusionClassifierOptions(stages=((2, 1),), templates=options.templates, batch_size=options.batch_size)
    classifier.classify(images[:1], CIFAR10_CLASSES, warm)
    reference_classify_as_the_core(parts, pixels[:1], prompts, warm)

    core_times, ref_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        results = classifier.classify(images, CIFAR10_CLASSES, options)
        core_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        references = reference_classify_as_the_core(parts, pixels, prompts, options, args.ref_batch_size)
        ref_times.append(time.perf_counter() - start)

    core_s, ref_s = min(core_times) / len(images), min(ref_times) / len(images)
    prompt_class = [c for c in range(len(CIFAR10_CLASSES)) for _ in options.templates]
    core_pred = [r.label for r in results]
    ref_pred = [prompt_class[r.best_prompt] for r in references]
    same_stages, max_diff = True, 0.0
    for result, reference in zip(results, references, strict=True):
        for core_stage, ref_stage in zip(result.class_errors, reference.class_errors(prompt_class), strict=True):
            same_stages &= core_stage.keys() == ref_stage.keys()
            shared = core_stage.keys() & ref_stage.keys()
            max_diff = max([max_diff] + [abs(core_stage[c] - ref_stage[c]) for c in shared])
    print(f"model {args.ref} on {args.device} ({args.dtype})")
    print(f"preset {args.preset}: stages {list(options.stages)}, loss {options.loss}, {len(CIFAR10_CLASSES)} classes")
    print(
        f"images {len(images)}, torch threads {torch.get_num_threads()}, core batch {options.batch_size}"
        f"{f', core UNet torch.compile-d (mode {args.compile})' if args.compile else ''}"
    )
    print(f"UNet passes per image: closed form {passes}, core {results[0].unet_passes}, ", end="")
    print(f"reference {references[0].unet_passes}")
    print(f"core      {core_s:8.3f} s/image   ({core_s / passes * 1e3:.3f} ms/pass)")
    print(f"reference {ref_s:8.3f} s/image   ({ref_s / passes * 1e3:.3f} ms/pass, batch {args.ref_batch_size})")
    print(f"speed-up  {ref_s / core_s:8.2f}x")
    # Amdahl: the only waste of the literal loop a batched core can remove here is its per-call cost (a batch-1
    # call is almost all per-call cost); the UNet arithmetic per pass stays.
    one = unet_call_seconds(parts, 1, classifier.encode_prompts(prompts))
    calls = reference_calls(options.stages, len(prompts), args.ref_batch_size)
    overhead = min(calls * one, 0.99 * ref_s)
    print(f"UNet call at batch 1: {one * 1e3:.2f} ms; the reference makes {calls} calls per image")
    print(f"estimated bound if all of the reference's per-call cost vanished: {ref_s / (ref_s - overhead):.2f}x")
    # Arithmetic bound: a pass through the core's UNet at the core's batch, with nothing around it, is the least any
    # implementation that runs these passes through this UNet can spend.
    text = classifier.encode_prompts(prompts)
    per_pass = unet_call_seconds(parts, options.batch_size, text, unet=classifier._unet) / options.batch_size
    print(
        f"the core's UNet alone at batch {options.batch_size}: {per_pass * 1e3:.3f} ms/pass, so no schedule of "
        f"these {passes} passes can beat the reference by more than {ref_s / (passes * per_pass):.2f}x"
    )
    print(f"predictions identical: {core_pred == ref_pred}  (core {core_pred}, reference {ref_pred}, labels {labels})")
    print(f"same classes reach each stage: {same_stages}; max |core - reference| class error: {max_diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
