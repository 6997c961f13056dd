"""`zsc recover` (DFZSL vMF recovery of virtual base features), `zsc align` (FLPT prompt tuning), and `zsc fit-teacher`
(the base-class classifier that recovery starts from, fitted on real features when a user has them)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from zsc import codec
from zsc.cli.common import (
    CommandError,
    add_client_args,
    follow,
    load_features_of,
    markdown_table,
    open_channel,
    parse_names,
)
from zsc.common.v1 import common_pb2
from zsc.recovery.v1 import recovery_pb2 as pb
from zsc.recovery.v1 import recovery_pb2_grpc as pb_grpc
from zsc.runtime.client import unpack

if TYPE_CHECKING:  # torch costs seconds at import: only the commands that use it load it
    import torch

METRICS = {"cosine": pb.COSINE, "linear": pb.LINEAR}
POLICIES = {"angular": pb.ANGULAR, "fixed": pb.FIXED, "matched": pb.MATCHED}
SAMPLERS = {"exact": pb.EXACT, "authors": pb.AUTHORS}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recover", help="DFZSL: recover virtual base-class features from a classifier (vMF)")
    p.add_argument("--teacher", required=True, type=Path, help='safetensors with "weight" [S, D] (and "bias" [S])')
    p.add_argument("--classes", required=True, help="base class names, comma-separated or @FILE (one per line)")
    p.add_argument(
        "--text-features",
        type=Path,
        help='safetensors with "text_features" [S, D] (a zsc feature set works) or a single tensor; '
        "default: the service's CLIP encodes the class names",
    )
    p.add_argument("--template", default="", help='prompt for encoding class names (default "a photo of a {}.")')
    p.add_argument("--out", required=True, type=Path, help="features file to write (safetensors)")
    p.add_argument(
        "--metric", choices=sorted(METRICS), default="cosine", help="how the teacher scores (default cosine)"
    )
    p.add_argument("--temperature", type=float, help="teacher logits are divided by it (default 1)")
    p.add_argument(
        "--mu-init",
        choices=("text", "teacher"),
        default="text",
        help="start each class mean from its text feature (the paper) or from the teacher's normalized row, for a "
        "teacher whose space the text features do not share (default text)",
    )
    p.add_argument(
        "--preset",
        default="",
        help="a dataset's released DFZSL config (epochs, lr, theta, num), overridden by the flags given: awa2, cub, "
        "sun, flo, apy, imagenet, caltech101, oxfordpets, stanfordcars, flowers102, food101, fgvcaircraft, sun397, "
        "dtd, eurosat, ucf101 (default: none)",
    )
    p.add_argument(
        "--sampler",
        choices=sorted(SAMPLERS),
        help="vMF sampler: exact (Wood's algorithm, the default) or authors (the released sampler, biased for "
        "kappa > 10; reproduces the paper's numbers)",
    )
    p.add_argument(
        "--kappa-policy",
        choices=sorted(POLICIES),
        default="angular",
        help="angular: the paper's, from the angles between the init prototypes (right for CLIP text prototypes); "
        "matched: the mean cosine of kappa 200 in 512-d carried to this dimension, for a teacher whose rows are far "
        "apart (e.g. --mu-init teacher on 1280-d lite features, where angular gives kappa ~ 13 and few trusted draws); "
        "fixed: --kappa (default angular)",
    )
    p.add_argument("--theta", type=float, help="angular policy: kappa multiplier (default 1.0 or the preset's)")
    p.add_argument("--kappa", type=float, default=0.0, help="fixed policy: the concentration (> 0)")
    p.add_argument(
        "--num", type=int, help="final samples per class before the trusted filter (default 100 or the preset's)"
    )
    p.add_argument("--nsample", type=int, help="samples per class per step (default 50)")
    p.add_argument("--epochs", type=int, help="optimizer steps (default 1000 or the preset's)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 3e-3 or the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-trusted", action="store_true", help="keep every sample, not only the teacher-agreeing ones")
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-recovery)")
    add_client_args(p, "recovery")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("align", help="DFZSL FLPT: prompt-tune CLIP on virtual features; aligned features + text")
    p.add_argument("--features", required=True, type=Path, help="virtual features file (from `zsc recover`)")
    p.add_argument("--classes", required=True, help="all class names, base and novel: comma-separated or @FILE")
    p.add_argument("--out", required=True, type=Path, help="aligned features file to write")
    p.add_argument("--epochs", type=int, help="default 1")
    p.add_argument("--batch-size", type=int, help="default 4")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 3e-3)")
    p.add_argument("--residual-scale", type=float, help="x' = x + scale * r (default 0.005)")
    p.add_argument("--ctx-init", default="", help='context init phrase (default "a photo of a")')
    p.add_argument("--shuffle", action="store_true", help="seeded shuffle per epoch (default: the input order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-recovery)")
    add_client_args(p, "recovery")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser(
        "fit-teacher",
        help="fit a linear base-class classifier (multinomial logistic regression) on a features file: a teacher",
        description="The DFZSL teacher is a classifier someone already has. This fits one where none exists: "
        "multinomial logistic regression (scikit-learn, L-BFGS, deterministic) on the L2-normalized image features of "
        "the named classes, written as safetensors weight [S, D] and bias [S] for `zsc recover --metric linear`.",
    )
    p.add_argument("--features", required=True, type=Path, help="zsc features file (`zsc extract-features`)")
    p.add_argument("--classes", required=True, help="the base classes, in teacher-row order: comma-separated or @FILE")
    p.add_argument("--out", required=True, type=Path, help="teacher weights to write (safetensors)")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 regularization strength (default 1)")
    p.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations (default 1000)")
    p.set_defaults(func=cmd_fit_teacher)


def load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CommandError(f"no such {what} file: {path}")
    try:
        return load_file(path)
    except Exception as err:  # safetensors has its own error type for a malformed header
        raise CommandError(f"cannot read {what} file {path}: {type(err).__name__}: {err}") from None


def pick(tensors: dict[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key in tensors:
        return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise CommandError(f'{path} has no tensor named "{key}" (it has {", ".join(sorted(tensors)) or "none"})')


def base_text_features(path: Path, names: list[str]) -> torch.Tensor:
    """The rows of ``names`` from a zsc feature set (it lists every class, e.g. an `extract-features` file), or the
    file's ``text_features`` tensor as it is (its rows are the base classes)."""
    from zsc.cli.generative import read_text_features
    from zsc.features import FeatureSet

    tensors = load_tensors(path, "text features")
    try:
        FeatureSet.load(path)
    except ValueError:  # a plain tensor file
        return pick(tensors, "text_features", path)
    return read_text_features(path, names)[1]


def cmd_recover(args: argparse.Namespace) -> int:
    names = parse_names(args.classes, "--classes")
    tensors = load_tensors(args.teacher, "teacher")
    if "weight" not in tensors:
        raise CommandError(f'{args.teacher} has no tensor named "weight"')
    teacher = pb.Teacher(weight=codec.encode(tensors["weight"].float()), metric=METRICS[args.metric])
    if "bias" in tensors:
        teacher.bias.CopyFrom(codec.encode(tensors["bias"].float()))
    if args.temperature is not None:
        teacher.temperature = args.temperature
    request = pb.RecoverRequest(
        teacher=teacher,
        class_names=names,
        prompt_template=args.template,
        kappa_policy=POLICIES[args.kappa_policy],
        kappa=args.kappa,
        seed=args.seed,
        output_uri=str(args.out.resolve()),
        experiment=args.experiment,
        init_from_teacher=args.mu_init == "teacher",
        preset=args.preset,
    )
    if args.sampler is not None:
        request.sampler = SAMPLERS[args.sampler]
    if args.text_features is not None:
        request.text_features.CopyFrom(codec.encode(base_text_features(args.text_features, names).float()))
    for field in ("theta", "num", "nsample", "epochs", "lr"):
        value = getattr(args, field)
        if value is not None:
            setattr(request, field, value)
    if args.no_trusted:
        request.trusted = False
    with open_channel(args, "recovery", [args.out]) as channel:
        op = follow(channel, pb_grpc.RecoveryStub(channel).Recover(request), "vMF recovery")
    print_recovery(unpack(op, pb.RecoverResult), op)
    return 0


def print_recovery(result: pb.RecoverResult, op: common_pb2.Operation) -> None:
    stats = result.stats
    kept = list(stats.kept_fraction)
    print(
        f"recovered {result.n_features} virtual features of {len(result.class_names)} classes "
        f"(kappa {result.kappa:.4g}, teacher agreement {stats.teacher_agreement:.4f}, "
        f"final loss {stats.final_loss:.4g}, best step {stats.best_step})"
    )
    print()
    print("trusted fraction per class:")
    print(markdown_table(["class", "kept fraction"], [[n, k] for n, k in zip(result.class_names, kept, strict=True)]))
    print(f"\nfeatures: {result.features_uri}")
    print(f"MLflow run: {stats.mlflow_run_id}")


def cmd_align(args: argparse.Namespace) -> int:
    names = parse_names(args.classes, "--classes")
    settings = pb.FlptSettings(ctx_init=args.ctx_init, seed=args.seed)
    if args.shuffle:
        settings.shuffle = True
    for field in ("epochs", "batch_size", "lr", "residual_scale"):
        value = getattr(args, field)
        if value is not None:
            setattr(settings, field, value)
    request = pb.AlignRequest(
        features_uri=str(args.features.resolve()),
        class_names=names,
        output_uri=str(args.out.resolve()),
        settings=settings,
        experiment=args.experiment,
    )
    with open_channel(args, "recovery", [args.features, args.out]) as channel:
        op = follow(channel, pb_grpc.RecoveryStub(channel).Align(request), "FLPT alignment")
    result = unpack(op, pb.AlignResult)
    print(
        f"aligned {result.n_features} features over {result.steps_run} steps (final loss {result.final_loss:.4g}); "
        f"text features for {result.n_base} base + {result.n_novel} novel classes"
    )
    print(
        f"alignment {result.alignment_id} (x + {result.residual_weight:g} * r): pass the features file as "
        "--alignment to extract-features or evaluate-gzsl to move other image features into this space"
    )
    print(f"\nfeatures: {result.features_uri}")
    print(f"MLflow run: {result.mlflow_run_id}")
    return 0


def cmd_fit_teacher(args: argparse.Namespace) -> int:
    """Client-side: a few hundred feature rows fit in well under a second, no service needed."""
    import json

    import numpy as np
    import torch
    from safetensors.torch import save
    from sklearn.linear_model import LogisticRegression

    from zsc.io import atomic_write_bytes

    names = parse_names(args.classes, "--classes")
    if len(names) < 2:
        raise CommandError("a teacher needs at least 2 base classes")
    data, index = load_features_of(args.features, names)
    keep = torch.zeros(len(data), dtype=torch.bool)
    targets = torch.full((len(data),), -1, dtype=torch.int64)
    for row, name in enumerate(names):
        mask = data.labels == index[name]
        if not bool(mask.any()):
            raise CommandError(f"{args.features} has no sample of class {name!r}")
        keep |= mask
        targets[mask] = row
    # Unit-norm inputs: recovery draws its virtual features on the unit sphere, so the teacher must score those.
    x = torch.nn.functional.normalize(data.features[keep].double(), dim=1).numpy()
    y = targets[keep].numpy()
    model = LogisticRegression(C=args.c, max_iter=args.max_iter).fit(x, y)
    accuracy = float(np.mean(model.predict(x) == y))
    about = {
        "class_names": names,
        "fit": {"method": "multinomial logistic regression", "C": args.c, "max_iter": args.max_iter},
        "n_train": len(y),
        "train_accuracy": round(accuracy, 6),
    }
    # One header key: safetensors writes several in no fixed order, and the file should not change between reruns.
    metadata = {"zsc.teacher": json.dumps(about, sort_keys=True)}
    weight, bias = torch.from_numpy(model.coef_).float(), torch.from_numpy(model.intercept_).float()
    if len(names) == 2:  # sklearn keeps one row (the logit of class 1); the same softmax with one row per class:
        weight, bias = torch.cat([-weight, weight]) / 2, torch.cat([-bias, bias]) / 2
    weight, bias = weight.contiguous(), bias.contiguous()
    atomic_write_bytes(args.out, save({"weight": weight, "bias": bias}, metadata=metadata))
    print(
        f"fitted a linear teacher over {len(names)} classes on {len(y)} features (D={x.shape[1]}); "
        f"training accuracy {accuracy:.4f}"
    )
    print(f"teacher: {args.out} (use `zsc recover --teacher {args.out} --metric linear`)")
    return 0
