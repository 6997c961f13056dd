"""The seeded training driver both generators share (f-CLSWGAN, TF-VAEGAN), with held-out model selection.

Selection fits a quick GZSL classifier per scored epoch, so this module sits above ``gzsl`` and ``common``; see
``common`` for the protocol and the conventions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from zsc.errors import Cancelled
from zsc.evaluation import gzsl_metrics
from zsc.features import FeatureSet

from .common import (
    AdversarialTrainer,
    EpochHook,
    GeneratorConfig,
    GeneratorTrainResult,
    HoldoutSplit,
    StopHook,
    TrainingData,
    clone_state_dict,
    generate,
    holdout_split,
    prepare_training_data,
)
from .gzsl import GZSLConfig, fit_gzsl_classifier

__all__ = ["fit_generator"]


@dataclass
class _Progress:
    done: int
    total: int
    on_epoch: EpochHook | None
    should_stop: StopHook | None


def _run_epochs(
    trainer: AdversarialTrainer,
    epochs: int,
    seed: int,
    progress: _Progress,
    prefix: str = "",
    scorer: Callable[[nn.Module], dict[str, float]] | None = None,
    select_every: int = 0,
) -> tuple[list[dict[str, float]], int, dict[str, Tensor] | None]:
    """Train for ``epochs``; with a scorer, score every ``select_every`` epochs and keep a copy of the best state."""
    data, cfg = trainer.data, trainer.config
    device = data.features.device
    rng = torch.Generator(device=device).manual_seed(seed)
    n, b, k = data.features.shape[0], cfg.batch_size, cfg.critic_iters
    per_pass = math.ceil(n / b)
    steps = trainer.passes_per_epoch * per_pass
    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = -math.inf, epochs, None
    for epoch in range(1, epochs + 1):
        # One index draw per epoch and one noise draw per step keep the loop free of host work and syncs.
        index = torch.randint(0, n, (steps, k, b), device=device, generator=rng)
        total = torch.zeros(len(trainer.loss_names), device=device)
        for s in range(steps):
            if progress.should_stop is not None and progress.should_stop():
                raise Cancelled(f"training cancelled during epoch {progress.done + 1}")
            noise = torch.randn(trainer.noise_draws, b, trainer.noise_dim, device=device, generator=rng)
            alpha = torch.rand(k, b, 1, device=device, generator=rng)
            losses = trainer.step(index[s], noise, alpha, s // per_pass)
            total += torch.stack([losses[m] for m in trainer.loss_names])
        # The epoch's only host sync: one transfer of all mean losses.
        record = {f"{prefix}{m}": v for m, v in zip(trainer.loss_names, (total / steps).tolist(), strict=True)}
        if scorer is not None and (epoch % select_every == 0 or epoch == epochs):
            scores = scorer(trainer.sampler)
            record.update({f"{prefix}{m}": v for m, v in scores.items()})
            if best_state is None or scores["H"] > best_score:
                best_score, best_epoch, best_state = scores["H"], epoch, clone_state_dict(trainer.sampler)
        history.append(record)
        progress.done += 1
        if progress.on_epoch is not None:
            progress.on_epoch(progress.done, progress.total, dict(record))
    return history, best_epoch, best_state


def _holdout_scorer(
    data: TrainingData, split: HoldoutSplit, config: GeneratorConfig, should_stop: StopHook | None = None
) -> Callable[[nn.Module], dict[str, float]]:
    """H (with S and U) of a quick GZSL classifier fit on pseudo-seen real + synthesized pseudo-novel features."""
    device = data.features.device
    fit_x, fit_y = data.features[split.fit_index.to(device)], data.labels[split.fit_index.to(device)]
    eval_x, eval_y = data.features[split.eval_index.to(device)], data.labels[split.eval_index.to(device)]
    clf_config = GZSLConfig(seed=config.seed, epochs=config.select_classifier_epochs, lr=config.select_classifier_lr)

    def score(sampler: nn.Module) -> dict[str, float]:
        gen_x, gen_y = generate(
            sampler,
            data.class_text[split.novel.to(device)],
            config.select_n_per_class,
            config.seed,
            class_indices=split.novel,
            should_stop=should_stop,
        )
        clf = fit_gzsl_classifier(
            torch.cat((fit_x, gen_x)),
            torch.cat((fit_y, gen_y)),
            data.class_text,
            split.seen,
            clf_config,
            should_stop=should_stop,
        ).classifier
        m = gzsl_metrics(eval_y, clf.predict(eval_x), split.seen, split.novel)
        return {"S": m.seen, "U": m.unseen, "H": m.harmonic}

    return score


_Config = TypeVar("_Config", bound=GeneratorConfig)


def fit_generator(
    data: FeatureSet,
    config: _Config,
    make_trainer: Callable[[TrainingData, _Config, StopHook | None], AdversarialTrainer],
    *,
    on_epoch: EpochHook | None = None,
    should_stop: StopHook | None = None,
    device: str | torch.device | None = None,
) -> GeneratorTrainResult:
    """Train a generator on every class that has samples in ``data``, with optional held-out selection.

    ``make_trainer`` builds the method's :class:`AdversarialTrainer`. Per-epoch metrics go to ``on_epoch``; metrics
    of the selection run are prefixed ``select_`` and include its S/U/H where scored.
    """
    config.check()
    device = torch.device(device) if device is not None else torch.device("cpu")
    full = prepare_training_data(data, config.normalize_features, device)
    selecting = config.select_every > 0
    progress = _Progress(0, config.epochs * (2 if selecting and config.select_refit else 1), on_epoch, should_stop)
    selection_history: list[dict[str, float]] = []
    if not selecting:
        trainer = make_trainer(full, config, should_stop)
        history, best_epoch, _ = _run_epochs(trainer, config.epochs, config.seed, progress)
        state = clone_state_dict(trainer.sampler)
    else:
        split = holdout_split(full, config.select_holdout_fraction, config.select_val_fraction, config.seed)
        trainer = make_trainer(full.take(split.fit_index), config, should_stop)
        selection_history, best_epoch, best_state = _run_epochs(
            trainer,
            config.epochs,
            config.seed,
            progress,
            prefix="select_",
            scorer=_holdout_scorer(full, split, config, should_stop),
            select_every=config.select_every,
        )
        if best_state is None:  # unreachable: the last epoch is always scored
            raise RuntimeError("selection produced no scored epoch")
        if config.select_refit:
            progress.total = config.epochs + best_epoch
            trainer = make_trainer(full, config, should_stop)
            history, _, _ = _run_epochs(trainer, best_epoch, config.seed, progress)
            state = clone_state_dict(trainer.sampler)
        else:
            trainer.sampler.load_state_dict(best_state)
            history, state = [], best_state
    return GeneratorTrainResult(
        generator=trainer.sampler,
        modules=trainer.modules(),
        state_dict=state,
        history=history,
        best_epoch=best_epoch,
        selection_history=selection_history,
        feature_dim=full.feature_dim,
        text_dim=full.text_dim,
    )
