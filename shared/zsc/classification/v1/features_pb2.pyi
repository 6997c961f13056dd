from zsc.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ExtractFeaturesRequest(_message.Message):
    __slots__ = ("data_uri", "output_uri", "limit", "batch_size", "class_names", "prompt_template", "image_size", "cache_uri", "disable_cache", "experiment", "folder_to_class", "alignment_uri")
    class FolderToClassEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATA_URI_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHE_URI_FIELD_NUMBER: _ClassVar[int]
    DISABLE_CACHE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    FOLDER_TO_CLASS_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_URI_FIELD_NUMBER: _ClassVar[int]
    data_uri: str
    output_uri: str
    limit: int
    batch_size: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    prompt_template: str
    image_size: int
    cache_uri: str
    disable_cache: bool
    experiment: str
    folder_to_class: _containers.ScalarMap[str, str]
    alignment_uri: str
    def __init__(self, data_uri: _Optional[str] = ..., output_uri: _Optional[str] = ..., limit: _Optional[int] = ..., batch_size: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., prompt_template: _Optional[str] = ..., image_size: _Optional[int] = ..., cache_uri: _Optional[str] = ..., disable_cache: _Optional[bool] = ..., experiment: _Optional[str] = ..., folder_to_class: _Optional[_Mapping[str, str]] = ..., alignment_uri: _Optional[str] = ...) -> None: ...

class ExtractFeaturesResult(_message.Message):
    __slots__ = ("features_uri", "n_images", "class_names", "dim", "text_dim", "image_encoder", "text_encoder", "aligned", "cache_hits", "computed", "dataset_sha256", "seconds", "mlflow_run_id", "alignment_id")
    FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    N_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    TEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ENCODER_FIELD_NUMBER: _ClassVar[int]
    TEXT_ENCODER_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    features_uri: str
    n_images: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    dim: int
    text_dim: int
    image_encoder: str
    text_encoder: str
    aligned: bool
    cache_hits: int
    computed: int
    dataset_sha256: str
    seconds: float
    mlflow_run_id: str
    alignment_id: str
    def __init__(self, features_uri: _Optional[str] = ..., n_images: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., dim: _Optional[int] = ..., text_dim: _Optional[int] = ..., image_encoder: _Optional[str] = ..., text_encoder: _Optional[str] = ..., aligned: _Optional[bool] = ..., cache_hits: _Optional[int] = ..., computed: _Optional[int] = ..., dataset_sha256: _Optional[str] = ..., seconds: _Optional[float] = ..., mlflow_run_id: _Optional[str] = ..., alignment_id: _Optional[str] = ...) -> None: ...
