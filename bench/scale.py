"""Scale bench: one fixed CIFAR-10 CLIP zero-shot evaluation on 1, 2 and 3 loopback replicas of the classification
service, sharded through ``zsc.client.fanout`` exactly as `zsc zeroshot --address ipv4:...` does; then a projection of
the paper-profile Diffusion Classifier on N GPUs.

Each replica is a `zsc serve classification` process with ``--threads`` torch intra-op threads (default 1), so
N replicas use N cores; the machine's core count caps the speed-up, and the per-core efficiency divides it out:
speed-up / min(N, cores). Every run must give the same confusion matrix as the one-replica run (it is checked).

The projection: CIFAR-10's 10,000 test images at ``--seconds-per-image`` per image on one GPU (default 30 s on an
A100 for the cifar10 preset's 2,750 UNet passes, methods.md §2; or ``--seconds-per-pass`` x 2,750, e.g. from
bench/paper_shaped.py on the GPU at hand), cut into ``SHARDS_PER_REPLICA`` shards per GPU on the 8-image batch grid
and handed out first-come first-served as the work queue does, plus the per-shard overhead measured here.

    python bench/scale.py                      # 2,000 images, 1/2/3 replicas, tiny profile
    python bench/scale.py --limit 10000 --replicas 1,2,4 --threads 2
"""

from __future__ import annotations

import argparse
import heapq
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from zsc.client import classification, fanout
from zsc.client.classification import DEFAULT_BATCH, shard_bounds
from zsc.runtime import client

REPO = Path(__file__).resolve().parents[1]
CIFAR10_TEST = (REPO.parent / "shared" / "datasets" / "cifar10-test").resolve()
DC_PASSES_PER_IMAGE = 2750  # the cifar10 preset over 10 classes (methods.md §2)
DC_A100_SECONDS_PER_IMAGE = 30.0  # methods.md §2: about 30 s per CIFAR-10 image on an A100
CIFAR10_TEST_IMAGES = 10_000


def spawn_replicas(
    service: str,
    n: int,
    data_roots: list[Path],
    log_dir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> list[tuple[subprocess.Popen, str]]:
    """``n`` `zsc serve SERVICE --port 0` processes started at once; each (process, address) once it printed its
    address and answers SERVING. Kills them all if one does not come up."""
    roots = [arg for root in data_roots for arg in ("--data-root", str(root))]
    procs = []
    for i in range(n):
        with open(log_dir / f"{service}-{i}.log", "ab") as stderr:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "zsc.cli.main", "serve", service, "--port", "0", *roots],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    env={**os.environ, **(env or {})},
                )
            )
    replicas = []
    try:
        deadline = time.monotonic() + timeout
        for i, proc in enumerate(procs):
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline().strip() if ready else ""
            if not line.startswith(f"{service} on "):
                log = (log_dir / f"{service}-{i}.log").read_text()[-2000:]
                raise RuntimeError(f"replica {i} did not start: {line!r}; log: {log}")
            address = line.removeprefix(f"{service} on ")
            channel = client.connect(address)
            try:
                client.wait_until_serving(channel, timeout=max(1.0, deadline - time.monotonic()))
            finally:
                channel.close()
            replicas.append((proc, address))
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    return replicas


def stop_replicas(replicas: list[tuple[subprocess.Popen, str]]) -> None:
    for proc, _ in replicas:
        if proc.poll() is None:
            proc.terminate()
    for proc, _ in replicas:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def queue_makespan(sizes: list[int], workers: int, seconds_per_item: float, overhead: float) -> float:
    """The work queue's wall time: shards taken in order by whichever worker is free first."""
    free = [0.0] * workers
    for size in sizes:
        heapq.heappush(free, heapq.heappop(free) + size * seconds_per_item + overhead)
    return max(free)


def projection(seconds_per_image: float, overhead: float, gpus: list[int], shards_per_replica: int) -> list[list]:
    """Rows of the projected table: GPUs, shards, wall hours, images per hour, speed-up and efficiency against one
    GPU running the same queue."""

    def wall(n: int) -> tuple[int, float]:
        bounds = shard_bounds(CIFAR10_TEST_IMAGES, shards_per_replica * n, DEFAULT_BATCH["diffusion"])
        return len(bounds), queue_makespan([hi - lo for lo, hi in bounds], n, seconds_per_image, overhead)

    rows = []
    one = wall(1)[1]
    for n in gpus:
        shards, wall_n = wall(n)
        rows.append([n, shards, wall_n / 3600, CIFAR10_TEST_IMAGES / wall_n * 3600, one / wall_n, one / wall_n / n])
    return rows


def table(header: list[str], rows: list[list], formats: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(f.format(v) for f, v in zip(formats, row, strict=True)) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=CIFAR10_TEST)
    ap.add_argument("--limit", type=int, default=2000, help="images of the fixed evaluation, spread over the classes")
    ap.add_argument("--replicas", default="1,2,3")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per replica")
    ap.add_argument("--shards-per-replica", type=int, default=fanout.SHARDS_PER_REPLICA)
    ap.add_argument("--batch-size", type=int, default=0, help="evaluation batch (default: the service's, 64)")
    ap.add_argument("--seconds-per-image", type=float, default=DC_A100_SECONDS_PER_IMAGE)
    ap.add_argument("--seconds-per-pass", type=float, help="instead: measured s per UNet pass x 2,750 passes")
    ap.add_argument("--gpus", default="1,2,4,8,16,32,64")
    args = ap.parse_args()
    counts = [int(c) for c in args.replicas.split(",")]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="zsc-scale-") as tmp:
        threads = str(args.threads)
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "ZSC_MLFLOW_DIR": str(Path(tmp) / "mlflow")}
        os.environ["ZSC_MLFLOW_DIR"] = env["ZSC_MLFLOW_DIR"]  # the bench's runs stay out of the project's store
        print(f"starting {max(counts)} classification replicas (tiny profile, {threads} thread(s) each) ...")
        servers = spawn_replicas("classification", max(counts), [args.data.resolve()], Path(tmp), env)
        try:
            replicas = [client.Replica(address) for _, address in servers]
            data = args.data.resolve()
            for replica in replicas:  # each one's first job pays lazy imports and the MLflow experiment
                classification.evaluate_zero_shot(
                    [replica], data, limit=64, batch_size=args.batch_size, shards_per_replica=1
                )
            rows, reference, overhead = [], None, 0.0
            for n in counts:
                start = time.perf_counter()
                result = classification.evaluate_zero_shot(
                    replicas[:n],
                    data,
                    limit=args.limit,
                    batch_size=args.batch_size,
                    shards_per_replica=args.shards_per_replica,
                )
                wall = time.perf_counter() - start
                confusion, shards = result.confusion, len(result.mlflow_run_ids)
                images = int(confusion.sum())
                # the servers' own evaluation time, added over the shards (the merged figure is per replica)
                compute = result.metrics["seconds_per_image"] * images * n
                if reference is None:
                    reference, base = confusion, images / wall
                    # what a shard costs beyond its images: op start, watch, MLflow run and logging
                    overhead = max(0.0, (wall - compute) / shards)
                same = "yes" if np.array_equal(confusion, reference) else "NO"
                rate = images / wall
                row = [n, shards, images, wall, compute, rate, rate / base, rate / base / min(n, cores), same]
                rows.append(row)
        finally:
            stop_replicas(servers)
    print(f"\nCIFAR-10 CLIP zero-shot (tiny profile), {args.limit} images, {cores} cores on this machine:\n")
    header = ["replicas", "shards", "images", "wall s", "compute s", "images/s", "vs 1", "per-core efficiency", "same"]
    print(table(header, rows, ["{}", "{}", "{}", "{:.1f}", "{:.1f}", "{:.1f}", "{:.2f}x", "{:.0%}", "{}"]))
    print("(compute s: the replicas' own evaluation time, added over the shards; the rest of the wall time is the")
    print(" shards' start, watch and MLflow logging, and replicas waiting for a core)")
    seconds = args.seconds_per_image
    source = "methods.md, A100"
    if args.seconds_per_pass is not None:
        seconds, source = args.seconds_per_pass * DC_PASSES_PER_IMAGE, f"{args.seconds_per_pass} s/pass x 2,750"
    gpus = [int(g) for g in args.gpus.split(",")]
    print(
        f"\nProjection: paper-profile Diffusion Classifier, cifar10 preset, {CIFAR10_TEST_IMAGES:,} test images at "
        f"{seconds:.1f} s/image per GPU ({source}), {args.shards_per_replica} shards per GPU on the 8-image grid, "
        f"{overhead:.2f} s overhead per shard (measured above):\n"
    )
    header = ["GPUs", "shards", "wall h", "images/h", "speed-up", "efficiency"]
    print(
        table(
            header,
            projection(seconds, overhead, gpus, args.shards_per_replica),
            ["{}", "{}", "{:.2f}", "{:.0f}", "{:.2f}x", "{:.0%}"],
        )
    )


if __name__ == "__main__":
    main()
