"""The data work of the generative jobs beyond a single model: features files' labels mapped onto a class list,
the GZSL and fine-tuning training sets, and synthesis from either generator family.

Errors name the offending class with InvalidArgument (a ValueError): the requests layer calls these on the RPC
thread, so bad input is refused before any job starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zsc.errors import InvalidArgument
from zsc.features import FeatureSet

from . import ship
from .bank import FeatureBank
from .common import StopHook, generate

__all__ = ["FineTuneData", "GZSLData", "finetune_data", "gzsl_data", "relabel", "synthesize"]


def relabel(data: FeatureSet, position: Mapping[str, int], missing: Callable[[str], str]) -> Tensor:
    """The file's labels as indices into ``position`` (by class name); ``missing(name)`` words the error."""
    present = data.labels.unique(sorted=True).tolist()
    remap = torch.full((data.num_classes,), -1, dtype=torch.int64)
    for i in present:
        name = data.class_names[i]
        if name not in position:
            raise InvalidArgument(missing(name))
        remap[i] = position[name]
    return remap[data.labels]


@dataclass(frozen=True)
class GZSLData:
    """TrainGZSL's training set over ``names``: real base features, then the synthesized novel ones."""

    names: tuple[str, ...]
    text: Tensor  # [C, D_t]
    base_labels: Tensor  # [N_base] indices into names
    features: Tensor  # [N, D] base then novel
    labels: Tensor  # [N]
    seen: list[int]  # classes with base samples
    novel: list[int]  # the other classes

    @property
    def n_novel(self) -> int:
        return int(self.labels.numel() - self.base_labels.numel())


def gzsl_data(base: FeatureSet, novel: FeatureSet | None, names: Sequence[str], text: Tensor, source: str) -> GZSLData:
    """Base (and novel) features labelled by ``names``; ``source`` words where the class list came from."""
    position = {n: i for i, n in enumerate(names)}
    base_y = relabel(base, position, lambda n: f"base class {n!r} has samples but is not among {source}")
    features, labels = [base.features], [base_y]
    if novel is not None:

        def unknown(n: str) -> str:
            return (
                f"novel class {n!r} has no text feature: it is not among {source}; send class_names and "
                "text_features of every class"
            )

        labels.append(relabel(novel, position, unknown))
        features.append(novel.features)
    seen = sorted(set(base_y.tolist()))
    seen_set = set(seen)
    return GZSLData(
        names=tuple(names),
        text=text,
        base_labels=base_y,
        features=torch.cat(features),
        labels=torch.cat(labels),
        seen=seen,
        novel=[i for i in range(len(names)) if i not in seen_set],
    )


@dataclass(frozen=True)
class FineTuneData:
    """FineTune's training set: the real base bank relabelled onto ``names``, the synthesized new features."""

    bank: FeatureBank
    names: tuple[str, ...]
    base: list[int]  # classes with real images
    new: list[int]  # the other classes
    synthetic: tuple[Tensor, Tensor] | None  # (features [M, D], labels [M]) of new classes only


def finetune_data(
    bank: FeatureBank, base: FeatureSet, novel: FeatureSet | None, names: Sequence[str], source: str
) -> FineTuneData:
    """``bank`` (unflattened from ``base``) and the synthesized ``novel`` features labelled by ``names``."""
    position = {n: i for i, n in enumerate(names)}
    rows = relabel(base, position, lambda n: f"base class {n!r} has samples but is not among {source}")
    bank = FeatureBank(bank.features, rows.view(bank.images, bank.views)[:, 0])
    base_idx = sorted(set(bank.labels.tolist()))
    synthetic = None
    if novel is not None:
        novel_y = relabel(novel, position, lambda n: f"novel class {n!r} is not among {source}")
        clash = sorted(set(novel_y.tolist()) & set(base_idx))
        if clash:
            raise InvalidArgument(
                f"class {names[clash[0]]!r} has real base samples and synthesized ones; synthesize new classes only"
            )
        synthetic = (novel.features, novel_y)
    new_idx = sorted(set(range(len(names))) - set(base_idx))
    return FineTuneData(bank, tuple(names), base_idx, new_idx, synthetic)


def synthesize(
    module: nn.Module,
    names: Sequence[str],
    text: Tensor,
    per_class: int,
    seed: int,
    *,
    from_names: bool,
    device: torch.device,
    should_stop: StopHook | None = None,
) -> tuple[Tensor, Tensor]:
    """``per_class`` float32 CPU features of each class, grouped in ``names`` order, and their labels: a SHIP VAE
    (``from_names``) decodes the names through CLIP, a text-conditioned generator reads ``text`` [K, D_t]."""
    if from_names:
        x, y = ship.synthesize(module, names, per_class, seed, should_stop=should_stop)  # type: ignore[arg-type]
    else:
        x, y = generate(module, text.to(device), per_class, seed, should_stop=should_stop)
    return x.float().cpu(), y.cpu()
