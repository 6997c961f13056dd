from zsc.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainClassifierRequest(_message.Message):
    __slots__ = ("data_uri", "arch", "epochs", "batch_size", "lr", "weight_decay", "val_fraction", "seed", "registered_model_name", "pretrained", "image_size", "experiment")
    DATA_URI_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    data_uri: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    val_fraction: float
    seed: int
    registered_model_name: str
    pretrained: bool
    image_size: int
    experiment: str
    def __init__(self, data_uri: _Optional[str] = ..., arch: _Optional[str] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., val_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., registered_model_name: _Optional[str] = ..., pretrained: _Optional[bool] = ..., image_size: _Optional[int] = ..., experiment: _Optional[str] = ...) -> None: ...

class TrainClassifierResult(_message.Message):
    __slots__ = ("model_uri", "registered_model_name", "model_version", "mlflow_run_id", "class_names", "arch", "image_size", "best_epoch", "best_val_accuracy", "best_val_loss", "n_train", "n_val", "dataset_hash", "train_images_per_second", "seconds")
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BEST_VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BEST_VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    N_TRAIN_FIELD_NUMBER: _ClassVar[int]
    N_VAL_FIELD_NUMBER: _ClassVar[int]
    DATASET_HASH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_uri: str
    registered_model_name: str
    model_version: str
    mlflow_run_id: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    arch: str
    image_size: int
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    n_train: int
    n_val: int
    dataset_hash: str
    train_images_per_second: float
    seconds: float
    def __init__(self, model_uri: _Optional[str] = ..., registered_model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., mlflow_run_id: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., arch: _Optional[str] = ..., image_size: _Optional[int] = ..., best_epoch: _Optional[int] = ..., best_val_accuracy: _Optional[float] = ..., best_val_loss: _Optional[float] = ..., n_train: _Optional[int] = ..., n_val: _Optional[int] = ..., dataset_hash: _Optional[str] = ..., train_images_per_second: _Optional[float] = ..., seconds: _Optional[float] = ...) -> None: ...

class EvaluateModelRequest(_message.Message):
    __slots__ = ("model_uri", "data_uri", "limit", "batch_size", "experiment", "folder_to_class")
    class FolderToClassEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    DATA_URI_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    FOLDER_TO_CLASS_FIELD_NUMBER: _ClassVar[int]
    model_uri: str
    data_uri: str
    limit: int
    batch_size: int
    experiment: str
    folder_to_class: _containers.ScalarMap[str, str]
    def __init__(self, model_uri: _Optional[str] = ..., data_uri: _Optional[str] = ..., limit: _Optional[int] = ..., batch_size: _Optional[int] = ..., experiment: _Optional[str] = ..., folder_to_class: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelEvaluation(_message.Message):
    __slots__ = ("model_uri", "registered_model_name", "model_version", "class_names", "n_images", "top1", "macro_accuracy", "per_class_accuracy", "confusion", "mlflow_run_id", "seconds_per_image")
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    N_IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    MACRO_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SECONDS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    model_uri: str
    registered_model_name: str
    model_version: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    n_images: int
    top1: float
    macro_accuracy: float
    per_class_accuracy: _containers.RepeatedScalarFieldContainer[float]
    confusion: _common_pb2.Tensor
    mlflow_run_id: str
    seconds_per_image: float
    def __init__(self, model_uri: _Optional[str] = ..., registered_model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., n_images: _Optional[int] = ..., top1: _Optional[float] = ..., macro_accuracy: _Optional[float] = ..., per_class_accuracy: _Optional[_Iterable[float]] = ..., confusion: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., mlflow_run_id: _Optional[str] = ..., seconds_per_image: _Optional[float] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model_uri", "images", "top_k")
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    model_uri: str
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    top_k: int
    def __init__(self, model_uri: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., top_k: _Optional[int] = ...) -> None: ...

class RankedLabels(_message.Message):
    __slots__ = ("indices", "labels", "probs")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[str]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("predictions", "probs", "class_names", "registered_model_name", "model_version")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[RankedLabels]
    probs: _common_pb2.Tensor
    class_names: _containers.RepeatedScalarFieldContainer[str]
    registered_model_name: str
    model_version: str
    def __init__(self, predictions: _Optional[_Iterable[_Union[RankedLabels, _Mapping]]] = ..., probs: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., registered_model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...
