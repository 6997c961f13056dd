"""Time the vectorized vMF samplers against per-sample loops, and show each one's mean cosine to mu.

    python bench/vmf.py                      # D=512, kappa=200, 100 classes x 600 samples, CPU
    python bench/vmf.py --kappa 100 --dfzsl /path/to/DFZSL   # also run the released sampler itself
    python bench/vmf.py --device cuda --dtype float32

zsc's vectorized sampler runs with both of its cosine draws: ``exact`` (Wood 1994, the default) and ``authors`` (the
released DFZSL sampler's Taylor-form envelope, biased for kappa > 10). The loop references:

- numpy, per (class, sample), exact Wood: ``vmf_sample_loop_reference`` in the recovery core, one scalar draw at a
  time;
- torch, per (class, sample), exact Wood: the same literal loop with torch scalar ops (a host sync per rejection
  test). This is the "literal per-sample loop of Wood's algorithm" that the recovery issue's 50x target is stated
  against;
- torch, per draw, exact Wood: the DFZSL authors' loop structure with exact constants. Their
  ``VonMisesFisher.rsample()`` (hyperspherical_vae) draws one sample for every class at once (a torch rejection
  ``while`` loop batched over classes, Beta draws from ``torch.distributions``) and their sampling code calls it in a
  Python ``for i in range(num)`` loop; this loop has that structure but NOT their constants, so it is not their sampler;
- torch, per draw, released envelope: the same loop with the released constants and acceptance test (the core's
  ``_authors_envelope``) and the released Householder epsilon (1e-5): the authors' sampler, rewritten here;
- released hyperspherical_vae: the authors' own ``VonMisesFisher`` imported from a DFZSL checkout (``--dfzsl``, or
  ``$ZSC_DFZSL_REPO``), float32 as they run it; skipped when no checkout is given. zsc does not ship their code.

Loops are slow, so each is timed on a subset (``--loop-samples`` draws, spread over all classes) and extrapolated
per sample to the full problem; the output says so. Every sampler runs in this process. The vectorized sampler is
timed on 1 thread (the ratio of vectorization alone) and on ``--threads`` threads (default: all cores; it splits its
Gaussian draws into independently seeded blocks, which a per-sample loop cannot use). The loops run on 1 thread.
The exact samplers' mean cosine should be A_D(kappa); the released ones' is lower for kappa > 10 (the bias).
"""

# ruff: noqa: E402  (CPU tuning runs before torch is imported, on purpose)
from __future__ import annotations

from zsc.runtime.tuning import apply_cpu_tuning

apply_cpu_tuning()  # before torch loads: it reads its allocator options then

import argparse
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from zsc_recovery.core.vmf import (
    _authors_envelope,
    mean_resultant_length,
    sample_vmf,
    vmf_sample_loop_reference,
)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--kappa", type=float, default=200.0)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--samples", type=int, default=600, help="samples per class")
    p.add_argument("--loop-samples", type=int, default=3000, help="draws timed for each loop (spread over classes)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of the vectorized sampler (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for the second timing of the vectorized sampler (default 0: torch's default, all "
        "cores); the first timing always uses 1 thread",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dfzsl",
        default=os.environ.get("ZSC_DFZSL_REPO", ""),
        help="a checkout of github:ylong4/DFZSL, to time its hyperspherical_vae sampler too (default $ZSC_DFZSL_REPO)",
    )
    return p.parse_args()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wood_constants(kappa: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wood's envelope parameters b, x0 and the acceptance constant c for each kappa."""
    m1 = dim - 1
    b = m1 / (2.0 * kappa + torch.sqrt(4.0 * kappa * kappa + m1 * m1))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m1 * torch.log(1.0 - x0 * x0)
    return b, x0, c


def _householder(x: torch.Tensor, mu: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Reflect samples drawn around e1 ([..., D]) onto mu ([..., D]): H = I - 2 u u^T, u = (e1 - mu) / |e1 - mu|."""
    u = -mu.clone()
    u[..., 0] += 1.0
    u = u / (u.norm(dim=-1, keepdim=True) + eps)
    return x - 2.0 * (x * u).sum(dim=-1, keepdim=True) * u


def torch_loop_per_sample(mu: torch.Tensor, kappa: float, n: int) -> torch.Tensor:
    """Literal per-(class, sample) loop of Wood's algorithm with torch scalar ops; [C, n, D]."""
    count, dim = mu.shape
    m1 = dim - 1
    k = torch.tensor(kappa, dtype=mu.dtype, device=mu.device)
    b, x0, c = _wood_constants(k, dim)
    half = torch.tensor(m1 / 2.0, dtype=mu.dtype, device=mu.device)
    beta = torch.distributions.Beta(half, half)
    out = torch.empty(count, n, dim, dtype=mu.dtype, device=mu.device)
    for cls in range(count):
        for i in range(n):
            while True:  # one rejection test per round, each a host sync
                z = beta.sample()
                w = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
                u = torch.rand((), dtype=mu.dtype, device=mu.device)
                if bool(k * w + m1 * torch.log(1.0 - x0 * w) - c >= torch.log(u)):
                    break
            v = torch.randn(m1, dtype=mu.dtype, device=mu.device)
            v = v / v.norm()
            x = torch.cat([w.reshape(1), torch.sqrt(torch.clamp(1.0 - w * w, min=0.0)) * v])
            out[cls, i] = _householder(x, mu[cls])
    return out


def torch_loop_per_draw(mu: torch.Tensor, kappa: float, n: int, envelope: str = "exact") -> torch.Tensor:
    """The DFZSL authors' structure: ``for i in range(n)`` draws one sample for every class; [C, n, D].

    Inside a draw, the rejection loop runs over all classes at once until every class has accepted, as in
    hyperspherical_vae's ``rsample``. ``envelope="exact"`` tests with Wood's exact constants; ``"released"`` with
    the released sampler's (Taylor b for kappa > 10, Wood's (a, d) form of the test) and its Householder epsilon.
    """
    count, dim = mu.shape
    m1 = dim - 1
    k = torch.full((count,), kappa, dtype=mu.dtype, device=mu.device)
    if envelope == "released":
        b, a, d = _authors_envelope(k, float(m1))
    else:
        b, x0, c = _wood_constants(k, dim)
    half = torch.tensor(m1 / 2.0, dtype=mu.dtype, device=mu.device)
    beta = torch.distributions.Beta(half, half)
    draws = []
    for _ in range(n):
        w = torch.zeros(count, dtype=mu.dtype, device=mu.device)
        pending = torch.ones(count, dtype=torch.bool, device=mu.device)
        while bool(pending.any()):
            z = beta.sample((count,))
            w_new = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
            u = torch.rand(count, dtype=mu.dtype, device=mu.device)
            if envelope == "released":
                t = 2.0 * a * b / (1.0 - (1.0 - b) * z)
                accept = m1 * torch.log(t) - t + d > torch.log(u)
            else:
                accept = k * w_new + m1 * torch.log(1.0 - x0 * w_new) - c >= torch.log(u)
            take = pending & accept
            w[take] = w_new[take]
            pending &= ~accept
        v = torch.randn(count, m1, dtype=mu.dtype, device=mu.device)
        v = v / v.norm(dim=-1, keepdim=True)
        x = torch.cat([w[:, None], torch.sqrt(torch.clamp(1.0 - w * w, min=1e-10))[:, None] * v], dim=-1)
        draws.append(_householder(x, mu, 1e-5 if envelope == "released" else 1e-12))
    return torch.stack(draws, dim=1)


def released_loop(repo: str) -> Callable[[torch.Tensor, float, int], torch.Tensor]:
    """The released sampler itself, imported from a DFZSL checkout and called as its sampling code calls it."""
    sys.path.insert(0, repo)
    vmf_module = importlib.import_module("hyperspherical_vae.distributions.von_mises_fisher")

    def run(mu: torch.Tensor, kappa: float, n: int) -> torch.Tensor:
        mu32 = mu.float()  # their Beta draws are float32 only
        dist = vmf_module.VonMisesFisher(mu32, torch.full((mu32.shape[0], 1), kappa, device=mu32.device))
        return torch.stack([dist.rsample() for _ in range(n)], dim=1)

    return run


def _time_loop(fn: Callable[[int], object], per_class: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """(seconds, [C, per_class, D] samples as float64 CPU)."""
    _sync(device)
    start = time.perf_counter()
    out = fn(per_class)
    _sync(device)
    seconds = time.perf_counter() - start
    return seconds, torch.as_tensor(out).to("cpu", torch.float64)


def _mean_cos(samples: torch.Tensor, mu: torch.Tensor) -> float:
    """Mean of mu_c^T x over all samples: should match A_D(kappa), a check that every sampler is a vMF sampler."""
    return float((samples * mu.unsqueeze(1)).sum(-1).mean())


def _time_vectorized(
    mu: torch.Tensor, args: argparse.Namespace, threads: int, sampler: str
) -> tuple[float, torch.Tensor]:
    """(median seconds over ``--repeats`` runs on ``threads`` torch threads, the last samples)."""
    torch.set_num_threads(threads)
    gen = torch.Generator(device=mu.device).manual_seed(args.seed)
    sample_vmf(mu, args.kappa, args.samples, gen, sampler=sampler)  # warm-up: allocator, kernels, thread pool
    _sync(mu.device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = sample_vmf(mu, args.kappa, args.samples, gen, sampler=sampler)
        _sync(mu.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    args = _parse()
    all_threads = args.threads if args.threads > 0 else torch.get_num_threads()
    torch.manual_seed(args.seed)  # torch.distributions draws from the global generator
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    total = args.classes * args.samples
    g = torch.Generator().manual_seed(args.seed)
    mu = F.normalize(torch.randn(args.classes, args.dim, generator=g, dtype=torch.float64), dim=1)
    mu_dev = mu.to(device=device, dtype=dtype)

    # sampler -> threads -> (seconds, mean cos)
    vectorized: dict[str, dict[int, tuple[float, float]]] = {"exact": {}, "authors": {}}
    for sampler, by_threads in vectorized.items():
        for threads in sorted({1, all_threads}):
            seconds, out = _time_vectorized(mu_dev, args, threads, sampler)
            by_threads[threads] = (seconds, _mean_cos(out.to("cpu", torch.float64), mu))
            del out

    torch.set_num_threads(1)
    per_class = max(1, args.loop_samples // args.classes)
    loop_n = per_class * args.classes
    rng = np.random.default_rng(args.seed)
    # name -> (the zsc sampler it is compared with, loop)
    loop_fns: dict[str, tuple[str, Callable[[int], object]]] = {
        "numpy, per (class, sample), exact Wood": (
            "exact",
            lambda k: vmf_sample_loop_reference(mu.numpy(), args.kappa, k, rng),
        ),
        "torch, per (class, sample), exact Wood": ("exact", lambda k: torch_loop_per_sample(mu_dev, args.kappa, k)),
        "torch, per draw, exact Wood": ("exact", lambda k: torch_loop_per_draw(mu_dev, args.kappa, k)),
        "torch, per draw, released envelope": (
            "authors",
            lambda k: torch_loop_per_draw(mu_dev, args.kappa, k, envelope="released"),
        ),
    }
    if args.dfzsl:
        released = released_loop(args.dfzsl)
        loop_fns["released hyperspherical_vae (float32)"] = ("authors", lambda k: released(mu_dev, args.kappa, k))
    loops = {
        name: (sampler, _time_loop(fn, per_class, torch.device("cpu") if name.startswith("numpy") else device))
        for name, (sampler, fn) in loop_fns.items()
    }

    print(f"vMF sampling: D={args.dim}, kappa={args.kappa:g}, {args.classes} classes x {args.samples} samples")
    print(f"device={device} dtype={args.dtype}; loops on 1 torch thread")
    expected = float(mean_resultant_length(args.kappa, args.dim))
    print(f"E[mu^T x] = A_D(kappa) = {expected:.5f}; the exact samplers' mean cos should match it")
    width = 40
    for sampler, by_threads in vectorized.items():
        for threads, (seconds, mean_cos) in by_threads.items():
            name = f"vectorized zsc sampler={sampler}, {threads} thr"
            print(
                f"{name:{width}s}: {total / seconds:12,.0f} samples/s  mean cos {mean_cos:.5f}  "
                f"({seconds * 1e3:.1f} ms for {total:,} samples, median of {args.repeats})"
            )
    if not args.dfzsl:
        print("(released hyperspherical_vae skipped: pass --dfzsl PATH to a DFZSL checkout to time it)")
    for name, (sampler, (seconds, samples)) in loops.items():
        rate = loop_n / seconds
        ratios = " / ".join(f"{total / vec_s / rate:.1f}x ({t} thr)" for t, (vec_s, _) in vectorized[sampler].items())
        print(
            f"{name:{width}s}: {rate:12,.0f} samples/s  mean cos {_mean_cos(samples, mu):.5f}  "
            f"zsc {sampler} is {ratios} faster  "
            f"(timed on {loop_n:,} samples = {per_class} per class; extrapolated {total / rate:.2f} s for {total:,})"
        )


if __name__ == "__main__":
    main()
