from google.protobuf import struct_pb2 as _struct_pb2
from zsc.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrickKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRICK_KIND_UNSPECIFIED: _ClassVar[TrickKind]
    PROMPT: _ClassVar[TrickKind]
    GUIDANCE: _ClassVar[TrickKind]
    MIX: _ClassVar[TrickKind]
TRICK_KIND_UNSPECIFIED: TrickKind
PROMPT: TrickKind
GUIDANCE: TrickKind
MIX: TrickKind

class ClassSpec(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class TrickShare(_message.Message):
    __slots__ = ("tricks", "share")
    TRICKS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    tricks: str
    share: float
    def __init__(self, tricks: _Optional[str] = ..., share: _Optional[float] = ...) -> None: ...

class GuidanceRange(_message.Message):
    __slots__ = ("lo", "hi")
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    lo: float
    hi: float
    def __init__(self, lo: _Optional[float] = ..., hi: _Optional[float] = ...) -> None: ...

class TrickSpec(_message.Message):
    __slots__ = ("tricks", "merge", "domains", "domain_set", "template", "guidance_scale", "guidance_range", "image_template")
    TRICKS_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_SET_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_RANGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    tricks: str
    merge: _containers.RepeatedCompositeFieldContainer[TrickShare]
    domains: _containers.RepeatedScalarFieldContainer[str]
    domain_set: str
    template: str
    guidance_scale: float
    guidance_range: GuidanceRange
    image_template: str
    def __init__(self, tricks: _Optional[str] = ..., merge: _Optional[_Iterable[_Union[TrickShare, _Mapping]]] = ..., domains: _Optional[_Iterable[str]] = ..., domain_set: _Optional[str] = ..., template: _Optional[str] = ..., guidance_scale: _Optional[float] = ..., guidance_range: _Optional[_Union[GuidanceRange, _Mapping]] = ..., image_template: _Optional[str] = ...) -> None: ...

class GenerationSettings(_message.Message):
    __slots__ = ("steps", "scheduler", "native_resolution", "negative_prompt", "downsample")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    NATIVE_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLE_FIELD_NUMBER: _ClassVar[int]
    steps: int
    scheduler: str
    native_resolution: int
    negative_prompt: str
    downsample: str
    def __init__(self, steps: _Optional[int] = ..., scheduler: _Optional[str] = ..., native_resolution: _Optional[int] = ..., negative_prompt: _Optional[str] = ..., downsample: _Optional[str] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("classes", "start", "stop")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedScalarFieldContainer[str]
    start: int
    stop: int
    def __init__(self, classes: _Optional[_Iterable[str]] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ...) -> None: ...

class GenerateDatasetRequest(_message.Message):
    __slots__ = ("classes", "images_per_class", "tricks", "resolution", "output_uri", "seed", "generation", "shard", "batch_size", "experiment")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    TRICKS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[ClassSpec]
    images_per_class: int
    tricks: TrickSpec
    resolution: int
    output_uri: str
    seed: int
    generation: GenerationSettings
    shard: Shard
    batch_size: int
    experiment: str
    def __init__(self, classes: _Optional[_Iterable[_Union[ClassSpec, _Mapping]]] = ..., images_per_class: _Optional[int] = ..., tricks: _Optional[_Union[TrickSpec, _Mapping]] = ..., resolution: _Optional[int] = ..., output_uri: _Optional[str] = ..., seed: _Optional[int] = ..., generation: _Optional[_Union[GenerationSettings, _Mapping]] = ..., shard: _Optional[_Union[Shard, _Mapping]] = ..., batch_size: _Optional[int] = ..., experiment: _Optional[str] = ...) -> None: ...

class GenerateDatasetResult(_message.Message):
    __slots__ = ("total", "generated", "skipped", "computed", "images_per_second", "seconds", "output_uri", "manifest_uri", "mlflow_run_id", "batch_size")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_URI_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    total: int
    generated: int
    skipped: int
    computed: int
    images_per_second: float
    seconds: float
    output_uri: str
    manifest_uri: str
    mlflow_run_id: str
    batch_size: int
    def __init__(self, total: _Optional[int] = ..., generated: _Optional[int] = ..., skipped: _Optional[int] = ..., computed: _Optional[int] = ..., images_per_second: _Optional[float] = ..., seconds: _Optional[float] = ..., output_uri: _Optional[str] = ..., manifest_uri: _Optional[str] = ..., mlflow_run_id: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class GenerateImagesRequest(_message.Message):
    __slots__ = ("classes", "images_per_class", "tricks", "resolution", "seed", "generation", "batch_size")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    TRICKS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[ClassSpec]
    images_per_class: int
    tricks: TrickSpec
    resolution: int
    seed: int
    generation: GenerationSettings
    batch_size: int
    def __init__(self, classes: _Optional[_Iterable[_Union[ClassSpec, _Mapping]]] = ..., images_per_class: _Optional[int] = ..., tricks: _Optional[_Union[TrickSpec, _Mapping]] = ..., resolution: _Optional[int] = ..., seed: _Optional[int] = ..., generation: _Optional[_Union[GenerationSettings, _Mapping]] = ..., batch_size: _Optional[int] = ...) -> None: ...

class JobRecord(_message.Message):
    __slots__ = ("class_name", "index", "prompt", "negative_prompt", "domain", "trick", "guidance", "seed", "file")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TRICK_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    index: int
    prompt: str
    negative_prompt: str
    domain: str
    trick: str
    guidance: float
    seed: int
    file: str
    def __init__(self, class_name: _Optional[str] = ..., index: _Optional[int] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., domain: _Optional[str] = ..., trick: _Optional[str] = ..., guidance: _Optional[float] = ..., seed: _Optional[int] = ..., file: _Optional[str] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("image", "job")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    job: JobRecord
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., job: _Optional[_Union[JobRecord, _Mapping]] = ...) -> None: ...

class ListTricksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrickInfo(_message.Message):
    __slots__ = ("name", "kind", "description", "defaults")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: TrickKind
    description: str
    defaults: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[TrickKind, str]] = ..., description: _Optional[str] = ..., defaults: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ListTricksResponse(_message.Message):
    __slots__ = ("tricks", "default_domains", "domain_sets", "templates", "schedulers", "downsamplers", "default_steps", "default_scheduler", "default_batch_size", "default_guidance_scale", "default_guidance_range", "max_images_per_class", "max_preview_images", "model", "image_templates")
    class DomainSetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: DomainList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[DomainList, _Mapping]] = ...) -> None: ...
    class TemplatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ImageTemplatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRICKS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DOMAINS_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_SETS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULERS_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GUIDANCE_RANGE_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    MAX_PREVIEW_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    tricks: _containers.RepeatedCompositeFieldContainer[TrickInfo]
    default_domains: _containers.RepeatedScalarFieldContainer[str]
    domain_sets: _containers.MessageMap[str, DomainList]
    templates: _containers.ScalarMap[str, str]
    schedulers: _containers.RepeatedScalarFieldContainer[str]
    downsamplers: _containers.RepeatedScalarFieldContainer[str]
    default_steps: int
    default_scheduler: str
    default_batch_size: int
    default_guidance_scale: float
    default_guidance_range: GuidanceRange
    max_images_per_class: int
    max_preview_images: int
    model: str
    image_templates: _containers.ScalarMap[str, str]
    def __init__(self, tricks: _Optional[_Iterable[_Union[TrickInfo, _Mapping]]] = ..., default_domains: _Optional[_Iterable[str]] = ..., domain_sets: _Optional[_Mapping[str, DomainList]] = ..., templates: _Optional[_Mapping[str, str]] = ..., schedulers: _Optional[_Iterable[str]] = ..., downsamplers: _Optional[_Iterable[str]] = ..., default_steps: _Optional[int] = ..., default_scheduler: _Optional[str] = ..., default_batch_size: _Optional[int] = ..., default_guidance_scale: _Optional[float] = ..., default_guidance_range: _Optional[_Union[GuidanceRange, _Mapping]] = ..., max_images_per_class: _Optional[int] = ..., max_preview_images: _Optional[int] = ..., model: _Optional[str] = ..., image_templates: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DomainList(_message.Message):
    __slots__ = ("domains",)
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    domains: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, domains: _Optional[_Iterable[str]] = ...) -> None: ...
