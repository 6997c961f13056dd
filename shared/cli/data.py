"""`zsc data fetch`: a real labelled test set as an ImageFolder (<out>/<class>/<index>.png), through torchvision.

The evaluate stages of the pipelines read such a folder (``data.real_test`` in params.yaml). torchvision downloads the
archive once into ``--download-dir`` (a rerun reuses it); offline, the command says in one line what to do instead.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import urllib.error
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from zsc.cli.common import CommandError, load_features_of, parse_names

# name -> (torchvision class, splits it has, default split)
DATASETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cifar10": ("CIFAR10", ("test", "train"), "test"),
    "cifar100": ("CIFAR100", ("test", "train"), "test"),
    "eurosat": ("EuroSAT", ("all",), "all"),  # EuroSAT ships no official split: all 27,000 images
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="fetch real datasets as ImageFolders")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    q = actions.add_parser(
        "fetch",
        help="download a dataset with torchvision and write it as an ImageFolder of PNGs",
        description="Needs the internet the first time (torchvision's download, kept in --download-dir). Offline, "
        "copy an ImageFolder (<root>/<class>/<image>) you already have and point params.yaml's data.real_test at it.",
    )
    q.add_argument("dataset", choices=sorted(DATASETS))
    q.add_argument("--out", required=True, type=Path, help="ImageFolder to create, e.g. data/real/cifar10-test")
    q.add_argument("--split", help="test or train for CIFAR (default test); EuroSAT has only all")
    q.add_argument(
        "--download-dir",
        type=Path,
        default=Path("~/.cache/zsc/torchvision"),
        help="where torchvision keeps the downloaded archive (default ~/.cache/zsc/torchvision)",
    )
    q.add_argument("--limit-per-class", type=int, default=0, help="write at most N images per class (default all)")
    q.set_defaults(func=cmd_fetch)

    q = actions.add_parser(
        "select",
        help="keep the samples of some classes of a features file (e.g. the base classes, a few shots each)",
        description="Every class stays listed with its text feature, so the others become classes without samples "
        "(novel classes to a generator). Samples are kept in file order, so the result is deterministic.",
    )
    q.add_argument("--features", required=True, type=Path, help="zsc features file (`zsc extract-features`)")
    q.add_argument("--classes", required=True, help="classes whose samples to keep: comma-separated or @FILE")
    q.add_argument("--per-class", type=int, default=0, help="keep the first N samples of each (default all)")
    q.add_argument("--out", required=True, type=Path, help="features file to write")
    q.set_defaults(func=cmd_select)


def cmd_fetch(args: argparse.Namespace) -> int:
    class_name, splits, default_split = DATASETS[args.dataset]
    split = args.split or default_split
    if split not in splits:
        raise CommandError(f"{args.dataset} has the split(s) {', '.join(splits)}, not {split!r}")
    if args.limit_per_class < 0:
        raise CommandError(f"--limit-per-class must be >= 0, got {args.limit_per_class}")
    out = args.out.expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise CommandError(f"{out} already exists and is not empty; remove it or choose another --out")
    dataset = open_dataset(args.dataset, class_name, split, args.download_dir.expanduser())
    counts = write_image_folder(dataset, dataset.classes, out, args.limit_per_class)
    print(f"wrote {sum(counts.values())} images of {len(counts)} classes ({args.dataset} {split}) to {out}")
    return 0


def open_dataset(name: str, class_name: str, split: str, download_dir: Path) -> Any:
    import torchvision.datasets

    factory: Callable[..., Any] = getattr(torchvision.datasets, class_name)
    kwargs = {"train": split == "train"} if split in ("train", "test") else {}
    try:
        return factory(str(download_dir), download=True, **kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise CommandError(
            f"cannot download {name} ({reason}): this machine looks offline. Point data.real_test in params.yaml "
            "at an ImageFolder you already have (<root>/<class>/<image>, e.g. ../shared/datasets/cifar10-test), "
            f"or fetch where the internet is reachable and copy {download_dir} or the folder here"
        ) from None
    except RuntimeError as err:  # torchvision: a corrupt or partial archive in the download dir
        raise CommandError(f"cannot read {name} from {download_dir}: {err}") from None


def folder_name(class_name: str) -> str:
    """CIFAR-100's ``maple_tree`` becomes ``maple tree``: folder names double as the class names prompts read."""
    name = class_name.replace("_", " ").strip()
    if not name or "/" in name or name in (".", ".."):
        raise CommandError(f"class name {class_name!r} cannot be a folder name")
    return name


def write_image_folder(
    samples: Iterable[tuple[Any, int]], classes: list[str], out: Path, limit_per_class: int = 0
) -> dict[str, int]:
    """Write (PIL image, label) pairs as ``out/<class>/<index>.png``; returns the count per class.

    Everything goes into a temporary folder beside ``out`` that is renamed at the end, so an interrupted fetch leaves
    no half-written dataset."""
    names = [folder_name(c) for c in classes]
    if len(set(names)) != len(names):
        raise CommandError("two classes map to the same folder name")
    counts = dict.fromkeys(names, 0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in names:
            (tmp / name).mkdir()
        for image, label in samples:
            name = names[int(label)]
            if limit_per_class and counts[name] >= limit_per_class:
                continue
            image.convert("RGB").save(tmp / name / f"{counts[name]:05d}.png", format="PNG")
            counts[name] += 1
        if out.exists():
            out.rmdir()  # empty (checked by the caller)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def cmd_select(args: argparse.Namespace) -> int:
    import json

    import torch

    from zsc.features import FeatureSet

    names = parse_names(args.classes, "--classes")
    if args.per_class < 0:
        raise CommandError(f"--per-class must be >= 0, got {args.per_class}")
    data, index = load_features_of(args.features, names)
    if data.metadata.get("zsc.views", "1") != "1":  # rows are image-major groups of views; a row subset breaks them
        raise CommandError(f"{args.features} is a feature bank with several views per image; select before banking")
    rows = []
    for name in names:
        found = torch.nonzero(data.labels == index[name]).flatten()
        if found.numel() < max(1, args.per_class):
            raise CommandError(f"{args.features} has {found.numel()} samples of {name!r}, fewer than asked")
        rows.append(found[: args.per_class] if args.per_class else found)
    keep = torch.cat(rows).sort().values  # file order
    metadata = {**data.metadata, "selection": json.dumps({"classes": names, "per_class": args.per_class})}
    FeatureSet(data.features[keep], data.labels[keep], list(data.class_names), data.text_features, metadata).save(
        args.out
    )
    print(f"kept {keep.numel()} samples of {len(names)} of {data.num_classes} classes: {args.out}")
    return 0
