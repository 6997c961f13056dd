"""SHIP end to end over gRPC on the tiny profile: train ship_vae, synthesize new-class features, fine-tune with CoOp,
CLIP-Adapter and Tip-Adapter-F, and print B/N/HM (and S/U/H) for each method with and without synthesized features.

The data is the constructed problem of ``zsc_generative.core.ship_problem``: "real" image features of a
class are CLIP's own text-encoder output for a prompt with a hidden context, so the ground truth is known and a VAE
that decodes through the same encoder can learn it from 10 base classes (16 images x 4 augmentation views each)
and synthesize the 10 new classes from their names. The zero-shot classifier does not know the hidden context.

Every call goes through the generative service: TrainGenerator (SHIP_VAE), GenerateFeatures, FineTune (twice per
method: with the synthesized file and without it) and EvaluateGZSL, against a server this script starts on a
loopback port (or ``--address``, whose data roots must include ``--data-dir``). MLflow logs go to a temporary
store unless ``ZSC_MLFLOW_DIR`` or ``MLFLOW_TRACKING_URI`` is set. The sizes are the unit tests' (small models,
more steps) because the tiny problem has 160 training images, not the thousands the paper's defaults are tuned for.

    python bench/ship_acceptance.py --seeds 0,1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from zsc import client
from zsc.client import generative
from zsc.evaluation import mean_std
from zsc.models.clip import create_clip
from zsc.profiles import get_profile
from zsc_generative.core.ship_problem import hidden_context_problem

SHIP = {"epochs": 25, "lr": 3e-3, "batch_size": 8, "noise_dim": 32}
SHIP_WIDTHS = {"encoder_hidden": 256, "generator_hidden": 256}
FINETUNE = {
    "coop": {"epochs": 25, "batch_size": 16, "lr": 5e-4},
    "clip_adapter": {"epochs": 50, "batch_size": 16, "lr": 0.02, "reduction": 1},
    "tip_adapter_f": {"batch_size": 32},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated (default 0)")
    parser.add_argument("--problem-seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, help="where the feature files go (default: a temporary folder)")
    parser.add_argument("--address", help="a running generative service (default: start one here)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if not os.environ.get("ZSC_MLFLOW_DIR") and not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["ZSC_MLFLOW_DIR"] = tempfile.mkdtemp(prefix="zsc-ship-mlflow-")
    data = (args.data_dir or Path(tempfile.mkdtemp(prefix="zsc-ship-data-"))).resolve()
    data.mkdir(parents=True, exist_ok=True)

    profile = get_profile("tiny")  # the service's CLIP: the problem must be built with the same text encoder
    assert profile.clip is not None
    clip = create_clip(profile.clip, "cpu", seed=profile.seed)
    problem = hidden_context_problem(clip.model, clip.tokenizer, seed=args.problem_seed)
    train, test = data / "ship-train.safetensors", data / "ship-test.safetensors"
    problem.train.save(train)
    problem.test.save(test)
    new_names = [problem.class_names[i] for i in problem.new]
    print(f"problem: {len(problem.base)} base + {len(problem.new)} new classes, {len(problem.train)} train rows")

    rows: dict[tuple[str, bool], list[dict[str, float]]] = {}
    with client.channel("generative", args.address, profile="tiny", data_roots=[data]) as channel:
        for seed in seeds:
            gen = generative.train_generator(
                channel, train, "ship_vae", settings=SHIP, method_settings=SHIP_WIDTHS, seed=seed
            )
            print(
                f"seed {seed}: ship_vae {gen.model.model_uri}, reconstruction cosine "
                f"{gen.final_metrics['recon_cosine']:.4f}"
            )
            novel = data / f"ship-novel-{seed}.safetensors"
            generative.generate_features(channel, gen.model.model_uri, new_names, 50, novel, seed=seed)
            for method, settings in FINETUNE.items():
                for synthetic in (False, True):
                    tuned = generative.fine_tune(
                        channel,
                        train,
                        method,
                        novel=novel if synthetic else None,
                        class_names=problem.class_names,
                        settings=settings,
                        seed=seed,
                    )
                    result = generative.evaluate_gzsl(channel, tuned.model.model_uri, test, unseen_classes=new_names)
                    bn, gz = result.base_to_new, result.gzsl
                    metrics = {
                        "B": bn.base,
                        "N": bn.new,
                        "HM": bn.harmonic,
                        "S": gz.seen,
                        "U": gz.unseen,
                        "H": gz.harmonic,
                    }
                    rows.setdefault((method, synthetic), []).append(metrics)

    print(
        f"\nB/N/HM (base-to-new) and S/U/H (GZSL) on {len(problem.test)} test features; mean ± std over seeds {seeds}"
    )
    header = ["method", "synthesized", "B", "N", "HM", "S", "U", "H"]
    print("| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|")
    for (method, synthetic), runs in rows.items():
        cells = [method, "yes" if synthetic else "no"]
        for key in header[2:]:
            stat = mean_std(r[key] for r in runs)
            cells.append(f"{stat.mean:.3f} ± {stat.std:.3f}" if len(runs) > 1 else f"{stat.mean:.3f}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
