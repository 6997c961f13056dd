"""Diffusion Classifier (Li et al., ICCV 2023): zero-shot classification by conditional noise-prediction error.

For an image with latent x0 (the VAE latent *mean* times the scaling factor) and timesteps t_j, each with one noise
draw eps_j shared by all candidates, every candidate prompt c gets the error
``mean_j loss(eps_j, unet(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_j, t_j, text(c)))`` (conditional UNet only, no
guidance). Stages ``(n_samples, to_keep)`` evaluate more timesteps on fewer candidates and keep the ``to_keep`` best.

Conventions, as in the authors' ``eval_prob_adaptive.py``:
- the grid is ``t_i = start + i * (T // N)`` with ``N = max(n_samples)`` and ``start = (T // N) // 2``; a stage with
  ``n`` samples uses the grid entries ``s // 2, s // 2 + s, ...`` (``s = N // n``, first ``n``); timesteps an earlier
  stage evaluated are reused, not recomputed;
- a candidate's error after a stage is the mean over *all* timesteps evaluated for it so far (for nested grids,
  such as every two-stage preset, that is exactly the stage's timesteps);
- noise slot ``j`` belongs to the ``j``-th distinct timestep evaluated, in stage order; with ``n_trials`` trials
  per timestep (default 1) trial ``k`` of slot ``j`` uses row ``j * n_trials + k`` of the per-image noise tensor,
  the authors' layout, so a saved noise tensor of their code gives the same errors here;
- with several trials a candidate's error is the mean over every (timestep, trial) evaluated, as theirs;
- candidates are prompts: with several prompts per class, stages eliminate prompts and the class of the best prompt
  wins; per-class errors are reported as the minimum over that class's prompts that reached the stage.

The core is plain PyTorch: it batches all pending (image, candidate, timestep) triples of a stage into UNet batches,
encodes each prompt list and each image once, and reports progress and cancellation through callables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zsc.data import check_class_names
from zsc.errors import Cancelled
from zsc.model_cache import ModelCache
from zsc.models.clip import DEFAULT_TEMPLATE
from zsc.models.diffusion import SDComponents
from zsc.profiles import COMPILE_MODES

Stage = tuple[int, int]  # (n_samples, to_keep)
LOSSES = ("l1", "l2", "huber")
MAX_TRIALS = 64  # noise draws per timestep; the authors' default is 1
_HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Preset:
    """The paper's schedule, loss and prompt template for one dataset."""

    stages: tuple[Stage, ...]
    loss: str
    template: str


# methods.md §2 and the authors' commands.md / prompts/*.csv.
PRESETS: dict[str, Preset] = {
    "cifar10": Preset(((50, 5), (500, 1)), "l1", "a blurry photo of a {}."),
    "pets": Preset(((25, 5), (250, 1)), "l1", "a photo of a {}, a type of pet."),
    "stl10": Preset(((100, 5), (500, 1)), "l1", DEFAULT_TEMPLATE),
    "flowers": Preset(((20, 20), (50, 10), (100, 5), (500, 1)), "l1", "a photo of a {}, a type of flower."),
    "food": Preset(((20, 20), (50, 10), (100, 5), (500, 1)), "l2", "a photo of {}, a type of food."),
    "aircraft": Preset(((20, 20), (50, 10), (100, 5), (500, 1)), "l2", "a photo of a {}, a type of aircraft."),
    "imagenet": Preset(((50, 500), (100, 50), (500, 10), (1000, 1)), "l2", DEFAULT_TEMPLATE),
    "objectnet": Preset(((50, 25), (100, 10), (500, 5), (1000, 1)), "l2", DEFAULT_TEMPLATE),
}


def make_stages(n_samples: Sequence[int], to_keep: Sequence[int]) -> tuple[Stage, ...]:
    """Pair the authors' two CLI lists (``--n_samples``, ``--to_keep``) into stages."""
    if len(n_samples) != len(to_keep):
        raise ValueError(f"n_samples has {len(n_samples)} stages but to_keep has {len(to_keep)}; they must match")
    return tuple((int(n), int(k)) for n, k in zip(n_samples, to_keep, strict=True))


def _check_stages(stages: Any) -> tuple[Stage, ...]:
    """Shape and order checks that need neither the model nor the class list."""
    try:
        pairs = [tuple(stage) for stage in stages]
    except TypeError:
        raise ValueError(f"stages must be a list of (n_samples, to_keep) pairs, got {stages!r}") from None
    if not pairs:
        raise ValueError("stages is empty; give at least one (n_samples, to_keep) pair")
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in pair):
            raise ValueError(f"each stage must be an (n_samples, to_keep) pair of ints, got {pair!r}")
    checked = tuple((int(n), int(k)) for n, k in pairs)
    n_samples = [n for n, _ in checked]
    to_keep = [k for _, k in checked]
    if min(n_samples) < 1 or min(to_keep) < 1:
        raise ValueError(f"n_samples and to_keep must be >= 1, got stages {list(checked)}")
    if any(b <= a for a, b in pairwise(n_samples)):
        raise ValueError(f"n_samples must be strictly increasing, got {n_samples}")
    if any(b >= a for a, b in pairwise(to_keep)):
        raise ValueError(f"to_keep must be strictly decreasing, got {to_keep}")
    if to_keep[-1] != 1:
        raise ValueError(f"the last stage must keep exactly 1 candidate, got to_keep {to_keep}")
    return checked


def validate_schedule(stages: Sequence[Stage], n_candidates: int, num_train_timesteps: int) -> tuple[Stage, ...]:
    """All schedule checks; raises ValueError with a one-line message.

    A stage may not keep more candidates than exist: a preset sized for a large label set (imagenet keeps 500 after
    its first stage) is rejected for a small one instead of being silently clipped, so reported schedules and pass
    counts always mean what they say.
    """
    checked = _check_stages(stages)
    n_max = checked[-1][0]
    if n_max > num_train_timesteps:
        raise ValueError(f"n_samples {n_max} exceeds the model's {num_train_timesteps} training timesteps")
    if checked[0][1] > n_candidates:
        raise ValueError(
            f"stage 1 keeps {checked[0][1]} candidates but there are only {n_candidates} prompts; "
            "use a schedule whose to_keep values are below the number of candidate prompts"
        )
    return checked


def timestep_grid(n_max: int, num_train_timesteps: int) -> list[int]:
    """The evenly strided deterministic grid of ``n_max`` timesteps over [0, T)."""
    stride = num_train_timesteps // n_max
    return list(range(stride // 2, num_train_timesteps, stride))[:n_max]


def stage_grid_indices(n_samples: int, n_max: int) -> list[int]:
    """Which entries of the ``n_max`` grid a stage with ``n_samples`` uses (evenly strided, centred offset)."""
    stride = n_max // n_samples
    return list(range(stride // 2, n_max, stride))[:n_samples]


@dataclass(frozen=True)
class _Plan:
    """Timesteps in evaluation (noise slot) order and where each stage's new slots end."""

    slot_timesteps: tuple[int, ...]
    stage_ends: tuple[int, ...]

    @property
    def n_noise(self) -> int:
        return len(self.slot_timesteps)


def _plan(stages: Sequence[Stage], num_train_timesteps: int) -> _Plan:
    n_max = stages[-1][0]
    grid = timestep_grid(n_max, num_train_timesteps)
    order: list[int] = []
    seen: set[int] = set()
    ends = []
    for n, _ in stages:
        for i in stage_grid_indices(n, n_max):
            if i not in seen:
                seen.add(i)
                order.append(grid[i])
        ends.append(len(order))
    # The last stage has n_samples == n_max, so every grid point is evaluated and the slots cover the grid.
    return _Plan(tuple(order), tuple(ends))


def unet_passes(
    stages: Sequence[Stage],
    n_classes: int,
    prompts_per_class: int = 1,
    num_train_timesteps: int = 1000,
    n_trials: int = 1,
) -> int:
    """UNet passes per image: at each stage only the surviving candidates' *new* timesteps are evaluated.

    ``n_trials * sum_k alive_k * (|U_k| - |U_{k-1}|)`` with ``alive_1 = n_classes * prompts_per_class``,
    ``alive_k = to_keep_{k-1}`` and ``U_k`` the timesteps evaluated up to stage k. The cifar10 preset with 10 classes
    gives 10 * 50 + 5 * 450 = 2,750; the imagenet preset with 1,000 classes gives 124,500.
    """
    if n_classes < 1 or prompts_per_class < 1:
        raise ValueError(f"need at least one class and one prompt per class, got {n_classes} and {prompts_per_class}")
    _check_trials(n_trials)
    n_candidates = n_classes * prompts_per_class
    checked = validate_schedule(stages, n_candidates, num_train_timesteps)
    ends = _plan(checked, num_train_timesteps).stage_ends
    alive = [n_candidates] + [k for _, k in checked[:-1]]
    return n_trials * sum(a * (end - start) for a, start, end in zip(alive, (0, *ends[:-1]), ends, strict=True))


def _check_trials(n_trials: Any) -> None:
    if isinstance(n_trials, bool) or not isinstance(n_trials, int | np.integer) or not 1 <= n_trials <= MAX_TRIALS:
        raise ValueError(f"n_trials must be an int in [1, {MAX_TRIALS}], got {n_trials!r}")


@dataclass(frozen=True)
class DiffusionClassifierOptions:
    """How to classify. ``templates`` give one prompt per class each (``{}`` is the class name).

    ``dtype`` is the UNet compute dtype (None: the model's own); a float16/bfloat16 dtype on a float32 model runs
    under autocast. ``batch_size`` is the UNet batch; ``image_chunk`` is how many images are evaluated together
    (their noise and latents stay on the device meanwhile). ``n_trials`` (the authors' default, 1) evaluates every
    timestep with that many noise draws, each shared by all candidates.
    """

    stages: tuple[Stage, ...]
    loss: str = "l2"
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    seed: int = 0
    batch_size: int = 64
    dtype: torch.dtype | None = None
    image_chunk: int = 8
    n_trials: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", _check_stages(self.stages))
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        templates = (self.templates,) if isinstance(self.templates, str) else tuple(self.templates)
        if not templates:
            raise ValueError("templates is empty; give at least one prompt template such as 'a photo of a {}.'")
        for template in templates:
            if not isinstance(template, str) or template.count("{}") != 1:
                raise ValueError(f"each template must contain '{{}}' exactly once, got {template!r}")
        if len(set(templates)) != len(templates):
            raise ValueError(f"templates contain duplicates: {list(templates)}")
        object.__setattr__(self, "templates", templates)
        if not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.batch_size < 1 or self.image_chunk < 1:
            raise ValueError(f"batch_size and image_chunk must be >= 1, got {self.batch_size} and {self.image_chunk}")
        if self.dtype is not None and self.dtype not in (torch.float32, *_HALF_DTYPES):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {self.dtype}")
        _check_trials(self.n_trials)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DiffusionClassifierOptions:
        """The paper's schedule, loss and template for a dataset; keyword arguments override fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[name]
        return replace(cls(stages=preset.stages, loss=preset.loss, templates=(preset.template,)), **overrides)


@dataclass(frozen=True)
class DiffusionPrediction:
    """One image's result. ``class_errors[k]`` maps each class that reached stage k to its error there."""

    label: int
    class_name: str
    prompt: str
    class_errors: tuple[dict[int, float], ...]
    unet_passes: int


def build_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """One prompt per template for each class."""
    return [[template.format(name) for template in templates] for name in class_names]


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str) or not class_names:
        raise ValueError("class_names must be a non-empty list of names")
    return list(check_class_names(class_names))  # InvalidArgument is a ValueError


def _check_prompts(prompts: Sequence[Sequence[str]], n_classes: int) -> list[list[str]]:
    if len(prompts) != n_classes:
        raise ValueError(f"prompts has {len(prompts)} entries for {n_classes} classes; give one list per class")
    lists = [[p] if isinstance(p, str) else list(p) for p in prompts]
    if any(not p for p in lists):
        raise ValueError("every class needs at least one prompt")
    flat = [p for class_prompts in lists for p in class_prompts]
    if any(not isinstance(p, str) or not p.strip() for p in flat):
        raise ValueError("prompts must be non-empty strings")
    if len(set(flat)) != len(flat):
        raise ValueError("prompts must be unique across all classes; a shared prompt cannot pick a class")
    return lists


def draw_noise(seed: int, index: int, n: int, shape: Sequence[int]) -> torch.Tensor:
    """Image ``index``'s noise: ``[n, *shape]`` float32 on CPU from a generator seeded by (seed, index).

    Drawn on CPU in float32 so that CPU and GPU runs see the same noise, and per image so that an image is
    reproducible whatever batch or shard it comes in.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and image index must be non-negative, got {seed} and {index}")
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))
    return torch.randn((n, *shape), generator=generator, dtype=torch.float32)


def _released_transform(image: Any, resolution: int) -> torch.Tensor:
    """One image through the authors' transform, ``[3, r, r]`` float32 in [0, 1].

    That transform is torchvision ``Resize(r, BICUBIC)`` then ``CenterCrop(r)`` on a PIL image: PIL resamples in 8
    bits (the result is rounded to uint8), the long side becomes ``int(r * long / short)`` (truncated), and the crop
    offset is ``round((size - r) / 2)``. PIL images and uint8 tensors (lossless as PIL) take exactly that path.
    Float tensors, which the authors' code never sees, take torchvision's tensor path with the same sizes and crop
    (antialiased bicubic in float, clamped to [0, 1]).
    """
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
            raise ValueError(f"each image must have shape [3, H, W], got {list(image.shape)}")
        if image.dtype == torch.uint8:
            image = TF.to_pil_image(image.cpu())
        elif not image.is_floating_point():
            raise ValueError(f"images must be uint8 or float in [0, 1], got {image.dtype}")
        elif image.numel() and (image.min() < -1e-3 or image.max() > 1 + 1e-3):
            raise ValueError("float images must be in [0, 1] (not normalized to [-1, 1])")
    elif isinstance(image, Image.Image):
        image = image.convert("RGB")  # zsc decodes to RGB; for RGB and L images this equals the authors' order
    else:
        raise ValueError(f"images must be tensors or PIL images, got {type(image).__name__}")
    if isinstance(image, Image.Image) and min(image.size) < 1:
        raise ValueError(f"each image must be at least 1x1, got {image.size[0]}x{image.size[1]}")
    if isinstance(image, torch.Tensor):
        x = TF.resize(image.float(), resolution, InterpolationMode.BICUBIC, antialias=True)
        return TF.center_crop(x, resolution).clamp(0, 1)
    x = TF.center_crop(TF.resize(image, resolution, InterpolationMode.BICUBIC), resolution)
    return TF.pil_to_tensor(x).float() / 255.0  # ToTensor's scaling


def preprocess_images(images: Any, resolution: int) -> torch.Tensor:
    """Images (``[N, 3, H, W]`` tensor, or a list of ``[3, H, W]`` tensors / PIL images) to ``[N, 3, r, r]`` in
    [-1, 1], as the authors' transform does (see ``_released_transform``); PIL images, and so decoded image bytes,
    give exactly its pixels."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a [N, 3, H, W] tensor, got shape {list(images.shape)}")
        items: Sequence[Any] = list(images)
    else:
        items = list(images)
    # x * 2 - 1 equals the authors' Normalize(0.5, 0.5) bit for bit: both round the same real number once
    out = [_released_transform(image, resolution) * 2 - 1 for image in items]
    if not out:
        return torch.empty(0, 3, resolution, resolution)
    return torch.stack(out)


def _pointwise_loss(name: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name == "l1":
        return (pred - target).abs()
    if name == "l2":
        return (pred - target).square()
    return F.huber_loss(pred, target, reduction="none")


def per_sample_error(name: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """loss(eps, eps_hat) averaged over the latent dimensions, in float32: ``[B]``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return _pointwise_loss(name, pred.float(), target.float()).flatten(1).mean(1)


class DiffusionClassifier:
    """A Stable Diffusion model used as a zero-shot classifier.

    ``compile`` wraps the UNet in ``torch.compile``: True for torch's default mode, or a mode name such as
    ``"max-autotune"``. It is off by default (the first batches pay for compilation); when on, the last batch of a
    stage is padded to ``batch_size`` so one graph serves every call. Prompt embeddings are cached per prompt list.
    """

    def __init__(self, parts: SDComponents, *, compile: bool | str = False, text_cache_size: int = 4) -> None:
        self.parts = parts
        if isinstance(compile, str) and compile not in COMPILE_MODES:
            raise ValueError(f"unknown torch.compile mode {compile!r}; choose one of {', '.join(COMPILE_MODES)}")
        self.compiled = bool(compile)
        mode = compile if isinstance(compile, str) else None
        self._unet: Callable[..., Any] = torch.compile(parts.unet, mode=mode) if compile else parts.unet
        # thread-safe: a servicer may classify from several worker threads
        self._text_cache: ModelCache[tuple[str, ...], torch.Tensor] = ModelCache(text_cache_size, "prompt embedding")
        scheduler = parts.scheduler
        self.num_train_timesteps = int(scheduler.config["num_train_timesteps"])
        abar = scheduler.alphas_cumprod.to(device=parts.device, dtype=torch.float32)
        self._sqrt_abar = abar.sqrt()
        self._sqrt_one_minus_abar = (1 - abar).sqrt()

    @property
    def device(self) -> torch.device:
        return self.parts.device

    # -- encoders -------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states ``[P, L, D]`` (SD's padded 77 tokens), cached by the prompt list."""
        key = tuple(prompts)
        return self._text_cache.get(key, lambda: self._encode_prompts(key))

    def _encode_prompts(self, prompts: tuple[str, ...]) -> torch.Tensor:
        tokenizer, encoder = self.parts.tokenizer, self.parts.text_encoder
        ids = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        chunks = [encoder(chunk.to(self.device))[0] for chunk in ids.split(256)]
        return torch.cat(chunks).to(self.parts.dtype)

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE latent mean times the scaling factor, float32 ``[N, C, h, w]``, for pixels in [-1, 1]."""
        vae = self.parts.vae
        latents = vae.encode(pixels.to(device=self.device, dtype=vae.dtype)).latent_dist.mean
        return latents.float() * vae.config["scaling_factor"]

    # -- classification -------------------------------------------------------------------------------------------

    def classify(
        self,
        images: Any,
        class_names: Sequence[str],
        options: DiffusionClassifierOptions,
        *,
        prompts: Sequence[Sequence[str]] | None = None,
        first_index: int = 0,
        on_progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[DiffusionPrediction]:
        """Classify images among ``class_names``.

        ``prompts`` (one list per class) replaces the templates. Image ``i`` draws its noise from
        ``(options.seed, first_index + i)``, so a shard passes its global offset. ``on_progress(done, total)`` is
        called with 0 first, then as images finish; ``should_stop()`` is polled before every UNet batch and
        raises ``Cancelled``.
        """
        names = _check_class_names(class_names)
        prompt_lists = (
            _check_prompts(prompts, len(names)) if prompts is not None else build_prompts(names, options.templates)
        )
        flat_prompts = [p for class_prompts in prompt_lists for p in class_prompts]
        stages = validate_schedule(options.stages, len(flat_prompts), self.num_train_timesteps)
        if first_index < 0:
            raise ValueError(f"first_index must be non-negative, got {first_index}")
        pixels = preprocess_images(images, self.parts.native_resolution)
        total = len(pixels)
        prompt_class = [c for c, class_prompts in enumerate(prompt_lists) for _ in class_prompts]
        plan = _plan(stages, self.num_train_timesteps)
        results: list[DiffusionPrediction] = []
        if on_progress is not None:
            on_progress(0, total)
        autocast = self._autocast(options.dtype)
        with torch.inference_mode():
            text = self.encode_prompts(flat_prompts)
            for start in range(0, total, options.image_chunk):
                chunk = pixels[start : start + options.image_chunk]
                latents = self.encode_images(chunk)
                noise = torch.stack(
                    [
                        draw_noise(
                            options.seed, first_index + start + i, plan.n_noise * options.n_trials, latents.shape[1:]
                        )
                        for i in range(len(chunk))
                    ]
                ).to(self.device)
                with autocast:
                    winners, class_errors, passes = self._run_stages(
                        latents, noise, text, prompt_class, stages, plan, options, should_stop
                    )
                for i, winner in enumerate(winners):
                    label = prompt_class[winner]
                    results.append(
                        DiffusionPrediction(label, names[label], flat_prompts[winner], class_errors[i], passes[i])
                    )
                if on_progress is not None:
                    on_progress(len(results), total)
        return results

    def _autocast(self, dtype: torch.dtype | None) -> Any:
        model_dtype = self.parts.dtype
        if dtype is None or dtype == model_dtype:
            return torch.autocast(self.device.type, enabled=False)
        if dtype == torch.float32:
            raise ValueError(f"cannot compute in float32 with a {model_dtype} model; build the model in float32")
        return torch.autocast(self.device.type, dtype=dtype)

    def _run_stages(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        text: torch.Tensor,
        prompt_class: list[int],
        stages: tuple[Stage, ...],
        plan: _Plan,
        options: DiffusionClassifierOptions,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[list[int], list[tuple[dict[int, float], ...]], list[int]]:
        """Adaptive elimination for a chunk of images in lockstep; returns winners, per-stage class errors, passes."""
        device = self.device
        n_images, n_candidates = len(latents), len(text)
        trials = options.n_trials
        # one noise row per (slot, trial), slot-major as the authors lay out their noise; one trial: a row is a slot
        slot_t = torch.tensor(plan.slot_timesteps, device=device).repeat_interleave(trials)
        slot_a, slot_b = self._sqrt_abar[slot_t], self._sqrt_one_minus_abar[slot_t]
        # errors[i, c, j]: candidate c's error on image i at noise row j (NaN until evaluated).
        errors = torch.full((n_images, n_candidates, plan.n_noise * trials), float("nan"), device=device)
        alive = [torch.arange(n_candidates) for _ in range(n_images)]
        class_errors: list[list[dict[int, float]]] = [[] for _ in range(n_images)]
        passes = [0] * n_images
        previous_end = 0
        for (_, keep), stage_end in zip(stages, plan.stage_ends, strict=True):
            end = stage_end * trials
            new_slots = torch.arange(previous_end, end)
            img, cand, slot = [], [], []
            for i, candidates in enumerate(alive):
                img.append(torch.full((len(candidates) * len(new_slots),), i))
                cand.append(candidates.repeat_interleave(len(new_slots)))
                slot.append(new_slots.repeat(len(candidates)))
                passes[i] += len(candidates) * len(new_slots)
            triples = torch.stack([torch.cat(img), torch.cat(cand), torch.cat(slot)]).to(device)
            self._evaluate(triples, latents, noise, text, slot_t, slot_a, slot_b, errors, options, should_stop)
            for i, candidates in enumerate(alive):
                # Mean over every row evaluated so far, in evaluation order (as the authors concatenate them).
                mean = errors[i, candidates.to(device), :end].mean(1).cpu()
                per_class: dict[int, float] = {}
                for c, e in zip(candidates.tolist(), mean.tolist(), strict=True):
                    label = prompt_class[c]
                    per_class[label] = min(e, per_class.get(label, float("inf")))
                class_errors[i].append(dict(sorted(per_class.items())))
                order = torch.sort(mean, stable=True).indices[:keep]
                alive[i] = candidates[order].sort().values
            previous_end = end
        winners = [int(candidates[0]) for candidates in alive]
        return winners, [tuple(e) for e in class_errors], passes

    def _evaluate(
        self,
        triples: torch.Tensor,
        latents: torch.Tensor,
        noise: torch.Tensor,
        text: torch.Tensor,
        slot_t: torch.Tensor,
        slot_a: torch.Tensor,
        slot_b: torch.Tensor,
        errors: torch.Tensor,
        options: DiffusionClassifierOptions,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        """Run the (image, candidate, slot) triples through the UNet in batches; write the errors in place."""
        batch_size = options.batch_size
        unet_dtype = self.parts.unet.dtype
        n = triples.shape[1]
        for start in range(0, n, batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("diffusion classification cancelled")
            img, cand, slot = triples[:, start : start + batch_size]
            size = len(img)
            if self.compiled and size < batch_size:  # one static shape for the compiled graph
                pad = batch_size - size
                img, cand, slot = (torch.cat([v, v[-1:].expand(pad)]) for v in (img, cand, slot))
            eps = noise[img, slot]
            shape = (-1,) + (1,) * (eps.dim() - 1)
            noisy = slot_a[slot].view(shape) * latents[img] + slot_b[slot].view(shape) * eps
            # contiguous: latents of some batch sizes come out of the VAE channels-last, and a compiled UNet would
            # recompile (with dynamic shapes, slower) on a stride change
            noisy = noisy.to(unet_dtype).contiguous()
            eps_hat = self._unet(noisy, slot_t[slot], encoder_hidden_states=text[cand]).sample
            err = per_sample_error(options.loss, eps_hat[:size], eps[:size])
            errors[img[:size], cand[:size], slot[:size]] = err
