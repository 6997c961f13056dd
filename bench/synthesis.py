"""Images/s of zsc's batched, per-sample-guidance generator against a naive one-prompt-at-a-time diffusers loop.

Both sides draw the same jobs (random guidance, so every image has its own scale), use the same scheduler, steps,
native resolution and downsampling, and start from a warm model. Example:

    python bench/synthesis.py --profile tiny --images 64 --batch-size 16
    python bench/synthesis.py --ref CompVis/stable-diffusion-v1-4 --device cuda --dtype float16 --size 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from zsc.models.diffusion import SCHEDULERS, create_sd_components, text_to_image_pipeline
from zsc.profiles import get_profile
from zsc_synthesis.core.generator import GenerationConfig, ImageGenerator
from zsc_synthesis.core.planner import Job, make_plan

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny", help="profile whose text_to_image model is used")
    parser.add_argument("--ref", help="model reference overriding the profile's")
    parser.add_argument("--device", help="default: the profile's")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: the profile's")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim")
    parser.add_argument("--native-resolution", type=int, help="default: the model's")
    parser.add_argument("--size", type=int, default=32, help="target resolution")
    parser.add_argument("--naive-images", type=int, help="images for the naive loop (default: --images)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; the median is reported")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    return parser.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_zsc(gen: ImageGenerator, jobs: list[Job], batch_size: int) -> float:
    sync(gen.parts.device)
    start = time.perf_counter()
    for k in range(0, len(jobs), batch_size):
        gen.generate(jobs[k : k + batch_size])
    sync(gen.parts.device)
    return time.perf_counter() - start


def run_naive(pipe, jobs: list[Job], config: GenerationConfig, native: int) -> float:
    sync(pipe.device)
    start = time.perf_counter()
    for job in jobs:
        image = pipe(
            job.prompt,
            negative_prompt=job.negative_prompt or None,
            guidance_scale=job.guidance,
            num_inference_steps=config.steps,
            height=native,
            width=native,
            generator=torch.Generator("cpu").manual_seed(job.seed),
        ).images[0]
        image.resize((config.size, config.size), Image.Resampling.LANCZOS)
    sync(pipe.device)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    ref = args.ref or profile.text_to_image
    device = torch.device(args.device) if args.device else profile.torch_device()
    dtype = DTYPES[args.dtype] if args.dtype else profile.torch_dtype()
    parts = create_sd_components(ref, device=device, dtype=dtype, seed=profile.seed)
    config = GenerationConfig(
        steps=args.steps, scheduler=args.scheduler, native_resolution=args.native_resolution, size=args.size
    )
    gen = ImageGenerator(parts, config)
    native = gen.native_resolution
    n_classes = max(1, args.images // 8)
    jobs = make_plan([f"class {i}" for i in range(n_classes)], -(-args.images // n_classes), "random_guidance")
    jobs = jobs[: args.images]
    naive_jobs = jobs[: args.naive_images or args.images]
    pipe = text_to_image_pipeline(parts, args.scheduler)

    # warm both paths (allocator, kernels); the timed jobs have other class names, so no prompt is cached yet
    run_zsc(gen, make_plan(["warmup"], args.batch_size, "random_guidance"), args.batch_size)
    run_naive(pipe, make_plan(["warmup"], 1, "random_guidance"), config, native)

    # interleaved rounds, so a burst of load from other processes hits both paths alike
    zsc_runs, naive_runs = [], []
    for _ in range(args.repeats):
        zsc_runs.append(len(jobs) / run_zsc(gen, jobs, args.batch_size))
        naive_runs.append(len(naive_jobs) / run_naive(pipe, naive_jobs, config, native))
    zsc_ips, naive_ips = statistics.median(zsc_runs), statistics.median(naive_runs)
    print(f"model {ref} on {device} ({dtype}), {args.scheduler} x {args.steps} steps, {native}px -> {args.size}px")
    print(f"zsc batched, mixed guidance: {len(jobs)} images, batch {args.batch_size}: {zsc_ips:.2f} images/s")
    print(f"naive diffusers loop, batch 1: {len(naive_jobs)} images: {naive_ips:.2f} images/s")
    print(f"speed-up: {zsc_ips / naive_ips:.2f}x (median of {args.repeats} interleaved rounds)")
    print(
        "rounds, images/s: zsc "
        + " ".join(f"{r:.2f}" for r in zsc_runs)
        + ", naive "
        + " ".join(f"{r:.2f}" for r in naive_runs)
    )


if __name__ == "__main__":
    main()
