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

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import torch
from torch import Tensor

from zsc import registry, tracking
from zsc.errors import FailedPrecondition, InvalidArgument
from zsc.features import save_features
from zsc.generative.v1 import generative_pb2 as pb
from zsc.generative.v1 import generative_pb2_grpc as pb_grpc
from zsc.model_cache import ModelCache
from zsc.models.clip import ClipBundle, create_clip
from zsc.runtime.jobs import TrackedRun, start_tracked
from zsc.runtime.operations import JobContext
from zsc.runtime.server import ServiceRuntime
from zsc_generative import models
from zsc_generative import requests as rq
from zsc_generative.core.common import EpochHook
from zsc_generative.core.data import synthesize
from zsc_generative.core.evaluate import GZSLEvaluation, evaluate_gzsl
from zsc_generative.core.finetune import fine_tune
from zsc_generative.core.gzsl import GZSLTraining, train_gzsl

SERVICE = rq.SERVICE
MAX_PER_CLASS_METRICS = 1000  # per-class accuracies logged as MLflow metrics; more go to the table artifact only


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


class GenerativeServicer(pb_grpc.GenerativeServicer):
    def __init__(self, service: GenerativeService) -> None:
        self.service = service

    def TrainGenerator(self, request: pb.TrainGeneratorRequest, context: grpc.ServicerContext) -> Any:
        plan = rq.plan_train_generator(request, self.service)

        def body(run: TrackedRun) -> pb.TrainGeneratorResult:
            result = plan.train(on_epoch=phase_curves(run), should_stop=run.should_stop)
            final = result.final_metrics()
            run.log_metrics(rq.finite({"best_epoch": result.best_epoch, **{f"best_{k}": v for k, v in final.items()}}))
            extra = models.clip_identity(plan.clip) if plan.clip is not None else None

            def write(folder: Path) -> None:
                models.write_generator(
                    folder,
                    kind=plan.kind,
                    config=plan.config,
                    state_dict=result.state_dict,
                    feature_dim=result.feature_dim,
                    text_dim=result.text_dim,
                    class_names=plan.data.class_names,
                    text_features=plan.data.text_features,
                    trained_classes=list(plan.trained),
                    extra=extra,
                )

            version = run.register_folder(write, "generator", plan.model_name, plan.job.tags)
            return rq.train_generator_response(plan, result, version)

        return start_tracked(self.service.runtime.operations, plan.job, body)

    def GenerateFeatures(self, request: pb.GenerateFeaturesRequest, context: grpc.ServicerContext) -> Any:
        plan = rq.plan_generate_features(request, self.service)
        gen = plan.generation

        def job(ctx: JobContext) -> pb.GenerateFeaturesResult:
            ctx.progress(0, message=f"synthesizing {gen.per_class} features for each of {len(gen.class_names)}")
            x, y = self._synthesize(gen, ctx.should_stop)
            save_features(rq.generated_features(plan, x, y), plan.out, ctx)
            ctx.progress(len(gen.class_names))
            return rq.generate_features_response(plan, len(y))

        return self.service.runtime.operations.start(rq.GENERATE_KIND, job, total=len(gen.class_names), unit="classes")

    def StreamFeatures(self, request: pb.GenerateFeaturesRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        if request.output_uri:
            raise InvalidArgument("StreamFeatures streams the features back and writes no file; leave output_uri empty")
        plan = rq.plan_generation(request, self.service)
        x, _ = self._synthesize(plan, lambda: not context.is_active())
        yield from rq.feature_chunks(plan, x, context.is_active)

    def _synthesize(self, plan: rq.GenerationPlan, should_stop: Callable[[], bool]) -> tuple[Tensor, Tensor]:
        module, device = plan.generator.module, self.service.device
        return synthesize(
            module,
            plan.class_names,
            plan.text,
            plan.per_class,
            plan.seed,
            from_names=plan.from_names,
            device=device,
            should_stop=should_stop,
        )

    def TrainGZSL(self, request: pb.TrainGZSLRequest, context: grpc.ServicerContext) -> Any:
        plan = rq.plan_train_gzsl(request, self.service)
        data, total = plan.data, plan.job.total

        def body(run: TrackedRun) -> pb.TrainGZSLResult:
            training = train_gzsl(
                data.features,
                data.labels,
                data.text,
                data.seen,
                data.novel,
                plan.config,
                plan.calibration.holdout if plan.calibration is not None else None,
                on_epoch=curves(run, offset=plan.offset, total=total),
                on_calibration_epoch=curves(run, prefix="calibration_", message="calibration: generator epoch"),
                should_stop=run.should_stop,
                device=self.service.device,
            )
            log_train_gzsl(run, plan, training)

            def write(folder: Path) -> None:
                models.write_classifier(
                    folder,
                    config=training.config,  # with the chosen gamma: EvaluateGZSL applies it
                    state_dict=training.fit.state_dict,
                    class_names=data.names,
                    seen=data.seen,
                    text_dim=int(data.text.shape[1]),
                )

            version = run.register_folder(write, "classifier", plan.model_name, plan.job.tags)
            return rq.train_gzsl_response(plan, training, version)

        return start_tracked(self.service.runtime.operations, plan.job, body)

    def EvaluateGZSL(self, request: pb.EvaluateGZSLRequest, context: grpc.ServicerContext) -> Any:
        plan = rq.plan_evaluate(request, self.service)

        def body(run: TrackedRun) -> pb.EvaluateGZSLResult:
            run.progress(0, message=f"scoring {len(plan.test)} test features")
            clf = plan.classifier
            result = evaluate_gzsl(
                clf.model,
                plan.test.features,
                plan.labels,
                plan.seen,
                plan.unseen,
                len(clf.class_names),
                plan.gamma,
                self.service.device,
            )
            log_evaluation(run, plan, result)
            run.progress(1)
            return rq.evaluate_response(plan, result, run.run_id)

        return start_tracked(self.service.runtime.operations, plan.job, body)

    def FineTune(self, request: pb.FineTuneRequest, context: grpc.ServicerContext) -> Any:
        plan = rq.plan_finetune(request, self.service)
        data, clip = plan.data, plan.clip

        def body(run: TrackedRun) -> pb.FineTuneResult:
            result = fine_tune(
                clip.model,
                clip.tokenizer,
                data.bank,
                list(data.names),
                plan.config,
                data.synthetic,
                on_epoch=curves(run),
                should_stop=run.should_stop,
            )
            summary = {"best_epoch": result.best_epoch, "best_val_accuracy": result.val_accuracy, **result.extra}
            run.log_metrics(rq.finite(summary))

            def write(folder: Path) -> None:
                models.write_finetuned(
                    folder,
                    config=plan.config,
                    model=result.classifier,
                    class_names=list(data.names),
                    seen=data.base,
                    extra={"clip": clip.ref},
                )

            version = run.register_folder(write, "classifier", plan.model_name, plan.job.tags)
            return rq.finetune_response(plan, result, version)

        return start_tracked(self.service.runtime.operations, plan.job, body)


# --- job helpers: MLflow logging and registration stay out of the cores --------------------------------------------
def curves(
    run: TrackedRun, prefix: str = "", offset: int = 0, total: int | None = None, message: str = ""
) -> EpochHook:
    """An ``on_epoch`` hook: each epoch's finite metrics (``prefix``ed) at its own step, and the Operation's progress
    (``offset`` + epoch of ``total``; with ``message`` the epoch is reported in words, without metrics)."""

    def on_epoch(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        values = rq.finite(metrics)
        for key, value in values.items():
            run.log_metric(f"{prefix}{key}", value, epoch)
        if message:
            run.progress(epoch, message=f"{message} {epoch}")
        else:
            run.progress(offset + epoch, total if total is not None else epochs, None, **values)

    return on_epoch


def phase_curves(run: TrackedRun) -> EpochHook:
    """TrainGenerator's hook: selection epochs and the returned run's epochs each count from 1 in MLflow."""
    steps = {"select": 0, "train": 0}

    def on_epoch(done: int, total: int, metrics: dict[str, float]) -> None:
        phase = "select" if any(k.startswith("select_") for k in metrics) else "train"
        steps[phase] += 1
        values = rq.finite(metrics)
        for key, value in values.items():
            run.log_metric(key, value, steps[phase])
        run.progress(done, total, None, **values)

    return on_epoch


def log_train_gzsl(run: TrackedRun, plan: rq.TrainGZSLPlan, training: GZSLTraining) -> None:
    """The calibration's choice, the resolved batch and the fit on the training features."""
    if training.calibration is not None:
        cal = training.calibration
        pseudo = ",".join(rq.pseudo_unseen(plan, training))[:6000]
        run.run.log_params({"calibration_gamma": cal.gamma, "calibration_pseudo_unseen": pseudo})
        run.log_metrics(
            rq.finite({"calibration_H": cal.harmonic, "calibration_H_uncalibrated": cal.harmonic_uncalibrated})
        )
    run.run.log_params({"resolved_batch_size": training.fit.batch_size})  # batch_size 0 resolves from the data
    summary = {"final_loss": training.final_loss}
    if training.train_fit is not None:
        summary.update({"train_S": training.train_fit.seen, "train_U_synthetic": training.train_fit.unseen})
    run.log_metrics(rq.finite(summary))


def log_evaluation(run: TrackedRun, plan: rq.EvaluatePlan, result: GZSLEvaluation) -> None:
    """S/U/H and B/N/HM, the per-class table and plots, and the version tags zsc registry review reads."""
    names = plan.classifier.class_names
    metrics = result.report
    run.log_metrics(metrics)
    run.run.log_table(
        {"class": names, "accuracy": result.per_class, "support": result.support}, "per_class_accuracy.json"
    )
    if len(names) <= MAX_PER_CLASS_METRICS:
        keys = tracking.metric_keys("acc", names)
        run.log_metrics(rq.finite(dict(zip(keys, result.per_class, strict=True))))
    log_figures(run.run, names, result.per_class, result.confusion)
    if plan.ref.version:  # zsc registry review and promote gates read these version tags
        results = registry.real_test_tags(
            metrics,
            run_id=run.run_id,
            dataset=str(plan.path),
            n_images=len(plan.test),
            data_hash=f"sha256:{plan.test_hash}",
        )
        registry.tag_version(plan.ref.name, plan.ref.version, results, run.run.client)


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
