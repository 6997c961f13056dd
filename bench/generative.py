"""Generator training steps/s and synthesized features/s: zsc's cores vs a plain research-style loop.

Both sides use the same modules (from the cores), sizes, batch size and number of critic iterations, in one
process. The reference is written the way the original f-CLSWGAN/TF-VAEGAN scripts are: features stay on the host
and each batch is drawn with ``torch.randperm(N)[:B]`` and copied to the device, features are normalized per batch,
noise and GP mixing weights are drawn per iteration, and losses are read with ``.item()`` every generator step.
The core is timed through its public API (``train_*``), from the first to the last ``on_epoch`` callback, so
model construction and classifier pre-training are excluded on both sides. On the CPU the clock is the process's
CPU time (see :func:`clock`); on a GPU it is wall-clock time with synchronization.

    python bench/generative.py --device cpu --kind both
    python bench/generative.py --device cuda --classes 50 --per-class 600
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from zsc.features import FeatureSet
from zsc_generative.core import clswgan, tfvaegan
from zsc_generative.core.common import ConditionalCritic, generate, gradient_penalty


def synthetic(classes: int, per_class: int, dim: int, text_dim: int, seed: int = 0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(classes, text_dim, generator=g)
    means = torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat_interleave(per_class)
    feats = means[labels] + 0.5 * torch.randn(len(labels), dim, generator=g)
    return FeatureSet(feats, labels, [f"c{i}" for i in range(classes)], text)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device: torch.device) -> float:
    """Wall-clock seconds on a GPU; on the CPU the process's CPU seconds, which other processes on a shared machine
    disturb far less than wall-clock time (run with --threads 1 so that they equal wall-clock time when idle)."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def time_core(kind: str, data: FeatureSet, config, device: torch.device) -> float:
    """Generator steps per second of the core, between the first and the last epoch callback."""
    stamps: list[float] = []

    def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
        sync(device)
        stamps.append(clock(device))

    train = clswgan.train_clswgan if kind == "clswgan" else tfvaegan.train_tfvaegan
    train(data, config, on_epoch=on_epoch, device=device)
    passes = config.feedback_loop if kind == "tfvaegan" else 1
    steps = passes * math.ceil(len(data) / config.batch_size) * (len(stamps) - 1)
    return steps / (stamps[-1] - stamps[0])


def reference_clswgan(data: FeatureSet, cfg: clswgan.CLSWGANConfig, device: torch.device, steps: int) -> float:
    """Research-style f-CLSWGAN loop; returns generator steps per second."""
    feats, labels, text = data.features, data.labels, data.text_features  # stay on the host
    n, b, nz = len(feats), cfg.batch_size, cfg.resolved_noise_dim(data.text_dim)
    net_g = clswgan.build_generator(cfg, data.dim, data.text_dim).to(device)
    net_d = ConditionalCritic(data.dim, data.text_dim, cfg.hidden_dim).to(device)
    cls = torch.nn.Linear(data.dim, data.num_classes).to(device)  # stands in for the pre-trained classifier
    opt_g = torch.optim.Adam(net_g.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(net_d.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    input_res = torch.empty(b, data.dim, device=device)
    input_att = torch.empty(b, data.text_dim, device=device)
    input_label = torch.empty(b, dtype=torch.int64, device=device)
    noise = torch.empty(b, nz, device=device)

    def sample() -> None:
        idx = torch.randperm(n)[:b]
        input_res.copy_(F.normalize(feats[idx], dim=-1))
        input_att.copy_(text[labels[idx]])
        input_label.copy_(labels[idx])

    log = []
    start = 0.0
    for it in range(steps + 5):
        if it == 5:  # warm-up done
            sync(device)
            start = clock(device)
        for p in net_d.parameters():
            p.requires_grad = True
        for _ in range(cfg.critic_iters):
            sample()
            net_d.zero_grad()
            noise.normal_(0, 1)
            fake = net_g(noise, input_att)
            d_real = net_d(input_res, input_att).mean()
            d_fake = net_d(fake.detach(), input_att).mean()
            alpha = torch.rand(b, 1).to(device)
            gp = gradient_penalty(net_d, input_res, fake.detach(), input_att, alpha)
            d_cost = d_fake - d_real + cfg.gp_weight * gp
            d_cost.backward()
            opt_d.step()
        for p in net_d.parameters():
            p.requires_grad = False
        net_g.zero_grad()
        sample()
        noise.normal_(0, 1)
        fake = net_g(noise, input_att)
        g_cost = -net_d(fake, input_att).mean() + cfg.cls_weight * F.cross_entropy(cls(fake), input_label)
        g_cost.backward()
        opt_g.step()
        log.append((d_cost.item(), g_cost.item()))
    sync(device)
    return steps / (clock(device) - start)


def reference_tfvaegan(data: FeatureSet, cfg: tfvaegan.TFVAEGANConfig, device: torch.device, steps: int) -> float:
    """Research-style TF-VAEGAN loop (encoded noise, feedback in the second half); generator steps per second."""
    feats, labels, text = data.features, data.labels, data.text_features
    n, b, nz = len(feats), cfg.batch_size, cfg.resolved_noise_dim(data.text_dim)
    sampler = tfvaegan.build_generator(cfg, data.dim, data.text_dim).to(device)
    net_g, net_dec, net_f = sampler.generator, sampler.decoder, sampler.feedback
    net_e = tfvaegan.VAEEncoder(data.dim, data.text_dim, cfg.hidden_dim, nz).to(device)
    net_d = ConditionalCritic(data.dim, data.text_dim, cfg.hidden_dim).to(device)
    betas = (cfg.beta1, cfg.beta2)
    opt_e = torch.optim.Adam(net_e.parameters(), lr=cfg.lr, betas=betas)
    opt_g = torch.optim.Adam(net_g.parameters(), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(net_d.parameters(), lr=cfg.lr, betas=betas)
    opt_dec = torch.optim.Adam(net_dec.parameters(), lr=cfg.decoder_lr, betas=betas)
    opt_f = torch.optim.Adam(net_f.parameters(), lr=cfg.feedback_lr, betas=betas)
    input_res = torch.empty(b, data.dim, device=device)
    input_att = torch.empty(b, data.text_dim, device=device)

    def sample() -> None:
        idx = torch.randperm(n)[:b]
        input_res.copy_(F.normalize(feats[idx], dim=-1))
        input_att.copy_(F.normalize(text[labels[idx]], dim=-1))

    def gen(z: torch.Tensor, loop: int) -> torch.Tensor:
        x = net_g(z, input_att)
        if loop == 1:
            h = net_dec.hidden(x).detach()
            x = net_g(z, input_att, feedback=cfg.feedback_weight * net_f(h))
        return x

    log = []
    start = 0.0
    for it in range(steps + 5):
        if it == 5:
            sync(device)
            start = clock(device)
        loop = int(it >= (steps + 5) // 2)
        for p in net_d.parameters():
            p.requires_grad = True
        for p in net_dec.parameters():
            p.requires_grad = True
        for _ in range(cfg.critic_iters):
            sample()
            net_dec.zero_grad()
            r_cost = cfg.recon_weight * tfvaegan.weighted_l1(net_dec(input_res), input_att)
            r_cost.backward()
            opt_dec.step()
            net_d.zero_grad()
            mu, logvar = net_e(input_res, input_att)
            z = torch.randn(b, nz).to(device) * torch.exp(0.5 * logvar) + mu
            fake = gen(z, loop).detach()
            d_real = net_d(input_res, input_att).mean()
            d_fake = net_d(fake, input_att).mean()
            alpha = torch.rand(b, 1).to(device)
            d_cost = d_fake - d_real + cfg.gp_weight * gradient_penalty(net_d, input_res, fake, input_att, alpha)
            d_cost.backward()
            opt_d.step()
        for p in net_d.parameters():
            p.requires_grad = False
        for p in net_dec.parameters():
            p.requires_grad = False
        net_e.zero_grad()
        net_g.zero_grad()
        net_f.zero_grad()
        sample()
        mu, logvar = net_e(input_res, input_att)
        z = torch.randn(b, nz).to(device) * torch.exp(0.5 * logvar) + mu
        recon = gen(z, loop)
        vae = (recon - input_res).pow(2).sum() / b - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / b
        g_cost = vae - cfg.adv_weight * net_d(recon, input_att).mean()
        g_cost = g_cost + cfg.recon_weight * tfvaegan.weighted_l1(net_dec(recon), input_att)
        g_cost.backward()
        opt_e.step()
        opt_g.step()
        if loop == 1:
            opt_f.step()
        log.append((d_cost.item(), g_cost.item(), vae.item()))
    sync(device)
    return steps / (clock(device) - start)


def reference_generate(generator: torch.nn.Module, text: torch.Tensor, num: int, device: torch.device) -> torch.Tensor:
    """Research-style synthesis: one class at a time, noise refilled per class, copied back to the host per class."""
    nz = generator.noise_dim
    out = torch.empty(len(text) * num, generator.feature_dim)
    att = torch.empty(num, text.shape[1], device=device)
    noise = torch.empty(num, nz, device=device)
    with torch.no_grad():
        for i in range(len(text)):
            att.copy_(text[i].repeat(num, 1))
            noise.normal_(0, 1)
            out.narrow(0, i * num, num).copy_(generator(noise, att).cpu())
    return out


def time_generation(
    generator: torch.nn.Module, text: torch.Tensor, num: int, device: torch.device, rounds: int
) -> tuple[float, float]:
    """Best-round features per second of :func:`generate` (left on the device) and of the reference (on the host)."""
    sides = (lambda: generate(generator, text, num, seed=0), lambda: reference_generate(generator, text, num, device))
    rates: list[list[float]] = [[], []]
    for fn in sides:
        fn()  # warm-up
    for _ in range(rounds):
        for i, fn in enumerate(sides):
            sync(device)
            t = clock(device)
            fn()
            sync(device)
            rates[i].append(len(text) * num / (clock(device) - t))
    return max(rates[0]), max(rates[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=["clswgan", "tfvaegan", "both"], default="both")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--classes", type=int, default=40)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--text-dim", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--noise", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="core epochs timed (plus one untimed)")
    ap.add_argument("--steps", type=int, default=60, help="reference generator steps timed")
    ap.add_argument("--synth-per-class", type=int, default=1800)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (best and median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = synthetic(args.classes, args.per_class, args.dim, args.text_dim)
    common = {
        "seed": 0,
        "epochs": args.epochs + 1,
        "batch_size": args.batch,
        "hidden_dim": args.hidden,
        "noise_dim": args.noise,
    }
    print(
        f"device={device} threads={torch.get_num_threads()} N={len(data)} D={args.dim} D_t={args.text_dim} "
        f"hidden={args.hidden} noise={args.noise} batch={args.batch} critic_iters=5 "
        f"clock={'wall' if device.type == 'cuda' else 'process CPU time'}"
    )
    kinds = ["clswgan", "tfvaegan"] if args.kind == "both" else [args.kind]
    for kind in kinds:
        if kind == "clswgan":
            cfg = clswgan.CLSWGANConfig(cls_epochs=1, **common)
            reference = reference_clswgan
            generator = clswgan.build_generator(cfg, args.dim, args.text_dim).to(device)
        else:
            cfg = tfvaegan.TFVAEGANConfig(**common)
            reference = reference_tfvaegan
            generator = tfvaegan.build_generator(cfg, args.dim, args.text_dim).to(device)
        # Alternate the two sides so that load from other processes hits both alike. The best round is the one
        # least disturbed by other processes; the median is printed beside it.
        core, ref = [], []
        for _ in range(args.rounds):
            ref.append(reference(data, cfg, device, args.steps))
            core.append(time_core(kind, data, cfg, device))
        c, r = max(core), max(ref)
        print(
            f"{kind:9s} train  core {c:8.1f} gen-steps/s   reference {r:8.1f}   ratio {c / r:5.2f}x   "
            f"(medians {statistics.median(core):.1f} / {statistics.median(ref):.1f})"
        )
        gen_core, gen_ref = time_generation(
            generator, data.text_features.to(device), args.synth_per_class, device, args.rounds
        )
        ratio = gen_core / gen_ref
        print(f"{kind:9s} synth  core {gen_core:8.0f} feats/s       reference {gen_ref:8.0f}   ratio {ratio:5.2f}x")


if __name__ == "__main__":
    main()
