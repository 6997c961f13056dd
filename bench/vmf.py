"""Time the vectorized vMF sampler against per-sample loops of Wood's algorithm.

    python bench/vmf.py                      # D=512, kappa=200, 100 classes x 600 samples, CPU
    python bench/vmf.py --device cuda --dtype float32

Three loop references, all written here (or in the core) from Wood (1994), none copied:

- numpy, per (class, sample): ``vmf_sample_loop_reference`` in the recovery core, one scalar draw at a time;
- torch, per (class, sample): the same literal loop with torch scalar ops (a host sync per rejection test). This is
  the "literal per-sample loop of Wood's algorithm" that the recovery issue's 50x target is stated against;
- torch, per draw: the DFZSL authors' own structure, shown as well. Their ``VonMisesFisher.rsample()`` (from
  hyperspherical_vae) draws one sample for every class at once (a torch rejection ``while`` loop batched over
  classes, Beta draws from ``torch.distributions``) and their sampling code calls it in a Python
  ``for i in range(num)`` loop, one draw per class per iteration.

Loops are slow, so each is timed on a subset (``--loop-samples`` draws, spread over all classes) and extrapolated
per sample to the full problem; the output says so. Every sampler runs in this process. The vectorized sampler is
timed on 1 thread (the ratio of vectorization alone) and on ``--threads`` threads (default: all cores; it splits its
Gaussian draws into independently seeded blocks, which a per-sample loop cannot use). The loops run on 1 thread.
"""

from __future__ import annotations  # noqa: I001  (zsc is imported before torch on purpose)

import zsc  # noqa: F401  (first: it sets torch's allocator options, which torch reads when it loads)

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from zsc_services.recovery.core.vmf import mean_resultant_length, sample_vmf, vmf_sample_loop_reference


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


def _householder(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Reflect samples drawn around e1 ([..., D]) onto mu ([..., D]): H = I - 2 u u^T, u = (e1 - mu) / |e1 - mu|."""
    u = -mu.clone()
    u[..., 0] += 1.0
    u = u / (u.norm(dim=-1, keepdim=True) + 1e-12)
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


def torch_loop_per_draw(mu: torch.Tensor, kappa: float, n: int) -> torch.Tensor:
    """The DFZSL authors' structure: ``for i in range(n)`` draws one sample for every class; [C, n, D].

    Inside a draw, the rejection loop runs over all classes at once until every class has accepted, as in
    hyperspherical_vae's ``rsample``.
    """
    count, dim = mu.shape
    m1 = dim - 1
    k = torch.full((count,), kappa, dtype=mu.dtype, device=mu.device)
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
            accept = k * w_new + m1 * torch.log(1.0 - x0 * w_new) - c >= torch.log(u)
            take = pending & accept
            w[take] = w_new[take]
            pending &= ~accept
        v = torch.randn(count, m1, dtype=mu.dtype, device=mu.device)
        v = v / v.norm(dim=-1, keepdim=True)
        x = torch.cat([w[:, None], torch.sqrt(torch.clamp(1.0 - w * w, min=1e-10))[:, None] * v], dim=-1)
        draws.append(_householder(x, mu))
    return torch.stack(draws, dim=1)


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


def _time_vectorized(mu: torch.Tensor, args: argparse.Namespace, threads: int) -> tuple[float, torch.Tensor]:
    """(median seconds over ``--repeats`` runs on ``threads`` torch threads, the last samples)."""
    torch.set_num_threads(threads)
    gen = torch.Generator(device=mu.device).manual_seed(args.seed)
    sample_vmf(mu, args.kappa, args.samples, gen)  # warm-up: allocator, kernels, thread pool
    _sync(mu.device)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = sample_vmf(mu, args.kappa, args.samples, gen)
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

    vectorized: dict[int, tuple[float, float]] = {}  # threads -> (seconds, mean cos)
    for threads in sorted({1, all_threads}):
        seconds, out = _time_vectorized(mu_dev, args, threads)
        vectorized[threads] = (seconds, _mean_cos(out.to("cpu", torch.float64), mu))
        del out

    torch.set_num_threads(1)
    per_class = max(1, args.loop_samples // args.classes)
    loop_n = per_class * args.classes
    rng = np.random.default_rng(args.seed)
    loops = {
        "numpy, per (class, sample)": _time_loop(
            lambda k: vmf_sample_loop_reference(mu.numpy(), args.kappa, k, rng), per_class, torch.device("cpu")
        ),
        "torch, per (class, sample)": _time_loop(
            lambda k: torch_loop_per_sample(mu_dev, args.kappa, k), per_class, device
        ),
        "torch, per draw (authors')": _time_loop(
            lambda k: torch_loop_per_draw(mu_dev, args.kappa, k), per_class, device
        ),
    }

    print(f"vMF sampling: D={args.dim}, kappa={args.kappa:g}, {args.classes} classes x {args.samples} samples")
    print(f"device={device} dtype={args.dtype}; loops on 1 torch thread")
    expected = float(mean_resultant_length(args.kappa, args.dim))
    print(f"E[mu^T x] = A_D(kappa) = {expected:.5f}; each sampler's mean is shown as a check")
    for threads, (seconds, mean_cos) in vectorized.items():
        name = f"vectorized (zsc), {threads} thr"
        print(
            f"{name:28s}: {total / seconds:12,.0f} samples/s  mean cos {mean_cos:.5f}  "
            f"({seconds * 1e3:.1f} ms for {total:,} samples, median of {args.repeats})"
        )
    for name, (seconds, samples) in loops.items():
        rate = loop_n / seconds
        ratios = " / ".join(f"{total / vec_s / rate:.1f}x ({t} thr)" for t, (vec_s, _) in vectorized.items())
        print(
            f"{name:28s}: {rate:12,.0f} samples/s  mean cos {_mean_cos(samples, mu):.5f}  speed-up {ratios}  "
            f"(timed on {loop_n:,} samples = {per_class} per class; extrapolated {total / rate:.2f} s for {total:,})"
        )


if __name__ == "__main__":
    main()
