"""Generative service: DFZSL steps 3-4 (methods.md §3) and SHIP (methods.md §4) over gRPC.

TrainGenerator learns a conditional feature generator (TF-VAEGAN or f-CLSWGAN) on base-class features, GenerateFeatures
(or StreamFeatures) synthesizes features of any class from its text feature, TrainGZSL fits the logit-adjusted cosine
classifier over base + synthesized features, and EvaluateGZSL scores it (S/U/H and B/N/HM). For SHIP, TrainGenerator
also trains the prompt VAE (kind SHIP_VAE), which synthesizes features from class names alone, and FineTune adapts
CLIP (CoOp, CLIP-Adapter, Tip-Adapter-F) on cached real base + synthesized new features; EvaluateGZSL scores the
fine-tuned models too. The SHIP paths load the profile's CLIP on first use and answer FAILED_PRECONDITION under a
profile without one (``lite``: its text encoder is not aligned with its image features).

A thin layer over the pure cores in ``core/``: every request is validated and converted on the RPC thread (bad input
gets INVALID_ARGUMENT and an unknown model NOT_FOUND before any job starts), the work runs as an Operation with
progress and cancel, runs are logged to MLflow, and generators and classifiers are registered with lineage tags
(``models.py`` stores them). Model selection happens only on held-out training data inside the cores; no RPC
accepts test features for it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import grpc
import torch
from google.protobuf import message as pb_message

from zsc import codec, registry, tracking
from zsc.data import check_class_names, duplicate_class, output_file, resolve_uri
from zsc.errors import Cancelled, FailedPrecondition, InvalidArgument, first_line
from zsc.evaluation import base_to_new_metrics, confusion_matrix, gzsl_metrics, gzsl_report, per_class_accuracy
from zsc.features import ALIGNMENT_ID_KEY, FeatureSet, alignment_id, content_hash, read_alignment
from zsc.generative.v1 import generative_pb2 as pb
from zsc.generative.v1 import generative_pb2_grpc as pb_grpc
from zsc.limits import MAX_LR, MAX_WEIGHT_DECAY
from zsc.lineage import MD5_TAG, dvc_md5
from zsc.model_cache import ModelCache
from zsc.models.clip import ClipBundle, create_clip
from zsc.models.prompt_learner import check_prompts_fit
from zsc.runtime.operations import JobContext
from zsc.runtime.server import ServiceRuntime
from zsc_generative import models
from zsc_generative.core import finetune, ship
from zsc_generative.core.bank import FeatureBank
from zsc_generative.core.common import (
    GeneratorConfig,
    GeneratorTrainResult,
    generate,
    holdout_class_count,
)
from zsc_generative.core.gzsl import Calibration, GZSLConfig, fit_gzsl_classifier, holdout_calibration

SERVICE = "zsc.generative.v1.Generative"
TRAIN_GENERATOR_KIND = f"{SERVICE}/TrainGenerator"
GENERATE_KIND = f"{SERVICE}/GenerateFeatures"
TRAIN_GZSL_KIND = f"{SERVICE}/TrainGZSL"
EVALUATE_KIND = f"{SERVICE}/EvaluateGZSL"
FINETUNE_KIND = f"{SERVICE}/FineTune"
EXPERIMENT = "zsc-generative"
GZSL_MODEL_NAME = "zsc-gzsl"
KIND_NAMES = {pb.TFVAEGAN: "tfvaegan", pb.CLSWGAN: "clswgan", pb.SHIP_VAE: models.SHIP_KIND}
KIND_ENUMS = {v: k for k, v in KIND_NAMES.items()}
METHOD_NAMES = {pb.COOP: "coop", pb.CLIP_ADAPTER: "clip_adapter", pb.TIP_ADAPTER_F: "tip_adapter_f"}
METHOD_ENUMS = {v: k for k, v in METHOD_NAMES.items()}
CALIBRATION_NAMES = {
    pb.CALIBRATION_METHOD_UNSPECIFIED: "none",
    pb.CALIBRATION_NONE: "none",
    pb.CALIBRATION_HOLDOUT: "holdout",
}
# GeneratorSettings fields that mean nothing to SHIP_VAE (its widths are in ShipVaeSettings; it has no critic).
SHIP_REFUSED = ("hidden_dim", "critic_iters", "gp_weight")
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
MAX_CLASSES = 100_000
MAX_PER_CLASS = 1_000_000
# Largest features tensor GenerateFeatures/StreamFeatures builds in memory (K classes x per_class x D float32).
MAX_OUTPUT_BYTES = 4 << 30
MAX_PER_CLASS_METRICS = 1000  # per-class accuracies logged as MLflow metrics; more go to the table artifact only

# Request field -> core config field, and the bounds no run can exceed (the cores check the lower ones).
SELECTION_FIELDS = {
    "every": "select_every",
    "holdout_fraction": "select_holdout_fraction",
    "val_fraction": "select_val_fraction",
    "n_per_class": "select_n_per_class",
    "classifier_epochs": "select_classifier_epochs",
    "classifier_lr": "select_classifier_lr",
    "refit": "select_refit",
}
INT_LIMITS = {
    "epochs": 100_000,
    "batch_size": 1_000_000,
    "hidden_dim": 16_384,
    "noise_dim": 16_384,
    "critic_iters": 100,
    "select_every": 100_000,
    "select_n_per_class": 100_000,
    "select_classifier_epochs": 100_000,
    "cls_epochs": 100_000,
    "feedback_loop": 100,
    "latent_dim": 16_384,
    "encoder_hidden": 16_384,
    "generator_hidden": 16_384,
    "n_ctx": 64,
    "reduction": 16_384,
    "search_alpha_steps": 10_000,
    "search_beta_steps": 10_000,
    "cache_synthetic_per_class": 100_000,
}
POSITIVE = {
    "lr",
    "cls_lr",
    "feedback_lr",
    "decoder_lr",
    "select_classifier_lr",
    "cls_temperature",
    "temperature",
    "ctx_init_std",
    "logit_scale",
    "adamw_eps",
    "search_alpha_max",
    "search_beta_max",
}
NON_NEGATIVE = {
    "gp_weight",
    "cls_weight",
    "recon_weight",
    "adv_weight",
    "kl_weight",
    "feedback_weight",
    "generation_feedback_weight",
    "weight_decay",
    "momentum",
    "init_alpha",
    "init_beta",
}
UNIT_INTERVAL = {"beta1", "beta2", "encoder_beta1"}  # [0, 1)


class GenerativeService:
    grpc_services: ClassVar[list[str]] = [SERVICE]

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self.models: ModelCache[tuple[str, str], Any] = ModelCache(8, "generative")
        self._clip: ClipBundle | None = None
        self._clip_lock = threading.Lock()

    def add_to_server(self, server: grpc.Server) -> None:
        pb_grpc.add_GenerativeServicer_to_server(GenerativeServicer(self), server)

    def load(self) -> None:
        """Nothing to preload: generators and classifiers are built per request or loaded from MLflow on use, and
        the profile's CLIP loads on the first request that needs it (SHIP_VAE, FineTune)."""

    def clip_or_fail(self, why: str) -> ClipBundle:
        """The profile's CLIP, loaded once (under a lock: two requests may ask at once); FailedPrecondition when the
        profile has none."""
        profile = self.runtime.profile
        if not profile.clip:
            raise FailedPrecondition(
                f"profile {profile.name!r} has no CLIP model (no text encoder aligned with its image features); {why}"
            )
        with self._clip_lock:
            if self._clip is None:
                self._clip = create_clip(profile.clip, self.device, profile.torch_dtype(), seed=profile.seed)
            return self._clip

    @property
    def device(self) -> torch.device:
        return self.runtime.profile.torch_device()

    def load_generator(self, reference: str) -> tuple[registry.ResolvedModel, models.LoadedGenerator]:
        ref = registry.resolve(reference)

        def clip() -> ClipBundle:
            return self.clip_or_fail("SHIP_VAE generators decode through CLIP's text encoder")

        def read(folder: Path) -> models.LoadedGenerator:
            return models.read_generator(folder, reference, self.device, clip)

        # keyed by stored files, so an alias that moves loads anew
        return ref, self.models.get(("generator", ref.key), lambda: registry.load_files(ref, read))

    def load_classifier(self, reference: str) -> tuple[registry.ResolvedModel, models.LoadedClassifier]:
        ref = registry.resolve(reference)

        def read(folder: Path) -> models.LoadedClassifier:
            return models.read_classifier(folder, reference, self.device)

        return ref, self.models.get(("classifier", ref.key), lambda: registry.load_files(ref, read))


@dataclass
class GenerationPlan:
    """A validated GenerateFeatures/StreamFeatures request."""

    ref: registry.ResolvedModel
    generator: models.LoadedGenerator
    class_names: tuple[str, ...]
    text: torch.Tensor  # [K, D_t]; SHIP_VAE: CLIP's zero-shot text features of the names
    per_class: int
    seed: int


@dataclass
class CalibrationPlan:
    """A validated CALIBRATION_HOLDOUT request: what trains the calibration generator and how the split is drawn."""

    ref: registry.ResolvedModel  # the generator whose kind and settings are copied
    kind: models.GeneratorKind
    config: GeneratorConfig  # its config, reseeded with the request's seed
    data: FeatureSet  # the base features over the base classes only, with the generator's conditioning text
    classifier_text: torch.Tensor  # [S, D_c] the final classifier's text features of those classes
    holdout_fraction: float
    val_fraction: float
    n_per_class: int

    @property
    def total_epochs(self) -> int:
        """An upper bound of the generator's epochs (selection with refit trains twice at most)."""
        return self.config.epochs * (2 if self.config.select_every > 0 and self.config.select_refit else 1)


class GenerativeServicer(pb_grpc.GenerativeServicer):
    def __init__(self, service: GenerativeService) -> None:
        self.service = service

    # --- TrainGenerator --------------------------------------------------------------------------------------------
    def TrainGenerator(self, request: pb.TrainGeneratorRequest, context: grpc.ServicerContext):
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
        svc = self.service
        svc.runtime.require_ready()
        name = enum_choice(
            request.kind,
            KIND_NAMES,
            pb.GENERATOR_KIND_UNSPECIFIED,
            "generator kind",
            "TFVAEGAN or CLSWGAN (or SHIP_VAE)",
        )
        method = request.WhichOneof("method_settings")
        if method is not None and method != name:
            raise InvalidArgument(f"{method} settings were given for a {name.upper()} generator")
        seed = check_seed(request.seed)
        is_ship = name == models.SHIP_KIND
        clip = svc.clip_or_fail("SHIP_VAE decodes through CLIP's text encoder") if is_ship else None
        path, data = read_features(request.features_uri, "features_uri", svc.runtime.data_roots)
        text_source = "file"
        text_digest = ""
        if request.HasField("text_features") and is_ship:
            raise InvalidArgument("SHIP_VAE conditions on class names, not text features; leave text_features empty")
        if request.HasField("text_features"):
            text = decode_matrix(request.text_features, "text_features")
            if text.shape[0] != data.num_classes:
                raise InvalidArgument(
                    f"text_features has {text.shape[0]} rows but the features file lists {data.num_classes} classes; "
                    "send one row per class of the file, in its order"
                )
            data.text_features = text
            text_source, text_digest = "inline", hashlib.sha256(request.text_features.data).hexdigest()
        if len(data) == 0:
            raise InvalidArgument(f"features file {path.name} has no samples to train on")
        trained = [data.class_names[i] for i in data.labels.unique(sorted=True).tolist()]
        config: GeneratorConfig | ship.ShipConfig
        if clip is not None:
            config = ship_config(request, seed)
            check_ship_data(data, path, clip, trained, config)
            train: Callable[..., GeneratorTrainResult] = functools.partial(
                ship.train_ship_vae, clip.model, clip.tokenizer, data, config
            )
            total = config.epochs
        else:
            kind = models.KINDS[name]
            config = generator_config(kind, request, seed)
            if config.select_every > 0 and len(trained) < 2:
                raise InvalidArgument(
                    f"selection holds out pseudo-novel classes and needs at least 2 trained classes; "
                    f"features file {path.name} has samples of {len(trained)}"
                )
            train = functools.partial(kind.train, data, config, device=svc.device)
            selecting = config.select_every > 0
            total = config.epochs * (2 if selecting and config.select_refit else 1)
        model_name = registry.check_model_name(request.registered_model_name or f"zsc-generator-{name}")
        features_hash = content_hash(path)
        profile = svc.runtime.profile.name
        lineage = {
            "zsc.kind": f"generator-{name}",
            "zsc.profile": profile,
            "zsc.seed": str(seed),
            "zsc.git_commit": tracking.git_commit(),
            "zsc.dataset.uri": str(path),
            "zsc.dataset.hash": f"sha256:{features_hash}",
            MD5_TAG: dvc_md5(path),  # the hash dvc.lock lists for it
            "zsc.text_source": text_source,
            **upstream_tags(data, "zsc.recovery"),
            **({"zsc.text.hash": f"sha256:{text_digest}"} if text_digest else {}),
            **({"zsc.clip": clip.ref} if clip is not None else {}),
        }
        params = {
            "kind": name,
            **config.to_dict(),
            "features_uri": str(path),
            "n_features": len(data),
            "feature_dim": data.dim,
            "text_dim": data.text_dim,
            "n_classes": data.num_classes,
            "n_trained_classes": len(trained),
            "profile": profile,
            "registered_model_name": model_name,
        }

        def job(ctx: JobContext) -> pb.TrainGeneratorResult:
            with tracking.run(experiment, f"train-generator-{name}", lineage) as run:
                ctx.set_mlflow_run(run.id)
                run.log_params(params)
                steps = {"select": 0, "train": 0}
                curves = EpochMetrics(run)

                def on_epoch(done: int, total: int, metrics: dict[str, float]) -> None:
                    # Selection epochs and the returned run's epochs each count from 1 in MLflow.
                    phase = "select" if any(k.startswith("select_") for k in metrics) else "train"
                    steps[phase] += 1
                    curves.add(finite(metrics), steps[phase])
                    ctx.progress(done, total, **finite(metrics))

                try:
                    result = train(on_epoch=on_epoch, should_stop=ctx.should_stop)
                except Cancelled as err:
                    raise Cancelled(str(err)) from err
                finally:
                    curves.flush()
                final = dict(result.history[-1]) if result.history else {}
                if result.selection_history:
                    best = result.selection_history[result.best_epoch - 1]
                    final.update({k: v for k, v in best.items() if k in ("select_S", "select_U", "select_H")})
                run.log_metrics(finite({"best_epoch": result.best_epoch, **{f"best_{k}": v for k, v in final.items()}}))
                with tempfile.TemporaryDirectory(prefix="zsc-generator-") as tmp:
                    models.write_generator(
                        Path(tmp),
                        kind=name,
                        config=config,
                        state_dict=result.state_dict,
                        feature_dim=result.feature_dim,
                        text_dim=result.text_dim,
                        class_names=data.class_names,
                        text_features=data.text_features,
                        trained_classes=trained,
                        extra=models.clip_identity(clip) if clip is not None else None,
                    )
                    ctx.check_cancelled()  # a cancelled job registers nothing
                    version = registry.register_folder(run, Path(tmp), "generator", model_name, lineage)
                return pb.TrainGeneratorResult(
                    model=version_message(version),
                    kind=KIND_ENUMS[name],
                    feature_dim=result.feature_dim,
                    text_dim=result.text_dim,
                    class_names=data.class_names,
                    trained_classes=trained,
                    epochs_run=len(result.selection_history) + len(result.history),
                    best_epoch=result.best_epoch,
                    final_metrics=finite(final),
                    features_sha256=features_hash,
                )

        return svc.runtime.operations.start(TRAIN_GENERATOR_KIND, job, total=total, unit="epochs")

    # --- GenerateFeatures / StreamFeatures -------------------------------------------------------------------------
    def _plan(self, request: pb.GenerateFeaturesRequest) -> GenerationPlan:
        svc = self.service
        svc.runtime.require_ready()
        if request.per_class < 1 or request.per_class > MAX_PER_CLASS:
            raise InvalidArgument(f"per_class must lie in [1, {MAX_PER_CLASS}], got {request.per_class}")
        seed = check_seed(request.seed)
        names = check_class_names(request.class_names, "class_names", MAX_CLASSES)
        ref, gen = svc.load_generator(request.generator)
        if gen.kind == models.SHIP_KIND:
            if request.HasField("text_features"):
                raise InvalidArgument(
                    f"generator {ref.model_uri} is a SHIP_VAE: it synthesizes from class names alone; leave "
                    "text_features empty"
                )
            clip = svc.clip_or_fail("SHIP_VAE generators decode through CLIP's text encoder")
            n_ctx = gen.module.prompt.n_ctx
            check_prompts_fit(clip.tokenizer, [f"{' '.join(['X'] * n_ctx)} {n}." for n in names], names)
            text = finetune.encode_template(clip.model, clip.tokenizer, names, finetune.DEFAULT_TEMPLATE)
        elif request.HasField("text_features"):
            text = decode_matrix(request.text_features, "text_features")
            if text.shape[1] != gen.text_dim:
                raise InvalidArgument(
                    f"text_features have D_t={text.shape[1]} but generator {ref.model_uri} conditions on "
                    f"D_t={gen.text_dim}: a generator trains on text features of any width and generates only from "
                    "text features of that width"
                )
            if text.shape[0] != len(names):
                raise InvalidArgument(f"text_features has {text.shape[0]} rows for {len(names)} class_names")
        else:
            text = gen.text_of(names, ref.model_uri)
        nbytes = len(names) * request.per_class * gen.feature_dim * 4
        if nbytes > MAX_OUTPUT_BYTES:
            raise InvalidArgument(
                f"{len(names)} classes x {request.per_class} features x D={gen.feature_dim} needs "
                f"{nbytes / 2**30:.1f} GiB, over the limit of {MAX_OUTPUT_BYTES / 2**30:.0f} GiB; split the request"
            )
        return GenerationPlan(ref, gen, names, text, int(request.per_class), seed)

    def _synthesize(
        self, plan: GenerationPlan, should_stop: Callable[[], bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        module, text = plan.generator.module, plan.text.to(self.service.device)
        if plan.generator.kind == models.SHIP_KIND:
            x, y = ship.synthesize(module, plan.class_names, plan.per_class, plan.seed, should_stop=should_stop)
        else:
            x, y = generate(module, text, plan.per_class, plan.seed, should_stop=should_stop)
        return x.float().cpu(), y.cpu()

    def GenerateFeatures(self, request: pb.GenerateFeaturesRequest, context: grpc.ServicerContext):
        svc = self.service
        plan = self._plan(request)
        out = output_file(request.output_uri, svc.runtime.data_roots)
        ref, gen = plan.ref, plan.generator
        metadata = {
            "zsc.kind": "generated-features",
            "generator_model_uri": ref.model_uri,
            "generator_run_id": ref.run_id,
            "generator_kind": gen.kind,
            "per_class": str(plan.per_class),
            "seed": str(plan.seed),
            "profile": svc.runtime.profile.name,
        }
        if aligned := trained_alignment(ref):
            metadata[ALIGNMENT_ID_KEY] = aligned  # synthesized in the (aligned) space the generator was trained in

        def job(ctx: JobContext) -> pb.GenerateFeaturesResult:
            ctx.progress(0, message=f"synthesizing {plan.per_class} features for each of {len(plan.class_names)}")
            try:
                x, y = self._synthesize(plan, ctx.should_stop)
            except Cancelled as err:
                raise Cancelled(str(err)) from err
            features = FeatureSet(x, y, list(plan.class_names), plan.text.float().cpu(), metadata)
            save_features(features, out, ctx)
            ctx.progress(len(plan.class_names))
            return pb.GenerateFeaturesResult(
                features_uri=str(out),
                class_names=plan.class_names,
                n_features=len(y),
                feature_dim=gen.feature_dim,
                generator=ref_message(ref),
                features_sha256=content_hash(out),
            )

        return svc.runtime.operations.start(GENERATE_KIND, job, total=len(plan.class_names), unit="classes")

    def StreamFeatures(self, request: pb.GenerateFeaturesRequest, context: grpc.ServicerContext) -> Iterator:
        if request.output_uri:
            raise InvalidArgument("StreamFeatures streams the features back and writes no file; leave output_uri empty")
        plan = self._plan(request)
        try:
            x, _ = self._synthesize(plan, lambda: not context.is_active())
        except Cancelled as err:
            raise Cancelled(str(err)) from err
        for i, chunk in enumerate(codec.encode_chunks(x)):
            if not context.is_active():  # the client went away: stop encoding
                return
            if i == 0:
                yield pb.FeatureChunk(class_names=plan.class_names, per_class=plan.per_class, features=chunk)
            else:
                yield pb.FeatureChunk(features=chunk)

    # --- TrainGZSL -------------------------------------------------------------------------------------------------
    def _calibration_plan(
        self,
        request: pb.TrainGZSLRequest,
        names: Sequence[str],
        text: torch.Tensor,
        base: FeatureSet,
        base_y: torch.Tensor,
        seen: list[int],
        novel: FeatureSet | None,
        seed: int,
    ) -> CalibrationPlan | None:
        """The checked CALIBRATION_HOLDOUT plan, or None for CALIBRATION_NONE (its settings are range-checked too)."""
        cal = request.calibration
        if cal.method not in CALIBRATION_NAMES:
            raise InvalidArgument(
                f"unknown calibration method {cal.method}; use CALIBRATION_NONE or CALIBRATION_HOLDOUT"
            )
        fractions = {}
        for field in ("holdout_fraction", "val_fraction"):
            value = getattr(cal, field) if cal.HasField(field) else 0.2
            if not (math.isfinite(value) and 0.0 < value < 1.0):
                raise InvalidArgument(f"CalibrationSettings.{field} must lie in (0, 1), got {value}")
            fractions[field] = value
        if not 0 <= cal.n_per_class <= MAX_PER_CLASS:
            raise InvalidArgument(
                f"CalibrationSettings.n_per_class must lie in [0, {MAX_PER_CLASS}], got {cal.n_per_class}"
            )
        if CALIBRATION_NAMES[cal.method] != "holdout":
            if cal.generator:  # a setting that would change nothing is a mistake worth naming
                raise InvalidArgument("calibration.generator is used only with CALIBRATION_HOLDOUT")
            return None
        if request.settings.HasField("calibration_gamma"):
            raise InvalidArgument(
                "calibration HOLDOUT chooses calibration_gamma itself; leave settings.calibration_gamma unset"
            )
        if novel is None:
            raise InvalidArgument(
                "calibration HOLDOUT needs novel_features_uri: it calibrates against synthesized classes"
            )
        if len(seen) < 2:
            raise InvalidArgument(f"calibration HOLDOUT holds out base classes and needs at least 2, got {len(seen)}")
        reference = cal.generator or novel.metadata.get("generator_model_uri", "")
        if not reference:
            raise InvalidArgument(
                "calibration HOLDOUT needs a generator to copy: the novel features name none (GenerateFeatures "
                "records it); set calibration.generator"
            )
        ref, gen = self.service.load_generator(reference)
        kind = models.KINDS.get(gen.kind)
        if kind is None or not isinstance(gen.config, GeneratorConfig):
            raise FailedPrecondition(
                f"calibration HOLDOUT trains a TFVAEGAN or CLSWGAN generator; {ref.model_uri} is a {gen.kind}"
            )
        config = replace(gen.config, seed=seed)
        fit_classes = len(seen) - holdout_class_count(len(seen), fractions["holdout_fraction"])
        if config.select_every > 0 and fit_classes < 2:
            raise InvalidArgument(
                f"generator {ref.model_uri} selects its epoch on held-out classes, which needs 2 of the "
                f"{fit_classes} base classes that calibration HOLDOUT leaves it; lower holdout_fraction"
            )
        base_names = [names[i] for i in seen]
        known = set(gen.class_names)
        if all(n in known for n in base_names):  # what the copied generator conditioned on
            gen_text = gen.text_of(base_names, ref.model_uri)
        elif text.shape[1] == gen.text_dim:
            gen_text = text[seen]
        else:
            missing = next(n for n in base_names if n not in known)
            raise FailedPrecondition(
                f"generator {ref.model_uri} stores no text feature of base class {missing!r} and the request's text "
                f"features have D_t={text.shape[1]} where it conditions on D_t={gen.text_dim}"
            )
        local = torch.full((len(names),), -1, dtype=torch.int64)
        local[seen] = torch.arange(len(seen))
        n_per_class = cal.n_per_class or int(torch.bincount(novel.labels).max())
        return CalibrationPlan(
            ref=ref,
            kind=kind,
            config=config,
            data=FeatureSet(base.features, local[base_y], base_names, gen_text.float()),
            classifier_text=text[seen].float(),
            holdout_fraction=fractions["holdout_fraction"],
            val_fraction=fractions["val_fraction"],
            n_per_class=n_per_class,
        )

    def TrainGZSL(self, request: pb.TrainGZSLRequest, context: grpc.ServicerContext):
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
        svc = self.service
        svc.runtime.require_ready()
        roots = svc.runtime.data_roots
        seed = check_seed(request.seed)
        base_path, base = read_features(request.base_features_uri, "base_features_uri", roots)
        if len(base) == 0:
            raise InvalidArgument(f"base features file {base_path.name} has no samples")
        if request.class_names or request.HasField("text_features"):
            if not request.class_names or not request.HasField("text_features"):
                raise InvalidArgument("give class_names and text_features together, or neither to use the base file's")
            names = check_class_names(request.class_names, "class_names", MAX_CLASSES)
            text = decode_matrix(request.text_features, "text_features")
            if text.shape[0] != len(names):
                raise InvalidArgument(f"text_features has {text.shape[0]} rows for {len(names)} class_names")
            source = "the class_names of the request"
        else:
            names, text = tuple(base.class_names), base.text_features
            source = f"the classes of base file {base_path.name}"
        position = {n: i for i, n in enumerate(names)}
        base_y = relabel(base, position, lambda n: f"base class {n!r} has samples but is not among {source}")
        features, labels = [base.features], [base_y]
        seen = sorted(set(base_y.tolist()))
        novel_path: Path | None = None
        novel: FeatureSet | None = None
        if request.novel_features_uri:
            novel_path, novel = read_features(request.novel_features_uri, "novel_features_uri", roots)
            if novel.dim != base.dim:
                raise InvalidArgument(
                    f"the base features have D={base.dim} but the novel features have D={novel.dim}; both must be "
                    "image features of one space (text features may have any D_t, features may not)"
                )
            if alignment_id(novel.metadata) != alignment_id(base.metadata):
                raise FailedPrecondition(
                    f"base features {base_path.name} are {space(base.metadata)} but novel features {novel_path.name} "
                    f"are {space(novel.metadata)}; both must lie in one feature space"
                )
            novel_y = relabel(
                novel,
                position,
                lambda n: (
                    f"novel class {n!r} has no text feature: it is not among {source}; send class_names and "
                    "text_features of every class"
                ),
            )
            features.append(novel.features)
            labels.append(novel_y)
        config = gzsl_config(request.settings, seed)
        plan = self._calibration_plan(request, names, text, base, base_y, seen, novel, seed)
        model_name = registry.check_model_name(request.registered_model_name or GZSL_MODEL_NAME)
        seen_set = set(seen)
        novel_idx = [i for i in range(len(names)) if i not in seen_set]
        n_novel = len(novel) if novel is not None else 0
        profile = svc.runtime.profile.name
        lineage = {
            "zsc.kind": "gzsl",
            "zsc.profile": profile,
            "zsc.seed": str(seed),
            "zsc.git_commit": tracking.git_commit(),
            "zsc.dataset.uri": str(base_path),
            "zsc.dataset.hash": f"sha256:{content_hash(base_path)}",
            MD5_TAG: dvc_md5(base_path),  # the hash dvc.lock lists for it
            **upstream_tags(base, "zsc.recovery"),
        }
        if novel is not None and novel_path is not None:
            lineage["zsc.novel.uri"] = str(novel_path)
            lineage["zsc.novel.hash"] = f"sha256:{content_hash(novel_path)}"
            lineage["zsc.novel.md5"] = dvc_md5(novel_path)
            for key in ("generator_model_uri", "generator_run_id"):
                if novel.metadata.get(key):
                    lineage[f"zsc.{key.replace('_', '.', 1)}"] = novel.metadata[key]
        if request.HasField("text_features"):
            lineage["zsc.text.hash"] = f"sha256:{hashlib.sha256(request.text_features.data).hexdigest()}"
        if plan is not None:
            lineage["zsc.calibration.generator"] = plan.ref.model_uri
        params = {
            **config.to_dict(),
            "calibration": CALIBRATION_NAMES[request.calibration.method],
            "base_features_uri": str(base_path),
            "novel_features_uri": str(novel_path or ""),
            "n_base": len(base),
            "n_novel": n_novel,
            "n_classes": len(names),
            "n_seen": len(seen),
            "feature_dim": base.dim,
            "text_dim": int(text.shape[1]),
            "profile": profile,
            "registered_model_name": model_name,
        }
        if plan is not None:
            del params["calibration_gamma"]  # chosen in the job, logged then (MLflow params are write-once)
            params.update(
                {
                    "calibration_holdout_fraction": plan.holdout_fraction,
                    "calibration_val_fraction": plan.val_fraction,
                    "calibration_n_per_class": plan.n_per_class,
                    "calibration_generator": plan.ref.model_uri,
                }
            )
        offset = plan.total_epochs if plan is not None else 0
        total_epochs = offset + config.epochs

        def job(ctx: JobContext) -> pb.TrainGZSLResult:
            with tracking.run(experiment, "train-gzsl", lineage) as run:
                ctx.set_mlflow_run(run.id)
                run.log_params(params)

                def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
                    run.log_metrics(finite(metrics), step=epoch)
                    ctx.progress(offset + epoch, total_epochs, **finite(metrics))

                x, y = torch.cat(features), torch.cat(labels)
                final_config, calibration = config, None
                try:
                    if plan is not None:
                        calibration = calibrate(plan, config, run, ctx, svc.device)
                        final_config = replace(config, calibration_gamma=calibration.gamma)
                    result = fit_gzsl_classifier(
                        x,
                        y,
                        text,
                        seen,
                        final_config,
                        on_epoch=on_epoch,
                        should_stop=ctx.should_stop,
                        device=svc.device,
                    )
                except Cancelled as err:
                    raise Cancelled(str(err)) from err
                # Accuracy on the training features (base real, novel synthesized): a sanity check, not a selection.
                pred = result.classifier.predict(x).cpu()
                train_fit = gzsl_metrics(y, pred, seen, novel_idx) if novel_idx else None
                final_loss = result.history[-1]["loss"]
                run.log_params({"resolved_batch_size": result.batch_size})  # batch_size 0 resolves from the data
                summary = {"final_loss": final_loss}
                if train_fit is not None:
                    summary.update({"train_S": train_fit.seen, "train_U_synthetic": train_fit.unseen})
                run.log_metrics(finite(summary))
                with tempfile.TemporaryDirectory(prefix="zsc-gzsl-") as tmp:
                    models.write_classifier(
                        Path(tmp),
                        config=final_config,  # with the chosen gamma: EvaluateGZSL applies it
                        state_dict=result.state_dict,
                        class_names=names,
                        seen=seen,
                        text_dim=int(text.shape[1]),
                    )
                    ctx.check_cancelled()
                    version = registry.register_folder(run, Path(tmp), "classifier", model_name, lineage)
                return pb.TrainGZSLResult(
                    model=version_message(version),
                    class_names=names,
                    seen_indices=seen,
                    novel_indices=novel_idx,
                    n_base=len(base),
                    n_novel=n_novel,
                    feature_dim=base.dim,
                    final_loss=final_loss,
                    calibration=calibration_message(calibration, plan),
                )

        return svc.runtime.operations.start(TRAIN_GZSL_KIND, job, total=total_epochs, unit="epochs")

    # --- EvaluateGZSL ----------------------------------------------------------------------------------------------
    def EvaluateGZSL(self, request: pb.EvaluateGZSLRequest, context: grpc.ServicerContext):
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
        svc = self.service
        svc.runtime.require_ready()
        ref, clf = svc.load_classifier(request.classifier)
        path, test = read_features(request.test_features_uri, "test_features_uri", svc.runtime.data_roots)
        if len(test) == 0:
            raise InvalidArgument(f"test features file {path.name} has no samples")
        test = align_test_features(request.alignment_uri, test, path, ref, svc.runtime.data_roots)
        if test.dim != clf.feature_dim:
            raise InvalidArgument(
                f"the test features have D={test.dim} but classifier {ref.model_uri} scores D={clf.feature_dim}"
            )
        names = clf.class_names
        position = {n: i for i, n in enumerate(names)}
        y = relabel(test, position, lambda n: f"test class {n!r} is not one of the {len(names)} classifier classes")
        unseen = split_unseen(request, names, clf.seen)
        unseen_set = set(unseen)
        seen = [i for i in range(len(names)) if i not in unseen_set]
        if not seen:
            raise InvalidArgument("the split leaves no seen class; name only the unseen classes")
        gamma = clf.calibration_gamma
        if request.HasField("calibration_gamma"):
            if not math.isfinite(request.calibration_gamma):
                raise InvalidArgument(f"calibration_gamma must be finite, got {request.calibration_gamma}")
            gamma = request.calibration_gamma
        test_hash = content_hash(path)
        tags = {
            "zsc.kind": "gzsl-eval",
            "zsc.profile": svc.runtime.profile.name,
            "zsc.model_uri": ref.model_uri,
            "zsc.dataset.uri": str(path),
            "zsc.dataset.hash": f"sha256:{test_hash}",
            **({ALIGNMENT_ID_KEY: alignment_id(test.metadata)} if alignment_id(test.metadata) else {}),
        }

        def job(ctx: JobContext) -> pb.EvaluateGZSLResult:
            with tracking.run(experiment, "evaluate-gzsl", tags) as run:
                ctx.set_mlflow_run(run.id)
                ctx.progress(0, message=f"scoring {len(test)} test features")
                scores = clf.model.scores(test.features.to(svc.device), gamma).cpu()
                pred = scores.argmax(dim=1)
                gz = gzsl_metrics(y, pred, seen, unseen)
                bn = base_to_new_metrics(scores, y, seen, unseen)
                per_class = per_class_accuracy(y, pred, len(names))
                support = torch.bincount(y, minlength=len(names))
                metrics = gzsl_report(gz, bn)
                run.log_params(
                    {
                        "classifier": ref.model_uri,
                        "test_features_uri": str(path),
                        "n_samples": len(test),
                        "calibration_gamma": gamma,
                        "unseen_classes": ",".join(names[i] for i in unseen)[:6000],
                    }
                )
                run.log_metrics(metrics)
                log_per_class(run, names, per_class.tolist(), support.tolist())
                log_figures(run, names, per_class.tolist(), confusion_matrix(y, pred, len(names)))
                if ref.version:  # zsc registry review and promote gates read these version tags
                    results = registry.real_test_tags(
                        metrics, run_id=run.id, dataset=str(path), n_images=len(test), data_hash=f"sha256:{test_hash}"
                    )
                    registry.tag_version(ref.name, ref.version, results, run.client)
                ctx.progress(1)
                return pb.EvaluateGZSLResult(
                    gzsl=pb.GZSLMetrics(seen=gz.seen, unseen=gz.unseen, harmonic=gz.harmonic),
                    base_to_new=pb.BaseNewMetrics(
                        base=bn.base,
                        new=bn.new,
                        harmonic=bn.harmonic,
                        base_per_class=bn.base_per_class,
                        new_per_class=bn.new_per_class,
                    ),
                    class_names=names,
                    per_class_accuracy=per_class.tolist(),
                    support=support.tolist(),
                    seen_indices=seen,
                    unseen_indices=unseen,
                    n_samples=len(test),
                    classifier=ref_message(ref),
                    mlflow_run_id=run.id,
                )

        return svc.runtime.operations.start(EVALUATE_KIND, job, total=1, unit="evaluations")

    # --- FineTune --------------------------------------------------------------------------------------------------
    def FineTune(self, request: pb.FineTuneRequest, context: grpc.ServicerContext):
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
        svc = self.service
        svc.runtime.require_ready()
        method = enum_choice(
            request.method,
            METHOD_NAMES,
            pb.FINE_TUNE_METHOD_UNSPECIFIED,
            "fine-tuning method",
            "COOP, CLIP_ADAPTER or TIP_ADAPTER_F",
        )
        clip = svc.clip_or_fail("fine-tuning scores image features against CLIP's text features")
        seed = check_seed(request.seed)
        roots = svc.runtime.data_roots
        base_path, base = read_features(request.base_features_uri, "base_features_uri", roots)
        if len(base) == 0:
            raise InvalidArgument(f"base features file {base_path.name} has no samples")
        if base.dim != clip.embed_dim:
            raise InvalidArgument(
                f"the base features have D={base.dim} but the CLIP model {clip.ref} encodes D={clip.embed_dim}"
            )
        try:
            bank = FeatureBank.from_feature_set(base)
        except ValueError as err:
            raise InvalidArgument(f"base features file {base_path.name}: {first_line(err)}") from err
        novel_path: Path | None = None
        novel: FeatureSet | None = None
        if request.novel_features_uri:
            novel_path, novel = read_features(request.novel_features_uri, "novel_features_uri", roots)
            if novel.dim != base.dim:
                raise InvalidArgument(
                    f"the base features have D={base.dim} but the novel features have D={novel.dim}; both must be "
                    "CLIP image features of one space"
                )
            if len(novel) == 0:
                raise InvalidArgument(f"novel features file {novel_path.name} has no samples")
        if request.class_names:
            names = check_class_names(request.class_names, "class_names", MAX_CLASSES)
            source = "the class_names of the request"
        else:
            known = set(base.class_names)
            extra = [n for n in (novel.class_names if novel is not None else []) if n not in known]
            names = check_class_names([*base.class_names, *extra], "the files' class names", MAX_CLASSES)
            source = "the classes of the features files"
        position = {n: i for i, n in enumerate(names)}
        base_rows = relabel(base, position, lambda n: f"base class {n!r} has samples but is not among {source}")
        bank = FeatureBank(bank.features, base_rows.view(bank.images, bank.views)[:, 0])
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
        config = finetune_config(method, request.settings, seed)
        try:
            check_finetune_prompts(clip, names, config)
        except ValueError as err:
            raise InvalidArgument(first_line(err)) from err
        new_idx = sorted(set(range(len(names))) - set(base_idx))
        model_name = registry.check_model_name(request.registered_model_name or f"zsc-finetune-{method}")
        profile = svc.runtime.profile.name
        lineage = {
            "zsc.kind": f"finetune-{method}",
            "zsc.profile": profile,
            "zsc.seed": str(seed),
            "zsc.git_commit": tracking.git_commit(),
            "zsc.dataset.uri": str(base_path),
            "zsc.dataset.hash": f"sha256:{content_hash(base_path)}",
            MD5_TAG: dvc_md5(base_path),
            "zsc.clip": clip.ref,
            "zsc.synthetic": "true" if novel is not None else "false",
            **upstream_tags(base, "zsc.recovery"),
        }
        if novel is not None and novel_path is not None:
            lineage["zsc.novel.uri"] = str(novel_path)
            lineage["zsc.novel.hash"] = f"sha256:{content_hash(novel_path)}"
            lineage["zsc.novel.md5"] = dvc_md5(novel_path)
            for key in ("generator_model_uri", "generator_run_id"):
                if novel.metadata.get(key):
                    lineage[f"zsc.{key.replace('_', '.', 1)}"] = novel.metadata[key]
        params = {
            **config.to_dict(),
            "base_features_uri": str(base_path),
            "novel_features_uri": str(novel_path or ""),
            "n_images": bank.images,
            "views": bank.views,
            "n_synthetic": len(novel) if novel is not None else 0,
            "n_classes": len(names),
            "n_base": len(base_idx),
            "feature_dim": base.dim,
            "clip": clip.ref,
            "profile": profile,
            "registered_model_name": model_name,
        }

        def job(ctx: JobContext) -> pb.FineTuneResult:
            with tracking.run(experiment, f"finetune-{method}", lineage) as run:
                ctx.set_mlflow_run(run.id)
                run.log_params(params)

                curves = EpochMetrics(run)

                def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
                    curves.add(finite(metrics), epoch)
                    ctx.progress(epoch, total, **finite(metrics))

                try:
                    result = finetune.fine_tune(
                        clip.model,
                        clip.tokenizer,
                        bank,
                        names,
                        config,
                        synthetic,
                        on_epoch=on_epoch,
                        should_stop=ctx.should_stop,
                    )
                except Cancelled as err:
                    raise Cancelled(str(err)) from err
                finally:
                    curves.flush()
                final = {**result.history[-1], **result.extra}
                run.log_metrics(
                    finite({"best_epoch": result.best_epoch, "best_val_accuracy": result.val_accuracy, **result.extra})
                )
                with tempfile.TemporaryDirectory(prefix="zsc-finetune-") as tmp:
                    models.write_finetuned(
                        Path(tmp),
                        config=config,
                        model=result.classifier,
                        class_names=names,
                        seen=base_idx,
                        extra={"clip": clip.ref},
                    )
                    ctx.check_cancelled()  # a cancelled job registers nothing
                    version = registry.register_folder(run, Path(tmp), "classifier", model_name, lineage)
                return pb.FineTuneResult(
                    model=version_message(version),
                    method=METHOD_ENUMS[method],
                    class_names=names,
                    base_indices=base_idx,
                    new_indices=new_idx,
                    n_fit=result.n_fit,
                    n_val=result.n_val,
                    n_synthetic=result.n_synthetic,
                    views=bank.views,
                    epochs_run=len(result.history),
                    best_epoch=result.best_epoch,
                    val_accuracy=result.val_accuracy,
                    final_metrics=finite(final),
                    feature_dim=base.dim,
                )

        return svc.runtime.operations.start(FINETUNE_KIND, job, total=config.epochs, unit="epochs")


# --- request checks ------------------------------------------------------------------------------------------------


def enum_choice(value: int, names: dict[int, str], unspecified: int, what: str, expected: str) -> str:
    """The name of a request's enum value; INVALID_ARGUMENT when it is unset or unknown."""
    if value not in names:
        state = "is unset" if value == unspecified else f"{value} is unknown"
        raise InvalidArgument(f"{what} {state}; expected {expected}")
    return names[value]


def check_seed(seed: int) -> int:
    if seed < 0:
        raise InvalidArgument(f"seed must be >= 0, got {seed}")
    return int(seed)


def decode_matrix(msg: Any, name: str) -> torch.Tensor:
    """A finite float [rows >= 1, cols >= 1] tensor, widened to float32."""
    x = codec.decode(msg, "torch", dtypes=FLOAT_DTYPES, rank=2, name=name).float()
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidArgument(f"{name} has shape {list(x.shape)}; it needs at least one row and one column")
    return x


def read_features(uri: str, field: str, roots: list[Path]) -> tuple[Path, FeatureSet]:
    """Load and validate a features file inside the data roots (NotFound when it does not exist)."""
    if not uri:
        raise InvalidArgument(f"{field} is empty")
    path = resolve_uri(uri, roots)
    if not path.is_file():
        raise InvalidArgument(f"{field} {uri!r} is not a file")
    try:
        data = FeatureSet.load(path)
    except (ValueError, OSError) as err:
        raise InvalidArgument(f"{field} {path.name}: {first_line(err).replace(str(path) + ': ', '')}") from err
    except Exception as err:  # safetensors raises its own error type on a corrupt header
        raise InvalidArgument(f"cannot read {field} {path.name}: {type(err).__name__}") from err
    if data.dim == 0 or data.text_dim == 0:
        raise InvalidArgument(f"{field} {path.name} has D={data.dim} and D_t={data.text_dim}; both must be >= 1")
    return path, data


def relabel(data: FeatureSet, position: dict[str, int], missing: Any) -> torch.Tensor:
    """The file's labels as indices into ``position`` (by class name); ``missing(name)`` words the error."""
    present = data.labels.unique(sorted=True).tolist()
    remap = torch.full((data.num_classes,), -1, dtype=torch.int64)
    for i in present:
        name = data.class_names[i]
        if name not in position:
            raise InvalidArgument(missing(name))
        remap[i] = position[name]
    return remap[data.labels]


def split_unseen(request: pb.EvaluateGZSLRequest, names: list[str], trained_seen: list[int]) -> list[int]:
    """Unseen class indices by name or index (not both); neither: the classes the classifier had no base data of."""
    if request.unseen_classes and request.unseen_indices:
        raise InvalidArgument("give unseen_classes or unseen_indices, not both")
    position = {n: i for i, n in enumerate(names)}
    if request.unseen_classes:
        unseen = []
        for name in request.unseen_classes:
            if name not in position:
                raise InvalidArgument(f"unseen class {name!r} is not one of the {len(names)} classifier classes")
            unseen.append(position[name])
    elif request.unseen_indices:
        unseen = list(request.unseen_indices)
        bad = [i for i in unseen if not 0 <= i < len(names)]
        if bad:
            raise InvalidArgument(f"unseen index {bad[0]} is outside [0, {len(names)})")
    else:
        known = set(trained_seen)
        unseen = [i for i in range(len(names)) if i not in known]
    listed: set[int] = set()
    for i in unseen:
        if i in listed:
            raise InvalidArgument(duplicate_class(names[i], "the unseen classes"))
        listed.add(i)
    if not unseen:
        raise InvalidArgument("the split has no unseen class; name the unseen classes")
    return sorted(unseen)


def _settings(msg: pb_message.Message, rename: dict[str, str] | None = None) -> dict[str, Any]:
    """The fields set in ``msg`` (proto3 optional), renamed to core config fields, checked against the limits."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        key = (rename or {}).get(field.name, field.name)
        where = f"{msg.DESCRIPTOR.name}.{field.name}"
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidArgument(f"{where} must be finite, got {value}")
            if key in POSITIVE and value <= 0:
                raise InvalidArgument(f"{where} must be > 0, got {value}")
            if key in NON_NEGATIVE and value < 0:
                raise InvalidArgument(f"{where} must be >= 0, got {value}")
            if key in UNIT_INTERVAL and not 0 <= value < 1:
                raise InvalidArgument(f"{where} must lie in [0, 1), got {value}")
            limit = MAX_LR if key.endswith("lr") else MAX_WEIGHT_DECAY if key == "weight_decay" else None
            if limit is not None and value > limit:  # what torch's optimizers take without float32 overflow
                raise InvalidArgument(f"{where} must be at most {limit:g}, got {value}")
        elif isinstance(value, int) and not isinstance(value, bool) and value > INT_LIMITS.get(key, 1 << 30):
            raise InvalidArgument(f"{where}={value} is over the limit of {INT_LIMITS.get(key, 1 << 30)}")
        out[key] = value
    return out


def generator_config(kind: models.GeneratorKind, request: pb.TrainGeneratorRequest, seed: int) -> GeneratorConfig:
    """The core config of ``kind``: unset fields keep its defaults (methods.md's for TF-VAEGAN)."""
    kwargs = _settings(request.settings)
    if kwargs.get("noise_dim") == 0:
        kwargs["noise_dim"] = None  # 0 = the text-feature width
    kwargs.update(_settings(request.selection, SELECTION_FIELDS))
    method = request.WhichOneof("method_settings")
    if method is not None:
        kwargs.update(_settings(getattr(request, method)))
    try:
        config = kind.config_cls(seed=seed, **kwargs)
        config.check()
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"bad {kind.name} settings: {first_line(err)}") from err
    return config


def gzsl_config(settings: pb.GZSLSettings, seed: int) -> GZSLConfig:
    """GZSLConfig from the request; unset fields keep DFZSL's defaults."""
    try:
        config = GZSLConfig(seed=seed, **_settings(settings))
        config.check()
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"bad GZSL settings: {first_line(err)}") from err
    return config


def ship_config(request: pb.TrainGeneratorRequest, seed: int) -> ship.ShipConfig:
    """ShipConfig from GeneratorSettings (the fields that apply) and ShipVaeSettings; methods.md's defaults else."""
    settings = _settings(request.settings)
    refused = [f for f in SHIP_REFUSED if f in settings]
    if refused:
        raise InvalidArgument(
            f"GeneratorSettings.{refused[0]} does not apply to SHIP_VAE; set its widths in ShipVaeSettings"
        )
    if request.selection.ListFields():
        raise InvalidArgument(
            "SHIP_VAE trains for a fixed number of epochs and takes no selection settings (the last epoch is kept, "
            "as in the released protocol)"
        )
    latent = settings.pop("noise_dim", 0)
    if latent:
        settings["latent_dim"] = latent
    settings.update(_settings(request.ship_vae))
    try:
        config = ship.ShipConfig(seed=seed, **settings)
        config.check()
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"bad ship_vae settings: {first_line(err)}") from err
    return config


def check_ship_data(
    data: FeatureSet, path: Path, clip: ClipBundle, trained: list[str], config: ship.ShipConfig
) -> None:
    """INVALID_ARGUMENT now for a features file SHIP's VAE cannot train on through ``clip``."""
    if data.dim != clip.embed_dim:
        raise InvalidArgument(
            f"the features have D={data.dim} but the CLIP model {clip.ref} encodes D={clip.embed_dim}; SHIP_VAE "
            "reconstructs image features with CLIP's text encoder"
        )
    try:
        FeatureBank.from_feature_set(data)
        check_prompts_fit(clip.tokenizer, [f"{' '.join(['X'] * config.n_ctx)} {n}." for n in trained], trained)
    except ValueError as err:
        raise InvalidArgument(f"features_uri {path.name}: {first_line(err)}") from err


def finetune_config(method: str, settings: pb.FineTuneSettings, seed: int) -> finetune.FineTuneConfig:
    """The method's defaults under the fields set in the request."""
    try:
        config = finetune.FineTuneConfig.for_method(method, seed=seed, **_settings(settings))
        config.check()
    except (TypeError, ValueError) as err:
        raise InvalidArgument(f"bad {method} settings: {first_line(err)}") from err
    return config


def check_finetune_prompts(clip: ClipBundle, names: Sequence[str], config: finetune.FineTuneConfig) -> None:
    """ValueError unless every class's prompt fits CLIP's context (CoOp's learned prefix, or the template)."""
    if config.method == "coop":
        prompts = [f"{config.ctx_init} {n}." for n in names]
    else:
        prompts = [config.template.format(n) for n in names]
    check_prompts_fit(clip.tokenizer, prompts, list(names))


def upstream_tags(data: FeatureSet, prefix: str) -> dict[str, str]:
    """Lineage of a features file from its metadata: the MLflow run that wrote it (e.g. a recovery run) and the FLPT
    alignment its features carry (a model trained on them scores only features of that alignment)."""
    tags = {}
    if data.metadata.get("mlflow_run_id"):
        tags[f"{prefix}_run_id"] = data.metadata["mlflow_run_id"]
    if data.metadata.get("zsc.kind"):
        tags[f"{prefix}_kind"] = data.metadata["zsc.kind"]
    if alignment_id(data.metadata):
        tags[ALIGNMENT_ID_KEY] = alignment_id(data.metadata)
    return tags


def trained_alignment(ref: registry.ResolvedModel) -> str:
    """The alignment id of the features a model was trained on, from its training run's lineage ("" if none)."""
    if not ref.run_id:
        return ""
    return tracking.client().get_run(ref.run_id).data.tags.get(ALIGNMENT_ID_KEY, "")


def space(metadata: dict[str, str]) -> str:
    """How an error names a feature set's space."""
    return f"aligned by FLPT alignment {alignment_id(metadata)[:19]}" if alignment_id(metadata) else "unaligned"


def align_test_features(
    uri: str, test: FeatureSet, path: Path, ref: registry.ResolvedModel, roots: list[Path]
) -> FeatureSet:
    """The test features moved by the alignment at ``uri`` (when given), checked against the classifier's lineage:
    FailedPrecondition when they lie in another space than the features it was trained on."""
    if uri:
        align_path, alignment = read_alignment(uri, roots)
        if alignment_id(test.metadata):
            raise FailedPrecondition(
                f"test features {path.name} are already {space(test.metadata)}; leave alignment_uri empty"
            )
        if test.dim != alignment.dim:
            raise InvalidArgument(
                f"the test features have D={test.dim} but alignment {align_path.name} has D={alignment.dim}"
            )
        test = alignment.apply(test, text=False)  # the classifier holds its own class weights
    trained = {ALIGNMENT_ID_KEY: trained_alignment(ref)}
    if alignment_id(test.metadata) != alignment_id(trained):
        hint = "; pass the alignment Align wrote as alignment_uri" if alignment_id(trained) and not uri else ""
        raise FailedPrecondition(
            f"classifier {ref.model_uri} was trained on features that are {space(trained)} but test features "
            f"{path.name} are {space(test.metadata)}{hint}"
        )
    return test


# --- outputs -------------------------------------------------------------------------------------------------------
class EpochMetrics:
    """Per-epoch metrics sent to MLflow in batches, at most one write per ``every`` seconds (and on ``flush``).

    One write per epoch costs ~0.1 s against the embedded SQLite store: more than a whole epoch of SHIP's VAE or of
    fine-tuning on cached features. Every epoch keeps its own step; the MLflow view lags by at most ``every``.
    """

    def __init__(self, run: tracking.Run, every: float = 2.0) -> None:
        self.run, self.every = run, every
        self.pending: list[Any] = []
        self.last = time.monotonic()

    def add(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if time.monotonic() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 500):  # MLflow's batch limit is 1000 metrics
            self.run.client.log_batch(self.run.id, metrics=self.pending[i : i + 500])
        self.pending.clear()
        self.last = time.monotonic()


def calibrate(
    plan: CalibrationPlan, config: GZSLConfig, run: tracking.Run, ctx: JobContext, device: torch.device
) -> Calibration:
    """Run CALIBRATION_HOLDOUT (:func:`holdout_calibration`): a fresh generator of the plan's kind and settings on
    the pseudo-seen base features, its losses logged as ``calibration_*`` metrics, the choice as params/metrics."""
    curves = EpochMetrics(run)

    def on_epoch(done: int, total: int, metrics: dict[str, float]) -> None:
        curves.add({f"calibration_{k}": v for k, v in finite(metrics).items()}, done)
        ctx.progress(done, message=f"calibration: generator epoch {done}")

    def train_generator(data: FeatureSet) -> torch.nn.Module:
        result = plan.kind.train(data, plan.config, on_epoch=on_epoch, should_stop=ctx.should_stop, device=device)
        return result.generator

    try:
        cal = holdout_calibration(
            plan.data,
            train_generator,
            config,
            n_per_class=plan.n_per_class,
            holdout_fraction=plan.holdout_fraction,
            val_fraction=plan.val_fraction,
            seed=config.seed,
            normalize=plan.config.normalize_features,
            classifier_text=plan.classifier_text,
            should_stop=ctx.should_stop,
            device=device,
        )
    finally:
        curves.flush()
    pseudo_unseen = [plan.data.class_names[i] for i in cal.pseudo_novel]
    run.log_params({"calibration_gamma": cal.gamma, "calibration_pseudo_unseen": ",".join(pseudo_unseen)[:6000]})
    run.log_metrics(finite({"calibration_H": cal.harmonic, "calibration_H_uncalibrated": cal.harmonic_uncalibrated}))
    return cal


def calibration_message(cal: Calibration | None, plan: CalibrationPlan | None) -> pb.CalibrationResult | None:
    if cal is None or plan is None:
        return None
    return pb.CalibrationResult(
        method=pb.CALIBRATION_HOLDOUT,
        gamma=cal.gamma,
        harmonic=cal.harmonic,
        harmonic_uncalibrated=cal.harmonic_uncalibrated,
        pseudo_unseen=[plan.data.class_names[i] for i in cal.pseudo_novel],
        generator=ref_message(plan.ref),
    )


def finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def version_message(version: registry.RegisteredVersion) -> pb.ModelVersion:
    return pb.ModelVersion(
        name=version.name,
        version=version.version,
        run_id=version.run_id,
        model_uri=version.model_uri,
        artifact_uri=version.artifact_uri,
    )


def ref_message(ref: registry.ResolvedModel) -> pb.ModelVersion:
    return pb.ModelVersion(
        name=ref.name,
        version=ref.version,
        run_id=ref.run_id,
        model_uri=ref.model_uri,
        artifact_uri=ref.artifact_uri,
    )


def save_features(features: FeatureSet, path: Path, ctx: JobContext) -> None:
    """Write atomically; a job cancelled around the write leaves no file behind."""
    ctx.check_cancelled()
    path.parent.mkdir(parents=True, exist_ok=True)
    features.save(path)
    if ctx.should_stop():
        path.unlink(missing_ok=True)
        ctx.check_cancelled()


def metric_key(prefix: str, name: str, index: int) -> str:
    safe = re.sub(r"[^\w.\- ]+", "_", name).strip(" .") or f"class_{index}"
    return f"{prefix}/{safe}"


def log_per_class(run: tracking.Run, names: list[str], accuracy: list[float], support: list[int]) -> None:
    """Per-class accuracy as a table artifact, and as ``acc/<class>`` metrics up to MAX_PER_CLASS_METRICS classes."""
    run.log_table({"class": names, "accuracy": accuracy, "support": support}, "per_class_accuracy.json")
    if len(names) <= MAX_PER_CLASS_METRICS:
        metrics: dict[str, float] = {}
        for i, (name, acc) in enumerate(zip(names, accuracy, strict=True)):
            key = metric_key("acc", name, i)
            metrics[key if key not in metrics else f"{key}_{i}"] = acc
        run.log_metrics(finite(metrics))


def log_figures(run: tracking.Run, names: list[str], accuracy: list[float], confusion: torch.Tensor) -> None:
    """The plots zsc registry review shows beside the metrics."""
    import matplotlib.pyplot as plt

    from zsc import plots

    for fig, artifact in (
        (plots.per_class_figure(accuracy, names, "GZSL per-class accuracy"), "per_class_accuracy.png"),
        (plots.confusion_figure(confusion.numpy(), names, "GZSL confusion matrix"), "confusion_matrix.png"),
    ):
        try:
            run.log_figure(fig, artifact)
        finally:
            plt.close(fig)


def create_service(runtime: ServiceRuntime) -> GenerativeService:
    return GenerativeService(runtime)
