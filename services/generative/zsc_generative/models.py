"""Generators and GZSL classifiers as model folders: a safetensors state dict plus a JSON config, never pickle.

A saved model is a folder:

- ``config.json``: the format tag, the core's config (``ConfigMixin.to_dict``), dimensions and class names;
- ``weights.safetensors``: the state dict;
- generators only, ``text_features.safetensors``: the text features of every class of the training file, so a
  caller can ask for features of a class by name.

A SHIP_VAE generator's weights are its context tokens, encoder and generator only; it decodes through the
service's CLIP text encoder, so its config names that CLIP (``clip``) and a fingerprint of its text tower, and
loading it under another CLIP fails with FAILED_PRECONDITION. A fine-tuned model (``zsc-finetune/1``, from FineTune)
is stored like a classifier (``classifier/``) and scores features without CLIP.

This module only writes and reads the folders. Everything registry-like is ``zsc.registry``'s: the folder is logged
to the training run (``generator/`` or ``classifier/``) and registered with ``registry.register_folder``, a model URI
resolves with ``registry.resolve`` and its files are read with ``registry.fetch`` / ``registry.load_files``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from zsc.errors import FailedPrecondition, InvalidArgument, NotFound
from zsc.models.clip import ClipBundle
from zsc_generative.core import clswgan, tfvaegan
from zsc_generative.core.common import GeneratorConfig, GeneratorTrainResult
from zsc_generative.core.finetune import FineTuneConfig, FineTunedClassifier, build_classifier
from zsc_generative.core.gzsl import CosineClassifier, GZSLConfig, build_gzsl_classifier
from zsc_generative.core.ship import ShipConfig, build_ship_vae, text_fingerprint

__all__ = [
    "CLASSIFIER_FORMAT",
    "FINETUNE_FORMAT",
    "GENERATOR_FORMAT",
    "KINDS",
    "SHIP_KIND",
    "GeneratorKind",
    "LoadedClassifier",
    "LoadedGenerator",
    "read_classifier",
    "read_generator",
    "write_classifier",
    "write_finetuned",
    "write_generator",
]

GENERATOR_FORMAT = "zsc-generator/1"
CLASSIFIER_FORMAT = "zsc-gzsl/1"
FINETUNE_FORMAT = "zsc-finetune/1"
SHIP_KIND = "ship_vae"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
TEXT_FILE = "text_features.safetensors"


@dataclass(frozen=True)
class GeneratorKind:
    """A trainable generator: its config class, training entry point and module factory (rebuilds for loading)."""

    name: str
    config_cls: type[GeneratorConfig]
    train: Callable[..., GeneratorTrainResult]
    build: Callable[[Any, int, int], nn.Module]


KINDS: dict[str, GeneratorKind] = {
    "tfvaegan": GeneratorKind("tfvaegan", tfvaegan.TFVAEGANConfig, tfvaegan.train_tfvaegan, tfvaegan.build_generator),
    "clswgan": GeneratorKind("clswgan", clswgan.CLSWGANConfig, clswgan.train_clswgan, clswgan.build_generator),
}


# --------------------------------------------------------------------------------------------------------------
# Folders


@dataclass
class LoadedGenerator:
    """A generator rebuilt from its folder, in eval mode, with the text features it stored."""

    kind: str
    config: GeneratorConfig | ShipConfig
    module: nn.Module
    feature_dim: int
    text_dim: int
    class_names: list[str]
    text_features: Tensor  # [C, D_t] float32, CPU
    trained_classes: list[str]

    def text_of(self, names: Sequence[str], reference: str) -> Tensor:
        """Stored text features [K, D_t] of ``names``; InvalidArgument names the first class it does not know."""
        index = {n: i for i, n in enumerate(self.class_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise InvalidArgument(
                f"class {missing[0]!r} has no text feature in generator {reference} (it stores the "
                f"{len(self.class_names)} classes of its training file); send text_features for the classes"
            )
        return self.text_features[[index[n] for n in names]]


@dataclass
class LoadedClassifier:
    """A GZSL cosine classifier or a fine-tuned model rebuilt from its folder; ``seen`` are the classes it had base
    samples of. Both score with ``model.scores(features, gamma)``."""

    config: GZSLConfig | FineTuneConfig
    model: CosineClassifier | FineTunedClassifier
    class_names: list[str]
    seen: list[int]
    feature_dim: int
    text_dim: int

    @property
    def calibration_gamma(self) -> float:
        """The calibrated-stacking gamma it was trained with (fine-tuned models have none: 0)."""
        return float(getattr(self.config, "calibration_gamma", 0.0))


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_config(folder: Path, expected_format: str | tuple[str, ...], reference: str) -> dict[str, Any]:
    expected = (expected_format,) if isinstance(expected_format, str) else expected_format
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise NotFound(f"{reference} has no {CONFIG_FILE}; it is not a zsc generative model")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{reference}: {CONFIG_FILE} is not valid JSON ({err})") from err
    found = config.get("format") if isinstance(config, dict) else None
    if found not in expected:
        raise InvalidArgument(f"{reference} is a {found or 'non-zsc'} model, not a {' or '.join(expected)} model")
    return config


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def write_generator(
    folder: Path,
    *,
    kind: str,
    config: GeneratorConfig,
    state_dict: dict[str, Tensor],
    feature_dim: int,
    text_dim: int,
    class_names: Sequence[str],
    text_features: Tensor,
    trained_classes: Sequence[str],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a generator folder (see the module docstring); ``extra`` adds config.json keys (SHIP's CLIP)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(state_dict), folder / WEIGHTS_FILE)
    save_file({"text_features": text_features.float().detach().cpu().contiguous()}, folder / TEXT_FILE)
    _write_config(
        folder,
        {
            "format": GENERATOR_FORMAT,
            "kind": kind,
            "config": config.to_dict(),
            "feature_dim": int(feature_dim),
            "text_dim": int(text_dim),
            "class_names": list(class_names),
            "trained_classes": list(trained_classes),
            **(extra or {}),
        },
    )


def read_generator(
    folder: Path, reference: str, device: torch.device | str = "cpu", clip: Callable[[], ClipBundle] | None = None
) -> LoadedGenerator:
    """Rebuild a generator from its folder on ``device``; InvalidArgument if the folder is not a generator.

    ``clip`` supplies the service's CLIP for a SHIP_VAE generator (it raises FailedPrecondition without one)."""
    meta = _read_config(folder, GENERATOR_FORMAT, reference)
    name = meta.get("kind", "")
    kind = KINDS.get(name)
    if kind is None and name != SHIP_KIND:
        raise InvalidArgument(f"{reference}: unknown generator kind {meta.get('kind')!r}")
    bundle = None
    if name == SHIP_KIND:
        if clip is None:
            raise FailedPrecondition(f"{reference} is a SHIP_VAE generator and needs a CLIP text encoder")
        bundle = clip()
    try:
        feature_dim, text_dim = int(meta["feature_dim"]), int(meta["text_dim"])
        if bundle is not None:
            config: GeneratorConfig | ShipConfig = ShipConfig.from_dict(meta["config"])
            _check_same_clip(meta, bundle, reference)
            module = build_ship_vae(bundle.model, bundle.tokenizer, config, feature_dim)
        else:
            assert kind is not None
            config = kind.config_cls.from_dict(meta["config"])
            module = kind.build(config, feature_dim, text_dim)
        module.load_state_dict(load_file(folder / WEIGHTS_FILE))
        text = load_file(folder / TEXT_FILE)["text_features"].float()
        class_names = [str(n) for n in meta["class_names"]]
        trained = [str(n) for n in meta["trained_classes"]]
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as err:
        raise InvalidArgument(f"{reference}: cannot rebuild the generator ({type(err).__name__}: {err})") from err
    if text.shape[0] != len(class_names) or (bundle is None and text.shape[1] != text_dim):
        raise InvalidArgument(f"{reference}: stored text features {tuple(text.shape)} do not match its config")
    return LoadedGenerator(
        kind=name,
        config=config,
        module=module.to(device).eval() if bundle is None else module.eval(),
        feature_dim=feature_dim,
        text_dim=text_dim,
        class_names=class_names,
        text_features=text,
        trained_classes=trained,
    )


def clip_identity(bundle: ClipBundle) -> dict[str, str]:
    """What a SHIP_VAE generator records of the CLIP it decodes through."""
    return {"clip": bundle.ref, "clip_text_fingerprint": text_fingerprint(bundle.model)}


def _check_same_clip(meta: dict[str, Any], bundle: ClipBundle, reference: str) -> None:
    """FailedPrecondition unless the service's CLIP text tower is the one the generator was trained with."""
    mine = clip_identity(bundle)
    if meta.get("clip_text_fingerprint") != mine["clip_text_fingerprint"]:
        raise FailedPrecondition(
            f"{reference} was trained through CLIP {meta.get('clip', '?')!r} but this service runs {bundle.ref!r} "
            "with other text-encoder weights; serve it from a service with the same CLIP"
        )


def write_classifier(
    folder: Path,
    *,
    config: GZSLConfig,
    state_dict: dict[str, Tensor],
    class_names: Sequence[str],
    seen: Sequence[int],
    text_dim: int,
) -> None:
    """Write a GZSL classifier folder."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(state_dict), folder / WEIGHTS_FILE)
    _write_config(
        folder,
        {
            "format": CLASSIFIER_FORMAT,
            "config": config.to_dict(),
            "feature_dim": int(state_dict["weight"].shape[1]),
            "text_dim": int(text_dim),
            "class_names": list(class_names),
            "seen": [int(i) for i in seen],
        },
    )


def write_finetuned(
    folder: Path,
    *,
    config: FineTuneConfig,
    model: FineTunedClassifier,
    class_names: Sequence[str],
    seen: Sequence[int],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a fine-tuned model folder (``zsc-finetune/1``): its state dict and what rebuilds it."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(model.state_dict()), folder / WEIGHTS_FILE)
    _write_config(
        folder,
        {
            "format": FINETUNE_FORMAT,
            "config": config.to_dict(),
            "model": model.meta(),
            "feature_dim": model.feature_dim,
            "class_names": list(class_names),
            "seen": [int(i) for i in seen],
            **(extra or {}),
        },
    )


def read_classifier(folder: Path, reference: str, device: torch.device | str = "cpu") -> LoadedClassifier:
    """Rebuild a GZSL classifier or a fine-tuned model from its folder on ``device``; InvalidArgument if it is
    neither."""
    meta = _read_config(folder, (CLASSIFIER_FORMAT, FINETUNE_FORMAT), reference)
    try:
        state = load_file(folder / WEIGHTS_FILE)
        class_names = [str(n) for n in meta["class_names"]]
        seen = [int(i) for i in meta["seen"]]
        feature_dim = int(meta["feature_dim"])
        if meta["format"] == FINETUNE_FORMAT:
            config: GZSLConfig | FineTuneConfig = FineTuneConfig.from_dict(meta["config"])
            model: CosineClassifier | FineTunedClassifier = build_classifier(state, meta["model"])
            text_dim = feature_dim
            weights = model.text_weights
        else:
            config = GZSLConfig.from_dict(meta["config"])
            model = build_gzsl_classifier(state, config)
            text_dim = int(meta["text_dim"])
            weights = model.weight
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as err:
        raise InvalidArgument(f"{reference}: cannot rebuild the classifier ({type(err).__name__}: {err})") from err
    if weights.shape != (len(class_names), feature_dim):
        raise InvalidArgument(f"{reference}: weights {tuple(weights.shape)} do not match its config")
    return LoadedClassifier(config, model.to(device).eval(), class_names, seen, feature_dim, text_dim)
