"""`zsc extract-features`: image features, labels, class names and class text features of an ImageFolder."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsc.cli.common import add_class_map_arg, add_client_args, class_map, open_channel, parse_names, progress_bar
from zsc.client import classification


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract-features",
        help="extract image features + class text features of an ImageFolder into a feature set (safetensors)",
        description="Under --profile lite: EfficientNet-Lite0 pooled pre-logits (1280-d) and MiniLM-L6 text features "
        "(384-d), two spaces that are not aligned. Under profiles with CLIP: CLIP's image and text towers.",
    )
    p.add_argument("--data", required=True, type=Path, help="ImageFolder (<root>/<class>/<image>)")
    p.add_argument("--out", required=True, type=Path, help="features file to write (safetensors)")
    p.add_argument("--limit", type=int, default=0, help="at most N images, spread over the classes (default all)")
    p.add_argument("--batch-size", type=int, default=0, help="images per model call (default 64)")
    p.add_argument(
        "--classes",
        help="comma-separated class names, or @FILE one a line, for the text features (default: the folder names); "
        "each is matched to the folder of that name and their order is the label order",
    )
    add_class_map_arg(p)
    p.add_argument("--template", default="", help='prompt for the class text features (default "a photo of a {}.")')
    p.add_argument(
        "--image-size",
        type=int,
        default=0,
        help="input resolution of the lite image model (default 224, the one it was trained at; "
        "bench/gzsl_cifar10.py takes 96 for 32-px CIFAR images: about 1/5 of the cost for most of the probe accuracy)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="feature cache directory (default: the service's, $ZSC_FEATURE_CACHE_DIR or ~/.cache/zsc/features)",
    )
    p.add_argument("--no-cache", action="store_true", help="compute every feature and leave the cache alone")
    p.add_argument(
        "--alignment", type=Path, help="FLPT alignment (the file `zsc align` wrote) to move the features into"
    )
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-features)")
    add_client_args(p, "classification")
    p.set_defaults(func=cmd_extract_features)


def cmd_extract_features(args: argparse.Namespace) -> int:
    data, out = args.data.resolve(), args.out.resolve()
    names = parse_names(args.classes, "--classes") if args.classes else []
    folder_to_class = class_map(args)
    paths: list[str | Path] = [data, out, args.cache_dir.resolve() if args.cache_dir else "", args.alignment or ""]
    with open_channel(args, "classification", paths) as channel, progress_bar("extracting features") as progress:
        result = classification.extract_features(
            channel,
            data,
            out,
            limit=args.limit,
            batch_size=args.batch_size,
            class_names=names,
            folder_to_class=folder_to_class,
            prompt_template=args.template,
            image_size=args.image_size,
            cache_dir=args.cache_dir,
            disable_cache=args.no_cache,
            experiment=args.experiment,
            alignment=args.alignment,
            progress=progress,
        )
    space = "one aligned space" if result.aligned else "separate, unaligned spaces"
    print(
        f"extracted {result.n_images} image features (D={result.dim}, {result.image_encoder}) and "
        f"{len(result.class_names)} class text features (D={result.text_dim}, {result.text_encoder}; {space})"
    )
    print(
        f"{result.cache_hits} from the cache, {result.computed} computed, in {result.seconds:.1f} s "
        f"(dataset sha256 {result.dataset_sha256[:16]})"
    )
    if result.alignment_id:
        print(f"moved into FLPT alignment {result.alignment_id}")
    print(f"features: {result.features_uri}")
    print(f"MLflow run: {result.mlflow_run_id}")
    return 0
