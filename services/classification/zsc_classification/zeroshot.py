"""Zero-shot methods behind one interface, built from request messages: CLIP and the Diffusion Classifier.

Each method classifies a list of images (with their global sample indices, which seed the Diffusion Classifier's
noise) into per-image records: the prediction plus method-specific details.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from zsc.classification.v1 import classification_pb2 as pb
from zsc.enums import ProtoEnum
from zsc.errors import FailedPrecondition, InvalidArgument
from zsc.model_cache import ModelCache
from zsc.models.diffusion import SDComponents, create_sd_components
from zsc.profiles import Profile
from zsc_classification.core.clip_zeroshot import ClipZeroShot
from zsc_classification.core.diffusion_classifier import (
    PRESETS,
    DiffusionClassifier,
    DiffusionClassifierOptions,
    DiffusionPrediction,
    make_stages,
    unet_passes,
)
from zsc_classification.core.prompts import resolve_templates

# The .proto comment: UNSPECIFIED is CLIP.
METHODS = ProtoEnum(pb.ZeroShotMethod, default="clip", field="zero-shot method")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
StopFn = Callable[[], bool]


@dataclass
class ZeroShotMethod:
    """A ready classifier for one class set: ``classify(images, indices, should_stop) -> records``."""

    name: str
    classify: Callable[[list[Image.Image], list[int], StopFn | None], list[dict[str, Any]]]
    params: dict[str, Any] = field(default_factory=dict)
    expected_passes: int = 0  # UNet passes per image (Diffusion Classifier)

    def metrics(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """What an evaluation logs beyond accuracy: the Diffusion Classifier's mean UNet passes per image."""
        if self.name != "diffusion":
            return {}
        passes = [r["unet_passes"] for r in records]
        return {"unet_passes_per_image": sum(passes) / max(1, len(passes))}


def clip_method(clip: ClipZeroShot, class_names: tuple[str, ...], prompts: pb.PromptSpec) -> ZeroShotMethod:
    templates = resolve_templates(list(prompts.templates), prompts.template_set)
    clip.text_classifier(class_names, templates)  # build and cache before any image work

    def classify(images: list[Image.Image], indices: list[int], should_stop: StopFn | None) -> list[dict[str, Any]]:
        logits = clip.logits(images, class_names, templates)
        return [{"pred": int(p), "logits": row.tolist()} for p, row in zip(logits.argmax(-1), logits, strict=True)]

    return ZeroShotMethod("clip", classify, {"templates": len(templates), "clip": clip.bundle.ref})


def diffusion_options(msg: pb.DiffusionOptions, prompts: pb.PromptSpec) -> DiffusionClassifierOptions:
    """Request fields over the preset's defaults; the core validates the result (ValueError → INVALID_ARGUMENT)."""
    overrides: dict[str, Any] = {"seed": int(msg.seed)}
    if msg.stages:
        overrides["stages"] = make_stages([s.n_samples for s in msg.stages], [s.to_keep for s in msg.stages])
    if msg.loss:
        overrides["loss"] = msg.loss
    if msg.batch_size < 0:
        raise InvalidArgument("diffusion.batch_size must be >= 0")
    if msg.batch_size:
        overrides["batch_size"] = msg.batch_size
    if msg.n_trials < 0:
        raise InvalidArgument("diffusion.n_trials must be >= 0 (0 means 1)")
    if msg.n_trials:
        overrides["n_trials"] = msg.n_trials
    if msg.dtype:
        if msg.dtype not in DTYPES:
            raise InvalidArgument(f"unknown dtype {msg.dtype!r}; one of {', '.join(DTYPES)}")
        overrides["dtype"] = DTYPES[msg.dtype]
    if prompts.templates or prompts.template_set:
        overrides["templates"] = resolve_templates(list(prompts.templates), prompts.template_set)
    if msg.preset:
        if msg.preset not in PRESETS:
            raise InvalidArgument(f"unknown preset {msg.preset!r}; one of {', '.join(PRESETS)}")
        return DiffusionClassifierOptions.from_preset(msg.preset, **overrides)
    if "stages" not in overrides:
        raise InvalidArgument("diffusion needs a preset or explicit stages")
    return DiffusionClassifierOptions(**overrides)


def _record(p: DiffusionPrediction) -> dict[str, Any]:
    return {
        "pred": p.label,
        "prompt": p.prompt,
        "unet_passes": p.unet_passes,
        "stage_errors": [{str(c): e for c, e in stage.items()} for stage in p.class_errors],
    }


def diffusion_method(
    classifier: DiffusionClassifier, class_names: tuple[str, ...], options: pb.DiffusionOptions, prompts: pb.PromptSpec
) -> ZeroShotMethod:
    opts = diffusion_options(options, prompts)
    class_prompts = [list(c.prompts) for c in options.class_prompts] or None
    if class_prompts is not None and len(class_prompts) != len(class_names):
        raise InvalidArgument(f"{len(class_prompts)} class_prompts entries for {len(class_names)} classes")
    per_class = len(class_prompts[0]) if class_prompts else len(opts.templates)
    # Validate the whole schedule against the class count now, before an operation starts.
    passes = unet_passes(opts.stages, len(class_names), per_class, n_trials=opts.n_trials)

    def classify(images: list[Image.Image], indices: list[int], should_stop: StopFn | None) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for run_images, first in _contiguous_runs(images, indices):  # noise is seeded by (seed, global index)
            predictions = classifier.classify(
                run_images, class_names, opts, prompts=class_prompts, first_index=first, should_stop=should_stop
            )
            records += [_record(p) for p in predictions]
        return records

    params = {
        "diffusion_model": classifier.parts.ref,
        "preset": options.preset,
        "stages": [tuple(s) for s in opts.stages],
        "loss": opts.loss,
        "templates": list(opts.templates),
        "seed": opts.seed,
        "batch_size": opts.batch_size,
        "n_trials": opts.n_trials,
    }
    return ZeroShotMethod("diffusion", classify, params, expected_passes=passes)


def _contiguous_runs(images: list[Image.Image], indices: list[int]) -> list[tuple[list[Image.Image], int]]:
    runs: list[tuple[list[Image.Image], int]] = []
    for image, index in zip(images, indices, strict=True):
        if runs and runs[-1][1] + len(runs[-1][0]) == index:
            runs[-1][0].append(image)
        else:
            runs.append(([image], index))
    return runs


class DiffusionModelCache:
    """The profile's diffusion-classifier model, loaded on first use (it is large, and many callers never need it)."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._cache: ModelCache[str, DiffusionClassifier] = ModelCache(1, "diffusion classifier")

    def get(self) -> DiffusionClassifier:
        ref = self.profile.diffusion_classifier
        if not ref:
            raise FailedPrecondition(f"profile {self.profile.name!r} has no diffusion classifier model")
        return self._cache.get(ref, lambda: self._load(ref))

    def _load(self, ref: str) -> DiffusionClassifier:
        parts: SDComponents = create_sd_components(
            ref, self.profile.torch_device(), self.profile.torch_dtype(), seed=self.profile.seed
        )
        return DiffusionClassifier(parts, compile=self.profile.compile_unet or False)
