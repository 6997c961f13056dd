"""`zsc zeroshot`: zero-shot classification of a few images, or evaluation on an ImageFolder."""

from __future__ import annotations

import argparse
import mimetypes
from pathlib import Path

from zsc import codec
from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.cli.common import CommandError, add_client_args, follow, markdown_table, open_channel, save_evaluation
from zsc.common.v1 import common_pb2
from zsc.runtime.client import unpack

METHODS = {"clip": pb.CLIP, "diffusion": pb.DIFFUSION}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zeroshot", help="zero-shot classification (CLIP or Diffusion Classifier)")
    p.add_argument("--method", choices=sorted(METHODS), default="clip")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="ImageFolder to evaluate (<root>/<class>/<image>)")
    src.add_argument("--image", nargs="+", type=Path, help="image files to classify (needs --classes)")
    p.add_argument("--classes", help="comma-separated class names (default for --data: the folder names)")
    p.add_argument("--templates", nargs="+", default=[], help='custom prompt templates, each with "{}"')
    p.add_argument("--template-set", default="", help="openai_imagenet (default), simple_imagenet, cifar, single")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most N images, spread over the classes")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--experiment", default="", help="MLflow experiment (default: zsc-zeroshot)")
    p.add_argument("--metrics-out", type=Path, help="write the metrics as JSON (for DVC)")
    p.add_argument("--plots-dir", type=Path, help="write per-class accuracy and confusion CSVs (for DVC plots)")
    add_client_args(p, "classification")
    p.set_defaults(func=cmd_zeroshot)


def cmd_zeroshot(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else []
    prompts = pb.PromptSpec(templates=args.templates, template_set=args.template_set)
    with open_channel(args, "classification", [args.data or ""]) as channel:
        stub = pb_grpc.ClassificationStub(channel)
        if args.image:
            return _classify_images(stub, args, classes, prompts)
        request = pb.EvaluateZeroShotRequest(
            method=METHODS[args.method],
            data_uri=str(Path(args.data).resolve()),
            class_names=classes,
            prompts=prompts,
            limit=args.limit,
            batch_size=args.batch_size,
            experiment=args.experiment,
        )
        op = follow(channel, stub.EvaluateZeroShot(request), f"{args.method} zero-shot")
        result = unpack(op, pb.EvaluationResult)
        print_evaluation(result, op)
        metrics = {
            "top1": result.top1,
            "macro_accuracy": result.macro_accuracy,
            "n_images": result.n_images,
            "seconds_per_image": result.seconds_per_image,
            **dict(op.metadata.metrics),
        }
        save_evaluation(
            list(result.class_names),
            list(result.per_class_accuracy),
            codec.decode(result.confusion).tolist(),
            metrics,
            args.metrics_out,
            args.plots_dir,
        )
    return 0


def _classify_images(
    stub: pb_grpc.ClassificationStub, args: argparse.Namespace, classes: list[str], prompts: pb.PromptSpec
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
            method=METHODS[args.method], class_names=classes, prompts=prompts, images=images, top_k=args.top_k
        )
    )
    for path, top in zip(args.image, reply.top_k, strict=True):
        ranked = ", ".join(f"{label} {p:.3f}" for label, p in zip(top.labels, top.probs, strict=True))
        print(f"{path}: {ranked}")
    return 0


def print_evaluation(result: pb.EvaluationResult, op: common_pb2.Operation) -> None:
    names = list(result.class_names)
    confusion = codec.decode(result.confusion)
    print(
        f"top-1 accuracy: {result.top1:.4f} over {result.n_images} images "
        f"(macro {result.macro_accuracy:.4f}; {result.seconds_per_image:.3f} s/image)"
    )
    for key in ("unet_passes_per_image",):
        if key in op.metadata.metrics:
            print(f"{key.replace('_', ' ')}: {op.metadata.metrics[key]:.0f}")
    print()
    print(
        markdown_table(["class", "accuracy"], [[n, a] for n, a in zip(names, result.per_class_accuracy, strict=True)])
    )
    print()
    print("confusion matrix (rows = true, columns = predicted):")
    print(
        markdown_table(["true \\ pred", *names], [[n, *map(int, row)] for n, row in zip(names, confusion, strict=True)])
    )
    print(f"\nMLflow run: {result.mlflow_run_id}")
