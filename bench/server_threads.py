"""Benchmark: TF-VAEGAN training wall time per job for each `zsc serve --threads` setting, one job alone and two
jobs at once (a server runs up to `--max-operations` 2 jobs concurrently), on this machine's cores.

    python bench/server_threads.py                 # threads 1 and all cores, 1 and 2 concurrent jobs
    python bench/server_threads.py --epochs 2 --threads 1,2,4

Each setting runs in a fresh process (torch's thread count is process-wide and its OpenMP teams outlive jobs), the
jobs on threads started by the process, as the OperationManager starts them. The reference is torch's default
(one thread per core) with one job alone; every other figure is a ratio to it, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

from zsc.features import FeatureSet
from zsc_generative.core import tfvaegan


def problem(seed: int = 0) -> FeatureSet:
    """12 classes x 100 features, D 512, text D 384: the shape of a small DFZSL generator run."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(12, 384, generator=g)
    means = torch.randn(12, 512, generator=g)
    labels = torch.arange(12).repeat_interleave(100)
    feats = means[labels] + 0.5 * torch.randn(len(labels), 512, generator=g)
    return FeatureSet(feats, labels, [f"c{i}" for i in range(12)], text)


def child(threads: int, jobs: int, epochs: int) -> None:
    """Time ``jobs`` concurrent trainings with ``threads`` intra-op threads; print the seconds of each as JSON."""
    if threads:
        torch.set_num_threads(threads)
    data = problem()
    config = tfvaegan.TFVAEGANConfig(epochs=epochs)
    seconds: list[float] = []

    def job() -> None:
        start = time.perf_counter()
        tfvaegan.train_tfvaegan(data, config)
        seconds.append(time.perf_counter() - start)

    workers = [threading.Thread(target=job) for _ in range(jobs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps({"threads": torch.get_num_threads(), "seconds": seconds}))


def run(threads: int, jobs: int, epochs: int) -> dict:
    argv = [sys.executable, __file__, "--child", f"{threads},{jobs}", "--epochs", str(epochs)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}", help="settings to compare, comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        threads, jobs = map(int, args.child.split(","))
        child(threads, jobs, args.epochs)
        return
    reference = max(run(0, 1, args.epochs)["seconds"])
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; TF-VAEGAN, {args.epochs} epochs per job")
    print(f"reference: torch's default threads, 1 job alone: {reference:.2f} s\n")
    print("| --threads | jobs at once | s per job (slowest) | vs reference | jobs per s vs reference |")
    print("|---|---|---|---|---|")
    for threads in map(int, args.threads.split(",")):
        for jobs in (1, 2):
            slowest = max(run(threads, jobs, args.epochs)["seconds"])
            print(
                f"| {threads} | {jobs} | {slowest:.2f} | {slowest / reference:.2f}x | "
                f"{jobs * reference / slowest:.2f}x |"
            )


if __name__ == "__main__":
    main()
