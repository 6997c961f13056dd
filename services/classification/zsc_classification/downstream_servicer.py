"""Downstream service (zsc.classification.v1.Downstream): train any timm classifier on a synthetic ImageFolder,
register it in MLflow, evaluate it once on real data, and predict with it.

A thin gRPC layer over ``core/downstream.py``: validate, convert, run the core in an Operation, track in MLflow.
Registered models are loaded once into a bounded LRU cache keyed by model version, so an alias that moves to a new
version is picked up at the next call.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc

from zsc import codec, registry, tracking
from zsc.classification.v1 import downstream_pb2 as pb
from zsc.classification.v1 import downstream_pb2_grpc as pb_grpc
from zsc.data import ImageFolder, resolve_uri
from zsc.errors import FailedPrecondition, InvalidArgument
from zsc.lineage import MD5_TAG, dvc_md5
from zsc.model_cache import ModelCache
from zsc.runtime.operations import JobContext
from zsc.runtime.server import ServiceRuntime
from zsc_classification import mlflow_model
from zsc_classification.core import downstream as core
from zsc_classification.core.evaluate import evaluate_folder

log = logging.getLogger("zsc.downstream")

SERVICE = "zsc.classification.v1.Downstream"
EXPERIMENT = "zsc-downstream"
MAX_INLINE_IMAGES = 256
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


def _open_folder(
    root: Path,
    limit: int = 0,
    class_names: Sequence[str] = (),
    folder_to_class: Mapping[str, str] | None = None,
    field: str = "class_names",
) -> ImageFolder:
    try:
        return ImageFolder.open(root, limit, class_names, folder_to_class, field=field)
    except OSError as err:  # e.g. a folder the service may not list
        raise InvalidArgument(f"dataset {root} cannot be read: {type(err).__name__}") from err


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
        profile = self.runtime.profile
        root = resolve_uri(request.data_uri, self.runtime.data_roots)
        # a synthetic dataset's folders must be exactly the classes it was generated for (a stray or missing folder
        # would silently change what the model learns); labels then follow the request's class order
        folder = _open_folder(root, class_names=core.synthesis_classes(root), field="the synthesis request's classes")
        core.check_trainable(folder)
        arch = core.resolve_arch(request.arch or profile.downstream_arch)
        if min(request.epochs, request.batch_size, request.image_size) < 0 or request.lr < 0:
            raise InvalidArgument("epochs, batch_size, lr and image_size must be >= 0 (0 means the default)")
        defaults = core.TrainConfig()
        config = core.TrainConfig(
            arch=arch,
            epochs=request.epochs or defaults.epochs,
            batch_size=request.batch_size or defaults.batch_size,
            lr=request.lr or defaults.lr,
            weight_decay=request.weight_decay if request.HasField("weight_decay") else defaults.weight_decay,
            val_fraction=request.val_fraction if request.HasField("val_fraction") else defaults.val_fraction,
            seed=request.seed if request.HasField("seed") else profile.seed,
            image_size=request.image_size,
            pretrained=request.pretrained,
        ).validate()
        if config.pretrained:
            core.pretrained_weights_file(arch)  # fail now, with one line, if the weights are not cached
        name = registry.check_model_name(request.registered_model_name or f"zsc-downstream-{arch}")
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)

        def job(ctx: JobContext) -> pb.TrainClassifierResult:
            return self._train(ctx, folder, config, name, experiment)

        return self.runtime.operations.start(f"{SERVICE}/TrainClassifier", job, total=config.epochs, unit="epochs")

    def _train(
        self, ctx: JobContext, folder: ImageFolder, config: core.TrainConfig, name: str, experiment: str
    ) -> pb.TrainClassifierResult:
        profile = self.runtime.profile
        device = profile.torch_device()
        with tracking.run(experiment, f"{config.arch}-train", tags={"zsc.kind": "downstream-train"}) as run:
            ctx.set_mlflow_run(run.id)
            ctx.progress(0, config.epochs, message="hashing the dataset")
            lineage = {
                "zsc.dataset.uri": str(folder.root),
                "zsc.dataset.hash": core.dataset_fingerprint(folder.root),
                MD5_TAG: dvc_md5(folder.root),  # the hash dvc.lock lists for it
                "zsc.git_commit": tracking.git_commit(),
                "zsc.profile": profile.name,
                "zsc.seed": str(config.seed),
                **{f"zsc.synthesis.{k}": v for k, v in core.synthesis_summary(folder.root).items()},
            }
            run.set_tags(lineage)
            data = core.prepare_data(
                folder,
                config,
                on_progress=lambda done, total: ctx.progress(0, message=f"loading images {done}/{total}"),
                should_stop=ctx.should_stop,
            )
            model, model_kwargs = core.create_classifier(
                config.arch, len(data.class_names), data.image_size, pretrained=config.pretrained, seed=config.seed
            )
            model_config = core.model_config(config.arch, data.class_names, data.image_size, model_kwargs, model)
            run.log_params(
                {
                    **core.config_params(config),
                    "image_size": data.image_size,
                    "model_kwargs": model_kwargs,
                    "n_train": data.n_train,
                    "n_val": data.n_val,
                    "n_classes": len(data.class_names),
                    "class_names": ",".join(data.class_names),
                    "device": str(device),
                    "registered_model_name": name,
                }
            )

            def on_epoch(stats: core.EpochStats) -> None:
                run.log_metrics(stats.metrics(), step=stats.epoch)
                ctx.progress(stats.epoch, config.epochs, loss=stats.train_loss, val_accuracy=stats.val_accuracy)

            ctx.progress(0, config.epochs, message="training")
            outcome = core.train_classifier(
                model,
                data,
                config,
                mean=model_config["mean"],
                std=model_config["std"],
                device=device,
                on_epoch=on_epoch,
                should_stop=ctx.should_stop,
            )
            run.log_metrics(
                {
                    "best_epoch": outcome.best_epoch,
                    "best_val_accuracy": outcome.best_val_accuracy,
                    "best_val_loss": outcome.best_val_loss,
                    "train_images_per_second": outcome.train_images_per_second,
                    "train_seconds": outcome.seconds,
                }
            )
            ctx.progress(config.epochs, config.epochs, message="registering the model")
            with tempfile.TemporaryDirectory(prefix="zsc-train-") as tmp:
                version = registry.log_pyfunc_model(
                    run,
                    code_path=core.model_code_path(),
                    artifacts=core.save_model_files(outcome.state, model_config, Path(tmp)),
                    registered_model_name=name,
                    tags={**lineage, "zsc.kind": "downstream-classifier", "zsc.arch": config.arch},
                    pip_requirements=pip_requirements(),
                    model_type="zsc-downstream-classifier",
                    signature=mlflow_model.signature(),
                    input_example=mlflow_model.input_example(),
                )
            return pb.TrainClassifierResult(
                model_uri=f"models:/{name}/{version.version}",
                registered_model_name=name,
                model_version=str(version.version),
                mlflow_run_id=run.id,
                class_names=data.class_names,
                arch=config.arch,
                image_size=data.image_size,
                best_epoch=outcome.best_epoch,
                best_val_accuracy=outcome.best_val_accuracy,
                best_val_loss=outcome.best_val_loss,
                n_train=data.n_train,
                n_val=data.n_val,
                dataset_hash=lineage["zsc.dataset.hash"],
                train_images_per_second=outcome.train_images_per_second,
                seconds=outcome.seconds,
            )

    # --- Evaluate ----------------------------------------------------------------------------------------------
    def Evaluate(self, request: pb.EvaluateModelRequest, context: grpc.ServicerContext):
        if request.limit < 0 or request.batch_size < 0:
            raise InvalidArgument("limit and batch_size must be >= 0")
        model = registry.resolve(request.model_uri)
        root = resolve_uri(request.data_uri, self.runtime.data_roots)
        loaded = self.load_model(model)
        # labels in the model's order; each of its classes read from the folder of that name (or the one mapped to it)
        folder = _open_folder(
            root,
            request.limit,
            class_names=loaded.class_names,
            folder_to_class=request.folder_to_class,
            field=f"the model's {len(loaded.class_names)} classes",
        )
        experiment = tracking.experiment_name(request.experiment, EXPERIMENT)
        batch_size = request.batch_size or 64

        def job(ctx: JobContext) -> pb.ModelEvaluation:
            return self._evaluate(ctx, loaded, folder, experiment, batch_size, request.limit)

        return self.runtime.operations.start(f"{SERVICE}/Evaluate", job, total=len(folder), unit="images")

    def _evaluate(
        self, ctx: JobContext, loaded: LoadedModel, folder: ImageFolder, experiment: str, batch_size: int, limit: int
    ) -> pb.ModelEvaluation:
        # Imported here: servicer.py imports this module to register the Downstream service.
        from zsc_classification.servicer import log_evaluation

        model = loaded.model
        label = f"{model.name}-v{model.version}" if model.version else model.uri
        tags = {"zsc.kind": "downstream-eval", "zsc.model_uri": model.uri, "zsc.profile": self.runtime.profile.name}
        with tracking.run(experiment, f"{label}-eval", tags=tags) as run:
            ctx.set_mlflow_run(run.id)
            run.log_params(
                {
                    "model_uri": model.uri,
                    "registered_model_name": model.name,
                    "model_version": model.version,
                    "data_uri": str(folder.root),
                    "limit": limit,
                    "n_images": len(folder),
                    "n_classes": len(folder.classes),
                    **({"folder_to_class": json.dumps(folder.mapped_folders())} if folder.mapped_folders() else {}),
                }
            )
            classifier = loaded.classifier

            def classify(images: list[Any], _indices: list[int]) -> list[dict[str, Any]]:
                best = classifier.predict_proba(images).max(dim=-1)
                return [{"pred": int(i), "prob": float(p)} for p, i in zip(best.values, best.indices, strict=True)]

            result = evaluate_folder(
                folder,
                classify,
                batch_size=batch_size,
                on_progress=lambda done, total: ctx.progress(done, total),
                should_stop=ctx.should_stop,
            )
            class_names = tuple(loaded.class_names)
            log_evaluation(run, result, class_names)
            if model.version:
                results = registry.real_test_tags(
                    {"top1": result.top1, "macro_accuracy": result.macro},
                    run_id=run.id,
                    dataset=str(folder.root),
                    n_images=len(result.labels),
                )
                registry.tag_version(model.name, model.version, results, run.client)
            return pb.ModelEvaluation(
                model_uri=model.uri,
                registered_model_name=model.name,
                model_version=model.version,
                class_names=class_names,
                n_images=len(result.labels),
                top1=result.top1,
                macro_accuracy=result.macro,
                per_class_accuracy=result.per_class,
                confusion=codec.encode(result.confusion),
                mlflow_run_id=run.id,
                seconds_per_image=result.seconds_per_image,
            )

    # --- Predict -----------------------------------------------------------------------------------------------
    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        if not request.images:
            raise InvalidArgument("no images in the request")
        if len(request.images) > MAX_INLINE_IMAGES:
            raise InvalidArgument(f"{len(request.images)} inline images is over the limit of {MAX_INLINE_IMAGES}")
        if request.top_k < 0:
            raise InvalidArgument("top_k must be >= 0")
        model = registry.resolve(request.model_uri)
        images = [self.runtime.decode_image(im.data, what=f"image {i}") for i, im in enumerate(request.images)]
        loaded = self.load_model(model)
        probs = loaded.classifier.predict_proba(images)
        names = loaded.class_names
        top = probs.topk(min(request.top_k or 5, len(names)), dim=-1)
        return pb.PredictResponse(
            predictions=[
                pb.RankedLabels(indices=idx.tolist(), labels=[names[j] for j in idx.tolist()], probs=p.tolist())
                for p, idx in zip(top.values, top.indices, strict=True)
            ],
            probs=codec.encode(probs.float()),
            class_names=names,
            registered_model_name=model.name,
            model_version=model.version,
        )
