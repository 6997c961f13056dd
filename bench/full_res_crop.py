"""What the released datamodule's recipe costs: storing full-resolution synthetic images and taking
RandomResizedCrop(32) from them at train time, against zsc's default of storing 32x32 downsampled PNGs.

    python bench/full_res_crop.py                                   # tiny profile, 512x512 generation, CPU
    python bench/full_res_crop.py --gen-images 8 --per-class 50 --epochs 3

Both sides start from the same decoded images of the profile's text-to-image model at ``--native`` (512, as the
paper and the released code generate), so generation itself costs the same and is timed once. Generating at 512
on a CPU is slow, so ``--gen-images`` distinct images are generated and the two ImageFolders of ``--classes`` x
``--per-class`` files reuse them in turn: disk per image, PNG encode and decode times are measured on generated
content, and training time depends on the image size only. Each folder goes through zsc's trainer data path at
``--size`` (the full-resolution folder with ``image_size=--size``: the crop is drawn on the full image and only the
crop is resized), decoded into memory as zsc does below its 2 GiB budget, and once more streamed from disk (what a
paper-sized full-resolution set, 20,000 x 768 KiB = 15 GiB, must do). Printed: bytes per image, the
ratio of the disks, PNG encode and decode per image, data preparation, the loader's time per training sample
(decode when streamed, crop, flip), the model's step time per image at ``--size`` (best epoch after the first,
the same for every folder) and the epoch time they add up to, with its ratio. The tiny profile's random-weight
images are noisier than real ones, so their PNGs compress less (real photos at 512x512 are smaller); the raw
uint8 size is the upper bound.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from zsc.data import ImageFolder
from zsc.models.diffusion import create_sd_components
from zsc.profiles import get_profile
from zsc_classification.core import downstream as core
from zsc_synthesis.core.generator import GenerationConfig, ImageGenerator, to_pil
from zsc_synthesis.core.planner import make_plan
from zsc_synthesis.core.writer import write_png


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="tiny")
    p.add_argument("--native", type=int, default=512, help="generation resolution (the paper's 512)")
    p.add_argument("--size", type=int, default=32, help="training resolution (CIFAR's 32)")
    p.add_argument("--steps", type=int, default=2, help="denoising steps (cost is the same for both sides)")
    p.add_argument("--gen-images", type=int, default=4, help="distinct images generated at --native")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=3, help="the first is a warm-up and is not reported")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args()


def write_folder(root: Path, images: list, classes: int, per_class: int) -> tuple[int, float]:
    """``classes`` x ``per_class`` PNGs cycling through ``images``; returns (total bytes, seconds per image)."""
    n, start = 0, time.perf_counter()
    for c in range(classes):
        for i in range(per_class):
            write_png(root / f"class{c:02d}" / f"{i:05d}.png", images[n % len(images)])
            n += 1
    seconds = (time.perf_counter() - start) / n
    return sum(p.stat().st_size for p in root.rglob("*.png")), seconds


def decode_seconds(folder: ImageFolder, limit: int = 32) -> float:
    from zsc.data import load_image_file

    paths = [p for p, _ in folder.samples[:limit]]
    start = time.perf_counter()
    for path in paths:
        core.to_uint8(load_image_file(path))
    return (time.perf_counter() - start) / len(paths)


def prepare(folder: ImageFolder, args: argparse.Namespace, preload_budget: int) -> tuple[core.SplitData, float]:
    config = core.TrainConfig(arch=args.arch, batch_size=args.batch_size, image_size=args.size, num_workers=0)
    start = time.perf_counter()
    data = core.prepare_data(folder, config.validate(), preload_budget=preload_budget)
    return data, time.perf_counter() - start


def sample_seconds(data: core.SplitData) -> float:
    """Per training sample of one epoch: decode (when streamed) + RandomResizedCrop + flip, as the loader runs it."""
    start = time.perf_counter()
    for i in range(data.n_train):
        data.train[(1, i)]
    return (time.perf_counter() - start) / data.n_train


def model_seconds(data: core.SplitData, args: argparse.Namespace) -> float:
    """Per training image of the model's step at --size (the same for every folder): best epoch after the first."""
    config = core.TrainConfig(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, num_workers=0)
    model, _ = core.create_classifier(args.arch, len(data.class_names), data.image_size, seed=config.seed)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    outcome = core.train_classifier(model, data, config, mean=mean, std=std)
    epochs = [s.train_seconds for s in outcome.history[1:]] or [outcome.history[0].train_seconds]
    return min(epochs) / data.n_train


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = get_profile(args.profile)
    parts = create_sd_components(profile.text_to_image, profile.torch_device(), profile.torch_dtype(), seed=0)
    generator = ImageGenerator(parts, GenerationConfig(steps=args.steps, native_resolution=args.native))
    jobs = make_plan([f"class{c:02d}" for c in range(args.classes)], 1, "multidomain,random_guidance")
    jobs = (jobs * args.gen_images)[: args.gen_images]
    start = time.perf_counter()
    pixels = generator.generate_tensors(
        [j.prompt for j in jobs], [j.negative_prompt for j in jobs], [j.guidance for j in jobs], [j.seed for j in jobs]
    )
    gen_seconds = (time.perf_counter() - start) / len(jobs)
    n = args.classes * args.per_class
    raw = 3 * args.native * args.native
    print(
        f"generated {len(jobs)} images at {args.native}x{args.native} ({args.steps} steps): {gen_seconds:.2f} s/image"
    )
    print(f"{n} images per folder ({args.classes} classes x {args.per_class}), trained with {args.arch} at {args.size}")

    with tempfile.TemporaryDirectory(prefix="zsc-fullres-") as tmp:
        small_root, full_root = Path(tmp) / "small", Path(tmp) / "full"
        small_bytes, small_encode = write_folder(small_root, to_pil(pixels, args.size), args.classes, args.per_class)
        full_bytes, full_encode = write_folder(full_root, to_pil(pixels, args.native), args.classes, args.per_class)
        small, full = ImageFolder.open(small_root), ImageFolder.open(full_root)
        small_decode, full_decode = decode_seconds(small), decode_seconds(full)
        print(
            f"disk per image: {args.size}px {small_bytes / n / 1024:.1f} KiB, {args.native}px "
            f"{full_bytes / n / 1024:.1f} KiB (raw {raw / 1024:.0f} KiB); ratio {full_bytes / small_bytes:.0f}x; "
            f"20,000 images: {small_bytes / n * 2e4 / 2**20:.0f} MiB vs {full_bytes / n * 2e4 / 2**30:.1f} GiB"
        )
        print(
            f"PNG encode + write per image: {small_encode * 1e3:.2f} ms vs {full_encode * 1e3:.1f} ms "
            f"({full_encode / small_encode:.0f}x); decode: {small_decode * 1e3:.2f} ms vs {full_decode * 1e3:.1f} ms "
            f"({full_decode / small_decode:.0f}x)"
        )
        small_data, small_prep = prepare(small, args, core.PRELOAD_BUDGET_BYTES)
        runs = {
            f"{args.size}px stored, in memory": (small_data, small_prep),
            f"{args.native}px stored, crop at train time, in memory": prepare(full, args, core.PRELOAD_BUDGET_BYTES),
            f"{args.native}px stored, crop at train time, streamed": prepare(full, args, 0),
        }
        model = model_seconds(small_data, args)
        print(f"model step at {args.size}px ({args.arch}): {model * 1e3:.1f} ms per image, the same for every folder")
        base = None
        for name, (data, prep) in runs.items():
            per_sample = sample_seconds(data)
            epoch = (model + per_sample) * data.n_train
            base = base or epoch
            print(
                f"{name:<52} data prep {prep:6.2f} s  per sample {per_sample * 1e3:6.2f} ms  "
                f"epoch {epoch:6.2f} s ({epoch / base:4.2f}x)"
            )
    print(f"cpu threads: {torch.get_num_threads()}, cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
