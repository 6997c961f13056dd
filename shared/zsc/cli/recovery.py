"""`zsc recover` (DFZSL vMF recovery of virtual base features), `zsc align` (FLPT prompt tuning), and `zsc fit-teacher`
(the base-class classifier that recovery starts from, fitted on real features when a user has them)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from zsc.cli.common import (
    CommandError,
    add_client_args,
    add_settings,
    default_of,
    markdown_table,
    open_channel,
    parse_names,
    progress_bar,
)
from zsc.client import recovery as rc

if TYPE_CHECKING:  # torch costs seconds at import: only the commands that use it load it
    import torch

METRICS = rc.METRICS.names
POLICIES = rc.POLICIES.names
SAMPLERS = rc.SAMPLERS.names
# Options of core settings {field: (type, help)}, named as their config's fields; the help adds each default.
# recover: the settings a --preset sets (RecoveryConfig.from_preset), then nsample.
PRESET_SETTINGS: dict[str, tuple[type, str]] = {
    "theta": (float, "angular policy: kappa multiplier"),
    "num": (int, "final samples per class before the trusted filter"),
    "epochs": (int, "optimizer steps"),
    "lr": (float, "Adam learning rate"),
}
FLPT_SETTINGS: dict[str, tuple[type, str]] = {
    "epochs": (int, ""),
    "batch_size": (int, ""),
    "lr": (float, "AdamW learning rate"),
    "residual_scale": (float, "x' = x + scale * r"),
}


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
    p.add_argument(
        "--temperature",
        type=float,
        help=f"teacher logits are divided by it (default {default_of('teacher_from_weights', 'temperature')})",
    )
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
    p.add_argument("--kappa", type=float, default=0.0, help="fixed policy: the concentration (> 0)")
    add_settings(p, "RecoveryConfig", PRESET_SETTINGS, " or the preset's")
    add_settings(p, "RecoveryConfig", {"nsample": (int, "samples per class per step")})
    # The request's seed has no unset state (proto3 int64): the service runs with the seed sent, so 0 is the CLI's.
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-trusted", action="store_true", help="keep every sample, not only the teacher-agreeing ones")
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-recovery)")
    add_client_args(p, "recovery")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("align", help="DFZSL FLPT: prompt-tune CLIP on virtual features; aligned features + text")
    p.add_argument("--features", required=True, type=Path, help="virtual features file (from `zsc recover`)")
    p.add_argument("--classes", required=True, help="all class names, base and novel: comma-separated or @FILE")
    p.add_argument("--out", required=True, type=Path, help="aligned features file to write")
    add_settings(p, "FlptConfig", FLPT_SETTINGS)
    p.add_argument(
        "--ctx-init", default="", help=f'context init phrase (default "{default_of("FlptConfig", "ctx_init")}")'
    )
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
        "the named classes, written as safetensors weight [S, D] and bias [S] for `zsc recover --metric linear`. "
        "The recovery service fits it (Recovery.FitTeacher).",
    )
    p.add_argument("--features", required=True, type=Path, help="zsc features file (`zsc extract-features`)")
    p.add_argument("--classes", required=True, help="the base classes, in teacher-row order: comma-separated or @FILE")
    p.add_argument("--out", required=True, type=Path, help="teacher weights to write (safetensors)")
    teacher = {"c": (float, "inverse L2 regularization strength"), "max_iter": (int, "L-BFGS iterations")}
    add_settings(p, "fit_teacher", teacher)
    add_client_args(p, "recovery")
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
    text = base_text_features(args.text_features, names).float() if args.text_features is not None else None
    settings = {f: getattr(args, f) for f in (*PRESET_SETTINGS, "nsample")}
    with open_channel(args, "recovery", [args.out]) as channel, progress_bar("vMF recovery") as progress:
        result = rc.recover(
            channel,
            tensors["weight"].float(),
            names,
            args.out,
            bias=tensors["bias"].float() if "bias" in tensors else None,
            metric=args.metric,
            temperature=args.temperature,
            text_features=text,
            prompt_template=args.template,
            kappa_policy=args.kappa_policy,
            kappa=args.kappa,
            sampler=args.sampler,
            preset=args.preset,
            init_from_teacher=args.mu_init == "teacher",
            seed=args.seed,
            experiment=args.experiment,
            trusted=False if args.no_trusted else None,
            progress=progress,
            **settings,
        )
    print_recovery(result)
    return 0


def print_recovery(result: rc.Recovery) -> None:
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
    settings = {f: getattr(args, f) for f in FLPT_SETTINGS}
    settings.update(ctx_init=args.ctx_init, seed=args.seed, shuffle=True if args.shuffle else None)
    with open_channel(args, "recovery", [args.features, args.out]) as channel, progress_bar("FLPT alignment") as bar:
        result = rc.align(
            channel, args.features, names, args.out, settings=settings, experiment=args.experiment, progress=bar
        )
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
    names = parse_names(args.classes, "--classes")
    with open_channel(args, "recovery", [args.features, args.out]) as channel:
        fit = rc.fit_teacher(channel, args.features, names, args.out, c=args.c, max_iter=args.max_iter)
    print(
        f"fitted a linear teacher over {len(fit.class_names)} classes on {fit.n_train} features (D={fit.dim}); "
        f"training accuracy {fit.train_accuracy:.4f}"
    )
    print(f"teacher: {args.out} (use `zsc recover --teacher {args.out} --metric linear`)")
    return 0
