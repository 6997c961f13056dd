"""`zsc train-classifier`, `zsc evaluate` and `zsc predict`: downstream timm classifiers over gRPC."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsc.cli.common import (
    add_class_map_arg,
    add_client_args,
    add_training_outputs,
    class_map,
    default_of,
    markdown_table,
    model_uri,
    open_channel,
    progress_bar,
    save_evaluation,
    save_training_outputs,
)
from zsc.client import classification


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-classifier",
        help="train a timm classifier on a synthetic ImageFolder, select it on held-out synthetic data, register it",
    )
    p.add_argument("--data", required=True, help="training ImageFolder (<root>/<class>/<image>), e.g. synthetic")
    p.add_argument("--arch", default="", help="any timm model name (default: the profile's downstream architecture)")
    # 0 and None are the request's "unset": the service applies TrainConfig's defaults, which the help shows.
    p.add_argument("--epochs", type=int, default=0, help=f"default {default_of('TrainConfig', 'epochs')}")
    p.add_argument("--batch-size", type=int, default=0, help=f"default {default_of('TrainConfig', 'batch_size')}")
    p.add_argument(
        "--lr", type=float, default=0.0, help=f"AdamW learning rate (default {default_of('TrainConfig', 'lr')})"
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help=f"AdamW weight decay (default {default_of('TrainConfig', 'weight_decay')})",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help=f"held-out share of each class (default {default_of('TrainConfig', 'val_fraction')})",
    )
    p.add_argument("--seed", type=int, default=None, help="default: the profile's seed")
    p.add_argument("--image-size", type=int, default=0, help="square training resolution (default: the data's)")
    p.add_argument("--name", default="", help="registered model name (default zsc-downstream-<arch>)")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="start from timm's cached pretrained weights (tf_efficientnet_lite0: the lite package's ImageNet weights)",
    )
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-downstream)")
    add_client_args(p, "classification")
    add_training_outputs(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a registered downstream model on a real ImageFolder")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model")
    p.add_argument("--data", required=True, help="real test ImageFolder with one folder per class of the model")
    add_class_map_arg(p)
    p.add_argument("--limit", type=int, default=0, help="evaluate at most N images, spread over the classes")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-downstream)")
    p.add_argument("--metrics-out", type=Path, help="write the metrics as JSON (for DVC)")
    p.add_argument("--plots-dir", type=Path, help="write per-class accuracy and confusion CSVs (for DVC plots)")
    add_client_args(p, "classification")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k labels of a few images from a registered downstream model")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5)
    add_client_args(p, "classification")
    p.set_defaults(func=cmd_predict)


def cmd_train(args: argparse.Namespace) -> int:
    bar = progress_bar(f"train {args.arch or 'classifier'}")
    with open_channel(args, "classification", [args.data]) as channel, bar as progress:
        # unset options (None, 0, "") keep the server's defaults
        result = classification.train_classifier(
            channel,
            args.data,
            arch=args.arch,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            val_fraction=args.val_fraction,
            seed=args.seed,
            registered_model_name=args.name,
            pretrained=args.pretrained,
            image_size=args.image_size,
            experiment=args.experiment,
            progress=progress,
        )
    print(f"registered {result.model_uri} ({result.arch}, {len(result.class_names)} classes, {result.image_size}px)")
    print(
        f"best epoch {result.best_epoch}: synthetic validation accuracy {result.best_val_accuracy:.4f} "
        f"(loss {result.best_val_loss:.4f}) on {result.n_val} held-out images; trained on {result.n_train}"
    )
    print(f"throughput: {result.train_images_per_second:.1f} training images/s; {result.seconds:.1f} s in all")
    print(f"dataset: {result.dataset_hash}")
    print(f"MLflow run: {result.mlflow_run_id}")
    save_training_outputs(args, result.registered_model_name, result.model_version, result.mlflow_run_id)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    uri, folder_to_class = model_uri(args.model), class_map(args)
    with open_channel(args, "classification", [args.data]) as channel, progress_bar("evaluate") as progress:
        result = classification.evaluate_model(
            channel,
            uri,
            args.data,
            limit=args.limit,
            batch_size=args.batch_size,
            experiment=args.experiment,
            folder_to_class=folder_to_class,
            progress=progress,
        )
    names = list(result.class_names)
    confusion = result.confusion
    print(
        f"top-1 accuracy: {result.top1:.4f} over {result.n_images} images "
        f"(macro {result.macro_accuracy:.4f}; {result.seconds_per_image * 1e3:.2f} ms/image)"
    )
    print()
    print(
        markdown_table(["class", "accuracy"], [[n, a] for n, a in zip(names, result.per_class_accuracy, strict=True)])
    )
    print()
    print("confusion matrix (rows = true, columns = predicted):")
    print(
        markdown_table(["true \\ pred", *names], [[n, *map(int, row)] for n, row in zip(names, confusion, strict=True)])
    )
    if result.model_version:
        print(f"\ntagged {result.registered_model_name} version {result.model_version} with real_test.* metrics")
    print(f"MLflow run: {result.mlflow_run_id}")
    metrics = {"top1": result.top1, "macro_accuracy": result.macro_accuracy, "n_images": result.n_images}
    per_class = list(result.per_class_accuracy)
    save_evaluation(names, per_class, confusion.tolist(), metrics, args.metrics_out, args.plots_dir)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    uri = model_uri(args.model)
    with open_channel(args, "classification", balanced=True) as channel:  # unary: spread over replicas
        reply = classification.predict(channel, uri, args.images, top_k=args.top_k)
    for path, ranked in zip(args.images, reply.predictions, strict=True):
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in zip(ranked.labels, ranked.probs, strict=True)))
    print(f"model: {reply.registered_model_name} version {reply.model_version}" if reply.model_version else "")
    return 0
