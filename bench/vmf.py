"""Time the vectorized vMF sampler against the literal per-sample loop (the DFZSL authors' approach).

    python bench/vmf.py                      # D=512, kappa=200, 100 classes x 600 samples, CPU
    python bench/vmf.py --device cuda --dtype float32

Both run in this process. The loop is slow, so it is timed on --loop-samples draws spread over all classes and
extrapolated per sample to the full problem; the output says so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from zsc_services.recovery.core.vmf import sample_vmf, vmf_sample_loop_reference


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--kappa", type=float, default=200.0)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--samples", type=int, default=600, help="samples per class")
    p.add_argument("--loop-samples", type=int, default=3000, help="draws timed for the loop (spread over classes)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the vectorized sampler (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 (default) matches the single-threaded loop, so the ratio measures vectorization "
        "alone; 0 leaves torch's default",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = _parse()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    total = args.classes * args.samples
    g = torch.Generator().manual_seed(args.seed)
    mu = F.normalize(torch.randn(args.classes, args.dim, generator=g, dtype=torch.float64), dim=1)

    mu_dev = mu.to(device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    sample_vmf(mu_dev, args.kappa, args.samples, gen)  # warm-up: allocator, kernels, thread pool
    _sync(device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = sample_vmf(mu_dev, args.kappa, args.samples, gen)
        _sync(device)
        times.append(time.perf_counter() - start)
        del out
    vec_s = statistics.median(times)
    vec_rate = total / vec_s

    per_class = max(1, args.loop_samples // args.classes)
    loop_n = per_class * args.classes
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    vmf_sample_loop_reference(mu.numpy(), args.kappa, per_class, rng)
    loop_s = time.perf_counter() - start
    loop_rate = loop_n / loop_s

    print(f"vMF sampling: D={args.dim}, kappa={args.kappa:g}, {args.classes} classes x {args.samples} samples")
    print(f"device={device} dtype={args.dtype} torch threads={torch.get_num_threads()}")
    print(
        f"vectorized : {vec_rate:12,.0f} samples/s  ({vec_s * 1e3:.1f} ms for {total:,} samples, "
        f"median of {args.repeats})"
    )
    print(
        f"loop (numpy): {loop_rate:11,.0f} samples/s  (timed on {loop_n:,} samples = {per_class} per class, "
        f"extrapolated: {total / loop_rate:.2f} s for {total:,})"
    )
    print(f"speed-up   : {vec_rate / loop_rate:.1f}x")


if __name__ == "__main__":
    main()
