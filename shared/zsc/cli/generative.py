"""`zsc train-generator`, `zsc generate-features`, `zsc train-gzsl`, `zsc evaluate-gzsl` (DFZSL steps 3-4) and
`zsc finetune` (SHIP's CLIP fine-tuning; SHIP's prompt VAE is `zsc train-generator --kind ship_vae`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from zsc.cli.common import (
    CommandError,
    add_client_args,
    add_settings,
    add_training_outputs,
    default_of,
    default_per,
    markdown_table,
    model_uri,
    open_channel,
    parse_names,
    progress_bar,
    save_training_outputs,
    write_json,
    write_per_class_accuracy,
)
from zsc.client import generative as gc

if TYPE_CHECKING:  # torch costs seconds at import: only the commands that use it load it
    import torch

KINDS = gc.KINDS.names
METHODS = gc.METHODS.names
CALIBRATIONS = gc.CALIBRATIONS.names
# Each --kind's and --method's core config (config_defaults.json): an unset setting means its default there.
KIND_CONFIGS = {"clswgan": "CLSWGANConfig", "tfvaegan": "TFVAEGANConfig", "ship_vae": "ShipConfig"}
GAN_CONFIGS = {kind: KIND_CONFIGS[kind] for kind in ("clswgan", "tfvaegan")}
METHOD_CONFIGS = {method: f"FineTuneConfig[{method}]" for method in ("coop", "clip_adapter", "tip_adapter_f")}
# train-gzsl --calibration-* options -> CalibrationSettings fields.
CALIBRATION_OPTIONS = ("holdout_fraction", "val_fraction", "n_per_class", "generator")
# Options of core settings {field: (type, help)}, named as their config's fields; the help adds each default.
# SHIP_VAE-only options -> ShipVaeSettings (ShipConfig) fields.
SHIP_SETTINGS: dict[str, tuple[type, str]] = {
    "encoder_hidden": (int, ""),
    "generator_hidden": (int, ""),
    "n_ctx": (int, "learnable context tokens"),
    "ctx_init_std": (float, ""),
    "kl_weight": (float, ""),
    "weight_decay": (float, "AdamW"),
}
SHIP_OPTIONS = tuple(SHIP_SETTINGS)
GAN_SETTINGS: dict[str, tuple[type, str]] = {
    "hidden_dim": (int, "clswgan, tfvaegan"),
    "critic_iters": (int, "clswgan, tfvaegan"),
    "gp_weight": (float, "clswgan, tfvaegan"),
}
# --select-* -> SelectionSettings (the generator configs' select_* fields).
SELECTION_SETTINGS: dict[str, tuple[type, str]] = {
    "select_every": (int, "score every N epochs, 0: no selection"),
    "select_holdout_fraction": (float, "pseudo-novel class fraction"),
    "select_val_fraction": (float, "held-out sample fraction"),
    "select_n_per_class": (int, "synthesized per pseudo-novel class"),
    "select_classifier_epochs": (int, "quick classifier epochs"),
}
GZSL_SETTINGS: dict[str, tuple[type, str]] = {
    "epochs": (int, ""),
    "lr": (float, ""),
    "batch_size": (int, "0: the synthesized features per novel class"),
    "beta1": (float, "Adam beta1"),
    "seen_mass": (float, "seen classes' share of the seen_unseen prior"),
    "weight_decay": (float, ""),
    "temperature": (float, ""),
    "logit_adjustment_tau": (float, ""),
    "calibration_gamma": (float, "calibrated stacking, 0: off"),
}
FINETUNE_SETTINGS: dict[str, tuple[type, str]] = {
    "epochs": (int, ""),
    "batch_size": (int, ""),
    "lr": (float, ""),
    "momentum": (float, "SGD"),
    "weight_decay": (float, ""),
    "val_fraction": (
        float,
        "hold out this fraction of base images and return the best epoch on them, a change of protocol; 0: the "
        "released protocol, all shots train and the last epoch is returned",
    ),
    "select_every": (int, ""),
}
ADAPTER_SETTINGS: dict[str, tuple[type, str]] = {
    "reduction": (int, "clip_adapter: bottleneck D/reduction"),
    "ratio": (float, "clip_adapter: residual ratio"),
}
FINETUNE_OPTIONS = (
    *FINETUNE_SETTINGS,
    "ctx_init",
    "template",
    *ADAPTER_SETTINGS,
    "init_alpha",
    "init_beta",
    "cache_synthetic_per_class",
    "tip_adapter_preset",
)
# CLI option -> (request sub-message, field); only options the user gave are set, the rest keep the defaults.
GENERATOR_OPTIONS = {
    "epochs": ("settings", "epochs"),
    "batch_size": ("settings", "batch_size"),
    "lr": ("settings", "lr"),
    "hidden_dim": ("settings", "hidden_dim"),
    "noise_dim": ("settings", "noise_dim"),
    "critic_iters": ("settings", "critic_iters"),
    "gp_weight": ("settings", "gp_weight"),
    "select_every": ("selection", "every"),
    "select_holdout_fraction": ("selection", "holdout_fraction"),
    "select_val_fraction": ("selection", "val_fraction"),
    "select_n_per_class": ("selection", "n_per_class"),
    "select_classifier_epochs": ("selection", "classifier_epochs"),
}
GZSL_OPTIONS = (*GZSL_SETTINGS, "prior")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-generator", help="DFZSL step 3: train a feature generator on base features (MLflow)")
    p.add_argument("--features", required=True, type=Path, help="features file (base samples, text of all classes)")
    p.add_argument("--kind", required=True, choices=sorted(KINDS))
    p.add_argument(
        "--text-features",
        type=Path,
        help='safetensors with "text_features" [C, D_t], one row per class of --features (default: the file\'s own)',
    )
    g = p.add_argument_group("settings (unset: methods.md defaults of the kind)")
    add_settings(g, KIND_CONFIGS, {"epochs": (int, ""), "batch_size": (int, ""), "lr": (float, "")})
    add_settings(g, GAN_CONFIGS, GAN_SETTINGS)
    g.add_argument(
        "--noise-dim",
        type=int,
        help=f"0 = the text-feature width (default {default_per(GAN_CONFIGS, 'noise_dim', none='text width')}, "
        f"ship_vae {default_of('ShipConfig', 'latent_dim')})",
    )
    g = p.add_argument_group("ship_vae settings (unset: methods.md §4 defaults; --noise-dim is its latent width)")
    add_settings(g, "ShipConfig", SHIP_SETTINGS)
    s = p.add_argument_group("selection on held-out training classes (never test data)")
    add_settings(s, GAN_CONFIGS, SELECTION_SETTINGS)
    s.add_argument("--no-select-refit", action="store_true", help="return the selected state, do not refit")
    # The request's seed has no unset state (proto3 int64): the service runs with the seed sent, so 0 is the CLI's.
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="", help="registered model name (default zsc-generator-<kind>)")
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-generative)")
    add_client_args(p, "generative")
    add_training_outputs(p)
    p.set_defaults(func=cmd_train_generator)

    p = sub.add_parser("generate-features", help="synthesize features of classes with a trained generator")
    p.add_argument("--generator", required=True, help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/ID/generator")
    p.add_argument(
        "--classes",
        help="class names, comma-separated or @FILE: classes the generator knows, or the rows of --text-features",
    )
    p.add_argument(
        "--text-features",
        type=Path,
        help="a zsc features file (its classes, or those of --classes) or a safetensors text_features tensor",
    )
    p.add_argument("--per-class", required=True, type=int, help="features per class (DFZSL: 1800)")
    p.add_argument("--out", required=True, type=Path, help="features file to write")
    p.add_argument("--seed", type=int, default=0)
    add_client_args(p, "generative")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train-gzsl", help="DFZSL step 4: train the GZSL classifier on base + synthesized features")
    p.add_argument("--base", required=True, type=Path, help="base features file (its classes with samples are seen)")
    p.add_argument("--novel", type=Path, help="synthesized novel features (from generate-features)")
    p.add_argument(
        "--text-features",
        type=Path,
        help="all classes' text features: a zsc features file, or a tensor with --classes (default: --base's)",
    )
    p.add_argument("--classes", help="names of the --text-features rows, comma-separated or @FILE")
    g = p.add_argument_group("settings (unset: the released DFZSL classifier's)")
    add_settings(g, "GZSLConfig", GZSL_SETTINGS)
    g.add_argument(
        "--prior",
        choices=("seen_unseen", "frequency"),
        help="log prior of the logit adjustment, seen_unseen the released one "
        f"(default {default_of('GZSLConfig', 'prior')})",
    )
    g.add_argument("--no-logit-adjustment", action="store_true")
    c = p.add_argument_group("calibrated stacking's gamma chosen on held-out base classes (never test data)")
    c.add_argument(
        "--calibration",
        choices=sorted(CALIBRATIONS),
        default="none",
        help="none (default, as released: --calibration-gamma or 0) or holdout: pseudo-unseen base classes, a fresh "
        "generator of the novel features' kind and settings on the rest, gamma maximizing held-out H",
    )
    c.add_argument("--calibration-holdout-fraction", type=float, help="pseudo-unseen base class share (default 0.2)")
    c.add_argument("--calibration-val-fraction", type=float, help="held-out sample share (default 0.2)")
    c.add_argument(
        "--calibration-n-per-class", type=int, help="synthesized per pseudo-unseen class (default: --novel's per class)"
    )
    c.add_argument("--calibration-generator", help="generator to copy (default: the one --novel names)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="", help="registered model name (default zsc-gzsl)")
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-generative)")
    add_client_args(p, "generative")
    add_training_outputs(p)
    p.set_defaults(func=cmd_train_gzsl)

    p = sub.add_parser(
        "finetune", help="SHIP step 3: fine-tune CLIP on cached base features, plus synthesized new ones (MLflow)"
    )
    p.add_argument("--base", required=True, type=Path, help="real base-class features (a feature bank is welcome)")
    p.add_argument("--novel", type=Path, help="synthesized new-class features (without: the baseline)")
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--classes", help="every class, comma-separated or @FILE (default: the files' classes)")
    g = p.add_argument_group("settings (unset: the method's defaults)")
    add_settings(g, METHOD_CONFIGS, FINETUNE_SETTINGS)
    g.add_argument(
        "--ctx-init",
        help=f'coop: the initial context phrase (default "{default_of(METHOD_CONFIGS["coop"], "ctx_init")}")',
    )
    g.add_argument(
        "--template",
        help=f'adapters: the zero-shot prompt (default "{default_of(METHOD_CONFIGS["clip_adapter"], "template")}")',
    )
    add_settings(g, METHOD_CONFIGS["clip_adapter"], ADAPTER_SETTINGS)
    g.add_argument(
        "--tip-adapter-preset",
        help="tip_adapter_f: the released per-dataset alpha/beta init, search grid and epochs: caltech101, dtd, "
        "eurosat, fgvc, food101, imagenet, oxford_flowers, oxford_pets, stanford_cars, sun397, ucf101 "
        f"(default {default_of(METHOD_CONFIGS['tip_adapter_f'], 'tip_adapter_preset')})",
    )
    g.add_argument("--init-alpha", type=float, help="tip_adapter_f (default: the preset's)")
    g.add_argument("--init-beta", type=float, help="tip_adapter_f (default: the preset's)")
    g.add_argument("--cache-synthetic-per-class", type=int, help="tip_adapter_f (default: real shots per class)")
    p.add_argument("--test", type=Path, help="labelled test features: print S/U/H and B/N/HM of the fine-tuned model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="", help="registered model name (default zsc-finetune-<method>)")
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-generative)")
    add_client_args(p, "generative")
    add_training_outputs(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate-gzsl", help="GZSL S/U/H and base-to-new B/N/HM of a classifier on test features")
    p.add_argument(
        "--classifier", required=True, help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/ID/classifier"
    )
    p.add_argument("--test", required=True, type=Path, help="labelled test features file")
    p.add_argument("--unseen", help="unseen classes, comma-separated or @FILE (default: the classifier's own split)")
    p.add_argument("--calibration-gamma", type=float, help="override the classifier's calibrated stacking")
    p.add_argument(
        "--alignment", type=Path, help="FLPT alignment (the file `zsc align` wrote) to apply to the test features"
    )
    p.add_argument("--metrics-out", type=Path, help="write the metrics as JSON (for DVC)")
    p.add_argument("--plots-dir", type=Path, help="write per-class accuracy as CSV (for DVC plots)")
    p.add_argument("--experiment", default="", help="MLflow experiment (default zsc-generative)")
    add_client_args(p, "generative")
    p.set_defaults(func=cmd_evaluate)


# --- helpers -------------------------------------------------------------------------------------------------------


def read_text_features(path: Path, classes: list[str] | None) -> tuple[list[str], torch.Tensor]:
    """(names, [K, D_t]) from a zsc features file (its classes, or the ``classes`` among them) or a plain tensor
    file, whose rows ``classes`` must name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from zsc.features import FeatureSet

    if not path.is_file():
        raise CommandError(f"no such text-features file: {path}")
    try:
        data = FeatureSet.load(path)
    except ValueError:
        data = None  # not a zsc feature set: a plain tensor file
    except SafetensorError as err:
        raise CommandError(f"cannot read text-features file {path}: {err}") from None
    if data is not None:
        if classes is None:
            return list(data.class_names), data.text_features
        index = {n: i for i, n in enumerate(data.class_names)}
        missing = [c for c in classes if c not in index]
        if missing:
            raise CommandError(f"class {missing[0]!r} is not in {path}")
        return classes, data.text_features[[index[c] for c in classes]]
    tensors = load_file(path)
    text = tensors.get("text_features", next(iter(tensors.values())) if len(tensors) == 1 else None)
    if text is None:
        raise CommandError(f'{path} has no tensor named "text_features"')
    if classes is None:
        raise CommandError(f"{path} holds no class names; name its rows with --classes")
    if text.ndim != 2 or text.shape[0] != len(classes):
        raise CommandError(f"{path} holds text features of shape {list(text.shape)} for {len(classes)} classes")
    return classes, text


def given(args: argparse.Namespace, options: tuple[str, ...], prefix: str = "") -> dict[str, object]:
    """The options the user gave (not None), by their request field names."""
    return {o: getattr(args, prefix + o) for o in options if getattr(args, prefix + o) is not None}


def print_model(label: str, model: gc.ModelVersion) -> None:
    print(f"{label}: {model.model_uri} (run {model.run_id}, files {model.artifact_uri})")


# --- commands ------------------------------------------------------------------------------------------------------
def cmd_train_generator(args: argparse.Namespace) -> int:
    groups: dict[str, dict[str, object]] = {"settings": {}, "selection": {}}
    for option, (part, field) in GENERATOR_OPTIONS.items():
        groups[part][field] = getattr(args, option)
    if args.no_select_refit:
        groups["selection"]["refit"] = False
    ship_given = given(args, SHIP_OPTIONS)
    if ship_given and args.kind != "ship_vae":
        raise CommandError(f"--{next(iter(ship_given)).replace('_', '-')} applies to --kind ship_vae only")
    text = read_text_features(args.text_features, None)[1].float() if args.text_features is not None else None
    with open_channel(args, "generative", [args.features]) as channel, progress_bar(f"training {args.kind}") as bar:
        result = gc.train_generator(
            channel,
            args.features,
            args.kind,
            text_features=text,
            method_settings=ship_given or None,
            seed=args.seed,
            registered_model_name=args.name,
            experiment=args.experiment,
            progress=bar,
            **groups,
        )
    print(
        f"trained {args.kind} on {len(result.trained_classes)} of {len(result.class_names)} classes "
        f"(D={result.feature_dim}, D_t={result.text_dim}; {result.epochs_run} epochs, best epoch {result.best_epoch})"
    )
    if result.final_metrics:
        print(markdown_table(["metric", "value"], [[k, v] for k, v in sorted(result.final_metrics.items())]))
    print_model("generator", result.model)
    save_training_outputs(args, result.model.name, result.model.version, result.model.run_id)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    classes = parse_names(args.classes, "--classes") if args.classes else None
    generator = model_uri(args.generator)
    paths: list[Path] = [args.out]
    text = None
    if args.text_features is not None:
        classes, text = read_text_features(args.text_features, classes)
        text = text.float()
        paths.append(args.text_features)
    elif classes is None:
        raise CommandError("name the classes with --classes, or give --text-features")
    with open_channel(args, "generative", paths) as channel, progress_bar("synthesizing") as progress:
        result = gc.generate_features(
            channel, generator, classes, args.per_class, args.out, text_features=text, seed=args.seed, progress=progress
        )
    print(
        f"synthesized {result.n_features} features (D={result.feature_dim}) of {len(result.class_names)} classes "
        f"with {result.generator.model_uri}"
    )
    print(f"features: {result.features_uri}")
    return 0


def cmd_train_gzsl(args: argparse.Namespace) -> int:
    settings = given(args, GZSL_OPTIONS)
    if args.no_logit_adjustment:
        settings["logit_adjustment"] = False
    paths = [args.base, *([args.novel] if args.novel else [])]
    names: list[str] = []
    text = None
    if args.text_features is not None:
        classes = parse_names(args.classes, "--classes") if args.classes else None
        names, text = read_text_features(args.text_features, classes)
        text = text.float()
    elif args.classes:
        raise CommandError("--classes names the rows of --text-features; give both")
    with open_channel(args, "generative", paths) as channel, progress_bar("training GZSL classifier") as progress:
        result = gc.train_gzsl(
            channel,
            args.base,
            novel=args.novel,
            class_names=names,
            text_features=text,
            settings=settings,
            calibration=args.calibration,
            calibration_settings=given(args, CALIBRATION_OPTIONS, "calibration_"),
            seed=args.seed,
            registered_model_name=args.name,
            experiment=args.experiment,
            progress=progress,
        )
    print(
        f"trained a GZSL classifier over {len(result.class_names)} classes ({len(result.seen_indices)} seen, "
        f"{len(result.novel_indices)} novel) on {result.n_base} base + {result.n_novel} synthesized features "
        f"(final loss {result.final_loss:.4g})"
    )
    if result.calibration is not None:
        cal = result.calibration
        generator = cal.generator.model_uri if cal.generator else ""
        print(
            f"calibration: gamma {cal.gamma:.4g}, chosen on held-out base classes {', '.join(cal.pseudo_unseen)} "
            f"(held-out H {cal.harmonic_uncalibrated:.4f} -> {cal.harmonic:.4f}; generator {generator})"
        )
    print_model("classifier", result.model)
    save_training_outputs(args, result.model.name, result.model.version, result.model.run_id)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    names = parse_names(args.classes, "--classes") if args.classes else []
    paths = [args.base, *([args.novel] if args.novel else []), *([args.test] if args.test else [])]
    with open_channel(args, "generative", paths) as channel:
        with progress_bar(f"fine-tuning ({args.method})") as progress:
            result = gc.fine_tune(
                channel,
                args.base,
                args.method,
                novel=args.novel,
                class_names=names,
                settings=given(args, FINETUNE_OPTIONS),
                seed=args.seed,
                registered_model_name=args.name,
                experiment=args.experiment,
                progress=progress,
            )
        evaluation = None
        if args.test is not None:
            with progress_bar("evaluating") as progress:
                evaluation = gc.evaluate_gzsl(
                    channel, result.model.model_uri, args.test, experiment=args.experiment, progress=progress
                )
    synthetic = f" + {result.n_synthetic} synthesized" if result.n_synthetic else " (no synthesized features)"
    if result.n_val:
        kept = f"best epoch {result.best_epoch} of {result.epochs_run} on {result.n_val} held-out images, "
        kept += f"base accuracy {result.val_accuracy:.4f}"
    else:
        kept = f"kept the last epoch of {result.epochs_run}"
    print(
        f"fine-tuned {args.method} over {len(result.class_names)} classes ({len(result.base_indices)} base, "
        f"{len(result.new_indices)} new) on {result.n_fit} real images x {result.views} views{synthetic}; {kept}"
    )
    print_model("model", result.model)
    if evaluation is not None:
        gz, bn = evaluation.gzsl, evaluation.base_to_new
        print(f"GZSL: S {gz.seen:.4f}  U {gz.unseen:.4f}  H {gz.harmonic:.4f}")
        print(f"base-to-new: B {bn.base:.4f}  N {bn.new:.4f}  HM {bn.harmonic:.4f}")
    save_training_outputs(args, result.model.name, result.model.version, result.model.run_id)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    classifier = model_uri(args.classifier)
    unseen_names = parse_names(args.unseen, "--unseen") if args.unseen else []
    paths = [args.test, args.alignment or ""]
    with open_channel(args, "generative", paths) as channel, progress_bar("evaluating") as progress:
        result = gc.evaluate_gzsl(
            channel,
            classifier,
            args.test,
            unseen_classes=unseen_names,
            calibration_gamma=args.calibration_gamma,
            alignment=args.alignment,
            experiment=args.experiment,
            progress=progress,
        )
    gz, bn = result.gzsl, result.base_to_new
    print(f"GZSL: S {gz.seen:.4f}  U {gz.unseen:.4f}  H {gz.harmonic:.4f}")
    print(
        f"base-to-new: B {bn.base:.4f}  N {bn.new:.4f}  HM {bn.harmonic:.4f} (overall accuracy; per-class mean "
        f"B {bn.base_per_class:.4f}  N {bn.new_per_class:.4f})"
    )
    unseen = set(result.unseen_indices)
    rows = [
        [name, "unseen" if i in unseen else "seen", acc if math.isfinite(acc) else "-", n]
        for i, (name, acc, n) in enumerate(
            zip(result.class_names, result.per_class_accuracy, result.support, strict=True)
        )
    ]
    print()
    print(markdown_table(["class", "split", "accuracy", "samples"], rows))
    print(f"\nclassifier: {result.classifier.model_uri}  MLflow run: {result.mlflow_run_id}")
    if args.plots_dir is not None:
        write_per_class_accuracy(args.plots_dir, list(result.class_names), list(result.per_class_accuracy), unseen)
    if args.metrics_out is not None:
        from zsc.evaluation import gzsl_report

        payload = {
            **gzsl_report(gz, bn),
            # JSON has no NaN: a class without test samples has no accuracy.
            "per_class_accuracy": {
                n: (a if math.isfinite(a) else None)
                for n, a in zip(result.class_names, result.per_class_accuracy, strict=True)
            },
        }
        write_json(args.metrics_out, payload)
    return 0
