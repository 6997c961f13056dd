"""GPU check: the CUDA paths on the tiny and the paper-shaped models, in under 10 minutes.

    python bench/gpu_check.py                        # everything (builds the paper-shaped models once if needed)
    python bench/gpu_check.py --skip-paper-shaped    # the tiny models only (about a minute)
    python bench/gpu_check.py --budget 300           # stop starting checks after 300 s

Runs, for fp16 and bf16: SDPA's fused kernels (flash, memory-efficient) against the math kernel; the Diffusion
Classifier core against the literal loop (bench/diffusion_classifier.py: same noise, s/image as a ratio, predictions
identical); synthesis, zsc's batched generator against a diffusers per-prompt loop (bench/synthesis.py, img/s as a
ratio); and the DC with ``torch.compile``. Paper-shaped models have random weights: their speeds are real, their
predictions are meaningless (identical or not, core against loop, is what counts). Without CUDA it exits 2 with one
line. Exit 1 when a check fails or mismatches, 0 when all pass.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10-test"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DTYPES = ("float16", "bfloat16")


@dataclass
class Check:
    name: str
    ok: bool
    summary: str


def require_cuda() -> str | None:
    """None when CUDA works, else the one-line reason."""
    try:
        import torch
    except ImportError as err:
        return f"torch is not importable ({err})"
    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA"
        return f"CUDA is not available (torch {torch.__version__}, built with {built}); run this on a GPU machine"
    return None


def fake_cifar(root: Path, per_class: int) -> Path:
    """Random 32x32 images in the CIFAR-10 layout bench/diffusion_classifier.py reads, for machines without the data
    (the check compares core and loop on the same images; what they show does not matter)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in CIFAR10_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i:04d}.jpg")
    return root


def sdpa_check(dtype_name: str) -> Check:
    """Each fused SDPA kernel against the math kernel in fp32, at SD's largest self-attention (64x64 tokens)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 5, 4096, 64, device="cuda", generator=gen) for _ in range(3))
    with sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(q, k, v)
    parts, ok = [], True
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype))
            err = (out.float() - ref).abs().max().item()
            good = err < (2e-2 if dtype == torch.bfloat16 else 5e-3)
            ok &= good
            parts.append(f"{backend.name.lower()} max err {err:.1e}{'' if good else ' (TOO LARGE)'}")
        except RuntimeError as e:  # a kernel this GPU/dtype lacks is a finding, not a crash
            ok = False
            parts.append(f"{backend.name.lower()} unavailable ({str(e).splitlines()[0][:80]})")
    return Check(f"SDPA {dtype_name}", ok, "; ".join(parts))


def run_bench(name: str, argv: list[str], timeout: float) -> tuple[Check, str]:
    """Run a bench script in a fresh interpreter (its own CUDA context and peak memory) and summarize its ratios."""
    if timeout < 20:
        return Check(name, False, "skipped: out of time budget"), ""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )
    except subprocess.TimeoutExpired:
        return Check(name, False, f"timed out after {timeout:.0f} s"), ""
    out = proc.stdout + proc.stderr
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        last = [line for line in out.splitlines() if line.strip()][-1:] or ["(no output)"]
        return Check(name, False, f"exit {proc.returncode}: {last[0][:160]}"), out
    speed = re.search(r"speed-up:?\s+([\d.]+)x", out)
    core = re.search(r"^core\s+([\d.]+) s/image", out, re.M)
    ref = re.search(r"^reference\s+([\d.]+) s/image", out, re.M)
    ips = re.findall(r"([\d.]+) images/s", out)
    same = re.search(r"predictions identical: (True|False)", out)
    summary = f"{seconds:.0f} s wall"
    if core and ref:
        summary += f"; core {core[1]} s/image, loop {ref[1]} s/image"
    if len(ips) >= 2:
        summary += f"; zsc {ips[0]} img/s, diffusers loop {ips[1]} img/s"
    if speed:
        summary += f"; ratio {speed[1]}x"
    ok = True
    if same:
        ok = same[1] == "True"
        summary += f"; predictions identical: {same[1]}"
    return Check(name, ok, summary), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=540, help="seconds after which no new check starts")
    parser.add_argument("--skip-paper-shaped", action="store_true")
    parser.add_argument("--root", type=Path, default=None, help="paper-shaped model folder (default: the cache)")
    parser.add_argument("--verbose", action="store_true", help="print each bench's full output")
    args = parser.parse_args(argv)

    reason = require_cuda()
    if reason:
        print(f"gpu_check: {reason}", file=sys.stderr)
        return 2
    import torch

    deadline = time.perf_counter() + args.budget
    left = lambda: deadline - time.perf_counter()  # noqa: E731
    props = torch.cuda.get_device_properties(0)
    print(
        f"gpu_check on {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
    )
    checks = [sdpa_check(d) for d in DTYPES]

    models = [("tiny", "tiny:zsc-tiny-sd", "tiny:zsc-tiny-sd")]
    if not args.skip_paper_shaped:
        from zsc.models import paper_shaped

        start = time.perf_counter()
        paths = paper_shaped.build_all(args.root)
        checks.append(Check("build paper-shaped models", True, f"{time.perf_counter() - start:.0f} s"))
        models.append(("paper-shaped", str(paths["sd-2-base"]), str(paths["sd-1-4"])))

    data = CIFAR10 if CIFAR10.is_dir() else fake_cifar(Path(tempfile.mkdtemp(prefix="zsc-gpu-check-")), 1)
    dc = [str(BENCH / "diffusion_classifier.py"), "--device", "cuda", "--data", str(data), "--limit", "2"]
    synth = [str(BENCH / "synthesis.py"), "--device", "cuda", "--repeats", "1"]
    for label, dc_ref, sd_ref in models:
        # paper size: a short schedule (10 classes x 10 + 2 x 10 = 120 UNet passes per image) and 10 sampler steps
        stages = ["--stages", "10:2,20:1"] if label != "tiny" else []
        sizes = ["--images", "16", "--batch-size", "16", "--steps", "10"]
        for dtype in DTYPES:
            runs = [
                (f"DC {label} {dtype} (core vs loop)", [*dc, "--ref", dc_ref, "--dtype", dtype, *stages]),
                (f"synthesis {label} {dtype} (zsc vs loop)", [*synth, "--ref", sd_ref, "--dtype", dtype, *sizes]),
            ]
            for name, cmd in runs:
                check, out = run_bench(name, cmd, left())
                checks.append(check)
                if args.verbose or not check.ok:
                    print(out)
        name = f"DC {label} float16 torch.compile (core vs loop)"
        check, out = run_bench(name, [*dc, "--ref", dc_ref, "--dtype", "float16", "--compile", *stages], left())
        checks.append(check)
        if args.verbose or not check.ok:
            print(out)

    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.name:{width}s}  {c.summary}")
    failed = [c.name for c in checks if not c.ok]
    tail = f"; failed: {', '.join(failed)}" if failed else ""
    print(f"gpu_check: {len(checks) - len(failed)}/{len(checks)} passed{tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
