"""DFZSL step 1: recover virtual base-class features from a black-box classifier (Tang et al., AAAI 2024).

Each class c is modelled as vMF(mu_c, kappa) on the unit sphere. mu starts at the L2-normalized class text features
and is trained so that cosine logits of virtual samples against mu match the teacher's logits (MSE, teacher
detached). The state kept is the one with the lowest loss on a fixed, seeded held-out draw of virtual samples; no
real or test data is ever looked at. Pure PyTorch: no gRPC, MLflow or progress-bar imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from zsc.config import check_config, setting
from zsc.errors import Cancelled
from zsc.limits import MAX_LR, MAX_WEIGHT_DECAY, check_bounded

from .vmf import SAMPLERS, mean_resultant_length, sample_vmf

__all__ = [
    "KAPPA_POLICIES",
    "MAX_EPOCHS",
    "MAX_SAMPLES_PER_CLASS",
    "PRESETS",
    "SAMPLERS",
    "CosineTeacher",
    "LinearTeacher",
    "Preset",
    "RecoveryConfig",
    "RecoveryResult",
    "Teacher",
    "VmfRecovery",
    "angular_kappa",
    "check_epochs",
    "check_text_space",
    "matched_kappa",
    "prepare_recovery",
    "recover",
    "teacher_from_weights",
]

KAPPA_POLICIES = ("angular", "fixed", "matched")
# The matched policy carries the paper's concentration to another dimension: kappa = 200 at D = 512 is what the
# angular rule gives on AWA2 with CLIP ViT-B/16 text features (methods.md: "low hundreds").
MATCHED_REFERENCE = (200.0, 512)
TEACHER_METRICS = ("cosine", "linear")
# Per-class cap for every draw size (training, validation, final); bounds memory at S x cap x D floats.
MAX_SAMPLES_PER_CLASS = 100_000
# Optimizer steps one run may ask for (recovery and FLPT): far above the paper's 1500; more is a mistake, not a run.
MAX_EPOCHS = 10_000_000
# Rows per teacher call when scoring large final draws, to bound the [rows, S] logits buffer.
_TEACHER_CHUNK = 65_536


def check_epochs(epochs: int) -> None:
    """ValueError (one line) unless ``epochs`` is an integer in [0, MAX_EPOCHS] (recovery and FLPT alike)."""
    if int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs}")
    if epochs > MAX_EPOCHS:
        raise ValueError(f"epochs={epochs} is over the limit of {MAX_EPOCHS}")


class Teacher(Protocol):
    """A black-box classifier: features [N, D] -> logits [N, S]. Only its logits are used."""

    def __call__(self, features: torch.Tensor) -> torch.Tensor: ...


def _check_weight(weight: torch.Tensor, name: str = "teacher weight") -> None:
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(f"{name} must be a floating [S, D] tensor")
    if weight.shape[0] < 1 or weight.shape[1] < 2:
        raise ValueError(f"{name} must have S >= 1 rows and D >= 2 columns, got {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{name} contains NaN or Inf")


class _WeightTeacher:
    """A classifier given by an [S, D] weight and a temperature; only its logits are ever used."""

    weight: torch.Tensor

    def __init__(self, weight: torch.Tensor, temperature: float) -> None:
        _check_weight(weight)
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be finite and > 0, got {temperature}")
        self.temperature = float(temperature)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


class CosineTeacher(_WeightTeacher):
    """Cosine classifier: logits[:, j] = cos(x, w_j) / temperature."""

    def __init__(self, weight: torch.Tensor, temperature: float = 1.0) -> None:
        super().__init__(weight, temperature)
        norms = torch.linalg.vector_norm(weight.detach(), dim=1)
        if bool((norms == 0).any()):
            raise ValueError("teacher weight has an all-zero row; its cosine is undefined")
        self.weight = F.normalize(weight.detach(), dim=1)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(device=features.device, dtype=features.dtype)
        return F.normalize(features, dim=-1) @ w.T / self.temperature


class LinearTeacher(_WeightTeacher):
    """Linear classifier: logits = (x W^T + b) / temperature."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, temperature: float = 1.0) -> None:
        super().__init__(weight, temperature)
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
                raise ValueError(f"teacher bias must have shape [{weight.shape[0]}]")
            if not bool(torch.isfinite(bias).all()):
                raise ValueError("teacher bias contains NaN or Inf")
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(device=features.device, dtype=features.dtype)
        b = None if self.bias is None else self.bias.to(device=features.device, dtype=features.dtype)
        return F.linear(features, w, b) / self.temperature


def teacher_from_weights(
    weight: torch.Tensor, metric: str = "cosine", temperature: float = 1.0, bias: torch.Tensor | None = None
) -> CosineTeacher | LinearTeacher:
    """Build a teacher from classifier weights [S, D]: metric "cosine" (paper) or "linear"."""
    if metric == "cosine":
        if bias is not None:
            raise ValueError("bias is only used by the linear metric")
        return CosineTeacher(weight, temperature)
    if metric == "linear":
        return LinearTeacher(weight, bias, temperature)
    raise ValueError(f"unknown teacher metric {metric!r}; expected one of {TEACHER_METRICS}")


def angular_kappa(prototypes: torch.Tensor, theta: float = 1.0) -> float:
    """Shared kappa of the paper: max_c 1 / (theta_c / 6)^2 times theta, theta_c = angle to the nearest prototype."""
    if prototypes.ndim != 2 or prototypes.shape[0] < 2:
        raise ValueError("the angular kappa policy needs at least 2 prototypes")
    p = F.normalize(prototypes.detach().to(torch.float64), dim=1)
    cos = p @ p.T
    cos.fill_diagonal_(-math.inf)
    nearest = torch.arccos(cos.max(dim=1).values.clamp(-1.0, 1.0))
    smallest = float(nearest.min())
    if smallest <= 0.0:
        raise ValueError("two prototypes coincide, so the angular kappa is infinite; use kappa_policy='fixed'")
    kappa = 36.0 / smallest**2 * theta  # max_c kappa_c comes from the smallest theta_c
    if not math.isfinite(kappa):
        raise ValueError("the angular kappa is not finite; use kappa_policy='fixed'")
    return kappa


def matched_kappa(dim: int, ref_kappa: float = MATCHED_REFERENCE[0], ref_dim: int = MATCHED_REFERENCE[1]) -> float:
    """The kappa whose mean cosine to mu in ``dim`` dimensions equals that of ``ref_kappa`` in ``ref_dim``.

    The angular rule depends on how far apart the init prototypes are: rows of a real classifier over high-dimensional
    features (e.g. 1280-d EfficientNet, ~100 degrees apart) give kappa ~ 13, draws almost orthogonal to mu that the
    teacher labels at chance. Matching the mean cosine (A_D(kappa), increasing in kappa; bisection) keeps the draws
    as close to mu as the paper's are. It uses no data, only the two dimensions."""
    if dim < 2:
        raise ValueError(f"the matched kappa needs a dimension >= 2, got {dim}")
    target = float(mean_resultant_length(ref_kappa, ref_dim))
    lo, hi = 1e-3, 1e7
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if float(mean_resultant_length(mid, dim)) < target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


@dataclass(frozen=True)
class Preset:
    """The settings one released DFZSL config (``vdm/configs/<dataset>.yaml``) changes from the defaults."""

    epochs: int
    lr: float
    theta: float
    num: int


# github:ylong4/DFZSL vdm/configs/<file>.yaml, vdm.simulator.{epochs, optimconf.lr} and vdm.{theta, num}. Every config
# shares the rest (nsample 50, Adam, weight decay 5e-4, the stepwise schedule), which are RecoveryConfig's defaults.
PRESETS: dict[str, Preset] = {
    # GZSL benchmarks
    "awa2": Preset(epochs=1000, lr=3e-3, theta=1.0, num=600),  # AWA2.yaml
    "cub": Preset(epochs=1000, lr=1.5e-3, theta=1.0, num=100),  # CUB.yaml
    "sun": Preset(epochs=1500, lr=1e-3, theta=1.0, num=50),  # SUN.yaml
    "flo": Preset(epochs=1000, lr=1e-3, theta=1.0, num=100),  # FLO.yaml
    "apy": Preset(epochs=1000, lr=3e-3, theta=1.0, num=100),  # APY.yaml
    # base-to-new
    "imagenet": Preset(epochs=1000, lr=3e-3, theta=1.0, num=200),  # imagenet.yaml
    "caltech101": Preset(epochs=500, lr=3e-3, theta=1.0, num=100),  # caltech-101.yaml
    "oxfordpets": Preset(epochs=1000, lr=3e-3, theta=5.0, num=200),  # OxfordPets.yaml
    "stanfordcars": Preset(epochs=1000, lr=3e-3, theta=1.0, num=100),  # stanford_cars.yaml
    "flowers102": Preset(epochs=1000, lr=1e-3, theta=1.0, num=100),  # 102flowers.yaml
    "food101": Preset(epochs=1500, lr=1e-3, theta=1.0, num=700),  # food-101.yaml
    "fgvcaircraft": Preset(epochs=1000, lr=3e-3, theta=0.02, num=200),  # fgvc_aircraft.yaml
    "sun397": Preset(epochs=1000, lr=1.5e-3, theta=1.0, num=100),  # SUN397.yaml
    "dtd": Preset(epochs=1000, lr=3e-3, theta=1.0, num=100),  # dtd.yaml
    "eurosat": Preset(epochs=1000, lr=3e-3, theta=1.0, num=2000),  # EuroSAT.yaml
    "ucf101": Preset(epochs=1500, lr=1e-3, theta=1.0, num=100),  # UCF101.yaml
}


@dataclass
class RecoveryConfig:
    """Recovery settings (one epoch = one optimizer step on a fresh draw).

    Defaults are the values the DFZSL authors' released configs share, except the vMF sampler: zsc draws exact vMF
    samples by default, and ``sampler="authors"`` reproduces the released, biased one. ``from_preset`` gives one
    dataset's released config.
    """

    kappa_policy: str = "angular"  # "angular" (paper), "fixed" or "matched" (see matched_kappa)
    theta: float = 1.0  # angular policy: kappa = max_c kappa_c * theta
    kappa: float | None = None  # fixed policy: the concentration, > 0
    nsample: int = 50  # virtual samples per class per step
    epochs: int = 1000  # optimizer steps (1500 for SUN, UCF101, Food; 500 for Caltech in the paper)
    lr: float = 3e-3
    weight_decay: float = setting(5e-4, ge=0, le=MAX_WEIGHT_DECAY)
    lr_gamma: float = setting(1e-3, ge=0)  # lr * (1 + lr_gamma * step) ** -lr_power
    lr_power: float = setting(0.75, ge=0)
    num: int = 100  # final samples per class
    trusted: bool = True  # keep only final samples whose teacher argmax is their own class
    temperature: float = setting(1.0, gt=0)  # student logits are cos(x, mu_j) / temperature; match the teacher's
    seed: int = setting(0, ge=0)
    val_samples: int = 50  # held-out virtual samples per class for model selection
    eval_every: int = 10  # steps between held-out evaluations (the init and the last step are always evaluated)
    log_every: int = 10  # steps between on_step calls (the last step always reports)
    sampler: str = "exact"  # "exact" (Wood) or "authors" (the released Taylor-form sampler, biased for kappa > 10)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> RecoveryConfig:
        """The released config of one dataset (see PRESETS); keyword arguments override its fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown recovery preset {name[:40]!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**asdict(PRESETS[name]), **overrides})

    def validate(self) -> None:
        """Raise ValueError with a one-line message on any bad setting: the bounds declared with ``setting`` above
        and the rules they cannot express (the policy's kappa, whole sample counts, the caps)."""
        if self.kappa_policy not in KAPPA_POLICIES:
            raise ValueError(f"unknown kappa policy {self.kappa_policy!r}; expected one of {KAPPA_POLICIES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown vMF sampler {self.sampler!r}; expected one of {SAMPLERS}")
        if self.kappa_policy == "fixed":
            if self.kappa is None or not math.isfinite(self.kappa) or self.kappa <= 0:
                raise ValueError(f"the fixed kappa policy needs a finite kappa > 0, got {self.kappa}")
        elif self.kappa is not None:
            raise ValueError(f"kappa is only used by the fixed policy; leave it unset with {self.kappa_policy}")
        if not (math.isfinite(self.theta) and self.theta > 0):
            raise ValueError(f"theta must be finite and > 0, got {self.theta}")
        for name in ("nsample", "num", "val_samples"):
            value = getattr(self, name)
            if int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
            if value > MAX_SAMPLES_PER_CLASS:
                raise ValueError(f"{name}={value} is over the cap of {MAX_SAMPLES_PER_CLASS} samples per class")
        check_epochs(self.epochs)
        for name in ("eval_every", "log_every"):
            value = getattr(self, name)
            if int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        check_bounded("lr", self.lr, MAX_LR, positive=True)
        check_config(self)


@dataclass
class RecoveryResult:
    """What recovery produces. Tensors are detached CPU copies."""

    mu: torch.Tensor  # [S, D] selected unit means
    kappa: float
    features: torch.Tensor  # [N, D] final virtual features (trusted only when the filter is on), float32
    labels: torch.Tensor  # [N] int64 class indices into the base classes
    kept_fraction: torch.Tensor  # [S] fraction of each class's `num` draws kept by the trusted filter
    teacher_agreement: float  # fraction of all final draws whose teacher argmax is their own class
    loss_curve: list[float]  # training loss at every step
    final_loss: float  # training loss at the last step (nan when epochs == 0)
    best_step: int  # step whose state was selected (0 = the init)
    best_val_loss: float  # held-out loss of the selected state
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    steps_run: int = 0


class VmfRecovery:
    """The recovery loop as an object, so callers and tests can step it and inspect the live parameter.

    Args:
        teacher: black-box classifier, features [N, D] -> logits [N, S].
        text_features: [S, D] text features of the base classes (any scale; rows are normalized for the init).
        config: settings; RecoveryConfig() when None.
        init: optional [S, D] alternative init for mu (e.g. the normalized teacher weights).
    """

    def __init__(
        self,
        teacher: Teacher,
        text_features: torch.Tensor,
        config: RecoveryConfig | None = None,
        init: torch.Tensor | None = None,
    ) -> None:
        self.config = config if config is not None else RecoveryConfig()
        self.config.validate()
        _check_weight(text_features, "text_features")
        count, dim = text_features.shape
        if count < 2:
            raise ValueError("recovery needs at least 2 base classes")
        if bool((torch.linalg.vector_norm(text_features.detach(), dim=1) == 0).any()):
            raise ValueError("text_features has an all-zero row")
        if init is not None:
            _check_weight(init, "init")
            if init.shape != text_features.shape:
                raise ValueError(f"init has shape {tuple(init.shape)}, text_features {tuple(text_features.shape)}")
            if bool((torch.linalg.vector_norm(init.detach(), dim=1) == 0).any()):
                raise ValueError("init has an all-zero row")
        self.device = text_features.device
        self.dtype = torch.float64 if text_features.dtype == torch.float64 else torch.float32
        self.teacher = teacher
        self.num_classes, self.dim = count, dim
        start = F.normalize((init if init is not None else text_features).detach().to(self.device, self.dtype), dim=1)
        self._check_teacher(start)

        cfg = self.config
        if cfg.kappa_policy == "fixed":
            assert cfg.kappa is not None  # validate() refuses the fixed policy without one
            self.kappa = float(cfg.kappa)
        elif cfg.kappa_policy == "matched":
            self.kappa = matched_kappa(dim)
        else:
            self.kappa = angular_kappa(start, cfg.theta)
        self.raw = torch.nn.Parameter(start.clone())
        self.optimizer = torch.optim.Adam([self.raw], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (1.0 + cfg.lr_gamma * step) ** -cfg.lr_power
        )
        self._train_gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self._val_gen = torch.Generator(device=self.device)
        self._val_seed = cfg.seed + 1
        self._final_seed = cfg.seed + 2
        self.steps_done = 0
        self.best_mu: torch.Tensor = start.clone()
        self.best_step = 0
        self.best_val_loss = math.inf
        self._val_history: list[tuple[int, float]] = []

    def _check_teacher(self, probe: torch.Tensor) -> None:
        weight = getattr(self.teacher, "weight", None)
        if isinstance(weight, torch.Tensor):
            _check_weight(weight)
            if weight.shape[1] != self.dim:
                raise ValueError(f"teacher expects D={weight.shape[1]} but text features have D={self.dim}")
            if weight.shape[0] != self.num_classes:
                raise ValueError(
                    f"teacher has S={weight.shape[0]} classes, but there are {self.num_classes} base classes"
                )
        try:
            with torch.no_grad():
                logits = self.teacher(probe[:2])
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"teacher failed on [2, {self.dim}] features: {first}") from exc
        if not isinstance(logits, torch.Tensor) or logits.shape != (2, self.num_classes):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"teacher must return logits [N, {self.num_classes}], got {shape} for N=2")
        if not bool(torch.isfinite(logits).all()):
            raise ValueError("teacher returned NaN or Inf logits")

    @property
    def mu(self) -> torch.Tensor:
        """The live unit means (detached view of the current parameter, normalized)."""
        return F.normalize(self.raw.detach(), dim=1)

    def _labels(self, per_class: int) -> torch.Tensor:
        return torch.arange(self.num_classes, device=self.device).repeat_interleave(per_class)

    def _loss(self, x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """MSE between student logits cos(x, mu_j)/T and the detached teacher logits; x rows are unit vectors."""
        with torch.no_grad():
            target = self.teacher(x.detach()).to(x.dtype)
        return F.mse_loss(x @ mu.T / self.config.temperature, target)

    def step(self) -> torch.Tensor:
        """One optimizer step on a fresh reparameterized draw; returns the detached loss (no host sync)."""
        mu = F.normalize(self.raw, dim=1)
        x = sample_vmf(mu, self.kappa, self.config.nsample, self._train_gen, sampler=self.config.sampler)
        x = x.reshape(-1, self.dim)
        loss = self._loss(x, mu)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.steps_done += 1
        return loss.detach()

    @torch.no_grad()
    def validation_loss(self, mu: torch.Tensor) -> float:
        """Loss of unit means `mu` on the held-out draw: same seeded noise at every call, so calls are comparable."""
        self._val_gen.manual_seed(self._val_seed)
        cfg = self.config
        x = sample_vmf(mu.to(self.dtype), self.kappa, cfg.val_samples, self._val_gen, sampler=cfg.sampler)
        x = x.reshape(-1, self.dim)
        loss = float(self._loss(x, mu.to(self.dtype)))
        if not math.isfinite(loss):
            raise ValueError("held-out loss is not finite; the teacher returned NaN or Inf logits")
        return loss

    def select(self) -> bool:
        """Evaluate the live state on the held-out draw and keep a copy if it is the best so far."""
        mu = self.mu
        loss = self.validation_loss(mu)
        self._val_history.append((self.steps_done, loss))
        if loss < self.best_val_loss:
            self.best_val_loss = loss
            self.best_step = self.steps_done
            self.best_mu = mu.clone()  # a copy: later optimizer steps must not move the selected state
            return True
        return False

    @torch.no_grad()
    def draw_features(self, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Draw `num` samples per class from vMF(mu, kappa); returns (features, labels, kept_fraction, agreement)."""
        cfg = self.config
        gen = torch.Generator(device=self.device).manual_seed(self._final_seed)
        x = sample_vmf(mu.to(self.dtype), self.kappa, cfg.num, gen, sampler=cfg.sampler).reshape(-1, self.dim)
        labels = self._labels(cfg.num)
        pred = torch.cat([self.teacher(chunk).argmax(dim=1) for chunk in x.split(_TEACHER_CHUNK)])
        agree = pred == labels
        per_class = agree.view(self.num_classes, cfg.num).to(torch.float64).mean(dim=1)
        agreement = float(agree.to(torch.float64).mean())
        if cfg.trusted:
            x, labels = x[agree], labels[agree]
        else:
            per_class = torch.ones_like(per_class)
        return x, labels, per_class, agreement

    def fit(
        self,
        on_step: Callable[[int, int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> RecoveryResult:
        """Run `epochs` steps, select the best held-out state, and draw the final features.

        on_step(step, total, loss) is called every `log_every` steps and at the last one; should_stop() is polled
        before every step and raises Cancelled when it returns True.
        """
        cfg = self.config
        total = cfg.epochs
        self.select()
        losses = torch.empty(total, dtype=self.dtype, device=self.device)
        for i in range(total):
            if should_stop is not None and should_stop():
                raise Cancelled(f"recovery cancelled after {i} of {total} steps")
            losses[i] = self.step()
            done = i + 1
            if done % cfg.eval_every == 0 or done == total:
                self.select()
            if on_step is not None and (done % cfg.log_every == 0 or done == total):
                on_step(done, total, float(losses[i]))
        curve = losses.tolist()
        features, labels, kept, agreement = self.draw_features(self.best_mu)
        return RecoveryResult(
            mu=self.best_mu.detach().to("cpu", copy=True),
            kappa=self.kappa,
            features=features.to("cpu", torch.float32),
            labels=labels.to("cpu"),
            kept_fraction=kept.to("cpu", torch.float32),
            teacher_agreement=agreement,
            loss_curve=curve,
            final_loss=curve[-1] if curve else math.nan,
            best_step=self.best_step,
            best_val_loss=self.best_val_loss,
            val_steps=[s for s, _ in self._val_history],
            val_losses=[v for _, v in self._val_history],
            steps_run=self.steps_done,
        )


def check_text_space(
    teacher_dim: int, text_dim: int, init_from_teacher: bool, text: str = "the text features have"
) -> None:
    """The one rule for recovering in another space: text features whose D differs from the teacher's are refused
    unless mu starts at the teacher's rows (``init_from_teacher``); a D mismatch is more often a wrong file than a
    choice. ``text`` names where the text features come from, e.g. "the CLIP model X encodes"."""
    if text_dim != teacher_dim and not init_from_teacher:
        raise ValueError(
            f"the teacher has D={teacher_dim} but {text} D={text_dim}; "
            "set init_from_teacher to recover in the teacher's space"
        )


def prepare_recovery(
    teacher: Teacher,
    weight: torch.Tensor,
    text_features: torch.Tensor,
    config: RecoveryConfig | None = None,
    *,
    init_from_teacher: bool = False,
) -> VmfRecovery:
    """The recovery loop for a teacher given by its ``weight`` [S, D], with mu starting at the text features
    [S, D'] or, ``init_from_teacher``, at the teacher's L2-normalized rows.

    From the teacher is DFZSL's ``prototype: weight`` option: it is the only init in the teacher's space when the
    text features live elsewhere (any D'). VmfRecovery reads its ``text_features`` argument only to initialize mu
    and to compute the angular kappa from the init, so the normalized teacher rows stand in for it there; the real
    text features still go into the output file. Cheap (a teacher probe and the angular kappa), so a caller can run
    it before starting a job. ValueError (one line) on a D or row-count mismatch and on bad settings.
    """
    rows, dim = weight.shape
    check_text_space(dim, text_features.shape[1], init_from_teacher)
    if text_features.shape[0] != rows:
        raise ValueError(f"the text features have {text_features.shape[0]} rows for {rows} base classes")
    if not init_from_teacher:
        return VmfRecovery(teacher, text_features, config)
    prototypes = F.normalize(weight.float(), dim=1)
    return VmfRecovery(teacher, prototypes, config, init=prototypes)


def recover(
    teacher: Teacher,
    text_features: torch.Tensor,
    config: RecoveryConfig | None = None,
    *,
    init: torch.Tensor | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RecoveryResult:
    """Recover vMF class means from a black-box teacher and draw virtual base features (DFZSL step 1).

    Raises ValueError on bad input (one line) and Cancelled when should_stop() returns True.
    """
    return VmfRecovery(teacher, text_features, config, init).fit(on_step=on_step, should_stop=should_stop)
