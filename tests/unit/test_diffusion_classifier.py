"""Diffusion Classifier core: equivalence with the literal paper loop, stage logic, pass counts, determinism, input
checks. Runs the tiny seeded random-weight Stable Diffusion on CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from zsc.errors import Cancelled, InvalidArgument
from zsc.models.diffusion import create_sd_components
from zsc.profiles import get_profile
from zsc_classification.core.diffusion_classifier import (
    PRESETS,
    DiffusionClassifier,
    DiffusionClassifierOptions,
    build_prompts,
    draw_noise,
    make_stages,
    preprocess_images,
    stage_grid_indices,
    timestep_grid,
    unet_passes,
)
from zsc_classification.core.diffusion_reference import reference_classify_as_the_core
from zsc_classification.zeroshot import DiffusionModelCache

CIFAR10 = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cifar10-test"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
SMALL = ((4, 3), (8, 1))
# Three stages whose grids are not nested (n_max 8: entries {2, 6}, then {1, 3, 5}, then all): exercises reuse and
# the mean over every timestep evaluated so far.
UNNESTED = ((2, 4), (3, 2), (8, 1))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parts():
    return create_sd_components("tiny:zsc-tiny-sd", seed=0)


@pytest.fixture(scope="module")
def classifier(parts):
    return DiffusionClassifier(parts)


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    """Three random images of different sizes (one non-square: exercises resize + centre crop)."""
    generator = torch.Generator().manual_seed(7)
    sizes = ((32, 32), (40, 72), (64, 64))
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


@pytest.fixture(scope="module")
def cifar_images(images) -> list[torch.Tensor]:
    """Two real CIFAR-10 test images and the non-square random one."""
    if not CIFAR10.is_dir():
        pytest.skip(f"CIFAR-10 test set not found at {CIFAR10}")
    real = [pil_to_tensor(Image.open(CIFAR10 / name / "0000.jpg").convert("RGB")) for name in ("cat", "ship")]
    return [*real, images[1]]


def _reference(parts, images, options):
    prompts = [p for class_prompts in build_prompts(CLASSES, options.templates) for p in class_prompts]
    return reference_classify_as_the_core(parts, preprocess_images(images, parts.native_resolution), prompts, options)


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("loss", "templates", "stages", "n_trials"),
    [
        ("l1", ("a photo of a {}.",), SMALL, 1),
        ("l2", ("a photo of a {}.",), SMALL, 1),
        ("huber", ("a photo of a {}.",), SMALL, 1),
        ("l1", ("a photo of a {}.", "a blurry photo of a {}."), SMALL, 1),
        ("l2", ("a photo of a {}.", "a blurry photo of a {}."), UNNESTED, 1),
        ("l1", ("a photo of a {}.",), SMALL, 3),
        ("l2", ("a photo of a {}.",), UNNESTED, 2),
    ],
)
def test_core_matches_literal_reference(parts, classifier, cifar_images, loss, templates, stages, n_trials):
    options = DiffusionClassifierOptions(
        stages=stages, loss=loss, templates=templates, seed=3, batch_size=7, n_trials=n_trials
    )
    results = classifier.classify(cifar_images, CLASSES, options)
    references = _reference(parts, cifar_images, options)
    prompt_class = [c for c in range(len(CLASSES)) for _ in templates]
    expected_passes = unet_passes(stages, len(CLASSES), len(templates), n_trials=n_trials)
    for result, reference in zip(results, references, strict=True):
        assert result.label == prompt_class[reference.best_prompt]
        assert result.unet_passes == reference.unet_passes == expected_passes
        expected = reference.class_errors(prompt_class)
        assert len(result.class_errors) == len(expected) == len(stages)
        for core_stage, ref_stage in zip(result.class_errors, expected, strict=True):
            assert core_stage.keys() == ref_stage.keys()
            core_values = torch.tensor([core_stage[c] for c in core_stage])
            ref_values = torch.tensor([ref_stage[c] for c in core_stage])
            assert torch.allclose(core_values, ref_values, rtol=1e-5, atol=1e-6)


def test_reference_grid_is_the_authors():
    # cifar10: 500 timesteps 1, 3, ..., 999; the 50-sample stage uses grid entries 5, 15, ..., 495.
    grid = timestep_grid(500, 1000)
    assert grid[:3] == [1, 3, 5] and grid[-1] == 999 and len(grid) == 500
    assert stage_grid_indices(50, 500)[:3] == [5, 15, 25] and len(stage_grid_indices(50, 500)) == 50
    assert stage_grid_indices(500, 500) == list(range(500))
    assert timestep_grid(1000, 1000) == list(range(1000))
    assert stage_grid_indices(20, 500)[:2] == [12, 37]


def test_stage_logic_eliminates_for_good(classifier, images):
    options = DiffusionClassifierOptions(stages=((2, 4), (4, 3), (6, 2), (8, 1)), loss="l1", seed=1)
    for result in classifier.classify(images, CLASSES, options):
        reached = [set(stage) for stage in result.class_errors]
        assert reached[0] == set(range(len(CLASSES)))
        for (_, keep), before, after in zip(options.stages, reached, reached[1:], strict=False):
            assert after <= before and len(after) == keep
        last = result.class_errors[-1]
        assert len(last) == 2 and result.label == min(last, key=last.get)
        assert result.class_name == CLASSES[result.label] and result.prompt == f"a photo of a {result.class_name}."
        assert result.unet_passes == unet_passes(options.stages, len(CLASSES))


def test_multi_prompt_classes_report_min_over_surviving_prompts(classifier, images):
    templates = ("a photo of a {}.", "a blurry photo of a {}.", "a drawing of a {}.")
    options = DiffusionClassifierOptions(stages=((2, 6), (4, 1)), loss="l2", templates=templates)
    result = classifier.classify(images[:1], CLASSES, options)[0]
    # Six prompts survive stage 1, so at most six classes (at least two) reach stage 2.
    assert 2 <= len(result.class_errors[1]) <= 6
    assert result.prompt in {t.format(result.class_name) for t in templates}
    assert result.unet_passes == unet_passes(options.stages, len(CLASSES), prompts_per_class=3) == 15 * 2 + 6 * 2


def test_unet_passes_closed_form():
    assert unet_passes(PRESETS["cifar10"].stages, 10) == 2_750
    assert unet_passes(PRESETS["imagenet"].stages, 1_000) == 124_500  # methods.md §2
    assert unet_passes(SMALL, 5) == 5 * 4 + 3 * 4
    assert unet_passes(SMALL, 5, prompts_per_class=2) == 10 * 4 + 3 * 4
    assert unet_passes(UNNESTED, 5) == 5 * 2 + 4 * 3 + 2 * 3
    # Brute force over the literal timestep sets for every preset: new timesteps times the surviving candidates.
    for name, preset in PRESETS.items():
        n_classes = 1_000 if name == "imagenet" else 120
        n_max = preset.stages[-1][0]
        grid = timestep_grid(n_max, 1000)
        seen: set[int] = set()
        alive, total = n_classes, 0
        for n, keep in preset.stages:
            new = {grid[i] for i in stage_grid_indices(n, n_max)} - seen
            total += alive * len(new)
            seen |= new
            alive = keep
        assert unet_passes(preset.stages, n_classes) == total, name


def test_one_trial_is_the_default_and_trials_share_noise_rows_with_the_authors_layout(classifier, images):
    options = DiffusionClassifierOptions(stages=SMALL, loss="l1", seed=4)
    assert options.n_trials == 1
    assert classifier.classify(images, CLASSES, options) == classifier.classify(
        images, CLASSES, dataclasses.replace(options, n_trials=1)
    )
    # Trial 0 of slot j is row 2j of a two-trial draw, so two trials are not one trial over the same first rows.
    two = classifier.classify(images[:1], CLASSES, dataclasses.replace(options, n_trials=2))[0]
    one = classifier.classify(images[:1], CLASSES, options)[0]
    assert two.unet_passes == 2 * one.unet_passes == unet_passes(SMALL, len(CLASSES), n_trials=2)
    assert two.class_errors[0] != one.class_errors[0]


def test_same_seed_same_result_other_seed_other_errors(classifier, images):
    options = DiffusionClassifierOptions(stages=SMALL, loss="l1", seed=11)
    first = classifier.classify(images, CLASSES, options)
    again = classifier.classify(images, CLASSES, options)
    other = classifier.classify(images, CLASSES, DiffusionClassifierOptions(stages=SMALL, loss="l1", seed=12))
    assert first == again
    assert all(a.class_errors[0] != b.class_errors[0] for a, b in zip(first, other, strict=True))


def test_an_image_is_reproducible_alone(classifier, images):
    options = DiffusionClassifierOptions(stages=SMALL, loss="l2", seed=5, image_chunk=3)
    together = classifier.classify(images, CLASSES, options)
    alone = classifier.classify(images[2:], CLASSES, options, first_index=2)[0]
    assert alone.label == together[2].label and alone.unet_passes == together[2].unet_passes
    for a, b in zip(alone.class_errors, together[2].class_errors, strict=True):
        assert a.keys() == b.keys()
        assert torch.allclose(torch.tensor(list(a.values())), torch.tensor(list(b.values())), rtol=1e-5, atol=1e-6)


def test_noise_is_per_seed_and_index():
    a = draw_noise(0, 1, 4, (4, 8, 8))
    assert a.shape == (4, 4, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, draw_noise(0, 1, 4, (4, 8, 8)))
    assert not torch.equal(a, draw_noise(0, 2, 4, (4, 8, 8)))
    assert not torch.equal(a, draw_noise(1, 1, 4, (4, 8, 8)))


@pytest.mark.parametrize("size", [(37, 83), (83, 37), (300, 201), (64, 64), (5, 7), (512, 640)])
def test_preprocess_of_pil_images_and_bytes_equals_torchvision_resize_and_center_crop(size):
    """The authors' transform exactly: PIL bicubic Resize (8-bit, long side truncated), CenterCrop, [-1, 1].

    The long sides of (37, 83) and (5, 7) truncate: int(512 * 83 / 37) = 1148 and int(512 * 7 / 5) = 716, where
    rounding would give 1149 and 717."""
    import io

    import torchvision.transforms as T

    from zsc.data import decode_image

    released = T.Compose(
        [
            T.Resize(512, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(512),
            T.ToTensor(),
            T.Normalize([0.5], [0.5]),
        ]
    )
    h, w = size
    pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(h * w))
    image = Image.fromarray(pixels.numpy())
    expected = released(image)
    assert torch.equal(preprocess_images([image], 512)[0], expected)
    # the same through PNG bytes (the ZeroShot path) and as a uint8 tensor
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    assert torch.equal(preprocess_images([decode_image(buf.getvalue())], 512)[0], expected)
    assert torch.equal(preprocess_images([pixels.permute(2, 0, 1)], 512)[0], expected)


def test_preprocess_resizes_crops_and_scales():
    flat = torch.full((3, 30, 90), 0.25)
    out = preprocess_images([flat, torch.zeros(3, 64, 64, dtype=torch.uint8)], 64)
    assert out.shape == (2, 3, 64, 64)
    assert torch.allclose(out[0], torch.full_like(out[0], -0.5), atol=1e-6)
    assert torch.equal(out[1], torch.full_like(out[1], -1.0))
    # Centre crop of the short-side resize: a left/right split image keeps both halves symmetric about the centre.
    split = torch.cat([torch.zeros(3, 32, 48), torch.ones(3, 32, 48)], dim=2)
    crop = preprocess_images(split[None], 64)[0]
    assert torch.allclose(crop[:, :, :32].mean() + crop[:, :, 32:].mean(), torch.tensor(0.0), atol=1e-5)


def test_progress_and_cancellation(classifier, images):
    options = DiffusionClassifierOptions(stages=SMALL, image_chunk=1, batch_size=8)
    calls: list[tuple[int, int]] = []
    classifier.classify(images, CLASSES, options, on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    polls = []

    def stop_after_three() -> bool:
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(Cancelled):
        classifier.classify(images, CLASSES, options, should_stop=stop_after_three)
    assert len(polls) == 4


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DiffusionClassifierOptions(stages=((4, 3), (8, 3), (16, 1))), "to_keep must be strictly decreasing"),
        (lambda: DiffusionClassifierOptions(stages=((8, 3), (4, 1))), "n_samples must be strictly increasing"),
        (lambda: DiffusionClassifierOptions(stages=((4, 3), (4, 1))), "n_samples must be strictly increasing"),
        (lambda: DiffusionClassifierOptions(stages=((4, 3), (8, 2))), "last stage must keep exactly 1"),
        (lambda: DiffusionClassifierOptions(stages=[(4, 3, 1)]), "pair"),
        (lambda: DiffusionClassifierOptions(stages=()), "stages is empty"),
        (lambda: make_stages([50, 500], [5]), "n_samples has 2 stages but to_keep has 1"),
        (lambda: DiffusionClassifierOptions(stages=SMALL, loss="l3"), "unknown loss 'l3'"),
        (lambda: DiffusionClassifierOptions.from_preset("mnist"), "unknown preset 'mnist'"),
        (lambda: DiffusionClassifierOptions(stages=SMALL, templates=("a photo",)), "must contain '{}'"),
        (lambda: DiffusionClassifierOptions(stages=SMALL, batch_size=0), "batch_size"),
        (lambda: DiffusionClassifierOptions(stages=SMALL, n_trials=0), r"n_trials must be an int in \[1, 64\]"),
        (lambda: unet_passes(SMALL, 5, n_trials=65), r"n_trials must be an int in \[1, 64\]"),
        (lambda: unet_passes(((50, 5), (1001, 1)), 10), "exceeds the model's 1000 training timesteps"),
        (lambda: unet_passes(PRESETS["imagenet"].stages, 10), "stage 1 keeps 500 candidates but there are only 10"),
        (lambda: DiffusionClassifier(None, compile="fastest"), "unknown torch.compile mode 'fastest'"),
    ],
)
def test_bad_options_raise_one_line_value_errors(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("images", "names", "preset", "message"),
    [
        ([torch.zeros(3, 32, 32)], [], None, "class_names must be a non-empty list"),
        ([torch.zeros(3, 32, 32)], ["cat", "dog", "cat", "bird"], None, "class 'cat' appears twice in class_names"),
        ([torch.zeros(3, 32, 32)], ["cat", " "], None, r"class_names\[1\] is empty"),
        (torch.zeros(2, 1, 32, 32), ["cat", "dog"], None, r"images must be a \[N, 3, H, W\] tensor"),
        (torch.zeros(3, 32, 32), ["cat", "dog"], None, r"images must be a \[N, 3, H, W\] tensor"),
        ([torch.zeros(4, 32, 32)], ["cat", "dog"], None, r"each image must have shape \[3, H, W\]"),
        ([torch.full((3, 32, 32), -1.0)], ["cat", "dog"], None, r"float images must be in \[0, 1\]"),
        # imagenet keeps 500 after stage 1: rejected for 10 classes rather than silently clipped.
        (
            [torch.zeros(3, 32, 32)],
            list("abcdefghij"),
            "imagenet",
            "stage 1 keeps 500 candidates but there are only 10",
        ),
        ([torch.zeros(3, 32, 32)], ["cat", "dog"], "cifar10", "stage 1 keeps 5 candidates but there are only 2"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(classifier, images, names, preset, message):
    options = DiffusionClassifierOptions.from_preset(preset) if preset else DiffusionClassifierOptions(stages=((2, 1),))
    with pytest.raises(ValueError, match=message) as info:
        classifier.classify(images, names, options)
    assert "\n" not in str(info.value)


def test_explicit_prompts_replace_templates(classifier, images):
    prompts = [[f"a photo of a {c}.", f"a close-up of a {c}."] for c in CLASSES]
    options = DiffusionClassifierOptions(stages=SMALL, templates=("a photo of a {}.", "a close-up of a {}."))
    explicit = classifier.classify(images[:1], CLASSES, DiffusionClassifierOptions(stages=SMALL), prompts=prompts)
    assert explicit == classifier.classify(images[:1], CLASSES, options)
    with pytest.raises(ValueError, match="prompts must be unique"):
        classifier.classify(images[:1], ["a", "b"], DiffusionClassifierOptions(stages=((2, 1),)), prompts=["x", "x"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_matches_fp32_on_cpu(classifier, images):
    gpu = DiffusionClassifier(create_sd_components("tiny:zsc-tiny-sd", device="cuda", dtype=torch.float16, seed=0))
    options = DiffusionClassifierOptions(stages=SMALL, loss="l2", seed=2, batch_size=16)
    cpu_results = classifier.classify(images, CLASSES, options)
    for gpu_results in (
        gpu.classify(images, CLASSES, options),
        # A float32 model computing in float16 under autocast.
        DiffusionClassifier(create_sd_components("tiny:zsc-tiny-sd", device="cuda", seed=0)).classify(
            images, CLASSES, DiffusionClassifierOptions(stages=SMALL, loss="l2", seed=2, dtype=torch.float16)
        ),
    ):
        for on_gpu, on_cpu in zip(gpu_results, cpu_results, strict=True):
            assert on_gpu.unet_passes == on_cpu.unet_passes
            # Same noise (drawn on CPU): stage-1 errors of all classes agree to fp16 precision.
            first_gpu, first_cpu = on_gpu.class_errors[0], on_cpu.class_errors[0]
            assert first_gpu.keys() == first_cpu.keys()
            gpu_values = torch.tensor([first_gpu[c] for c in first_cpu])
            cpu_values = torch.tensor([first_cpu[c] for c in first_cpu])
            assert torch.isfinite(gpu_values).all()
            assert torch.allclose(gpu_values, cpu_values, rtol=2e-2, atol=2e-3)


@pytest.mark.slow
def test_compiled_unet_on_cpu_matches_eager_and_compiles_once(parts, classifier, images):
    # The VAE returns the latents of one image contiguous and those of several channels-last; that stride change
    # once made a compiled UNet recompile (a stride guard) into a slower dynamic-shape graph.
    options = DiffusionClassifierOptions(stages=SMALL, loss="l1", batch_size=16)
    eager = classifier.classify(images, CLASSES, options)
    torch._dynamo.reset()
    compiled_classifier = DiffusionClassifier(parts, compile=True)
    compiled_classifier.classify(images[:1], CLASSES, options)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = compiled_classifier.classify(images, CLASSES, options)
    for a, b in zip(compiled, eager, strict=True):
        assert (a.label, a.unet_passes) == (b.label, b.unet_passes)
        for stage_a, stage_b in zip(a.class_errors, b.class_errors, strict=True):
            assert stage_a.keys() == stage_b.keys()
            assert all(stage_a[c] == pytest.approx(stage_b[c], rel=1e-4, abs=1e-6) for c in stage_a)


def test_profile_compile_unet_reaches_the_service_model(tmp_path):
    fields = {**dataclasses.asdict(get_profile("tiny")), "name": "tiny-compiled", "compile_unet": "max-autotune"}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(fields))
    assert DiffusionModelCache(get_profile(str(path))).get().compiled
    assert not DiffusionModelCache(get_profile("tiny")).get().compiled
    path.write_text(json.dumps({**fields, "compile_unet": "fastest"}))
    with pytest.raises(InvalidArgument, match="unknown compile_unet 'fastest'"):
        get_profile(str(path))


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_unet_on_cuda_matches_eager(images):
    parts = create_sd_components("tiny:zsc-tiny-sd", device="cuda", dtype=torch.float16, seed=0)
    options = DiffusionClassifierOptions(stages=SMALL, loss="l1", batch_size=16)
    eager = DiffusionClassifier(parts).classify(images, CLASSES, options)
    compiled = DiffusionClassifier(parts, compile=True).classify(images, CLASSES, options)
    for a, b in zip(compiled, eager, strict=True):
        assert a.unet_passes == b.unet_passes
        values_a = torch.tensor([a.class_errors[0][c] for c in range(len(CLASSES))])
        values_b = torch.tensor([b.class_errors[0][c] for c in range(len(CLASSES))])
        assert torch.allclose(values_a, values_b, rtol=1e-2, atol=1e-3)


def test_request_n_trials_reaches_the_options_and_the_pass_count():
    from zsc.classification.v1 import classification_pb2 as pb
    from zsc_classification.zeroshot import diffusion_options

    assert diffusion_options(pb.DiffusionOptions(preset="cifar10"), pb.PromptSpec()).n_trials == 1
    options = diffusion_options(pb.DiffusionOptions(preset="cifar10", n_trials=3), pb.PromptSpec())
    assert options.n_trials == 3
    assert unet_passes(options.stages, 10, n_trials=options.n_trials) == 3 * 2_750
    with pytest.raises(InvalidArgument, match="n_trials must be >= 0"):
        diffusion_options(pb.DiffusionOptions(preset="cifar10", n_trials=-1), pb.PromptSpec())
