"""von Mises–Fisher distribution on the unit sphere S^{D-1}: Bessel helpers and a vectorized reparameterized sampler.

The sampler follows Wood (1994): draw the cosine w = mu^T x by rejection sampling, draw a uniform direction in the
tangent space of e1, then map e1 to mu with a Householder reflection. Only the reflection depends on mu, so the
samples are differentiable with respect to mu (kappa receives no gradient). ``sampler="authors"`` draws the cosine
as the released DFZSL code does instead (a Taylor-form envelope, biased for kappa > 10), to reproduce its numbers.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch

__all__ = [
    "SAMPLERS",
    "log_bessel_iv",
    "mean_resultant_length",
    "sample_vmf",
    "vmf_log_normalizer",
    "vmf_sample_loop_reference",
]

# "exact": Wood (1994). "authors": the released DFZSL sampler (hyperspherical_vae), biased for kappa > 10.
SAMPLERS = ("exact", "authors")

# CPU draws larger than this many elements are split into blocks with their own generators (see sample_vmf).
# Fixed, so the samples of a seed do not depend on the thread count.
_NORMAL_BLOCK = 1 << 21
_W_GROUP = 1 << 14  # draws of w per rejection-sampler group in that case

# Orders at or above this use the uniform (Debye) expansion directly; lower orders recur down from it.
_DEBYE_MIN_ORDER = 40.0
_DEBYE_TERMS = 8


def _debye_polynomials(count: int) -> list[list[Fraction]]:
    """Exact coefficients (in powers of t) of the Debye polynomials u_0 .. u_count.

    Uses u_{k+1}(t) = t^2 (1 - t^2) u_k'(t) / 2 + 1/8 ∫_0^t (1 - 5 s^2) u_k(s) ds (DLMF 10.41.9).
    """
    polys = [[Fraction(1)]]
    for _ in range(count):
        u = polys[-1]
        nxt = [Fraction(0)] * (len(u) + 3)
        for j in range(1, len(u)):
            deriv = j * u[j]  # coefficient of t^(j-1) in u'
            nxt[j + 1] += deriv / 2
            nxt[j + 3] -= deriv / 2
        for j, coef in enumerate(u):
            nxt[j + 1] += coef / (8 * (j + 1))
            nxt[j + 3] -= 5 * coef / (8 * (j + 3))
        polys.append(nxt)
    return polys


_DEBYE_POLYS = _debye_polynomials(_DEBYE_TERMS)


def _log_iv_debye(nu: float, x: torch.Tensor) -> torch.Tensor:
    """log I_nu(x) from the uniform asymptotic expansion; accurate to ~1e-14 relative for nu >= _DEBYE_MIN_ORDER."""
    z = x / nu
    sq = torch.sqrt(1.0 + z * z)
    t = 1.0 / sq
    eta = sq + torch.log(z) - torch.log1p(sq)
    # Fold sum_k u_k(t) / nu^k into one polynomial in t, since nu is a scalar.
    degree = 3 * _DEBYE_TERMS
    coefs = [0.0] * (degree + 1)
    for k, poly in enumerate(_DEBYE_POLYS):
        scale = nu ** (-k)
        for j, c in enumerate(poly):
            coefs[j] += float(c) * scale
    series = torch.full_like(t, coefs[-1])
    for coef in reversed(coefs[:-1]):
        series = series * t + coef
    return nu * eta - 0.5 * math.log(2.0 * math.pi * nu) - 0.25 * torch.log1p(z * z) + torch.log(series)


def _log_iv_and_ratio(nu: float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log I_nu(x), I_{nu+1}(x) / I_nu(x)) for x > 0, in the dtype of x.

    The ratio is run down from order N >= _DEBYE_MIN_ORDER with R_{k-1} = 1 / (R_k + 2k/x), the stable (backward)
    direction of the recurrence, and log I_nu = log I_N - sum log R_k.
    """
    steps = max(0, math.ceil(_DEBYE_MIN_ORDER - nu))
    top = nu + steps
    log_top = _log_iv_debye(top, x)
    ratio = torch.exp(_log_iv_debye(top + 1.0, x) - log_top)
    log_sum = torch.zeros_like(x)
    for k in range(steps):
        order = top - k  # ratio holds R_order = I_{order+1} / I_order
        ratio = 1.0 / (ratio + 2.0 * order / x)  # now R_{order-1}
        log_sum = log_sum + torch.log(ratio)
    return log_top - log_sum, ratio


def _as_kappa(kappa: torch.Tensor | float) -> torch.Tensor:
    if not isinstance(kappa, torch.Tensor):
        return torch.tensor(kappa, dtype=torch.float64)
    k = kappa
    if not k.is_floating_point():
        k = k.to(torch.float64)
    return k


def log_bessel_iv(nu: float, kappa: torch.Tensor | float) -> torch.Tensor:
    """log I_nu(kappa) of the modified Bessel function of the first kind, for nu >= 0 and kappa >= 0.

    Stable for large orders and arguments (no over/underflow): computed in float64 and returned in kappa's dtype
    (float64 for Python numbers). Differentiable with respect to kappa.
    """
    nu = float(nu)
    if not math.isfinite(nu) or nu < 0:
        raise ValueError(f"log_bessel_iv needs a finite order nu >= 0, got {nu}")
    k = _as_kappa(kappa)
    if bool((k < 0).any()) or not bool(torch.isfinite(k).all()):
        raise ValueError("log_bessel_iv needs finite kappa >= 0")
    x = k.to(torch.float64)
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    log_iv, _ = _log_iv_and_ratio(nu, safe)
    at_zero = torch.full_like(x, 0.0 if nu == 0 else -math.inf)
    return torch.where(positive, log_iv, at_zero).to(k.dtype)


def vmf_log_normalizer(kappa: torch.Tensor | float, dim: int) -> torch.Tensor:
    """log C_D(kappa), where vMF density = C_D(kappa) exp(kappa mu^T x) on S^{D-1}; kappa > 0."""
    _check_dim(dim)
    k = _as_kappa(kappa)
    if bool((k <= 0).any()):
        raise ValueError("vmf_log_normalizer needs kappa > 0")
    nu = dim / 2.0 - 1.0
    x = k.to(torch.float64)
    out = nu * torch.log(x) - (dim / 2.0) * math.log(2.0 * math.pi) - log_bessel_iv(nu, x)
    return out.to(k.dtype)


def mean_resultant_length(kappa: torch.Tensor | float, dim: int) -> torch.Tensor:
    """A_D(kappa) = I_{D/2}(kappa) / I_{D/2-1}(kappa) = E[mu^T x] under vMF(mu, kappa) on S^{D-1}; kappa > 0."""
    _check_dim(dim)
    k = _as_kappa(kappa)
    if bool((k <= 0).any()) or not bool(torch.isfinite(k).all()):
        raise ValueError("mean_resultant_length needs finite kappa > 0")
    _, ratio = _log_iv_and_ratio(dim / 2.0 - 1.0, k.to(torch.float64))
    return ratio.to(k.dtype)


def _check_dim(dim: int) -> None:
    if int(dim) != dim or dim < 2:
        raise ValueError(f"the vMF needs an integer dimension D >= 2, got {dim}")


def _authors_envelope(kappa: torch.Tensor, m1: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b, a, d) of the released DFZSL sampler (``hyperspherical_vae/distributions/von_mises_fisher.py``).

    Wood's envelope in his original (a, b, d) form, except that for kappa > 11 b is the Taylor form (D-1) / (4 kappa),
    linearly blended with the exact b for 10 < kappa < 11. a and d keep the exact constants, so past kappa = 10 the
    acceptance test no longer matches the proposal and the draws are not vMF: at D = 512 the mean cosine is about
    -0.12 for kappa = 100 (exact: 0.188), 0.22 for 200 (0.344), 0.52 for 400 (0.548).
    """
    c = torch.sqrt(4.0 * kappa * kappa + m1 * m1)
    b_exact = m1 / (2.0 * kappa + c)  # the release writes (c - 2 kappa) / m1: the same value, without cancellation
    blend = (kappa - 10.0).clamp(0.0, 1.0)
    b = m1 / (4.0 * kappa) * blend + b_exact * (1.0 - blend)
    a = (m1 + 2.0 * kappa + c) / 4.0
    d = 4.0 * a * b / (1.0 + b) - m1 * math.log(m1)
    return b, a, d


def _sample_w(
    kappa: torch.Tensor, dim: int, generator: torch.Generator | None, max_rounds: int, sampler: str = "exact"
) -> torch.Tensor:
    """Wood's rejection sampler for 1 - w, w = mu^T x: one draw per entry of ``kappa`` ([m] float64 -> [m] float64).

    Returns 1 - w rather than w because w is within ~D/kappa of 1 and its complement carries the precision.
    Each round redraws only the entries still rejected. ``sampler="authors"`` swaps in the released envelope and
    acceptance test (see _authors_envelope); the proposal and the random draws are the same.
    """
    m1 = float(dim - 1)
    if sampler == "authors":
        b, a, d = _authors_envelope(kappa, m1)
    else:
        b = m1 / (2.0 * kappa + torch.sqrt(4.0 * kappa * kappa + m1 * m1))
        x0 = (1.0 - b) / (1.0 + b)
        one_minus_x0 = 2.0 * b / (1.0 + b)
        log_1mx0sq = torch.log(one_minus_x0) + torch.log1p(x0)

    omw = torch.empty_like(kappa)
    pending = torch.arange(kappa.numel(), device=kappa.device)
    alpha = torch.full_like(kappa, m1 / 2.0)
    for _ in range(max_rounds):
        todo = pending.numel()
        if todo == 0:
            return omw
        g1 = torch._standard_gamma(alpha[:todo], generator=generator)
        g2 = torch._standard_gamma(alpha[:todo], generator=generator)
        z = g1 / (g1 + g2)  # Beta((D-1)/2, (D-1)/2)
        u = torch.rand(todo, dtype=torch.float64, device=kappa.device, generator=generator)
        bc = b[pending]
        denom = 1.0 - (1.0 - bc) * z
        omw_c = 2.0 * bc * z / denom
        if sampler == "authors":
            t = 2.0 * a[pending] * bc / denom
            score = m1 * torch.log(t) - t + d[pending]
        else:
            kc, x0c, omx0c = kappa[pending], x0[pending], one_minus_x0[pending]
            # kappa w + m1 log(1 - x0 w) - c, rewritten with 1 - w and 1 - x0 to avoid cancelling large terms.
            score = kc * (omx0c - omw_c) + m1 * (torch.log(omx0c + x0c * omw_c) - log_1mx0sq[pending])
        accept = score >= torch.log(u)
        omw[pending[accept]] = omw_c[accept]
        pending = pending[~accept]
    if pending.numel() == 0:
        return omw
    raise RuntimeError(
        f"vMF rejection sampling left {pending.numel()} draws unaccepted after {max_rounds} rounds "
        f"(D={dim}, kappa range [{float(kappa.min()):.3g}, {float(kappa.max()):.3g}])"
    )


def _blocks(count: int, n: int, dim: int) -> list[tuple[int, int, int]]:
    """(class, first row, end row) blocks of about ``_NORMAL_BLOCK`` elements, never spanning two classes."""
    rows = max(1, _NORMAL_BLOCK // dim)
    return [(c, start, min(start + rows, n)) for c in range(count) for start in range(0, n, rows)]


def _run_blocks(work: Callable[[int], None], n_blocks: int) -> None:
    """``work(i)`` for every block, on up to ``torch.get_num_threads()`` threads (torch ops release the GIL).

    Callers give them only random draws (sequential RNG kernels and small tensors, below torch's parallel grain), so
    these threads never start OpenMP teams of their own; the threads end with the call all the same.
    """
    workers = max(1, min(torch.get_num_threads(), n_blocks))
    if workers == 1:
        for i in range(n_blocks):
            work(i)
        return
    errors: list[BaseException] = []

    def run(first: int) -> None:
        try:
            for i in range(first, n_blocks, workers):
                work(i)
        except BaseException as err:  # raised again in the caller's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(w,), name=f"zsc-vmf-{w}") for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _to_sphere_around_e1_(x: torch.Tensor, omw: torch.Tensor) -> torch.Tensor:
    """Gaussian rows [..., D] -> points with cosine 1 - omw to e1 and a uniform tangent direction, in place."""
    x[..., 0] = 0.0
    radius = torch.sqrt(omw * (2.0 - omw)).to(x.dtype)
    x.mul_((radius / torch.linalg.vector_norm(x, dim=-1)).unsqueeze(-1))
    x[..., 0] = (1.0 - omw).to(x.dtype)
    return x


def _householder_vectors(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v = e1 - mu and 2 / v^T v per class (0 where mu is already e1): H = I - coef v v^T maps e1 to mu."""
    v = -mu
    v[:, 0] += 1.0
    vv = (v * v).sum(dim=1)
    degenerate = vv <= torch.finfo(mu.dtype).eps
    coef = torch.where(degenerate, torch.zeros_like(vv), 2.0 / torch.where(degenerate, torch.ones_like(vv), vv))
    return v, coef


def sample_vmf(
    mu: torch.Tensor,
    kappa: torch.Tensor | float,
    n: int,
    generator: torch.Generator | None = None,
    max_rounds: int = 64,
    sampler: str = "exact",
) -> torch.Tensor:
    """Draw n reparameterized samples from vMF(mu_c, kappa_c) for every row c of mu.

    Args:
        mu: [C, D] unit-norm mean directions (float32 or float64); the samples follow its device and dtype.
        kappa: concentration, a scalar or a [C] tensor, > 0. It receives no gradient.
        n: samples per class.
        generator: a torch.Generator on mu's device, for reproducible draws.
        max_rounds: rejection rounds before giving up with RuntimeError.
        sampler: "exact" (Wood's algorithm, the default) or "authors": the released DFZSL sampler's cosine draw,
            whose Taylor-form envelope biases the cosine for kappa > 10 (see _authors_envelope). The paper's numbers
            come from it; it matches "exact" for kappa <= 10 and for D = 3, where the release draws the cosine in
            closed form.

    Returns:
        [C, n, D] samples on the sphere; gradients flow to mu through the Householder reflection.
    """
    if mu.ndim != 2 or not mu.is_floating_point():
        raise ValueError(f"mu must be a floating [C, D] tensor, got shape {tuple(mu.shape)} and dtype {mu.dtype}")
    count, dim = mu.shape
    _check_dim(dim)
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown vMF sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if dim == 3:
        sampler = "exact"  # the release's D = 3 branch is the exact inverse CDF
    n = int(n)
    norms = torch.linalg.vector_norm(mu.detach(), dim=1)
    tol = 1e-3 if mu.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-6
    if not bool(((norms - 1.0).abs() <= tol).all()):
        raise ValueError("mu rows must be unit vectors; normalize them first")
    k = torch.as_tensor(kappa, dtype=torch.float64, device=mu.device).detach()
    if k.ndim == 0:
        k = k.expand(count)
    if k.shape != (count,):
        raise ValueError(f"kappa must be a scalar or have shape [{count}], got {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()) or bool((k <= 0).any()):
        raise ValueError("kappa must be finite and > 0")

    kappa_rows = k.repeat_interleave(n)  # one kappa per draw, class-major
    v, coef = _householder_vectors(mu)
    samples = torch.empty(count, n, dim, dtype=mu.dtype, device=mu.device)
    if mu.device.type != "cpu" or samples.numel() <= _NORMAL_BLOCK:
        # One stream: CUDA generators are counter-based and parallel, and a small CPU draw is quick either way.
        omw = _sample_w(kappa_rows, dim, generator, max_rounds, sampler).view(count, n)
        # Fill the whole buffer (normal_ on the strided tangent slice is ~10x slower); the e1 column is reset after.
        return _reflect(_to_sphere_around_e1_(samples.normal_(generator=generator), omw), v, coef)

    # A CPU generator is one sequential Mersenne Twister stream and the random draws are most of the work, so large
    # draws are cut into fixed groups (cosines) and blocks (Gaussians), each with its own generator seeded from
    # `generator`, and run on torch's threads. Groups and blocks depend only on (C, n, D), never on the thread
    # count: a seed gives the same samples on 1 or 16 threads.
    w_groups = kappa_rows.split(_W_GROUP)
    blocks = _blocks(count, n, dim)
    seeds = torch.randint(0, 2**62, (len(w_groups) + len(blocks),), generator=generator).tolist()
    omw_parts: list[torch.Tensor] = [kappa_rows[:0]] * len(w_groups)

    def draw_w(i: int) -> None:
        generator_i = torch.Generator().manual_seed(seeds[i])
        omw_parts[i] = _sample_w(w_groups[i], dim, generator_i, max_rounds, sampler)

    _run_blocks(draw_w, len(w_groups))
    omw = torch.cat(omw_parts).view(count, n)
    seeds = seeds[len(w_groups) :]

    def fill(i: int) -> None:
        c, first, end = blocks[i]
        samples[c, first:end].normal_(generator=torch.Generator().manual_seed(seeds[i]))

    _run_blocks(fill, len(blocks))
    # The arithmetic stays on the caller's thread (and its torch threads); the block threads only draw.
    return _reflect(_to_sphere_around_e1_(samples, omw), v, coef)


def _reflect(samples: torch.Tensor, v: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Apply each class's Householder reflection to its [n, D] samples; in place unless autograd tracks v."""
    if torch.is_grad_enabled() and v.requires_grad:
        proj = torch.bmm(samples, v.unsqueeze(-1)) * coef.view(-1, 1, 1)  # [C, n, 1]
        return torch.baddbmm(samples, proj, v.unsqueeze(1), alpha=-1.0)
    if samples.device.type == "cpu" and len(v) > 0:
        # A one-column bmm takes a slow path on CPU; one mv per class reads the samples ~3x faster.
        dots = torch.stack([torch.mv(rows, direction) for rows, direction in zip(samples, v, strict=True)])
        proj = (dots * coef.view(-1, 1)).unsqueeze(-1)
    else:
        proj = torch.bmm(samples, v.unsqueeze(-1)) * coef.view(-1, 1, 1)
    # Without autograd, reflect in place: a second [C, n, D] buffer costs more (page faults) than the arithmetic.
    return samples.baddbmm_(proj, v.unsqueeze(1), alpha=-1.0)


def vmf_sample_loop_reference(
    mu: np.ndarray, kappa: float | np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Literal per-(class, sample) loop of Wood's algorithm in numpy: a statistical reference for tests and the bench.

    (The DFZSL authors loop per draw in torch instead, batched over classes, with their own envelope: ``bench/vmf.py``
    times that structure with exact constants and with theirs.)

    Returns [C, n, D] float64 samples.
    """
    mu = np.asarray(mu, dtype=np.float64)
    count, dim = mu.shape
    kappas = np.broadcast_to(np.asarray(kappa, dtype=np.float64), (count,))
    out = np.empty((count, n, dim))
    for c in range(count):
        for i in range(n):
            out[c, i] = _wood_one(mu[c], float(kappas[c]), rng)
    return out


def _wood_one(mu: np.ndarray, kappa: float, rng: np.random.Generator) -> np.ndarray:
    dim = mu.shape[0]
    m1 = dim - 1
    b = m1 / (2.0 * kappa + math.sqrt(4.0 * kappa * kappa + m1 * m1))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m1 * math.log(1.0 - x0 * x0)
    while True:
        z = rng.beta(m1 / 2.0, m1 / 2.0)
        w = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        u = rng.uniform()
        if kappa * w + m1 * math.log(1.0 - x0 * w) - c >= math.log(u):
            break
    v = rng.standard_normal(m1)
    v /= np.linalg.norm(v)
    x = np.concatenate(([w], math.sqrt(max(0.0, 1.0 - w * w)) * v))
    h = -mu.copy()
    h[0] += 1.0
    hh = h @ h
    if hh > 1e-15:
        x = x - (2.0 * (h @ x) / hh) * h
    return x
