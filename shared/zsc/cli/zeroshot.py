"""`zsc zeroshot`: zero-shot classification of a few images, or evaluation on an ImageFolder.

An evaluation over several replicas (``--address a,b``, ``ipv4:A,B``, ``dns:///NAME:PORT``) is cut into
``SHARDS_PER_REPLICA`` contiguous index ranges per replica on the batch grid, run as independent shard
operations by ``zsc.client.fanout`` (a lost replica's shards go to the others), and merged: confusion matrices add
up, so the report is exactly one replica's (``zsc.client.classification``). ``--image`` sends one ZeroShot call
through a round_robin channel."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from zsc.cli.common import (
    CommandError,
    add_class_map_arg,
    add_client_args,
    class_map,
    default_of,
    markdown_table,
    open_channel,
    parse_names,
    progress_bar,
    save_evaluation,
)
from zsc.client import classification
from zsc.runtime import client

METHODS = classification.METHODS.names


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
    # The request's seed has no unset state (proto3 int64): the service runs with the seed sent, so 0 is the CLI's.
    dc.add_argument("--seed", type=int, default=0)
    dc.add_argument(
        "--unet-batch-size",
        type=int,
        default=0,
        help=f"UNet batch (default {default_of('DiffusionClassifierOptions', 'batch_size')})",
    )
    dc.add_argument("--dtype", default="", choices=["", "float32", "float16", "bfloat16"])
    dc.add_argument(
        "--n-trials",
        type=int,
        default=0,
        help=f"noise draws per timestep (default {default_of('DiffusionClassifierOptions', 'n_trials')}, the authors')",
    )
    p.add_argument("--results", type=Path, help="append per-image results to this JSONL file; a rerun resumes from it")
    p.add_argument("--metrics-out", type=Path, help="write the metrics as JSON (for DVC)")
    p.add_argument("--plots-dir", type=Path, help="write per-class accuracy and confusion CSVs (for DVC plots)")
    add_client_args(p, "classification")
    p.set_defaults(func=cmd_zeroshot)


def _diffusion_options(args: argparse.Namespace) -> dict[str, Any]:
    stages = []
    for part in (args.stages or "").split(","):
        if part.strip():
            n, _, keep = part.partition(":")
            stages.append({"n_samples": int(n), "to_keep": int(keep)})
    return {
        "preset": args.preset,
        "stages": stages,
        "loss": args.loss,
        "seed": args.seed,
        "batch_size": args.unet_batch_size,
        "dtype": args.dtype,
        "n_trials": args.n_trials,
    }


def cmd_zeroshot(args: argparse.Namespace) -> int:
    classes = parse_names(args.classes, "--classes") if args.classes else []
    prompts = {"templates": args.templates, "template_set": args.template_set}
    diffusion = _diffusion_options(args) if args.method == "diffusion" else None
    if args.image:
        if not classes:
            raise CommandError("--image needs --classes")
        # one unary call: a multi-replica target spreads such calls round_robin (no operation to follow)
        with open_channel(args, "classification", balanced=True) as channel:
            reply = classification.zero_shot(
                channel, args.image, classes, method=args.method, top_k=args.top_k, diffusion=diffusion, **prompts
            )
        print_predictions(args.image, reply)
        return 0
    data = Path(args.data).resolve()
    options = dict(
        method=args.method,
        class_names=classes,
        folder_to_class=class_map(args),
        limit=args.limit,
        batch_size=args.batch_size,
        experiment=args.experiment,
        diffusion=diffusion,
        results=args.results,
        **prompts,
    )
    target = args.address or client.address_from_env("classification")
    replicas = client.resolve_target(target) if target else []
    start = time.perf_counter()
    with progress_bar(args.method) as progress:
        if len(replicas) > 1:
            result = classification.evaluate_zero_shot(
                replicas, data, profile=args.profile, progress=progress, **options
            )
            if result.shards is not None:
                print(f"zsc: {result.shards.summary(len(replicas))}", file=sys.stderr)
        else:
            roots = [data, args.results.parent if args.results else ""]
            with open_channel(args, "classification", roots) as channel:
                result = classification.evaluate_zero_shot(channel, data, progress=progress, **options)
    result.metrics["wall_seconds"] = time.perf_counter() - start
    print_evaluation(
        result.class_names, result.per_class_accuracy, result.confusion, result.metrics, result.mlflow_run_ids
    )
    save_evaluation(
        result.class_names,
        result.per_class_accuracy,
        result.confusion.tolist(),
        result.metrics,
        args.metrics_out,
        args.plots_dir,
    )
    return 0


def print_predictions(paths: list[Path], reply: classification.ZeroShotResult) -> None:
    for i, (path, top) in enumerate(zip(paths, reply.top_k, strict=True)):
        if reply.diffusion:
            result = reply.diffusion[i]
            print(f"{path}: {result.class_name} (ranking {', '.join(top.labels)}; {result.unet_passes} UNet passes)")
        else:
            ranked = ", ".join(f"{label} {p:.3f}" for label, p in zip(top.labels, top.probs, strict=True))
            print(f"{path}: {ranked}")


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
    rows = [[n, a if math.isfinite(a) else "-"] for n, a in zip(names, per_class, strict=True)]  # "-": no images
    print(markdown_table(["class", "accuracy"], rows))
    print()
    print("confusion matrix (rows = true, columns = predicted):")
    rows = [[n, *map(int, row)] for n, row in zip(names, confusion, strict=True)]
    print(markdown_table(["true \\ pred", *names], rows))
    print(f"\nMLflow run{'s' if len(runs) > 1 else ''}: {', '.join(runs)}")
