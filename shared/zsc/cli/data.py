"""`zsc data fetch`: a real labelled test set as an ImageFolder (<out>/<class>/<index>.png), through torchvision.
`zsc data import gzsl|coop|diffusion`: the standard benchmark formats as zsc feature sets and ImageFolders
(``zsc.importers``). `zsc data select`: some classes of a features file.

The evaluate stages of the pipelines read such a folder (``data.real_test`` in params.yaml). torchvision downloads the
archive once into ``--download-dir`` (a rerun reuses it); offline, the command says in one line what to do instead.
"""

from __future__ import annotations

import argparse
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

    register_import(actions)

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

    q = actions.add_parser(
        "center",
        help="subtract the mean of a reference features file (e.g. the teacher's training features) and L2-normalize",
        description="For a teacher fitted on centered features (a linear probe over non-CLIP features, such as the "
        "lite profile's 1280-d EfficientNet features, whose raw rows share one large mean): center its training "
        "features and every later set (test features) by the same mean, so all live in one space. The output "
        "records the mean's hash, and a file that already records one is refused.",
    )
    q.add_argument("--features", required=True, type=Path, help="zsc features file to center")
    q.add_argument("--mean-of", required=True, type=Path, help="features file whose mean is subtracted")
    q.add_argument("--classes", help="take the mean over these classes of --mean-of only (comma-separated or @FILE)")
    q.add_argument("--out", required=True, type=Path, help="features file to write")
    q.set_defaults(func=cmd_center)

    q = actions.add_parser(
        "merge",
        help="join features files of disjoint classes into one (e.g. a base and a new test half, for B/N/HM)",
        description="Samples and classes are listed in the order of the files. The files must share one feature "
        "space (encoders, prompt template, alignment, centering, views) and no class; the output records each "
        "file's dataset hash.",
    )
    q.add_argument("--features", required=True, action="append", type=Path, help="a features file (repeat: 2 or more)")
    q.add_argument("--out", required=True, type=Path, help="features file to write")
    q.set_defaults(func=cmd_merge)


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


def open_dataset(
    name: str, class_name: str, split: str, download_dir: Path, kwargs: dict[str, Any] | None = None, hint: str = ""
) -> Any:
    """A torchvision dataset, downloaded into ``download_dir`` unless it is there; offline, one line saying what to do
    (``hint``; by default how `zsc data fetch` does without). ``kwargs`` replace CIFAR's train=... flag."""
    import torchvision.datasets

    factory: Callable[..., Any] = getattr(torchvision.datasets, class_name)
    if kwargs is None:
        kwargs = {"train": split == "train"} if split in ("train", "test") else {}
    try:
        return factory(str(download_dir), download=True, **kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise CommandError(
            f"cannot download {name} ({reason}): this machine looks offline. "
            + (
                hint
                or "Point data.real_test in params.yaml at an ImageFolder you already have (<root>/<class>/<image>, "
                "e.g. ../shared/datasets/cifar10-test), or fetch where the internet is reachable and copy "
                f"{download_dir} or the folder here"
            )
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
    samples: Iterable[tuple[Any, int]],
    classes: list[str],
    out: Path,
    limit_per_class: int = 0,
    *,
    keep_names: bool = False,
) -> dict[str, int]:
    """Write (PIL image, label) pairs as ``out/<class>/<index>.png``; returns the count per class.

    Class names go through :func:`folder_name` unless ``keep_names`` (names already in prompt form); a name that
    cannot be a folder name ('/') then gets ``zsc.importers.folder_name``'s folder and a line in class_map.txt.
    Everything goes into a temporary folder beside ``out`` that is renamed at the end, so an interrupted fetch leaves
    no half-written dataset."""
    from zsc.importers import folder_name as safe_folder
    from zsc.importers import staged_dir, write_class_map

    names = list(classes) if keep_names else [folder_name(c) for c in classes]
    folders = [safe_folder(n) for n in names]
    if len(set(folders)) != len(folders):
        raise CommandError("two classes map to the same folder name")
    counts = dict.fromkeys(names, 0)
    with staged_dir(out) as tmp:
        for folder in folders:
            (tmp / folder).mkdir()
        for image, label in samples:
            name = names[int(label)]
            if limit_per_class and counts[name] >= limit_per_class:
                continue
            image.convert("RGB").save(tmp / folders[int(label)] / f"{counts[name]:05d}.png", format="PNG")
            counts[name] += 1
        write_class_map(tmp, folders, names)
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


CENTERED_TAG = "zsc.centered.mean_sha256"


def cmd_center(args: argparse.Namespace) -> int:
    import hashlib

    import torch
    import torch.nn.functional as F

    from zsc.features import FeatureSet

    for path in (args.features, args.mean_of):
        if not path.is_file():
            raise CommandError(f"no such features file: {path}")
    data = FeatureSet.load(args.features)
    if CENTERED_TAG in data.metadata:
        raise CommandError(f"{args.features} is centered already (mean {data.metadata[CENTERED_TAG][:12]})")
    names = parse_names(args.classes, "--classes") if args.classes else []
    reference, index = load_features_of(args.mean_of, names)
    if reference.dim != data.dim:
        raise CommandError(f"{args.mean_of} has D={reference.dim}, {args.features} has D={data.dim}")
    rows = reference.features
    if names:
        rows = rows[torch.isin(reference.labels, torch.tensor([index[n] for n in names]))]
    if len(rows) == 0:
        raise CommandError(f"{args.mean_of} has no features to take the mean of")
    mean = rows.double().mean(dim=0).float()
    digest = hashlib.sha256(mean.numpy().tobytes()).hexdigest()
    centered = F.normalize(data.features.float() - mean, dim=1)
    metadata = {**data.metadata, CENTERED_TAG: digest}
    FeatureSet(centered, data.labels, list(data.class_names), data.text_features, metadata).save(args.out)
    print(f"centered {len(data)} features by the mean of {len(rows)} rows of {args.mean_of} ({digest[:12]})")
    print(f"features: {args.out}")
    return 0


# The metadata that says which space the rows live in (with the alignment id): files that differ in one cannot share
# a classifier.
SPACE_KEYS = (
    "image_encoder", "image_model_id", "text_encoder", "prompt_template", "aligned", "normalized", CENTERED_TAG,
)  # fmt: skip
PER_FILE_KEYS = ("dataset_sha256", "class_folders", "selection")  # describe one input, not the merge


def cmd_merge(args: argparse.Namespace) -> int:
    import json

    import torch

    from zsc.features import ALIGNMENT_ID_KEY, FeatureSet

    if len(args.features) < 2:
        raise CommandError("zsc data merge needs at least two --features files")
    parts = []
    for path in args.features:
        if not path.is_file():
            raise CommandError(f"no such features file: {path}")
        parts.append(FeatureSet.load(path))
    first = parts[0]
    owner: dict[str, Path] = {}  # class name -> the file that holds it
    for path, part in zip(args.features, parts, strict=True):
        for key in (*SPACE_KEYS, ALIGNMENT_ID_KEY, "zsc.views"):
            if part.metadata.get(key) != first.metadata.get(key):
                raise CommandError(
                    f"{path} and {args.features[0]} differ in {key} ({part.metadata.get(key)!r} vs "
                    f"{first.metadata.get(key)!r}): not one feature space"
                )
        if (part.dim, part.text_dim) != (first.dim, first.text_dim):
            raise CommandError(
                f"{path} has D={part.dim}/{part.text_dim}, {args.features[0]} D={first.dim}/{first.text_dim}"
            )
        for name in part.class_names:
            if name in owner:
                raise CommandError(f"class {name!r} is in both {owner[name]} and {path}; merge joins disjoint classes")
            owner[name] = path
    offsets = [0]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + part.num_classes)
    sources = [
        {"file": str(p), "dataset_sha256": d.metadata.get("dataset_sha256", ""), "classes": d.num_classes, "n": len(d)}
        for p, d in zip(args.features, parts, strict=True)
    ]
    metadata = {k: v for k, v in first.metadata.items() if k not in PER_FILE_KEYS} | {"merged": json.dumps(sources)}
    merged = FeatureSet(
        torch.cat([d.features for d in parts]),
        torch.cat([d.labels + off for d, off in zip(parts, offsets, strict=True)]),
        [n for d in parts for n in d.class_names],
        torch.cat([d.text_features for d in parts]),
        metadata,
    )
    merged.save(args.out)
    print(f"merged {len(merged)} samples of {merged.num_classes} classes from {len(parts)} files: {args.out}")
    return 0


# --- zsc data import -----------------------------------------------------------------------------------------------

# name -> (torchvision class, splits, default split, `zsc zeroshot --method diffusion` preset, archive to fetch by hand)
# for the Diffusion Classifier's datasets; the default split is the one its paper evaluates.
DIFFUSION_DATASETS: dict[str, tuple[str, tuple[str, ...], str, str, str]] = {
    "pets": (
        "OxfordIIITPet",
        ("trainval", "test"),
        "test",
        "pets",
        "images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/data/ into "
        "DIR/oxford-iiit-pet/",
    ),
    "flowers": (
        "Flowers102",
        ("train", "val", "test"),
        "test",
        "flowers",
        "102flowers.tgz, imagelabels.mat and setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into "
        "DIR/flowers-102/",
    ),
    "food": (
        "Food101",
        ("train", "test"),
        "test",
        "food",
        "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz into DIR/",
    ),
    "aircraft": (
        "FGVCAircraft",
        ("train", "val", "trainval", "test"),
        "test",
        "aircraft",
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz into DIR/",
    ),
    "stl10": (
        "STL10",
        ("train", "test"),
        "test",
        "stl10",
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz into DIR/",
    ),
    # zsc has no CIFAR-100 schedule (the Diffusion Classifier's code lacks one too); its prompts are CIFAR-10's
    "cifar100": (
        "CIFAR100",
        ("train", "test"),
        "test",
        "",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into DIR/",
    ),
}
#: The datasets the Diffusion Classifier reads from a local folder (no torchvision download exists).
LOCAL_DATASETS = {"imagenet": "imagenet", "objectnet": "objectnet"}


def register_import(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("import", help="import a benchmark's standard files as zsc feature sets / ImageFolders")
    kinds = p.add_subparsers(dest="import_command", required=True, metavar="FORMAT")

    q = kinds.add_parser(
        "gzsl",
        help="GZSL proposed splits (Xian et al.: AWA2, CUB, SUN, FLO, APY; DFZSL's CLIP versions)",
        description="Reads att_splits.mat or clip_splits.mat (1-based *_loc indices, allclasses_names, att; "
        "clip_splits adds cls_features, CLIP text features of the class names) and optionally the image features "
        "res101.mat or ViTB16.mat (features [D, N], 1-based labels, image_files). Writes classes.txt, seen.txt, "
        "unseen.txt, splits.json (0-based indices), text.safetensors and text-seen.safetensors (text-only feature "
        "sets) and, with image features, trainval/train/val/test_seen/test_unseen.safetensors.",
    )
    q.add_argument("--splits", required=True, type=Path, help="att_splits.mat or clip_splits.mat")
    q.add_argument("--image-features", type=Path, help="res101.mat or ViTB16.mat (features, labels, image_files)")
    q.add_argument(
        "--unseen",
        default="",
        help="the unseen classes, comma-separated or @FILE (e.g. @testclasses.txt): needed without --image-features "
        "unless testclasses.txt lies beside --splits; checked against the labels otherwise",
    )
    q.add_argument(
        "--text",
        default="",
        choices=["", "cls_features", "att", "original_att"],
        help="class embedding written as text_features (default cls_features when the file has it, else att)",
    )
    q.add_argument(
        "--keep-names",
        action="store_true",
        help="keep the file's class names (grizzly+bear) instead of their prompt form (grizzly bear)",
    )
    q.add_argument("--out", required=True, type=Path, help="new folder to write")
    q.set_defaults(func=cmd_import_gzsl)

    q = kinds.add_parser(
        "coop",
        help="CoOp's base-to-new datasets: split_zhou_<Dataset>.json over an image root",
        description="Writes OUT/<train|val|test>/<base|new>/<class>/<image> (base: the first half of the sorted "
        "labels, CoOp's rule), classes.txt, base.txt, new.txt, import.json and, where a class name holds '/', "
        "class_map.txt for --class-map @class_map.txt; class_map_base.txt and class_map_new.txt (always, maybe "
        "empty) map the folders of one half, for --data OUT/<split>/<half>.",
    )
    q.add_argument("--split-file", required=True, type=Path, help="split_zhou_<Dataset>.json")
    q.add_argument("--images", required=True, type=Path, help="the image root its paths are relative to")
    q.add_argument(
        "--link",
        choices=("symlink", "hardlink", "copy"),
        default="symlink",
        help="how images get into the folders (default symlink: no second copy of a large dataset)",
    )
    q.add_argument("--out", required=True, type=Path, help="new folder to write")
    q.set_defaults(func=cmd_import_coop)

    q = kinds.add_parser(
        "diffusion",
        help="the Diffusion Classifier's datasets as ImageFolders named as its prompts name the classes",
        description="pets, flowers, food, aircraft, stl10 and cifar100 through torchvision (downloaded once into "
        "--download-dir; offline, put the archive there by hand); imagenet (an ILSVRC-2012 split folder of 1,000 "
        "WordNet-id folders) and objectnet (the objectnet-1.0 folder) from --images, linked, not copied.",
    )
    q.add_argument("dataset", choices=sorted([*DIFFUSION_DATASETS, *LOCAL_DATASETS]))
    q.add_argument("--out", required=True, type=Path, help="ImageFolder to create")
    q.add_argument("--split", help="torchvision split (default: the one the paper evaluates, test)")
    q.add_argument("--images", type=Path, help="imagenet: e.g. ILSVRC2012/val; objectnet: objectnet-1.0")
    q.add_argument(
        "--download-dir",
        type=Path,
        default=Path("~/.cache/zsc/torchvision"),
        help="where torchvision keeps the archive (default ~/.cache/zsc/torchvision)",
    )
    q.add_argument("--link", choices=("symlink", "hardlink", "copy"), default="symlink", help="imagenet, objectnet")
    q.add_argument("--limit-per-class", type=int, default=0, help="torchvision datasets: at most N images per class")
    q.set_defaults(func=cmd_import_diffusion)


def cmd_import_gzsl(args: argparse.Namespace) -> int:
    from zsc.importers import read_gzsl, write_gzsl

    unseen = parse_names(args.unseen, "--unseen") if args.unseen else []
    data = read_gzsl(args.splits, args.image_features, unseen=unseen, text=args.text, keep_names=args.keep_names)
    out = args.out.expanduser().resolve()
    written = write_gzsl(data, out)
    sizes = ", ".join(f"{s} {len(idx)}" for s, idx in data.splits.items())
    print(
        f"{len(data.class_names)} classes ({len(data.seen)} seen, {len(data.unseen)} unseen), text features "
        f"{data.text_source} [{data.text_features.shape[0]}, {data.text_features.shape[1]}]; images: {sizes}"
    )
    if data.features is None:
        print("no image features given: wrote the class lists, the split indices and the text features only")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def cmd_import_coop(args: argparse.Namespace) -> int:
    from zsc.importers import read_coop_split, write_coop

    split = read_coop_split(args.split_file)
    out = args.out.expanduser().resolve()
    counts = write_coop(split, args.images.expanduser(), out, args.link)
    print(f"{len(split.class_names)} classes: {len(split.base)} base, {len(split.new)} new")
    for name, halves in counts.items():
        print(f"  {name}: {halves['base']} base, {halves['new']} new images")
    if (out / "class_map.txt").exists():
        print(f"some class names hold '/': read the folders with --class-map @{out / 'class_map.txt'}")
    print(f"wrote {out}/<train|val|test>/<base|new>/<class>/ ({args.link})")
    return 0


def cmd_import_diffusion(args: argparse.Namespace) -> int:
    if args.limit_per_class < 0:
        raise CommandError(f"--limit-per-class must be >= 0, got {args.limit_per_class}")
    if args.dataset in DIFFUSION_DATASETS:
        splits = DIFFUSION_DATASETS[args.dataset][1]
        if args.split and args.split not in splits:
            raise CommandError(f"{args.dataset} has the splits {', '.join(splits)}, not {args.split!r}")
    elif args.split:
        raise CommandError(f"{args.dataset} is read from --images, which is the split; drop --split")
    out = args.out.expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise CommandError(f"{out} already exists and is not empty; remove it or choose another --out")
    if args.dataset in LOCAL_DATASETS:
        counts = _import_local(args.dataset, args.images, out, args.link)
        preset = LOCAL_DATASETS[args.dataset]
    else:
        counts, preset = _import_torchvision(args, out)
    print(f"wrote {sum(counts.values())} images of {len(counts)} classes ({args.dataset}) to {out}")
    class_map = f" --class-map @{out / 'class_map.txt'}" if (out / "class_map.txt").exists() else ""
    how = f"--preset {preset}" if preset else '--templates "a blurry photo of a {}."'
    print(f"evaluate: zsc zeroshot --method diffusion {how} --data {out}{class_map}")
    return 0


def _import_torchvision(args: argparse.Namespace, out: Path) -> tuple[dict[str, int], str]:
    class_name, _, default_split, preset, archive = DIFFUSION_DATASETS[args.dataset]
    split = args.split or default_split  # checked by the caller
    download_dir = args.download_dir.expanduser()
    kwargs: dict[str, Any] = {"train": split == "train"} if args.dataset == "cifar100" else {"split": split}
    if args.dataset == "pets":  # the species tells "Abyssinian cat" from "Beagle dog", as the prompts name them
        kwargs["target_types"] = ["category", "binary-category"]
    hint = f"Put {archive.replace('DIR', str(download_dir))} by hand (or pass --download-dir) and rerun"
    dataset = open_dataset(args.dataset, class_name, split, download_dir, kwargs, hint)
    names = diffusion_class_names(args.dataset, dataset)
    samples: Iterable[tuple[Any, int]] = dataset
    if args.dataset == "pets":
        samples = ((image, target[0]) for image, target in dataset)
    return write_image_folder(samples, names, out, args.limit_per_class, keep_names=True), preset


def diffusion_class_names(dataset_name: str, dataset: Any) -> list[str]:
    """The class names the Diffusion Classifier's prompts use for a torchvision dataset, in its label order."""
    from zsc.importers import pets_class_names

    if dataset_name == "pets":
        species = dict(zip(dataset._labels, dataset._bin_labels, strict=True))  # torchvision keeps them per image
        return pets_class_names(list(dataset.classes), species)
    # Food-101's apple_pie and CIFAR-100's aquarium_fish read with spaces; aircraft keep their '/' (F/A-18)
    return [" ".join(c.replace("_", " ").split()) for c in dataset.classes]


def _import_local(name: str, images: Path | None, out: Path, link: str) -> dict[str, int]:
    from zsc.data import IMAGE_SUFFIXES
    from zsc.importers import (
        folder_name,
        imagenet_class_names,
        link_images,
        objectnet_classes,
        staged_dir,
        write_class_map,
    )

    if images is None:
        what = "an ILSVRC-2012 split folder (e.g. ILSVRC2012/val)" if name == "imagenet" else "the objectnet-1.0 folder"
        raise CommandError(f"{name} is not in torchvision: give --images, {what}")
    root = images.expanduser().resolve()
    if not root.is_dir():
        raise CommandError(f"--images {root} is not a directory")
    if name == "imagenet":
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        names = imagenet_class_names(folders)
        image_root = root
    else:
        by_folder = objectnet_classes(root)
        folders, names = list(by_folder), list(by_folder.values())
        image_root = root / "images"
    rows: list[tuple[Path, str, int]] = []
    for label, folder in enumerate(folders):
        if not (image_root / folder).is_dir():
            raise CommandError(f"{image_root} has no folder {folder!r}")
        files = sorted(p.name for p in (image_root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        rows += [(image_root, f"{folder}/{f}", label) for f in files]
    targets = [folder_name(n) for n in names]
    with staged_dir(out) as tmp:
        link_images(rows, targets, tmp, link)
        write_class_map(tmp, targets, names)
    counts = dict.fromkeys(names, 0)
    for _, _, label in rows:
        counts[names[label]] += 1
    return counts
