"""Benchmark: a job's torch speed when earlier jobs ran on a kept thread pool vs on threads that ended with them.

    python bench/job_threads.py            # tiny Diffusion Classifier, cifar10 preset, 2 images per timed job

torch's CPU intra-op threads are an OpenMP team per calling thread. When a second team stays alive (an idle pool
thread that once ran a job), libgomp counts more threads than cores and stops spinning between parallel regions,
so every small op pays a futex hand-off. The OperationManager therefore runs each job on a fresh thread that ends
with it. Both strategies run here, in this process: two concurrent warm-up jobs, then one timed job alone.
Fresh threads first, so the pool's threads (which outlive their jobs) cannot slow them down.
"""

# ruff: noqa: E402  (CPU tuning runs before torch is imported, on purpose)
from __future__ import annotations

from zsc.runtime.tuning import apply_cpu_tuning

apply_cpu_tuning()  # before torch loads: it reads its allocator options then

import argparse
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from google.protobuf import empty_pb2

from zsc.models.diffusion import create_sd_components
from zsc.runtime.operations import OperationManager
from zsc_classification.core.diffusion_classifier import DiffusionClassifier, DiffusionClassifierOptions

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="images per timed job")
    args = parser.parse_args()
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(args.images)]
    holder: dict[str, DiffusionClassifier] = {}
    # Load on a thread that ends, so the main thread starts no OpenMP team of its own.
    parts = "tiny:zsc-tiny-sd"
    loader = threading.Thread(target=lambda: holder.update(c=DiffusionClassifier(create_sd_components(parts))))
    loader.start()
    loader.join()
    classifier = holder["c"]
    warm = DiffusionClassifierOptions(stages=((10, 5), (50, 1)))
    timed = DiffusionClassifierOptions.from_preset("cifar10")

    def work(options: DiffusionClassifierOptions) -> float:
        start = time.perf_counter()
        classifier.classify(images, CLASSES, options)
        return (time.perf_counter() - start) / len(images)

    def fresh_threads() -> float:
        manager = OperationManager("bench", max_concurrent=2)
        seconds: list[float] = []

        def job(options: DiffusionClassifierOptions, out: list[float] | None = None) -> Callable[..., object]:
            def run(ctx: object) -> empty_pb2.Empty:
                value = work(options)
                if out is not None:
                    out.append(value)
                return empty_pb2.Empty()

            return run

        def wait(*operations: object) -> None:
            for operation in operations:
                for _ in manager.watch(operation.name):
                    pass

        wait(manager.start("warm", job(warm)), manager.start("warm", job(warm)))
        wait(manager.start("timed", job(timed, seconds)))
        manager.shutdown()
        return seconds[0]

    def kept_pool() -> float:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(work, [warm, warm]))
            return pool.submit(work, timed).result()

    fresh = fresh_threads()
    pool = kept_pool()
    print(f"torch threads {torch.get_num_threads()}; tiny Diffusion Classifier, cifar10 preset, {args.images} img/job")
    print(f"job on a fresh thread (OperationManager): {fresh:.3f} s/image")
    print(f"job on a kept pool thread               : {pool:.3f} s/image")
    print(f"fresh threads are {pool / fresh:.2f}x faster")


if __name__ == "__main__":
    main()
