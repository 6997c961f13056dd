"""`zsc zeroshot`: zero-shot classification of a few images, or evaluation on an ImageFolder.

An evaluation over several replicas (``--address a,b``, ``ipv4:A,B``, ``dns:///NAME:PORT``) is cut into
``fanout.SHARDS_PER_REPLICA`` contiguous index ranges per replica on the batch grid, run as independent shard
operations by ``zsc.cli.fanout`` (a lost replica's shards go to the others), and merged: confusion matrices add up,
so the report is exactly one replica's. ``--image`` sends one ZeroShot call through a round_robin channel."""

from __future__ import annotations

import argparse
import itertools
import mimetypes
import sys
import time
from pathlib import Path

import numpy as np

from zsc import codec
from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.cli import fanout
from zsc.cli.common import (
    CommandError,
    add_class_map_arg,
    add_client_args,
    class_map,
    follow,
    markdown_table,
    open_channel,
    parse_names,
    save_evaluation,
)
from zsc.common.v1 import common_pb2
from zsc.data import ImageFolder
from zsc.runtime import client
from zsc.runtime.client import unpack

METHODS = {"clip": pb.CLIP, "diffusion": pb.DIFFUSION}
# The service's default evaluation batch per method (classification servicer): shards are cut on this grid, so each
# replica's batches are exactly those one server runs (batch composition can move a float in the last place).
DEFAULT_BATCH = {pb.CLIP: 64, pb.DIFFUSION: 8}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zeroshot", help="zero-shot classification (CLIP or Diffusion Classifier)")
    p.add_argument("--method", choices=sorted(METHODS), default="clip")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="ImageFolder to evaluate (<root>/<class>/<image>)")
    src.add_argument("--image", nargs="+", type=Path, help="image files to classify (needs --classes)")
    p.add_argument(
        "--classes",
        help="comma-separated class names, or @FILE one a line (default for --data: the folder names); with --data "
        "each is matched to the folder of that name and their order is the label order",
    )
    add_class_map_arg(p)
    p.add_argument("--templates", nargs="+", default=[], help='custom prompt templates, each with "{}"')
    p.add_argument("--template-set", default="", help="openai_imagenet (default), simple_imagenet, cifar, single")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most N images, spread over the classes")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--experiment", default="", help="MLflow experiment (default: zsc-zeroshot)")
    dc = p.add_argument_group("Diffusion Classifier")
    dc.add_argument("--preset", default="", help="paper schedule: cifar10, pets, stl10, flowers, food, aircraft, ...")
    dc.add_argument("--stages", help='explicit schedule as "n_samples:to_keep,..." e.g. "50:5,500:1"')
    dc.add_argument("--loss", default="", choices=["", "l1", "l2", "huber"])
    dc.add_argument("--seed", type=int, default=0)
    dc.add_argument("--unet-batch-size", type=int, default=0, help="UNet batch (default 64)")
    dc.add_argument("--dtype", default="", choices=["", "float32", "float16", "bfloat16"])
    dc.add_argument("--n-trials", type=int, default=0, help="noise draws per timestep (default 1, the authors')")
    p.add_argument("--results", type=Path, help="append per-image results to this JSONL file; a rerun resumes from it")
    p.add_argument("--metrics-out", type=Path, help="write the metrics as JSON (for DVC)")
    p.add_argument("--plots-dir", type=Path, help="write per-class accuracy and confusion CSVs (for DVC plots)")
    add_client_args(p, "classification")
    p.set_defaults(func=cmd_zeroshot)


def _diffusion_options(args: argparse.Namespace) -> pb.DiffusionOptions:
    stages = []
    for part in (args.stages or "").split(","):
        if part.strip():
            n, _, keep = part.partition(":")
            stages.append(pb.DiffusionStage(n_samples=int(n), to_keep=int(keep)))
    return pb.DiffusionOptions(
        preset=args.preset,
        stages=stages,
        loss=args.loss,
        seed=args.seed,
        batch_size=args.unet_batch_size,
        dtype=args.dtype,
        n_trials=args.n_trials,
    )


def cmd_zeroshot(args: argparse.Namespace) -> int:
    classes = parse_names(args.classes, "--classes") if args.classes else []
    prompts = pb.PromptSpec(templates=args.templates, template_set=args.template_set)
    diffusion = _diffusion_options(args) if args.method == "diffusion" else None
    if args.image:
        # one unary call: a multi-replica target spreads such calls round_robin (no operation to follow)
        with open_channel(args, "classification", balanced=True) as channel:
            return _classify_images(pb_grpc.ClassificationStub(channel), args, classes, prompts, diffusion)
    data = Path(args.data).resolve()
    request = pb.EvaluateZeroShotRequest(
        method=METHODS[args.method],
        data_uri=str(data),
        class_names=classes,
        folder_to_class=class_map(args),
        prompts=prompts,
        limit=args.limit,
        batch_size=args.batch_size,
        experiment=args.experiment,
        diffusion=diffusion,
    )
    target = args.address or client.address_from_env("classification")
    replicas = client.resolve_target(target) if target else []
    start = time.perf_counter()
    if len(replicas) > 1:
        results = evaluate_sharded(replicas, request, args.results, args.profile)
    else:
        if args.results:
            request.results_uri = str(args.results.resolve())
        with open_channel(args, "classification", [data, args.results.parent if args.results else ""]) as channel:
            op = follow(channel, pb_grpc.ClassificationStub(channel).EvaluateZeroShot(request), f"{args.method}")
            results = [(unpack(op, pb.EvaluationResult), dict(op.metadata.metrics))]
    names, per_class, confusion, metrics = merge_results(results, time.perf_counter() - start, max(1, len(replicas)))
    print_evaluation(names, per_class, confusion, metrics, [r.mlflow_run_id for r, _ in results])
    save_evaluation(names, per_class, confusion.tolist(), metrics, args.metrics_out, args.plots_dir)
    return 0


def evaluate_sharded(
    replicas: list[client.Replica],
    request: pb.EvaluateZeroShotRequest,
    results: Path | None = None,
    profile: str | None = None,
    on_start: fanout.OnStart | None = None,
    shards_per_replica: int = fanout.SHARDS_PER_REPLICA,
) -> list[tuple[pb.EvaluationResult, dict[str, float]]]:
    """The samples cut into ``shards_per_replica`` contiguous ranges per replica, evaluated by whichever replica is
    free (``fanout.run_shards``); each shard's result and final metrics, in sample order. With ``results``, shard k
    of N logs to ``RESULTS.shardKofN`` (a shard re-run elsewhere resumes from its log)."""
    try:
        n = len(ImageFolder.open(Path(request.data_uri), request.limit, request.class_names, request.folder_to_class))
    except Exception as err:
        raise CommandError(f"sharding over replicas needs the dataset visible here too: {err}") from err
    grid = request.batch_size or DEFAULT_BATCH[request.method]
    bounds = shard_bounds(n, shards_per_replica * len(replicas), grid)
    parts = []
    for k, (lo, hi) in enumerate(bounds):
        part = pb.EvaluateZeroShotRequest()
        part.CopyFrom(request)
        part.shard_start, part.shard_stop = lo, hi
        if results is not None:
            part.results_uri = f"{results.resolve()}.shard{k}of{len(bounds)}"
        parts.append(part)
    method = pb.ZeroShotMethod.Name(request.method).lower()
    run = fanout.run_shards(
        "classification",
        replicas,
        parts,
        lambda channel, part: pb_grpc.ClassificationStub(channel).EvaluateZeroShot(part),
        profile=profile,
        description=f"{method} shard",
        on_start=on_start,
    )
    print(f"zsc: {run.summary(len(replicas))}", file=sys.stderr)
    return [(unpack(op, pb.EvaluationResult), dict(op.metadata.metrics)) for op in run.operations]


def shard_bounds(n: int, parts: int, grid: int) -> list[tuple[int, int]]:
    """At most ``parts`` contiguous ranges covering [0, n), every cut on a multiple of ``grid``, sizes within one
    grid step of each other."""
    chunks = -(-n // grid)
    parts = max(1, min(parts, chunks))
    cuts = [min(n, round(i * chunks / parts) * grid) for i in range(parts + 1)]
    return list(itertools.pairwise(cuts))


def merge_results(
    results: list[tuple[pb.EvaluationResult, dict[str, float]]], wall_seconds: float, replicas: int = 1
) -> tuple[list[str], list[float], np.ndarray, dict[str, float]]:
    """One report from the shards of several replicas: confusion matrices add up exactly.

    ``seconds_per_image`` is the servers' own figure: evaluation time per image computed in this run (resumed images
    cost nothing), averaged over the shards by their images and divided by the ``replicas`` working at once: the
    effective time per image. ``wall_seconds`` is the whole command, with server start-up, model loading and MLflow
    logging, which would dominate a short run's per-image figure.
    """
    names = list(results[0][0].class_names)
    confusion = sum(codec.decode(r.confusion) for r, _ in results)
    support = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / support[i]) if support[i] else 0.0 for i in range(len(names))]
    n = int(confusion.sum())
    metrics = {
        "top1": float(np.trace(confusion) / max(1, n)),
        "macro_accuracy": float(np.mean([a for a, s in zip(per_class, support, strict=True) if s])),
        "n_images": n,
        "seconds_per_image": sum(r.seconds_per_image * r.n_images for r, _ in results) / max(1, n) / replicas,
        "wall_seconds": wall_seconds,
    }
    passes = [m["unet_passes_per_image"] * r.n_images for r, m in results if "unet_passes_per_image" in m]
    if passes:
        metrics["unet_passes_per_image"] = sum(passes) / n
    return names, per_class, confusion, metrics


def _classify_images(
    stub: pb_grpc.ClassificationStub,
    args: argparse.Namespace,
    classes: list[str],
    prompts: pb.PromptSpec,
    diffusion: pb.DiffusionOptions | None,
) -> int:
    if not classes:
        raise CommandError("--image needs --classes")
    images = []
    for path in args.image:
        if not path.is_file():
            raise CommandError(f"no such image: {path}")
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        images.append(common_pb2.Image(data=path.read_bytes(), mime=mime))
    reply = stub.ZeroShot(
        pb.ZeroShotRequest(
            method=METHODS[args.method],
            class_names=classes,
            prompts=prompts,
            images=images,
            top_k=args.top_k,
            diffusion=diffusion,
        )
    )
    for i, (path, top) in enumerate(zip(args.image, reply.top_k, strict=True)):
        if reply.diffusion:
            result = reply.diffusion[i]
            print(f"{path}: {result.class_name} (ranking {', '.join(top.labels)}; {result.unet_passes} UNet passes)")
        else:
            ranked = ", ".join(f"{label} {p:.3f}" for label, p in zip(top.labels, top.probs, strict=True))
            print(f"{path}: {ranked}")
    return 0


def print_evaluation(
    names: list[str], per_class: list[float], confusion: np.ndarray, metrics: dict[str, float], runs: list[str]
) -> None:
    # s/image to 3 significant digits: a tiny model's figure (well under a millisecond) must not print as 0.000
    print(
        f"top-1 accuracy: {metrics['top1']:.4f} over {metrics['n_images']} images "
        f"(macro {metrics['macro_accuracy']:.4f}; {metrics['seconds_per_image']:.3g} s/image, "
        f"{metrics['wall_seconds']:.1f} s wall with start-up)"
    )
    if "unet_passes_per_image" in metrics:
        print(f"UNet passes per image: {metrics['unet_passes_per_image']:.0f}")
    print()
    print(markdown_table(["class", "accuracy"], [[n, a] for n, a in zip(names, per_class, strict=True)]))
    print()
    print("confusion matrix (rows = true, columns = predicted):")
    rows = [[n, *map(int, row)] for n, row in zip(names, confusion, strict=True)]
    print(markdown_table(["true \\ pred", *names], rows))
    print(f"\nMLflow run{'s' if len(runs) > 1 else ''}: {', '.join(runs)}")
