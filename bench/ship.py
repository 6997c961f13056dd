"""Fine-tuning epoch time with a feature bank vs re-encoding every image every epoch, in one process.

SHIP's released code (like CoOp's and Tip-Adapter's) runs every training image through CLIP's frozen image encoder
again in every epoch, under a fresh random augmentation. zsc encodes each image once per augmentation view into a
:class:`~zsc_generative.core.bank.FeatureBank` and every epoch draws one view per image.

Both sides run SHIP's CoOp recipe on the same images, classes and synthesized pool: 4 context tokens from "a photo
of a" over base + new classes, each real batch joined by as many synthesized new-class features, logits 100·cos,
SGD lr 2e-3 on a cosine schedule, batch 256, the same text encoder. The bank side is zsc's core
(``finetune.fine_tune``, no held-out split so both sides train on every image), timed between its first and last
epoch callbacks. The reference is the released code's loop: per batch, augment (random resized crop + flip, the
same ``augment_view`` the bank uses), encode under ``no_grad``, normalize, join the synthesized features, step. The
bank's one-time build (V encoder passes over the images) is timed separately, with the number of epochs after
which it has paid for itself.

Images are the first ``--shots`` per class of ../shared/datasets/cifar10-train-500 (random tensors when it is
absent), preprocessed once with the model's eval transform. The synthesized pool is random unit vectors: only
timing is measured here. On the CPU the clock is the process's CPU time (run with --threads 1); on a GPU it is
wall-clock time with synchronization.

    python bench/ship.py                                   # the tiny profile's CLIP
    python bench/ship.py --arch ViT-B-16 --device cuda    # the paper's architecture (random weights, no download)
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from zsc.models.clip import create_clip
from zsc.models.prompt_learner import PromptLearner
from zsc_generative.core.bank import augment_view, encode_bank
from zsc_generative.core.finetune import FineTuneConfig, fine_tune

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-train-500"
NEW = ["apple", "rocket", "tulip", "whale", "zebra"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device: torch.device) -> float:
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def load_model(args: argparse.Namespace, device: torch.device):
    """(model, tokenizer, preprocess): the tiny profile's CLIP, or an open_clip architecture with random weights."""
    if args.arch == "tiny":
        bundle = create_clip("tiny:zsc-tiny-clip", device)
        return bundle.model, bundle.tokenizer, bundle.preprocess
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(args.arch, pretrained=None)
    return model.to(device).eval().requires_grad_(False), open_clip.get_tokenizer(args.arch), preprocess


def load_images(preprocess, shots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if CIFAR.is_dir():
        classes = sorted(p.name for p in CIFAR.iterdir() if p.is_dir())
        images, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((CIFAR / name).glob("*.jpg"))[:shots]:
                with Image.open(path) as im:
                    images.append(preprocess(im.convert("RGB")))
                labels.append(label)
        return torch.stack(images), torch.tensor(labels), classes
    g = torch.Generator().manual_seed(seed)
    size = preprocess.transforms[0].size if hasattr(preprocess, "transforms") else 224
    size = size if isinstance(size, int) else size[0]
    classes = [f"class {i}" for i in range(10)]
    return torch.rand(10 * shots, 3, size, size, generator=g), torch.arange(10).repeat_interleave(shots), classes


def reference_epochs(model, tokenizer, images, labels, names, pool, args, device) -> tuple[list[float], float, float]:
    """The released code's loop: the seconds of each epoch, and the mean seconds per epoch spent augmenting and in
    the image encoder."""
    prompt = PromptLearner(model, tokenizer)
    optimizer = torch.optim.SGD(prompt.parameters(), lr=2e-3)
    steps = math.ceil(len(labels) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * steps)
    rng = torch.Generator().manual_seed(args.seed)
    pool_x, pool_y = pool
    new = pool_y.unique()  # pool rows are grouped by class, 50 each
    times, augmenting, encoding = [], 0.0, 0.0
    for _ in range(args.epochs):
        sync(device)
        start = clock(device)
        for idx in torch.randperm(len(labels), generator=rng).split(args.batch_size):
            t0 = clock(device)
            batch = augment_view(images[idx], rng).to(device)
            sync(device)
            t1 = clock(device)
            with torch.no_grad():
                x = F.normalize(model.encode_image(batch).float(), dim=-1)
            sync(device)
            augmenting, encoding = augmenting + t1 - t0, encoding + clock(device) - t1
            y = labels[idx].to(device)
            # As many synthesized features as real ones, of uniformly drawn new classes (the pool holds 50 of each).
            cls = torch.randint(0, new.numel(), (len(idx),), generator=rng)
            pick = cls * 50 + torch.randint(0, 50, (len(idx),), generator=rng)
            x = torch.cat([x, pool_x[pick].to(device)])
            y = torch.cat([y, pool_y[pick].to(device)])
            loss = F.cross_entropy(100 * x @ prompt(names).T, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        sync(device)
        times.append(clock(device) - start)
    return times, augmenting / args.epochs, encoding / args.epochs


def bank_epochs(model, tokenizer, bank, names, pool, args) -> list[float]:
    """zsc's core on the bank; returns the seconds of each epoch but the first (timed between callbacks)."""
    stamps: list[float] = []
    device = bank.features.device

    def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
        sync(device)
        stamps.append(clock(device))

    config = FineTuneConfig.for_method(
        "coop", seed=args.seed, epochs=args.epochs + 1, batch_size=args.batch_size, val_fraction=0.0
    )
    fine_tune(model, tokenizer, bank, names, config, pool, on_epoch=on_epoch)
    return [b - a for a, b in itertools.pairwise(stamps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny", help="tiny (the tiny profile's CLIP) or an open_clip architecture")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shots", type=int, default=16, help="images per class (10 classes)")
    parser.add_argument("--views", type=int, default=10, help="augmentation views per image in the bank")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per side")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tokenizer, preprocess = load_model(args, device)
    images, labels, classes = load_images(preprocess, args.shots, args.seed)
    names = [*classes, *NEW]
    dim = int(model.text_projection.shape[1])
    g = torch.Generator().manual_seed(args.seed)
    pool_y = torch.arange(len(classes), len(names)).repeat_interleave(50)
    pool = (F.normalize(torch.randn(len(pool_y), dim, generator=g), dim=-1), pool_y)
    print(
        f"{args.arch} on {device}: {len(labels)} images {tuple(images.shape[1:])}, {len(names)} classes, "
        f"batch {args.batch_size}, {args.views} views, {args.epochs} epochs per side"
    )

    def encode(batch: torch.Tensor) -> torch.Tensor:
        return model.encode_image(batch.to(device))

    warm_up = argparse.Namespace(**{**vars(args), "epochs": 1})
    reference_epochs(model, tokenizer, images, labels, names, pool, warm_up, device)
    sync(device)
    start = clock(device)
    bank = encode_bank(encode, images, labels, args.views, seed=args.seed).to(device)
    sync(device)
    build = clock(device) - start
    ref, augmenting, encoding = reference_epochs(model, tokenizer, images, labels, names, pool, args, device)
    mine = bank_epochs(model, tokenizer, bank, names, pool, args)
    ref_epoch, bank_epoch = sorted(ref)[len(ref) // 2], sorted(mine)[len(mine) // 2]
    print(
        f"re-encoding every epoch (released code): {ref_epoch * 1e3:9.1f} ms/epoch (median of {len(ref)}; on "
        f"average {augmenting * 1e3:.1f} ms augmenting, {encoding * 1e3:.1f} ms in the image encoder)"
    )
    print(f"feature bank (zsc core):                 {bank_epoch * 1e3:9.1f} ms/epoch (median of {len(mine)})")
    payback = build / max(ref_epoch - bank_epoch, 1e-12)
    label = f"bank build, once ({args.views} views):"
    print(f"{label:41s}{build * 1e3:9.1f} ms (paid back after {payback:.1f} epochs)")
    print(f"ratio: the bank's epochs are {ref_epoch / bank_epoch:.1f}x faster")


if __name__ == "__main__":
    main()
