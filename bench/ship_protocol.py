"""SHIP fine-tuning under the released protocol against zsc's held-out selection option, on the constructed problem.

The released protocol (zsc's default, ``val_fraction = 0``) trains on all 16 shots of every base class and keeps
the last epoch; the option (``--val-fraction``, 0.2 here) holds that fraction of each base class out, keeps the
epoch that scores best on it and, for Tip-Adapter-F, searches (alpha, beta) on it. Both run the core
(``finetune.fine_tune``) on the same feature bank and the same synthesized new-class features, for each method and
seed, and are scored on the problem's fresh test features of all 20 classes: B / N / HM (base-to-new) as mean ± std
over the seeds, with the ratio of HM (option / released).

The data is ``zsc_generative.core.ship_problem`` (problem seed 0 unless ``--problem-seed``): "real" features
are the tiny CLIP's text-encoder outputs for prompts with a hidden context; 10 base classes x 16 images x 4 views,
10 new classes known by name. The sizes are the unit tests' (tests/unit/test_ship.py explains them).

    python bench/ship_protocol.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse

import torch

from zsc.evaluation import base_to_new_metrics, mean_std
from zsc.models.clip import create_clip
from zsc_generative.core.bank import FeatureBank
from zsc_generative.core.finetune import FineTuneConfig, fine_tune
from zsc_generative.core.ship import ShipConfig, synthesize, train_ship_vae
from zsc_generative.core.ship_problem import hidden_context_problem

SHIP = {"epochs": 25, "lr": 3e-3, "batch_size": 8, "encoder_hidden": 256, "generator_hidden": 256, "latent_dim": 32}
FINETUNE = {
    "coop": {"epochs": 25, "batch_size": 16, "lr": 5e-4},
    "clip_adapter": {"epochs": 50, "batch_size": 16, "lr": 0.02, "reduction": 1},
    "tip_adapter_f": {"batch_size": 32},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--problem-seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2, help="the held-out option's fraction")
    parser.add_argument("--methods", default=",".join(FINETUNE))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    clip = create_clip("tiny:zsc-tiny-clip")
    problem = hidden_context_problem(clip.model, clip.tokenizer, seed=args.problem_seed)
    vae = train_ship_vae(clip.model, clip.tokenizer, problem.train, ShipConfig(**SHIP)).generator
    x, y = synthesize(vae, [problem.class_names[i] for i in problem.new], 50, seed=0)
    synthetic = (x, torch.tensor(problem.new)[y])
    bank = FeatureBank.from_feature_set(problem.train)
    print(f"problem seed {args.problem_seed}, training seeds {seeds}; B / N / HM on 1000 test features (mean ± std)")
    for method in args.methods.split(","):
        hm: dict[str, list[float]] = {}
        for label, fraction in (("released (all shots, last epoch)", 0.0), ("held-out selection", args.val_fraction)):
            rows = []
            for seed in seeds:
                config = FineTuneConfig.for_method(method, seed=seed, val_fraction=fraction, **FINETUNE[method])
                result = fine_tune(clip.model, clip.tokenizer, bank, problem.class_names, config, synthetic)
                scores = result.classifier.scores(problem.test.features)
                m = base_to_new_metrics(scores, problem.test.labels, problem.base, problem.new)
                rows.append((m.base, m.new, m.harmonic, result.best_epoch))
            columns = list(zip(*rows, strict=True))
            hm[label] = list(columns[2])
            text = " / ".join(f"{mean_std(c).mean:.3f} ± {mean_std(c).std:.3f}" for c in columns[:3])
            epochs = ",".join(str(e) for e in columns[3])
            print(f"{method:14s} {label:34s} {text}   (epochs kept: {epochs}; {result.n_fit} shots trained)")
        released, option = (mean_std(v).mean for v in hm.values())
        print(f"{method:14s} HM ratio held-out / released: {option / released:.3f}")


if __name__ == "__main__":
    main()
