"""von Mises–Fisher helpers and sampler against closed forms, mpmath, scipy.special.ive and scipy.stats, and the
authors' sampler option against the released DFZSL sampler's measured mean cosines."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F

from zsc_recovery.core.vmf import (
    log_bessel_iv,
    mean_resultant_length,
    sample_vmf,
    vmf_log_normalizer,
    vmf_sample_loop_reference,
)

ORDERS = [0.0, 0.5, 1.0, 2.3, 4.0, 31.0, 39.5, 40.0, 41.7, 255.0, 511.0, 1023.0]
ARGS = [1e-3, 0.1, 1.0, 3.0, 10.0, 50.0, 100.0, 1e3, 1e4, 1e5]
DIMS = [2, 3, 4, 10, 64, 513, 768, 2048]
needs_scipy_vmf = pytest.mark.skipif(
    not hasattr(scipy.stats, "vonmises_fisher"),
    reason=f"scipy {scipy.__version__} has no stats.vonmises_fisher (>= 1.11)",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mp_log_iv(nu: float, x: float) -> float:
    with mpmath.workdps(40):
        return float(mpmath.log(mpmath.besseli(nu, x)))


def _unit_rows(count: int, dim: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(count, dim, generator=g, dtype=dtype), dim=1)


# ---------------------------------------------------------------- Bessel functions and normalizer


@pytest.mark.parametrize("nu", ORDERS)
def test_log_bessel_iv_matches_mpmath(nu: float) -> None:
    got = log_bessel_iv(nu, torch.tensor(ARGS, dtype=torch.float64)).numpy()
    ref = np.array([_mp_log_iv(nu, x) for x in ARGS])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_log_bessel_iv_matches_scipy_ive_where_it_does_not_underflow() -> None:
    nus, xs = np.meshgrid(np.array(ORDERS), np.array(ARGS), indexing="ij")
    ive = scipy.special.ive(nus, xs)
    usable = ive > 1e-290  # scipy underflows to 0 for large orders at small kappa; log_bessel_iv does not
    assert usable.sum() > 60 and (~usable).sum() > 5
    got = np.stack([log_bessel_iv(nu, torch.tensor(ARGS, dtype=torch.float64)).numpy() for nu in ORDERS])
    ref = np.log(ive[usable]) + xs[usable]
    np.testing.assert_allclose(got[usable], ref, rtol=1e-11, atol=1e-11)
    assert np.isfinite(got).all()


def test_log_bessel_iv_edge_values_and_dtype() -> None:
    assert log_bessel_iv(0.0, 0.0).item() == 0.0
    assert log_bessel_iv(3.0, 0.0).item() == -math.inf
    assert log_bessel_iv(0.5, 2.0).dtype == torch.float64
    k32 = torch.tensor([1.0, 1e4], dtype=torch.float32)
    out = log_bessel_iv(255.0, k32)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), [_mp_log_iv(255.0, 1.0), _mp_log_iv(255.0, 1e4)], rtol=1e-6)
    with pytest.raises(ValueError):
        log_bessel_iv(1.0, -1.0)
    with pytest.raises(ValueError):
        log_bessel_iv(-0.5, 1.0)
    with pytest.raises(ValueError):
        log_bessel_iv(1.0, math.nan)


def test_log_bessel_iv_gradient() -> None:
    kappa = torch.tensor([1e-2, 0.7, 5.0, 80.0, 3e3], dtype=torch.float64, requires_grad=True)
    for nu in (0.0, 1.5, 31.0, 255.0):
        assert torch.autograd.gradcheck(lambda k, nu=nu: log_bessel_iv(nu, k), (kappa,))
        # d/dk log I_nu(k) = I_{nu+1}(k) / I_nu(k) + nu / k
        (grad,) = torch.autograd.grad(log_bessel_iv(nu, kappa).sum(), kappa)
        with mpmath.workdps(40):
            ref = [float(mpmath.besseli(nu + 1, k) / mpmath.besseli(nu, k) + nu / k) for k in kappa.tolist()]
        np.testing.assert_allclose(grad.numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("dim", DIMS)
def test_mean_resultant_length_matches_mpmath(dim: int) -> None:
    got = mean_resultant_length(torch.tensor(ARGS, dtype=torch.float64), dim).numpy()
    with mpmath.workdps(40):
        ref = [float(mpmath.besseli(dim / 2, x) / mpmath.besseli(dim / 2 - 1, x)) for x in ARGS]
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    assert np.all(np.diff(got) > 0) and np.all((got > 0) & (got < 1))


def test_mean_resultant_length_closed_form_d3() -> None:
    k = torch.tensor([1e-2, 0.5, 3.0, 40.0, 1e3], dtype=torch.float64)
    ref = 1.0 / torch.tanh(k) - 1.0 / k  # A_3 = coth(k) - 1/k
    torch.testing.assert_close(mean_resultant_length(k, 3), ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("dim", DIMS)
def test_log_normalizer_matches_mpmath(dim: int) -> None:
    got = vmf_log_normalizer(torch.tensor(ARGS, dtype=torch.float64), dim).numpy()
    nu = dim / 2 - 1
    ref = [nu * math.log(x) - dim / 2 * math.log(2 * math.pi) - _mp_log_iv(nu, x) for x in ARGS]
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9)


@needs_scipy_vmf
def test_log_normalizer_matches_scipy_vonmises_fisher_and_closed_form() -> None:
    for dim, kappa in [(3, 0.5), (3, 20.0), (10, 4.0), (64, 300.0), (512, 1000.0), (2048, 1e5)]:
        mu = np.zeros(dim)
        mu[0] = 1.0
        ref = scipy.stats.vonmises_fisher(mu, kappa).logpdf(mu) - kappa  # log C_D = log f(mu) - kappa
        assert vmf_log_normalizer(kappa, dim).item() == pytest.approx(ref, rel=1e-9, abs=1e-9)
    k = torch.tensor([1e-3, 1.0, 700.0], dtype=torch.float64)
    closed = torch.log(k) - math.log(4 * math.pi) - (k + torch.log(-torch.expm1(-2 * k)) - math.log(2.0))
    torch.testing.assert_close(vmf_log_normalizer(k, 3), closed, rtol=1e-12, atol=1e-12)  # k / (4 pi sinh k)
    with pytest.raises(ValueError):
        vmf_log_normalizer(0.0, 10)
    with pytest.raises(ValueError):
        mean_resultant_length(1.0, 1)


# ---------------------------------------------------------------- sampler statistics


@pytest.mark.parametrize(
    ("dim", "kappa"),
    [(3, 1.0), (3, 1e4), (10, 1.0), (10, 50.0), (64, 10.0), (64, 1e3), (512, 1.0), (512, 200.0), (512, 1e4)],
)
def test_sample_mean_cosine_matches_mean_resultant_length(dim: int, kappa: float) -> None:
    mu = _unit_rows(2, dim, seed=dim)
    n = 20000 if dim < 512 else 6000
    x = sample_vmf(mu, kappa, n, torch.Generator().manual_seed(7))
    w = torch.einsum("cnd,cd->cn", x, mu).flatten()
    se = w.std().item() / math.sqrt(w.numel())
    expected = mean_resultant_length(kappa, dim).item()
    assert abs(w.mean().item() - expected) < 5 * se + 1e-12, (w.mean().item(), expected, se)
    torch.testing.assert_close(torch.linalg.vector_norm(x, dim=-1), torch.ones(2, n, dtype=torch.float64))


def test_float32_sampler_matches_mean_resultant_length() -> None:
    mu = _unit_rows(3, 512, seed=1, dtype=torch.float32)
    x = sample_vmf(mu, 1e4, 4000, torch.Generator().manual_seed(3))
    assert x.dtype == torch.float32
    w = torch.einsum("cnd,cd->cn", x.double(), mu.double()).flatten()
    se = w.std().item() / math.sqrt(w.numel())
    assert abs(w.mean().item() - mean_resultant_length(1e4, 512).item()) < 5 * se + 1e-6
    assert torch.allclose(torch.linalg.vector_norm(x, dim=-1), torch.ones(()), atol=1e-5)


@needs_scipy_vmf
@pytest.mark.parametrize(("dim", "kappa", "n"), [(3, 5.0, 4000), (10, 50.0, 4000), (64, 300.0, 4000), (512, 1e3, 2500)])
def test_cosine_distribution_matches_scipy_vonmises_fisher(dim: int, kappa: float, n: int) -> None:
    mu = _unit_rows(1, dim, seed=11)
    ours = (sample_vmf(mu, kappa, n, torch.Generator().manual_seed(5))[0] @ mu[0]).numpy()
    mu_np = mu[0].numpy()
    theirs = scipy.stats.vonmises_fisher(mu_np, kappa).rvs(n, random_state=np.random.default_rng(6)) @ mu_np
    assert scipy.stats.ks_2samp(ours, theirs).pvalue > 1e-3


def test_cosine_distribution_matches_exact_cdf_d3() -> None:
    kappa = 2.5
    mu = _unit_rows(1, 3, seed=2)
    w = (sample_vmf(mu, kappa, 20000, torch.Generator().manual_seed(9))[0] @ mu[0]).numpy()

    def cdf(t: np.ndarray) -> np.ndarray:  # on S^2, w has density kappa e^{kappa w} / (2 sinh kappa)
        return (np.exp(kappa * t) - np.exp(-kappa)) / (np.exp(kappa) - np.exp(-kappa))

    assert scipy.stats.kstest(w, cdf).pvalue > 1e-3
    # and a wrong kappa is detected, so the test can fail
    assert (
        scipy.stats.kstest(w, lambda t: (np.exp(3.0 * t) - np.exp(-3.0)) / (np.exp(3.0) - np.exp(-3.0))).pvalue < 1e-3
    )


def test_tangent_direction_is_uniform_d3() -> None:
    mu = _unit_rows(1, 3, seed=4)[0]
    x = sample_vmf(mu[None], 10.0, 20000, torch.Generator().manual_seed(1))[0]
    a = F.normalize(torch.linalg.cross(mu, torch.tensor([0.3, 0.5, 0.8], dtype=torch.float64)), dim=0)
    b = torch.linalg.cross(mu, a)
    angle = torch.atan2(x @ b, x @ a).numpy()
    assert scipy.stats.kstest(angle, scipy.stats.uniform(loc=-math.pi, scale=2 * math.pi).cdf).pvalue > 1e-3


def test_tangent_direction_moments_d10() -> None:
    dim, n = 10, 40000
    mu = _unit_rows(1, dim, seed=8)[0]
    x = sample_vmf(mu[None], 30.0, n, torch.Generator().manual_seed(2))[0]
    t = F.normalize(x - (x @ mu)[:, None] * mu, dim=1)
    assert (t @ mu).abs().max() < 1e-12
    # uniform on the unit sphere of the tangent space: E[t] = 0, E[t t^T] = (I - mu mu^T) / (D - 1)
    assert t.mean(0).abs().max() < 5 / math.sqrt(n * (dim - 1))
    second = t.T @ t / n
    expected = (torch.eye(dim, dtype=torch.float64) - torch.outer(mu, mu)) / (dim - 1)
    assert (second - expected).abs().max() < 6 * math.sqrt(2.0 / n) / (dim - 1)


def test_loop_reference_agrees_with_vectorized_sampler() -> None:
    dim, kappa = 16, 30.0
    mu = _unit_rows(2, dim, seed=3)
    ref = vmf_sample_loop_reference(mu.numpy(), kappa, 1000, np.random.default_rng(0))
    assert ref.shape == (2, 1000, dim)
    np.testing.assert_allclose(np.linalg.norm(ref, axis=-1), 1.0, atol=1e-12)
    ours = sample_vmf(mu, kappa, 1000, torch.Generator().manual_seed(0))
    for c in range(2):
        w_ref = ref[c] @ mu[c].numpy()
        w_ours = (ours[c] @ mu[c]).numpy()
        assert scipy.stats.ks_2samp(w_ref, w_ours).pvalue > 1e-3
        # the reference's mean direction is mu too
        assert float(F.cosine_similarity(torch.from_numpy(ref[c].mean(0)), mu[c], dim=0)) > 0.99


# ---------------------------------------------------------------- sampler mechanics


@pytest.mark.parametrize("dim", [2, 3, 7, 64, 300, 2048])
def test_shapes_dtype_and_unit_norm_for_any_dim(dim: int) -> None:
    for dtype in (torch.float32, torch.float64):
        mu = _unit_rows(3, dim, seed=dim, dtype=dtype)
        x = sample_vmf(mu, torch.tensor([1.0, 50.0, 5e3]), 4, torch.Generator().manual_seed(0))
        assert x.shape == (3, 4, dim) and x.dtype == dtype and x.device == mu.device
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert torch.allclose(torch.linalg.vector_norm(x, dim=-1), torch.ones((), dtype=dtype), atol=tol)
    assert sample_vmf(_unit_rows(2, 5, seed=0), 3.0, 0).shape == (2, 0, 5)


def test_per_class_kappa_is_used() -> None:
    mu = _unit_rows(2, 32, seed=5)
    x = sample_vmf(mu, torch.tensor([2.0, 2000.0]), 5000, torch.Generator().manual_seed(0))
    w = torch.einsum("cnd,cd->cn", x, mu).mean(1)
    expected = mean_resultant_length(torch.tensor([2.0, 2000.0], dtype=torch.float64), 32)
    torch.testing.assert_close(w, expected, atol=0.01, rtol=0)


def test_mu_at_e1_and_minus_e1() -> None:
    mu = torch.zeros(2, 6, dtype=torch.float64)
    mu[0, 0], mu[1, 0] = 1.0, -1.0
    x = sample_vmf(mu, 100.0, 3000, torch.Generator().manual_seed(0))
    expected = mean_resultant_length(100.0, 6).item()
    assert x[0, :, 0].mean().item() == pytest.approx(expected, abs=0.005)
    assert x[1, :, 0].mean().item() == pytest.approx(-expected, abs=0.005)
    assert torch.isfinite(x).all()


def test_seeded_determinism() -> None:
    mu = _unit_rows(4, 20, seed=1)
    a = sample_vmf(mu, 40.0, 50, torch.Generator().manual_seed(123))
    b = sample_vmf(mu, 40.0, 50, torch.Generator().manual_seed(123))
    c = sample_vmf(mu, 40.0, 50, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_gradients_flow_to_mu_and_pass_gradcheck() -> None:
    raw = _unit_rows(3, 5, seed=2).add(0.1).requires_grad_(True)

    def draw(r: torch.Tensor) -> torch.Tensor:
        # fixed randomness: w and the tangent draws do not depend on mu, only the reflection does
        return sample_vmf(F.normalize(r, dim=1), torch.tensor([3.0, 30.0, 300.0]), 4, torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(draw, (raw,))
    x = draw(raw)
    (grad,) = torch.autograd.grad(x.sum(), raw)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_autograd_and_inplace_paths_agree() -> None:
    mu = _unit_rows(5, 33, seed=6)
    plain = sample_vmf(mu, 25.0, 7, torch.Generator().manual_seed(4))
    tracked = sample_vmf(mu.clone().requires_grad_(True), 25.0, 7, torch.Generator().manual_seed(4))
    assert tracked.requires_grad and not plain.requires_grad
    torch.testing.assert_close(tracked.detach(), plain, rtol=0, atol=1e-14)


# Draws of more than 2**21 elements on CPU take the blocked path: independently seeded groups and blocks on threads.


def test_blocked_path_gives_the_same_samples_on_any_thread_count() -> None:
    mu = _unit_rows(2, 512, seed=8, dtype=torch.float32)
    one = sample_vmf(mu, 200.0, 3000, torch.Generator().manual_seed(11))
    torch.set_num_threads(2)
    try:
        two = sample_vmf(mu, 200.0, 3000, torch.Generator().manual_seed(11))
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one, two)


def test_blocked_path_cosine_and_tangent_distributions_d3() -> None:
    kappa, n = 2.5, 800_000  # 2.4M elements: two blocks, so the test also crosses a block boundary
    mu = _unit_rows(1, 3, seed=4)
    x = sample_vmf(mu, kappa, n, torch.Generator().manual_seed(3))[0]
    w = (x @ mu[0]).numpy()

    def cdf(t: np.ndarray) -> np.ndarray:  # on S^2, w has density kappa e^{kappa w} / (2 sinh kappa)
        return (np.exp(kappa * t) - np.exp(-kappa)) / (np.exp(kappa) - np.exp(-kappa))

    assert scipy.stats.kstest(w, cdf).pvalue > 1e-3
    a = F.normalize(torch.linalg.cross(mu[0], torch.tensor([0.3, 0.5, 0.8], dtype=torch.float64)), dim=0)
    b = torch.linalg.cross(mu[0], a)
    angle = torch.atan2(x @ b, x @ a).numpy()
    assert scipy.stats.kstest(angle, scipy.stats.uniform(loc=-math.pi, scale=2 * math.pi).cdf).pvalue > 1e-3
    torch.testing.assert_close(torch.linalg.vector_norm(x, dim=-1), torch.ones(n, dtype=torch.float64))


def test_blocked_path_autograd_and_inplace_agree() -> None:
    mu = _unit_rows(2, 512, seed=6)
    plain = sample_vmf(mu, 25.0, 2500, torch.Generator().manual_seed(4))
    tracked = sample_vmf(mu.clone().requires_grad_(True), 25.0, 2500, torch.Generator().manual_seed(4))
    assert tracked.requires_grad
    torch.testing.assert_close(tracked.detach(), plain, rtol=0, atol=1e-13)


def test_sampler_input_errors() -> None:
    mu = _unit_rows(2, 8, seed=0)
    with pytest.raises(ValueError, match="unit"):
        sample_vmf(mu * 2, 1.0, 3)
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(mu, 0.0, 3)
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(mu, torch.tensor([1.0, math.inf]), 3)
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(mu, torch.tensor([1.0, 2.0, 3.0]), 3)
    with pytest.raises(ValueError, match="C, D"):
        sample_vmf(mu[0], 1.0, 3)
    with pytest.raises(ValueError, match="D >= 2"):
        sample_vmf(torch.ones(2, 1), 1.0, 3)
    with pytest.raises(ValueError, match="non-negative"):
        sample_vmf(mu, 1.0, -1)


@pytest.mark.parametrize("n", [20000, 40000])  # one stream; blocks (2.56M elements) on two threads
def test_rejection_round_guard_raises_a_clear_error(n: int) -> None:
    mu = _unit_rows(1, 64, seed=0)
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="unaccepted after 1 rounds"):
            sample_vmf(mu, 10.0, n, torch.Generator().manual_seed(0), max_rounds=1)
    finally:
        torch.set_num_threads(1)


# ---------------------------------------------------------------- the released DFZSL sampler (sampler="authors")

# Mean cosine to mu at D = 512: (methods.md's figure, to 2 decimals; the released hyperspherical_vae sampler itself,
# run in float32 as the authors run it, over 200,000 draws: standard error <= 1e-4).
RELEASED_MEAN_COS = {10.5: (None, -0.73488), 100.0: (-0.12, -0.12163), 200.0: (0.22, 0.22003), 400.0: (0.52, 0.51506)}


def _mean_cos_and_se(x: torch.Tensor, mu: torch.Tensor) -> tuple[float, float]:
    w = torch.einsum("cnd,cd->cn", x.double(), mu.double()).flatten()
    return w.mean().item(), w.std().item() / math.sqrt(w.numel())


@pytest.mark.parametrize("kappa", sorted(RELEASED_MEAN_COS))
def test_authors_sampler_reproduces_the_released_mean_cosine(kappa: float) -> None:
    mu = _unit_rows(50, 512, seed=21)
    x = sample_vmf(mu, kappa, 400, torch.Generator().manual_seed(8), sampler="authors")
    mean, se = _mean_cos_and_se(x, mu)
    documented, released = RELEASED_MEAN_COS[kappa]
    assert abs(mean - released) < 5 * math.hypot(se, 1e-4), (mean, released, se)
    if documented is not None:
        assert abs(mean - documented) < 0.005 + 5 * se, (mean, documented)
    # the bias itself: far below the exact mean, so this test fails for an exact sampler
    assert mean < mean_resultant_length(kappa, 512).item() - 0.03
    torch.testing.assert_close(torch.linalg.vector_norm(x, dim=-1), torch.ones(50, 400, dtype=torch.float64))


def test_authors_sampler_is_exact_up_to_kappa_10_and_at_d3() -> None:
    # D = 3: the release draws the cosine by its exact inverse CDF, so "authors" is the exact sampler there
    mu3 = _unit_rows(2, 3, seed=1)
    exact3 = sample_vmf(mu3, 500.0, 100, torch.Generator().manual_seed(0))
    assert torch.equal(sample_vmf(mu3, 500.0, 100, torch.Generator().manual_seed(0), sampler="authors"), exact3)
    mu = _unit_rows(1, 64, seed=2)
    for kappa in (1.0, 10.0):  # the Taylor form only starts past kappa = 10
        authors = sample_vmf(mu, kappa, 20000, torch.Generator().manual_seed(1), sampler="authors")
        mean, se = _mean_cos_and_se(authors, mu)
        assert abs(mean - mean_resultant_length(kappa, 64).item()) < 5 * se
        exact = sample_vmf(mu, kappa, 20000, torch.Generator().manual_seed(2))
        assert scipy.stats.ks_2samp((authors[0] @ mu[0]).numpy(), (exact[0] @ mu[0]).numpy()).pvalue > 1e-3


def test_authors_sampler_on_blocks_and_threads_and_gradients() -> None:
    # 5000 x 512 = 2.56M elements: the blocked CPU path; the seed gives the same draws on 1 and 2 threads
    mu = _unit_rows(1, 512, seed=6)
    one = sample_vmf(mu, 200.0, 5000, torch.Generator().manual_seed(3), sampler="authors")
    torch.set_num_threads(2)
    try:
        two = sample_vmf(mu, 200.0, 5000, torch.Generator().manual_seed(3), sampler="authors")
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one, two)
    mean, se = _mean_cos_and_se(one, mu)
    assert abs(mean - RELEASED_MEAN_COS[200.0][1]) < 5 * math.hypot(se, 1e-4)
    leaf = _unit_rows(3, 16, seed=0).requires_grad_(True)
    sample_vmf(leaf, 50.0, 10, torch.Generator().manual_seed(0), sampler="authors").sum().backward()
    assert leaf.grad is not None and float(leaf.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="unknown vMF sampler 'released'; expected one of exact, authors"):
        sample_vmf(mu, 1.0, 3, sampler="released")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampler_follows_device_and_statistics() -> None:
    mu = _unit_rows(4, 512, seed=0, dtype=torch.float32).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = sample_vmf(mu, 200.0, 5000, gen)
    assert x.device.type == "cuda" and x.shape == (4, 5000, 512)
    w = torch.einsum("cnd,cd->cn", x.double(), mu.double()).flatten().cpu()
    se = w.std().item() / math.sqrt(w.numel())
    assert abs(w.mean().item() - mean_resultant_length(200.0, 512).item()) < 5 * se + 1e-6
    again = sample_vmf(mu, 200.0, 5000, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(x, again)
