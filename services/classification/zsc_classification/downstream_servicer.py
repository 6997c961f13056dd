"""Downstream service (zsc.classification.v1.Downstream): train any timm classifier on a synthetic ImageFolder,
register it in MLflow, evaluate it once on real data, and predict with it.

A thin gRPC layer over ``core/downstream.py``: plan the request (``requests.py``), run the core as a tracked job,
log what it returns and register the model.
Registered models are loaded once into a bounded LRU cache keyed by model version, so an alias that moves to a new
version is picked up at the next call.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc

from zsc import registry
from zsc.classification.v1 import downstream_pb2 as pb
from zsc.classification.v1 import downstream_pb2_grpc as pb_grpc
from zsc.errors import FailedPrecondition
from zsc.model_cache import ModelCache
from zsc.runtime.jobs import TrackedRun, start_tracked, version_tags
from zsc.runtime.server import ServiceRuntime
from zsc_classification import mlflow_model, requests
from zsc_classification.core import downstream as core
from zsc_classification.core.evaluate import evaluate_classifier
from zsc_classification.run_logs import log_evaluation

log = logging.getLogger("zsc.downstream")

DEFAULT_CACHE_SIZE = 4
_REQUIREMENTS = ("torch", "torchvision", "timm", "safetensors", "numpy", "pandas", "pillow", "mlflow")


def pip_requirements() -> list[str]:
    """Exact pins of what the models-from-code file imports (local version suffixes like +cu130 dropped)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in _REQUIREMENTS]


@dataclass
class LoadedModel:
    model: registry.ResolvedModel
    classifier: Any  # mlflow_model.DownstreamClassifier

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names


def load_classifier(model: registry.ResolvedModel, device: str) -> Any:
    """The downstream classifier of ``model`` on ``device`` (mlflow_model.DownstreamClassifier)."""
    start = time.perf_counter()
    # The service's own model code reads the stored config (JSON) and weights (safetensors): no code stored with
    # the model runs and nothing is unpickled, whatever model URI a request names. load_context reads the files
    # into memory, so the download can go right away.
    classifier = mlflow_model.DownstreamClassifier()
    with tempfile.TemporaryDirectory(prefix="zsc-model-") as tmp:
        files = registry.model_artifacts(registry.download(model, Path(tmp)))
        try:
            classifier.load_context(SimpleNamespace(artifacts={k: str(v) for k, v in files.items()}))
        except Exception as err:  # wrong files, an unknown architecture, a mismatched state dict
            raise FailedPrecondition(f"{model.uri} is not a zsc downstream classifier ({type(err).__name__})") from err
    classifier.to(device)
    log.info("loaded %s (%s) in %.1f s", model.uri, model.key, time.perf_counter() - start)
    return classifier


class DownstreamServicer(pb_grpc.DownstreamServicer):
    def __init__(self, runtime: ServiceRuntime, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.runtime = runtime
        self.device = str(runtime.profile.torch_device())
        # each version is downloaded and built once, even under concurrent calls
        self.cache: ModelCache[str, LoadedModel] = ModelCache(cache_size, "downstream")

    def load_model(self, model: registry.ResolvedModel) -> LoadedModel:
        return self.cache.get(model.key, lambda: LoadedModel(model, load_classifier(model, self.device)))

    # --- TrainClassifier ---------------------------------------------------------------------------------------
    def TrainClassifier(self, request: pb.TrainClassifierRequest, context: grpc.ServicerContext):
        plan = requests.plan_train(request, self.runtime)
        return start_tracked(self.runtime.operations, plan.job, lambda run: _train(plan, run))

    # --- Evaluate ----------------------------------------------------------------------------------------------
    def Evaluate(self, request: pb.EvaluateModelRequest, context: grpc.ServicerContext):
        plan = requests.plan_evaluate(request, self.runtime, self.load_model)
        return start_tracked(self.runtime.operations, plan.job, lambda run: _evaluate(plan, run))

    # --- Predict -----------------------------------------------------------------------------------------------
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        plan = requests.plan_predict(request, self.runtime.decode_image)
        loaded = self.load_model(plan.model)
        return requests.predict_response(plan, loaded.classifier.predict_proba(list(plan.images)), loaded.class_names)


def _train(plan: requests.TrainPlan, run: TrackedRun) -> pb.TrainClassifierResult:
    epochs = plan.config.epochs
    run.progress(0, epochs, message="reading the dataset")
    prepared = core.prepare_training(
        plan.folder,
        plan.config,
        on_progress=lambda done, total: run.progress(0, message=f"loading images {done}/{total}"),
        should_stop=run.should_stop,
    )
    lineage = _log_prepared(run, plan, prepared)

    def on_epoch(stats: core.EpochStats) -> None:
        run.log_metrics(stats.metrics(), step=stats.epoch)
        run.progress(stats.epoch, epochs, loss=stats.train_loss, val_accuracy=stats.val_accuracy)

    run.progress(0, epochs, message="training")
    outcome = core.train_prepared(prepared, plan.config, plan.device, on_epoch=on_epoch, should_stop=run.should_stop)
    _log_outcome(run, outcome)
    run.progress(epochs, epochs, message="registering the model")
    version = _register(run, plan, prepared, outcome, lineage)
    return requests.train_response(plan, prepared, outcome, version, run.run_id)


def _log_prepared(run: TrackedRun, plan: requests.TrainPlan, prepared: core.PreparedTraining) -> dict[str, str]:
    """The params the data decides and the dataset's lineage tags; returns the run's lineage tags."""
    data = prepared.data
    run.run.log_params(
        {
            "image_size": data.image_size,
            "model_kwargs": prepared.model_kwargs,
            "n_train": data.n_train,
            "n_val": data.n_val,
        }
    )
    synthesis = {f"zsc.synthesis.{k}": v for k, v in core.synthesis_summary(plan.folder.root).items()}
    tags = {**prepared.hashes.tags(), **synthesis}  # the hashes dvc.lock and the review read
    run.run.set_tags(tags)
    return {**plan.job.tags, **tags}


def _log_outcome(run: TrackedRun, outcome: core.TrainOutcome) -> None:
    run.log_metrics(
        {
            "best_epoch": outcome.best_epoch,
            "best_val_accuracy": outcome.best_val_accuracy,
            "best_val_loss": outcome.best_val_loss,
            "train_images_per_second": outcome.train_images_per_second,
            "train_seconds": outcome.seconds,
        }
    )


def _register(
    run: TrackedRun,
    plan: requests.TrainPlan,
    prepared: core.PreparedTraining,
    outcome: core.TrainOutcome,
    lineage: dict[str, str],
) -> str:
    """Log the best weights as a models-from-code pyfunc model and register it; returns the new version."""
    tags = version_tags({**lineage, "zsc.kind": "downstream-classifier"})
    with tempfile.TemporaryDirectory(prefix="zsc-train-") as tmp:
        version = registry.log_pyfunc_model(
            run.run,
            code_path=mlflow_model.model_code_path(),
            code_paths=mlflow_model.code_paths(),
            artifacts=core.save_model_files(outcome.state, prepared.model_config, Path(tmp)),
            registered_model_name=plan.registered_model_name,
            tags={**tags, "zsc.arch": plan.config.arch},
            pip_requirements=pip_requirements(),
            model_type="zsc-downstream-classifier",
            signature=mlflow_model.signature(),
            input_example=mlflow_model.input_example(),
        )
    return str(version.version)


def _evaluate(plan: requests.EvaluatePlan, run: TrackedRun) -> pb.ModelEvaluation:
    result = evaluate_classifier(
        plan.folder,
        plan.loaded.classifier.predict_proba,
        plan.batch_size,
        on_progress=run.progress,
        should_stop=run.should_stop,
    )
    log_evaluation(run.run, result, tuple(plan.loaded.class_names))
    model, folder = plan.model, plan.folder
    if model.version:
        results = registry.real_test_tags(
            {"top1": result.top1, "macro_accuracy": result.macro},
            run_id=run.run_id,
            dataset=str(folder.root),
            n_images=len(result.labels),
        )
        registry.tag_version(model.name, model.version, results, run.run.client)
    return requests.model_evaluation(plan, result, run.run_id)
