"""Generators and GZSL classifiers as MLflow artifacts: a safetensors state dict plus a JSON config, never pickle.

A saved model is a folder:

- ``config.json``: the format tag, the core's config (``ConfigMixin.to_dict``), dimensions and class names;
- ``weights.safetensors``: the state dict;
- generators only, ``text_features.safetensors``: the text features of every class of the training file, so a
  caller can ask for features of a class by name.

A SHIP_VAE generator's weights are its context tokens, encoder and generator only; it decodes through the
service's CLIP text encoder, so its config names that CLIP (``clip``) and a fingerprint of its text tower, and
loading it under another CLIP fails with FAILED_PRECONDITION. A fine-tuned model (``zsc-finetune/1``, from FineTune)
is stored like a classifier (``classifier/``) and scores features without CLIP.

The folder is logged to the training run (``generator/`` or ``classifier/``) and registered as a model version whose
source is that storage location. A reference resolves through zsc's explicit MLflow client (never the global
tracking URI): ``models:/<name>/<version>``, ``models:/<name>/latest``, ``models:/<name>@<alias>`` or
``runs:/<run_id>/<path>``; one that does not exist raises :class:`~zsc.errors.NotFound`.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from zsc import tracking
from zsc.errors import FailedPrecondition, InvalidArgument, NotFound
from zsc.models.clip import ClipBundle
from zsc_generative.core import clswgan, tfvaegan
from zsc_generative.core.common import GeneratorConfig, GeneratorTrainResult
from zsc_generative.core.finetune import FineTuneConfig, FineTunedClassifier, build_classifier
from zsc_generative.core.gzsl import CosineClassifier, GZSLConfig, build_gzsl_classifier
from zsc_generative.core.ship import ShipConfig, build_ship_vae, text_fingerprint

__all__ = [
    "CLASSIFIER_FORMAT",
    "FINETUNE_FORMAT",
    "GENERATOR_FORMAT",
    "KINDS",
    "SHIP_KIND",
    "GeneratorKind",
    "LoadedClassifier",
    "LoadedGenerator",
    "ModelCache",
    "ModelRef",
    "RegisteredVersion",
    "fetch",
    "read_classifier",
    "read_generator",
    "register_folder",
    "resolve",
    "write_classifier",
    "write_finetuned",
    "write_generator",
]

GENERATOR_FORMAT = "zsc-generator/1"
CLASSIFIER_FORMAT = "zsc-gzsl/1"
FINETUNE_FORMAT = "zsc-finetune/1"
SHIP_KIND = "ship_vae"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
TEXT_FILE = "text_features.safetensors"
REFERENCE_FORMS = "models:/<name>/<version>, models:/<name>/latest, models:/<name>@<alias> or runs:/<run_id>/<path>"
# Registered-model names go into MLflow search filters, so they are restricted to characters that need no quoting.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}"
_VERSION_REF = re.compile(rf"^models:/(?P<name>{NAME_PATTERN})/(?P<version>[0-9]{{1,9}}|latest)$")
_ALIAS_REF = re.compile(rf"^models:/(?P<name>{NAME_PATTERN})@(?P<alias>[A-Za-z0-9_\-]{{1,255}})$")
_RUN_REF = re.compile(r"^runs:/(?P<run>[A-Za-z0-9_\-]{1,64})/(?P<path>[A-Za-z0-9_.\-/]{1,500})$")


@dataclass(frozen=True)
class GeneratorKind:
    """A trainable generator: its config class, training entry point and module factory (rebuilds for loading)."""

    name: str
    config_cls: type[GeneratorConfig]
    train: Callable[..., GeneratorTrainResult]
    build: Callable[[Any, int, int], nn.Module]


KINDS: dict[str, GeneratorKind] = {
    "tfvaegan": GeneratorKind("tfvaegan", tfvaegan.TFVAEGANConfig, tfvaegan.train_tfvaegan, tfvaegan.build_generator),
    "clswgan": GeneratorKind("clswgan", clswgan.CLSWGANConfig, clswgan.train_clswgan, clswgan.build_generator),
}


# --------------------------------------------------------------------------------------------------------------
# Folders


@dataclass
class LoadedGenerator:
    """A generator rebuilt from its folder, in eval mode, with the text features it stored."""

    kind: str
    config: GeneratorConfig | ShipConfig
    module: nn.Module
    feature_dim: int
    text_dim: int
    class_names: list[str]
    text_features: Tensor  # [C, D_t] float32, CPU
    trained_classes: list[str]

    def text_of(self, names: Sequence[str], reference: str) -> Tensor:
        """Stored text features [K, D_t] of ``names``; InvalidArgument names the first class it does not know."""
        index = {n: i for i, n in enumerate(self.class_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise InvalidArgument(
                f"class {missing[0]!r} has no text feature in generator {reference} (it stores the "
                f"{len(self.class_names)} classes of its training file); send text_features for the classes"
            )
        return self.text_features[[index[n] for n in names]]


@dataclass
class LoadedClassifier:
    """A GZSL cosine classifier or a fine-tuned model rebuilt from its folder; ``seen`` are the classes it had base
    samples of. Both score with ``model.scores(features, gamma)``."""

    config: GZSLConfig | FineTuneConfig
    model: CosineClassifier | FineTunedClassifier
    class_names: list[str]
    seen: list[int]
    feature_dim: int
    text_dim: int

    @property
    def calibration_gamma(self) -> float:
        """The calibrated-stacking gamma it was trained with (fine-tuned models have none: 0)."""
        return float(getattr(self.config, "calibration_gamma", 0.0))


def _write_config(folder: Path, config: dict[str, Any]) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_config(folder: Path, expected_format: str | tuple[str, ...], reference: str) -> dict[str, Any]:
    expected = (expected_format,) if isinstance(expected_format, str) else expected_format
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise NotFound(f"{reference} has no {CONFIG_FILE}; it is not a zsc generative model")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{reference}: {CONFIG_FILE} is not valid JSON ({err})") from err
    found = config.get("format") if isinstance(config, dict) else None
    if found not in expected:
        raise InvalidArgument(f"{reference} is a {found or 'non-zsc'} model, not a {' or '.join(expected)} model")
    return config


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def write_generator(
    folder: Path,
    *,
    kind: str,
    config: GeneratorConfig,
    state_dict: dict[str, Tensor],
    feature_dim: int,
    text_dim: int,
    class_names: Sequence[str],
    text_features: Tensor,
    trained_classes: Sequence[str],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a generator folder (see the module docstring); ``extra`` adds config.json keys (SHIP's CLIP)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(state_dict), folder / WEIGHTS_FILE)
    save_file({"text_features": text_features.float().detach().cpu().contiguous()}, folder / TEXT_FILE)
    _write_config(
        folder,
        {
            "format": GENERATOR_FORMAT,
            "kind": kind,
            "config": config.to_dict(),
            "feature_dim": int(feature_dim),
            "text_dim": int(text_dim),
            "class_names": list(class_names),
            "trained_classes": list(trained_classes),
            **(extra or {}),
        },
    )


def read_generator(
    folder: Path, reference: str, device: torch.device | str = "cpu", clip: Callable[[], ClipBundle] | None = None
) -> LoadedGenerator:
    """Rebuild a generator from its folder on ``device``; InvalidArgument if the folder is not a generator.

    ``clip`` supplies the service's CLIP for a SHIP_VAE generator (it raises FailedPrecondition without one)."""
    meta = _read_config(folder, GENERATOR_FORMAT, reference)
    name = meta.get("kind", "")
    kind = KINDS.get(name)
    if kind is None and name != SHIP_KIND:
        raise InvalidArgument(f"{reference}: unknown generator kind {meta.get('kind')!r}")
    bundle = None
    if name == SHIP_KIND:
        if clip is None:
            raise FailedPrecondition(f"{reference} is a SHIP_VAE generator and needs a CLIP text encoder")
        bundle = clip()
    try:
        feature_dim, text_dim = int(meta["feature_dim"]), int(meta["text_dim"])
        if bundle is not None:
            config: GeneratorConfig | ShipConfig = ShipConfig.from_dict(meta["config"])
            _check_same_clip(meta, bundle, reference)
            module = build_ship_vae(bundle.model, bundle.tokenizer, config, feature_dim)
        else:
            assert kind is not None
            config = kind.config_cls.from_dict(meta["config"])
            module = kind.build(config, feature_dim, text_dim)
        module.load_state_dict(load_file(folder / WEIGHTS_FILE))
        text = load_file(folder / TEXT_FILE)["text_features"].float()
        class_names = [str(n) for n in meta["class_names"]]
        trained = [str(n) for n in meta["trained_classes"]]
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as err:
        raise InvalidArgument(f"{reference}: cannot rebuild the generator ({type(err).__name__}: {err})") from err
    if text.shape[0] != len(class_names) or (bundle is None and text.shape[1] != text_dim):
        raise InvalidArgument(f"{reference}: stored text features {tuple(text.shape)} do not match its config")
    return LoadedGenerator(
        kind=name,
        config=config,
        module=module.to(device).eval() if bundle is None else module.eval(),
        feature_dim=feature_dim,
        text_dim=text_dim,
        class_names=class_names,
        text_features=text,
        trained_classes=trained,
    )


def clip_identity(bundle: ClipBundle) -> dict[str, str]:
    """What a SHIP_VAE generator records of the CLIP it decodes through."""
    return {"clip": bundle.ref, "clip_text_fingerprint": text_fingerprint(bundle.model)}


def _check_same_clip(meta: dict[str, Any], bundle: ClipBundle, reference: str) -> None:
    """FailedPrecondition unless the service's CLIP text tower is the one the generator was trained with."""
    mine = clip_identity(bundle)
    if meta.get("clip_text_fingerprint") != mine["clip_text_fingerprint"]:
        raise FailedPrecondition(
            f"{reference} was trained through CLIP {meta.get('clip', '?')!r} but this service runs {bundle.ref!r} "
            "with other text-encoder weights; serve it from a service with the same CLIP"
        )


def write_classifier(
    folder: Path,
    *,
    config: GZSLConfig,
    state_dict: dict[str, Tensor],
    class_names: Sequence[str],
    seen: Sequence[int],
    text_dim: int,
) -> None:
    """Write a GZSL classifier folder."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(state_dict), folder / WEIGHTS_FILE)
    _write_config(
        folder,
        {
            "format": CLASSIFIER_FORMAT,
            "config": config.to_dict(),
            "feature_dim": int(state_dict["weight"].shape[1]),
            "text_dim": int(text_dim),
            "class_names": list(class_names),
            "seen": [int(i) for i in seen],
        },
    )


def write_finetuned(
    folder: Path,
    *,
    config: FineTuneConfig,
    model: FineTunedClassifier,
    class_names: Sequence[str],
    seen: Sequence[int],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a fine-tuned model folder (``zsc-finetune/1``): its state dict and what rebuilds it."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_contiguous(model.state_dict()), folder / WEIGHTS_FILE)
    _write_config(
        folder,
        {
            "format": FINETUNE_FORMAT,
            "config": config.to_dict(),
            "model": model.meta(),
            "feature_dim": model.feature_dim,
            "class_names": list(class_names),
            "seen": [int(i) for i in seen],
            **(extra or {}),
        },
    )


def read_classifier(folder: Path, reference: str, device: torch.device | str = "cpu") -> LoadedClassifier:
    """Rebuild a GZSL classifier or a fine-tuned model from its folder on ``device``; InvalidArgument if it is
    neither."""
    meta = _read_config(folder, (CLASSIFIER_FORMAT, FINETUNE_FORMAT), reference)
    try:
        state = load_file(folder / WEIGHTS_FILE)
        class_names = [str(n) for n in meta["class_names"]]
        seen = [int(i) for i in meta["seen"]]
        feature_dim = int(meta["feature_dim"])
        if meta["format"] == FINETUNE_FORMAT:
            config: GZSLConfig | FineTuneConfig = FineTuneConfig.from_dict(meta["config"])
            model: CosineClassifier | FineTunedClassifier = build_classifier(state, meta["model"])
            text_dim = feature_dim
            weights = model.text_weights
        else:
            config = GZSLConfig.from_dict(meta["config"])
            model = build_gzsl_classifier(state, config)
            text_dim = int(meta["text_dim"])
            weights = model.weight
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as err:
        raise InvalidArgument(f"{reference}: cannot rebuild the classifier ({type(err).__name__}: {err})") from err
    if weights.shape != (len(class_names), feature_dim):
        raise InvalidArgument(f"{reference}: weights {tuple(weights.shape)} do not match its config")
    return LoadedClassifier(config, model.to(device).eval(), class_names, seen, feature_dim, text_dim)


# --------------------------------------------------------------------------------------------------------------
# MLflow: register, resolve, fetch


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version just registered."""

    name: str
    version: str
    run_id: str
    artifact_path: str

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def artifact_uri(self) -> str:
        return f"runs:/{self.run_id}/{self.artifact_path}"


@contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """MLflow's "does not exist" answers as NotFound (one line); anything else propagates (INTERNAL)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        # MLflow answers an unknown alias with INVALID_PARAMETER_VALUE, an unknown model or run with
        # RESOURCE_DOES_NOT_EXIST; both mean the reference names nothing.
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            detail = str(err).strip().splitlines()[0] if str(err).strip() else err.error_code
            raise NotFound(f"{what}: {detail}") from err
        raise


def check_model_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidArgument(
            f"registered model name {name[:80]!r} must be 1-200 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    return name


def register_folder(
    run: tracking.Run, folder: Path, artifact_path: str, name: str, tags: dict[str, str]
) -> RegisteredVersion:
    """Log ``folder``'s files under ``artifact_path`` of ``run`` and register them as a new version of ``name``."""
    from mlflow.exceptions import MlflowException

    client = run.client
    client.log_artifacts(run.id, str(folder), artifact_path)
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # The storage location, not runs:/...: MLflow resolves runs:/ sources through its global tracking URI,
    # which zsc never sets.
    mv = client.create_model_version(
        name, source=f"{run.artifact_uri.rstrip('/')}/{artifact_path}", run_id=run.id, tags=tags
    )
    return RegisteredVersion(mv.name, str(mv.version), run.id, artifact_path)


@dataclass(frozen=True)
class ModelRef:
    """What a reference points at now (an alias or ``latest`` resolves at call time)."""

    reference: str
    name: str  # "" for a runs:/ reference that no registered version points at
    version: str
    run_id: str
    run_path: str  # artifact path inside the run ("" when only a storage location is known)
    source: str  # the registered version's storage location ("" for runs:/ references)

    @property
    def key(self) -> str:
        """Cache identity: the same stored files give the same key."""
        return self.source or f"runs:/{self.run_id}/{self.run_path}"

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.version else self.reference


def resolve(reference: str, client: Any = None) -> ModelRef:
    """Resolve a model reference (see the module docstring); NotFound if it names nothing."""
    client = client or tracking.client()
    reference = reference.strip()
    if not reference:
        raise InvalidArgument(f"the model reference is empty; use {REFERENCE_FORMS}")
    if m := _VERSION_REF.match(reference):
        name = m["name"]
        if m["version"] == "latest":
            with _mlflow_errors(f"model {reference!r} not found"):
                client.get_registered_model(name)
                versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise NotFound(f"model {reference!r} not found: {name!r} has no versions")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            with _mlflow_errors(f"model {reference!r} not found"):
                mv = client.get_model_version(name, m["version"])
        return _from_version(reference, mv)
    if m := _ALIAS_REF.match(reference):
        with _mlflow_errors(f"model {reference!r} not found"):
            mv = client.get_model_version_by_alias(m["name"], m["alias"])
        return _from_version(reference, mv)
    if m := _RUN_REF.match(reference):
        run_id, path = m["run"], m["path"].strip("/")
        if ".." in path.split("/"):
            raise InvalidArgument(f"model reference {reference!r} may not contain '..'")
        with _mlflow_errors(f"run of {reference!r} not found"):
            client.get_run(run_id)
        # Name the registered version these files belong to, if any, for lineage.
        versions = client.search_model_versions(f"run_id = '{run_id}'")
        match = [v for v in versions if (v.source or "").rstrip("/").endswith("/" + path)]
        name, version = (match[0].name, str(match[0].version)) if len(match) == 1 else ("", "")
        return ModelRef(reference, name, version, run_id, path, "")
    raise InvalidArgument(f"model reference {reference[:200]!r} is not one of {REFERENCE_FORMS}")


def _from_version(reference: str, mv: Any) -> ModelRef:
    source = mv.source or ""
    if source.startswith("runs:/"):  # registered elsewhere from a runs:/ URI: fetch through the run
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        return ModelRef(reference, mv.name, str(mv.version), run_id, path.strip("/"), "")
    return ModelRef(reference, mv.name, str(mv.version), mv.run_id or "", "", source)


def fetch(ref: ModelRef, dst: Path, client: Any = None) -> Path:
    """The local model folder of ``ref``: read in place from a local artifact store, else downloaded into ``dst``.

    NotFound when its files are gone."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    location = ref.source
    if not location:
        with _mlflow_errors(f"run of {ref.reference!r} not found"):
            run = (client or tracking.client()).get_run(ref.run_id)
        location = f"{run.info.artifact_uri.rstrip('/')}/{ref.run_path}"
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):  # the embedded store: no copy needed
        path = Path(url2pathname(parsed.path) if parsed.scheme else location)
    else:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst)))
        except (MlflowException, OSError) as err:
            raise NotFound(f"model {ref.reference!r} has no files at {location}") from err
    if not path.is_dir():
        raise NotFound(f"model {ref.reference!r} has no model folder at {location}")
    return path


_T = TypeVar("_T")


class ModelCache:
    """A small thread-safe LRU of loaded models keyed by stored files (so an alias that moves loads anew)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: ModelRef, what: str, load: Callable[[Path], _T]) -> _T:
        """The cached model of ``ref``, or ``load(folder)`` on a fresh download."""
        key = (what, ref.key)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        with tempfile.TemporaryDirectory(prefix="zsc-model-") as tmp:
            value = load(fetch(ref, Path(tmp)))
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value
