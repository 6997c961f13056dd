"""The final GZSL classifier of DFZSL (methods.md §3 step 4): a logit-adjusted cosine classifier.

logits = cos(x, w_c) / temperature. The class weights w_c start from the L2-normalized text features of all
classes (DFZSL's text and image features share one space). When the text dimension D_t differs from the feature
dimension D they are mapped by a fixed seeded random orthonormal matrix (:func:`text_prototypes`), which keeps the
angles between classes but carries no image-space knowledge; the classifier learns the alignment from its
training features. (A map fitted on the training classes would itself be a zero-shot learner and would blur what
the synthesized features contribute.)

Training minimizes the cross-entropy of logits + tau·log π_y (logit adjustment, Menon et al. 2021). The default
follows the released ``classifiers/classifier_images.py``: Adam (β1 0.5), a batch of as many samples as each novel
class has synthesized features, and the prior ``prior="seen_unseen"``: log π_c = log(seen_mass · n_c / n_seen) for a
seen class (n_c its training samples, n_seen all seen-class samples) and log((1 - seen_mass) / n_unseen) for an
unseen class, seen_mass = 0.5 (their ``ratio`` 1). ``prior="frequency"`` uses the class frequencies of the whole
training set instead (a class without samples counts as one); :meth:`GZSLConfig.frequency_prior` is zsc's earlier
setting (that prior, batch 256, β1 0.9), kept as a measured option (README, deviations). At inference no prior is
added; calibrated stacking subtracts ``calibration_gamma`` (in logit units) from the seen-class logits, and
:func:`holdout_calibration` chooses it on held-out training classes, never on test data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypedDict, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zsc.config import check_config, setting
from zsc.errors import Cancelled
from zsc.evaluation import GZSLMetrics, gzsl_metrics
from zsc.features import FeatureSet
from zsc.limits import MAX_WEIGHT_DECAY

from .common import (
    BETA,
    FRACTION,
    LR,
    MAX_BATCH,
    MAX_EPOCHS,
    ConfigMixin,
    EpochHook,
    GeneratorConfig,
    GeneratorTrainResult,
    StopHook,
    clone_state_dict,
    generate,
    holdout_split,
    make_adam,
    prepare_training_data,
)

__all__ = [
    "PRIORS",
    "Calibration",
    "CosineClassifier",
    "GZSLConfig",
    "GZSLTrainResult",
    "GZSLTraining",
    "HoldoutPlan",
    "build_gzsl_classifier",
    "choose_calibration_gamma",
    "class_log_prior",
    "fit_gzsl_classifier",
    "holdout_calibration",
    "resolved_batch_size",
    "text_prototypes",
    "train_gzsl",
    "train_gzsl_classifier",
]

PRIORS = ("seen_unseen", "frequency")
# The released classifier's own default batch (its CLASSIFIER(_batch_size=100)), used when no novel class has samples.
_FALLBACK_BATCH = 100


@dataclass
class GZSLConfig(ConfigMixin):
    """The released DFZSL classifier's settings (``classifiers/classifier_images.py``, AWA2 script).

    ``batch_size`` 0 means the number of synthesized features per novel class (their ``syn_num``); ``beta1`` is
    Adam's (β2 0.999); ``prior`` and ``seen_mass`` define the logit adjustment (module docstring).
    """

    seed: int = setting(0, ge=0)
    epochs: int = setting(100, ge=1, le=MAX_EPOCHS)
    lr: float = setting(5e-5, **LR)
    batch_size: int = setting(0, ge=0, le=MAX_BATCH)
    beta1: float = setting(0.5, **BETA)
    weight_decay: float = setting(0.0, ge=0.0, le=MAX_WEIGHT_DECAY)
    temperature: float = setting(0.01, gt=0.0)
    logit_adjustment: bool = True
    logit_adjustment_tau: float = 1.0
    prior: str = "seen_unseen"
    seen_mass: float = setting(0.5, **FRACTION)
    calibration_gamma: float = 0.0

    @classmethod
    def frequency_prior(cls, **overrides: object) -> GZSLConfig:
        """zsc's earlier settings: the class-frequency prior over the whole training set, batch 256, Adam β1 0.9.

        Not the released code's; measured beside it in the README's deviations list.
        """
        return cls(**{"prior": "frequency", "batch_size": 256, "beta1": 0.9, **overrides})  # type: ignore[arg-type]

    def check(self) -> None:
        """Raise ValueError (InvalidArgument) on values no run can use: every declared bound, a known prior."""
        check_config(self)
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")


def class_log_prior(labels: Tensor, num_classes: int, seen_mask: Tensor, config: GZSLConfig) -> Tensor:
    """log π [C] of the logit adjustment, from the training labels (see the module docstring for both priors)."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    seen = seen_mask.to(counts.device)
    if config.prior == "frequency":
        counts = counts.clamp_min(1)
        return (counts / counts.sum()).log()
    n_unseen = int((~seen).sum())
    seen_counts = torch.where(seen, counts, torch.zeros_like(counts))
    # A seen class without samples gets log 0 = -inf in the released code; one sample keeps its logit finite.
    within = seen_counts.clamp_min(1) / seen_counts.sum().clamp_min(1)
    prior = torch.where(seen, config.seen_mass * within, (1 - config.seen_mass) / max(n_unseen, 1))
    return prior.log()


def resolved_batch_size(labels: Tensor, seen_mask: Tensor, config: GZSLConfig) -> int:
    """``config.batch_size``, or for 0 the number of training samples of the novel classes that have any (their
    synthesized features per class; the largest if they differ), else the released classifier's default 100."""
    if config.batch_size > 0:
        return config.batch_size
    counts = torch.bincount(labels, minlength=seen_mask.numel())[~seen_mask.to(labels.device)]
    counts = counts[counts > 0]
    return int(counts.max()) if counts.numel() else _FALLBACK_BATCH


class CosineClassifier(nn.Module):
    """Class weights [C, D]; ``seen_mask`` [C] marks the classes calibrated stacking penalizes."""

    seen_mask: Tensor  # a buffer, typed for the checker

    def __init__(self, weight: Tensor, seen_mask: Tensor, temperature: float, calibration_gamma: float = 0.0) -> None:
        super().__init__()
        if weight.ndim != 2 or seen_mask.shape != (weight.shape[0],):
            raise ValueError(
                f"weight must be [C, D] and seen_mask [C], got {tuple(weight.shape)}, {tuple(seen_mask.shape)}"
            )
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.register_buffer("seen_mask", seen_mask.detach().clone().bool())
        self.temperature = temperature
        self.calibration_gamma = calibration_gamma

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """Uncalibrated logits cos(x, w)/temperature, [N, C]."""
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.temperature

    @torch.no_grad()
    def scores(self, x: Tensor, gamma: float | None = None, batch_size: int = 65536) -> Tensor:
        """Inference logits with calibrated stacking: seen-class logits minus ``gamma`` (default: the configured)."""
        g = self.calibration_gamma if gamma is None else gamma
        x = x.to(device=self.weight.device, dtype=torch.float32)
        out = torch.cat([self(chunk) for chunk in x.split(batch_size)])
        return out - g * self.seen_mask.to(out.dtype)

    def predict(self, x: Tensor, gamma: float | None = None) -> Tensor:
        """Predicted class index of every row of ``x``."""
        return self.scores(x, gamma).argmax(dim=1)


@dataclass
class GZSLTrainResult:
    """The trained classifier, a deep copy of its state dict, the mean training loss of every epoch, the batch."""

    classifier: CosineClassifier
    state_dict: dict[str, Tensor]
    history: list[dict[str, float]]
    batch_size: int = 0


def text_prototypes(text_features: Tensor, dim: int, seed: int = 0) -> Tensor:
    """Initial class weights [C, dim]: the L2-normalized text features, randomly rotated into ``dim`` if needed.

    Text and image features of different widths share no axes, so the map is a fixed seeded random orthonormal
    one: for D_t <= dim it keeps every inner product between text features (an isometric embedding); for D_t > dim
    it is an orthogonal projection onto a random dim-dimensional subspace. Training then aligns the weights.
    """
    text = F.normalize(text_features.float(), dim=-1)
    d_t = text.shape[1]
    if d_t == dim:
        return text
    rng = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(max(d_t, dim), min(d_t, dim), generator=rng, dtype=torch.float64))
    proj = (q.T if d_t < dim else q).to(device=text.device, dtype=torch.float32)  # [d_t, dim]
    return F.normalize(text @ proj, dim=-1)


def fit_gzsl_classifier(
    features: Tensor,
    labels: Tensor,
    text_features: Tensor,
    seen_classes: Sequence[int] | Tensor,
    config: GZSLConfig,
    *,
    on_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
    device: str | torch.device | None = None,
) -> GZSLTrainResult:
    """Train over all C = len(text_features) classes on (base + synthesized) ``features`` [N, D], ``labels`` [N]."""
    config.check()
    device = torch.device(device) if device is not None else features.device
    x = F.normalize(features.to(device=device, dtype=torch.float32), dim=-1)
    y = labels.to(device=device, dtype=torch.int64)
    num_classes = text_features.shape[0]
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"need features [N, D] and labels [N] with N > 0, got {tuple(x.shape)} and {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    seen_mask = torch.zeros(num_classes, dtype=torch.bool)
    seen_mask[torch.as_tensor(seen_classes, dtype=torch.int64)] = True

    weight = text_prototypes(text_features.to(device), x.shape[1], config.seed)
    model = CosineClassifier(weight, seen_mask, config.temperature, config.calibration_gamma).to(device)
    optimizer = make_adam(model, config.lr, (config.beta1, 0.999), weight_decay=config.weight_decay)
    adjustment = None
    if config.logit_adjustment:
        adjustment = config.logit_adjustment_tau * class_log_prior(y, num_classes, seen_mask, config).to(device)
    rng = torch.Generator(device=device).manual_seed(config.seed)
    n, b = x.shape[0], resolved_batch_size(y, seen_mask, config)
    steps = math.ceil(n / b)
    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, device=device, generator=rng)
        total = torch.zeros((), device=device)
        for i in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled(f"training cancelled during epoch {epoch}")
            idx = order[i * b : (i + 1) * b]
            logits = model(x[idx])
            if adjustment is not None:
                logits = logits + adjustment
            loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        record = {"loss": (total / steps).item()}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, config.epochs, dict(record))
    return GZSLTrainResult(classifier=model, state_dict=clone_state_dict(model), history=history, batch_size=b)


class FitOptions(TypedDict, total=False):
    """:func:`fit_gzsl_classifier`'s keyword options, for the wrappers that pass them on."""

    on_epoch: EpochHook | None
    should_stop: StopHook | None
    device: str | torch.device | None


def train_gzsl_classifier(
    data: FeatureSet, seen_classes: Sequence[int] | Tensor, config: GZSLConfig, **options: Unpack[FitOptions]
) -> GZSLTrainResult:
    """:func:`fit_gzsl_classifier` on a FeatureSet holding base + synthesized features and all classes' text."""
    data.validate()
    return fit_gzsl_classifier(data.features, data.labels, data.text_features, seen_classes, config, **options)


def build_gzsl_classifier(state_dict: dict[str, Tensor], config: GZSLConfig) -> CosineClassifier:
    """Rebuild a trained classifier from its state dict (e.g. read from safetensors) and its config."""
    missing = {"weight", "seen_mask"} - set(state_dict)
    if missing:
        raise ValueError(f"classifier state dict lacks {sorted(missing)}")
    model = CosineClassifier(
        state_dict["weight"], state_dict["seen_mask"], config.temperature, config.calibration_gamma
    )
    model.load_state_dict(state_dict)
    return model


# --------------------------------------------------------------------------------------------------------------
# Calibrated stacking chosen on held-out training classes


def choose_calibration_gamma(
    scores: Tensor,
    y_true: Tensor,
    seen_classes: Sequence[int] | Tensor,
    unseen_classes: Sequence[int] | Tensor,
    num_grid: int = 201,
) -> tuple[float, float]:
    """The calibrated-stacking gamma that maximizes H on labelled scores [N, C]; returns (gamma, H at gamma).

    Call it on held-out data only, never on test data. Predictions switch where gamma crosses a sample's margin
    (best seen logit minus best other logit), so the candidates are 0 and just above ``num_grid`` quantiles of the
    margins; ties go to the gamma closest to 0.
    """
    scores = scores.detach().float().cpu()
    seen = torch.as_tensor(seen_classes, dtype=torch.int64)
    unseen = torch.as_tensor(unseen_classes, dtype=torch.int64)
    mask = torch.zeros(scores.shape[1], dtype=torch.bool)
    mask[seen] = True
    if mask.all():
        raise ValueError("calibration needs at least one class that is not seen")
    s_val, s_idx = scores.masked_fill(~mask, -math.inf).max(dim=1)
    o_val, o_idx = scores.masked_fill(mask, -math.inf).max(dim=1)
    margins = s_val - o_val
    q = torch.quantile(margins.double(), torch.linspace(0, 1, num_grid, dtype=torch.float64)).float()
    candidates = torch.cat((torch.zeros(1), q + 1e-4 * q.abs().clamp_min(1.0))).unique()
    best = (-1.0, 0.0)  # (H, gamma)
    for g in sorted(candidates.tolist(), key=abs):
        pred = torch.where(margins > g, s_idx, o_idx)
        h = gzsl_metrics(y_true, pred, seen, unseen).harmonic
        if h > best[0]:
            best = (h, g)
    return best[1], best[0]


@dataclass
class Calibration:
    """What :func:`holdout_calibration` chose, with the held-out H at that gamma and at gamma 0."""

    gamma: float
    harmonic: float
    harmonic_uncalibrated: float
    pseudo_seen: list[int]  # class indices of the source FeatureSet
    pseudo_novel: list[int]


def holdout_calibration(
    data: FeatureSet,
    train_generator: Callable[[FeatureSet], nn.Module],
    config: GZSLConfig,
    *,
    n_per_class: int,
    holdout_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
    normalize: bool = True,
    classifier_text: Tensor | None = None,
    should_stop: StopHook | None = None,
    device: str | torch.device | None = None,
) -> Calibration:
    """Choose calibrated stacking's gamma without test data, on the seen classes' own training features.

    The split of the generator's selection (:func:`.common.holdout_split`): a seeded ``holdout_fraction`` of the
    classes with samples become pseudo-novel and a ``val_fraction`` of every other class's samples is held out.
    ``train_generator`` (any generator trainer) learns from the rest, synthesizes ``n_per_class`` features per
    pseudo-novel class, a classifier with ``config`` is fit on them plus the kept real features, and gamma is the
    value that maximizes H on the held-out real features (:func:`choose_calibration_gamma`). Then set
    ``calibration_gamma`` of the final classifier to it.

    The generator conditions on ``data.text_features``; the classifier starts from ``classifier_text`` [C, D_c]
    (one row per class of ``data``; default the same text), as a final classifier may use other text than the
    generator did.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    full = prepare_training_data(data, normalize, dev)
    if classifier_text is not None and classifier_text.shape[0] != data.num_classes:
        raise ValueError(f"classifier_text has {classifier_text.shape[0]} rows for {data.num_classes} classes")
    clf_text = full.class_text if classifier_text is None else classifier_text[full.classes].to(dev)
    split = holdout_split(full, holdout_fraction, val_fraction, seed)
    fit, held = full.take(split.fit_index), full.take(split.eval_index)
    names = [f"class {int(c)}" for c in full.classes]
    generator = train_generator(FeatureSet(fit.features.cpu(), fit.labels.cpu(), names, full.class_text.cpu()))
    text = full.class_text.to(next(generator.parameters()).device)
    gen_x, gen_y = generate(
        generator,
        text[split.novel.to(text.device)],
        n_per_class,
        seed,
        class_indices=split.novel,
        should_stop=should_stop,
    )
    x = torch.cat((fit.features, gen_x.to(dev)))
    y = torch.cat((fit.labels, gen_y.to(dev)))
    clf_config = replace(config, calibration_gamma=0.0)
    clf = fit_gzsl_classifier(x, y, clf_text, split.seen, clf_config, should_stop=should_stop).classifier
    scores = clf.scores(held.features, gamma=0.0)
    gamma, h = choose_calibration_gamma(scores, held.labels.cpu(), split.seen, split.novel)
    h0 = gzsl_metrics(held.labels.cpu(), scores.argmax(dim=1).cpu(), split.seen, split.novel).harmonic
    classes = full.classes.tolist()
    return Calibration(
        gamma=gamma,
        harmonic=h,
        harmonic_uncalibrated=h0,
        pseudo_seen=[classes[i] for i in split.seen.tolist()],
        pseudo_novel=[classes[i] for i in split.novel.tolist()],
    )


# --------------------------------------------------------------------------------------------------------------
# TrainGZSL's whole job: the calibration (when asked for), the final classifier, its fit on the training features


@dataclass(frozen=True)
class HoldoutPlan:
    """CALIBRATION_HOLDOUT's inputs: a generator trainer and its config (copied from a trained generator), the base
    features over the base classes only with that generator's conditioning text, and the split."""

    train: Callable[..., GeneratorTrainResult]  # train(data, config, on_epoch=, should_stop=, device=)
    config: GeneratorConfig
    data: FeatureSet
    classifier_text: Tensor  # [S, D_c] the final classifier's text features of those classes
    holdout_fraction: float
    val_fraction: float
    n_per_class: int

    @property
    def total_epochs(self) -> int:
        """An upper bound of the generator's epochs (selection with refit trains twice at most)."""
        return self.config.epochs * (2 if self.config.select_every > 0 and self.config.select_refit else 1)


@dataclass(frozen=True)
class GZSLTraining:
    """The trained classifier, the config it was trained with (its chosen gamma), the calibration's choice and the
    S/U of its own training features (base real, novel synthesized: a sanity check, not a selection)."""

    fit: GZSLTrainResult
    config: GZSLConfig
    calibration: Calibration | None
    train_fit: GZSLMetrics | None

    @property
    def final_loss(self) -> float:
        return self.fit.history[-1]["loss"]


def train_gzsl(
    features: Tensor,
    labels: Tensor,
    text_features: Tensor,
    seen: Sequence[int],
    novel: Sequence[int],
    config: GZSLConfig,
    holdout: HoldoutPlan | None = None,
    *,
    on_epoch: EpochHook | None = None,
    on_calibration_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
    device: str | torch.device | None = None,
) -> GZSLTraining:
    """Choose gamma on held-out base classes (``holdout``), then fit the final classifier with it."""
    calibration = None
    if holdout is not None:

        def train_generator(data: FeatureSet) -> nn.Module:
            kwargs = {"on_epoch": on_calibration_epoch, "should_stop": should_stop, "device": device}
            return holdout.train(data, holdout.config, **kwargs).generator

        calibration = holdout_calibration(
            holdout.data,
            train_generator,
            config,
            n_per_class=holdout.n_per_class,
            holdout_fraction=holdout.holdout_fraction,
            val_fraction=holdout.val_fraction,
            seed=config.seed,
            normalize=holdout.config.normalize_features,
            classifier_text=holdout.classifier_text,
            should_stop=should_stop,
            device=device,
        )
        config = replace(config, calibration_gamma=calibration.gamma)
    fit = fit_gzsl_classifier(
        features, labels, text_features, seen, config, on_epoch=on_epoch, should_stop=should_stop, device=device
    )
    pred = fit.classifier.predict(features).cpu()
    train_fit = gzsl_metrics(labels, pred, seen, novel) if novel else None
    return GZSLTraining(fit, config, calibration, train_fit)
