from zsc.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ZeroShotMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ZERO_SHOT_METHOD_UNSPECIFIED: _ClassVar[ZeroShotMethod]
    CLIP: _ClassVar[ZeroShotMethod]
    DIFFUSION: _ClassVar[ZeroShotMethod]
ZERO_SHOT_METHOD_UNSPECIFIED: ZeroShotMethod
CLIP: ZeroShotMethod
DIFFUSION: ZeroShotMethod

class PromptSpec(_message.Message):
    __slots__ = ("templates", "template_set")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_SET_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedScalarFieldContainer[str]
    template_set: str
    def __init__(self, templates: _Optional[_Iterable[str]] = ..., template_set: _Optional[str] = ...) -> None: ...

class DiffusionStage(_message.Message):
    __slots__ = ("n_samples", "to_keep")
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TO_KEEP_FIELD_NUMBER: _ClassVar[int]
    n_samples: int
    to_keep: int
    def __init__(self, n_samples: _Optional[int] = ..., to_keep: _Optional[int] = ...) -> None: ...

class ClassPrompts(_message.Message):
    __slots__ = ("prompts",)
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompts: _Optional[_Iterable[str]] = ...) -> None: ...

class DiffusionOptions(_message.Message):
    __slots__ = ("preset", "stages", "loss", "seed", "batch_size", "dtype", "class_prompts", "n_trials")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CLASS_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    N_TRIALS_FIELD_NUMBER: _ClassVar[int]
    preset: str
    stages: _containers.RepeatedCompositeFieldContainer[DiffusionStage]
    loss: str
    seed: int
    batch_size: int
    dtype: str
    class_prompts: _containers.RepeatedCompositeFieldContainer[ClassPrompts]
    n_trials: int
    def __init__(self, preset: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[DiffusionStage, _Mapping]]] = ..., loss: _Optional[str] = ..., seed: _Optional[int] = ..., batch_size: _Optional[int] = ..., dtype: _Optional[str] = ..., class_prompts: _Optional[_Iterable[_Union[ClassPrompts, _Mapping]]] = ..., n_trials: _Optional[int] = ...) -> None: ...

class ZeroShotRequest(_message.Message):
    __slots__ = ("method", "class_names", "prompts", "images", "top_k", "diffusion")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DIFFUSION_FIELD_NUMBER: _ClassVar[int]
    method: ZeroShotMethod
    class_names: _containers.RepeatedScalarFieldContainer[str]
    prompts: PromptSpec
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    top_k: int
    diffusion: DiffusionOptions
    def __init__(self, method: _Optional[_Union[ZeroShotMethod, str]] = ..., class_names: _Optional[_Iterable[str]] = ..., prompts: _Optional[_Union[PromptSpec, _Mapping]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., top_k: _Optional[int] = ..., diffusion: _Optional[_Union[DiffusionOptions, _Mapping]] = ...) -> None: ...

class StageErrors(_message.Message):
    __slots__ = ("class_indices", "errors")
    CLASS_INDICES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    class_indices: _containers.RepeatedScalarFieldContainer[int]
    errors: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, class_indices: _Optional[_Iterable[int]] = ..., errors: _Optional[_Iterable[float]] = ...) -> None: ...

class DiffusionImageResult(_message.Message):
    __slots__ = ("label", "class_name", "prompt", "stages", "unet_passes")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    UNET_PASSES_FIELD_NUMBER: _ClassVar[int]
    label: int
    class_name: str
    prompt: str
    stages: _containers.RepeatedCompositeFieldContainer[StageErrors]
    unet_passes: int
    def __init__(self, label: _Optional[int] = ..., class_name: _Optional[str] = ..., prompt: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageErrors, _Mapping]]] = ..., unet_passes: _Optional[int] = ...) -> None: ...

class TopK(_message.Message):
    __slots__ = ("indices", "labels", "probs")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[str]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class ZeroShotResponse(_message.Message):
    __slots__ = ("logits", "probs", "top_k", "diffusion")
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DIFFUSION_FIELD_NUMBER: _ClassVar[int]
    logits: _common_pb2.Tensor
    probs: _common_pb2.Tensor
    top_k: _containers.RepeatedCompositeFieldContainer[TopK]
    diffusion: _containers.RepeatedCompositeFieldContainer[DiffusionImageResult]
    def __init__(self, logits: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., probs: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., top_k: _Optional[_Iterable[_Union[TopK, _Mapping]]] = ..., diffusion: _Optional[_Iterable[_Union[DiffusionImageResult, _Mapping]]] = ...) -> None: ...

class EvaluateZeroShotRequest(_message.Message):
    __slots__ = ("method", "data_uri", "class_names", "prompts", "limit", "batch_size", "experiment", "diffusion", "shard_start", "shard_stop", "results_uri", "folder_to_class")
    class FolderToClassEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DATA_URI_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    DIFFUSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_START_FIELD_NUMBER: _ClassVar[int]
    SHARD_STOP_FIELD_NUMBER: _ClassVar[int]
    RESULTS_URI_FIELD_NUMBER: _ClassVar[int]
    FOLDER_TO_CLASS_FIELD_NUMBER: _ClassVar[int]
    method: ZeroShotMethod
    data_uri: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    prompts: PromptSpec
    limit: int
    batch_size: int
    experiment: str
    diffusion: DiffusionOptions
    shard_start: int
    shard_stop: int
    results_uri: str
    folder_to_class: _containers.ScalarMap[str, str]
    def __init__(self, method: _Optional[_Union[ZeroShotMethod, str]] = ..., data_uri: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., prompts: _Optional[_Union[PromptSpec, _Mapping]] = ..., limit: _Optional[int] = ..., batch_size: _Optional[int] = ..., experiment: _Optional[str] = ..., diffusion: _Optional[_Union[DiffusionOptions, _Mapping]] = ..., shard_start: _Optional[int] = ..., shard_stop: _Optional[int] = ..., results_uri: _Optional[str] = ..., folder_to_class: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EvaluationResult(_message.Message):
    __slots__ = ("class_names", "n_images", "top1", "macro_accuracy", "per_class_accuracy", "confusion", "mlflow_run_id", "seconds_per_image")
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    N_IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    MACRO_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SECONDS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    n_images: int
    top1: float
    macro_accuracy: float
    per_class_accuracy: _containers.RepeatedScalarFieldContainer[float]
    confusion: _common_pb2.Tensor
    mlflow_run_id: str
    seconds_per_image: float
    def __init__(self, class_names: _Optional[_Iterable[str]] = ..., n_images: _Optional[int] = ..., top1: _Optional[float] = ..., macro_accuracy: _Optional[float] = ..., per_class_accuracy: _Optional[_Iterable[float]] = ..., confusion: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., mlflow_run_id: _Optional[str] = ..., seconds_per_image: _Optional[float] = ...) -> None: ...
