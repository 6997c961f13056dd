"""CLIP zero-shot classification: a cached text classifier per (class set, template set), batched image encoding."""

from __future__ import annotations

import torch
from open_clip import build_zero_shot_classifier
from PIL import Image

from zsc.model_cache import ModelCache
from zsc.models.clip import ClipBundle


class ClipZeroShot:
    """Zero-shot logits ``logit_scale * cos(image, class text)``, where a class's text embedding is the normalized mean
    of its normalized template embeddings (CLIP's prompt ensembling)."""

    def __init__(self, bundle: ClipBundle, cache_size: int = 32) -> None:
        self.bundle = bundle
        self._cache: ModelCache[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = ModelCache(
            cache_size, "zero-shot text"
        )

    @torch.inference_mode()
    def text_classifier(self, class_names: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
        """[D, C] class embeddings, built once per (class set, template set) and kept in a bounded LRU cache."""
        return self._cache.get(
            (class_names, templates),
            lambda: build_zero_shot_classifier(
                self.bundle.model,
                self.bundle.tokenizer,
                classnames=class_names,
                templates=templates,
                num_classes_per_batch=max(1, 512 // len(templates)),
                device=self.bundle.device,
            ),
        )

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        """[N, D] L2-normalized image embeddings."""
        batch = torch.stack([self.bundle.preprocess(im) for im in images])
        batch = batch.to(self.bundle.device, self.bundle.dtype)
        return self.bundle.model.encode_image(batch, normalize=True).float()

    @torch.inference_mode()
    def logits(self, images: list[Image.Image], class_names: tuple[str, ...], templates: tuple[str, ...]):
        classifier = self.text_classifier(class_names, templates).float()
        scale = self.bundle.model.logit_scale.exp().float()
        return scale * self.encode_images(images) @ classifier
