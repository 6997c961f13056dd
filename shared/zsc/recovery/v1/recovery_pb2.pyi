from zsc.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TeacherMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEACHER_METRIC_UNSPECIFIED: _ClassVar[TeacherMetric]
    COSINE: _ClassVar[TeacherMetric]
    LINEAR: _ClassVar[TeacherMetric]

class KappaPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KAPPA_POLICY_UNSPECIFIED: _ClassVar[KappaPolicy]
    ANGULAR: _ClassVar[KappaPolicy]
    FIXED: _ClassVar[KappaPolicy]
    MATCHED: _ClassVar[KappaPolicy]

class VmfSampler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VMF_SAMPLER_UNSPECIFIED: _ClassVar[VmfSampler]
    EXACT: _ClassVar[VmfSampler]
    AUTHORS: _ClassVar[VmfSampler]
TEACHER_METRIC_UNSPECIFIED: TeacherMetric
COSINE: TeacherMetric
LINEAR: TeacherMetric
KAPPA_POLICY_UNSPECIFIED: KappaPolicy
ANGULAR: KappaPolicy
FIXED: KappaPolicy
MATCHED: KappaPolicy
VMF_SAMPLER_UNSPECIFIED: VmfSampler
EXACT: VmfSampler
AUTHORS: VmfSampler

class Teacher(_message.Message):
    __slots__ = ("weight", "metric", "bias", "temperature")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    weight: _common_pb2.Tensor
    metric: TeacherMetric
    bias: _common_pb2.Tensor
    temperature: float
    def __init__(self, weight: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., metric: _Optional[_Union[TeacherMetric, str]] = ..., bias: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., temperature: _Optional[float] = ...) -> None: ...

class RecoverRequest(_message.Message):
    __slots__ = ("teacher", "class_names", "text_features", "prompt_template", "kappa_policy", "theta", "kappa", "num", "nsample", "epochs", "lr", "weight_decay", "seed", "trusted", "output_uri", "experiment", "init_from_teacher", "preset", "sampler")
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    KAPPA_POLICY_FIELD_NUMBER: _ClassVar[int]
    THETA_FIELD_NUMBER: _ClassVar[int]
    KAPPA_FIELD_NUMBER: _ClassVar[int]
    NUM_FIELD_NUMBER: _ClassVar[int]
    NSAMPLE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    INIT_FROM_TEACHER_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    teacher: Teacher
    class_names: _containers.RepeatedScalarFieldContainer[str]
    text_features: _common_pb2.Tensor
    prompt_template: str
    kappa_policy: KappaPolicy
    theta: float
    kappa: float
    num: int
    nsample: int
    epochs: int
    lr: float
    weight_decay: float
    seed: int
    trusted: bool
    output_uri: str
    experiment: str
    init_from_teacher: bool
    preset: str
    sampler: VmfSampler
    def __init__(self, teacher: _Optional[_Union[Teacher, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., text_features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., prompt_template: _Optional[str] = ..., kappa_policy: _Optional[_Union[KappaPolicy, str]] = ..., theta: _Optional[float] = ..., kappa: _Optional[float] = ..., num: _Optional[int] = ..., nsample: _Optional[int] = ..., epochs: _Optional[int] = ..., lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., seed: _Optional[int] = ..., trusted: _Optional[bool] = ..., output_uri: _Optional[str] = ..., experiment: _Optional[str] = ..., init_from_teacher: _Optional[bool] = ..., preset: _Optional[str] = ..., sampler: _Optional[_Union[VmfSampler, str]] = ...) -> None: ...

class RecoveryStats(_message.Message):
    __slots__ = ("kept_fraction", "teacher_agreement", "final_loss", "mlflow_run_id", "best_step", "best_val_loss", "steps_run")
    KEPT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    TEACHER_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BEST_STEP_FIELD_NUMBER: _ClassVar[int]
    BEST_VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    STEPS_RUN_FIELD_NUMBER: _ClassVar[int]
    kept_fraction: _containers.RepeatedScalarFieldContainer[float]
    teacher_agreement: float
    final_loss: float
    mlflow_run_id: str
    best_step: int
    best_val_loss: float
    steps_run: int
    def __init__(self, kept_fraction: _Optional[_Iterable[float]] = ..., teacher_agreement: _Optional[float] = ..., final_loss: _Optional[float] = ..., mlflow_run_id: _Optional[str] = ..., best_step: _Optional[int] = ..., best_val_loss: _Optional[float] = ..., steps_run: _Optional[int] = ...) -> None: ...

class RecoverResult(_message.Message):
    __slots__ = ("features_uri", "class_names", "n_features", "mu", "kappa", "stats")
    FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MU_FIELD_NUMBER: _ClassVar[int]
    KAPPA_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    features_uri: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    n_features: int
    mu: _common_pb2.Tensor
    kappa: float
    stats: RecoveryStats
    def __init__(self, features_uri: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., n_features: _Optional[int] = ..., mu: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., kappa: _Optional[float] = ..., stats: _Optional[_Union[RecoveryStats, _Mapping]] = ...) -> None: ...

class InlineFeatures(_message.Message):
    __slots__ = ("features", "labels", "class_names")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    features: _common_pb2.Tensor
    labels: _common_pb2.Tensor
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class FlptSettings(_message.Message):
    __slots__ = ("epochs", "batch_size", "lr", "weight_decay", "residual_scale", "ctx_init", "seed", "shuffle")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_SCALE_FIELD_NUMBER: _ClassVar[int]
    CTX_INIT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    residual_scale: float
    ctx_init: str
    seed: int
    shuffle: bool
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., weight_decay: _Optional[float] = ..., residual_scale: _Optional[float] = ..., ctx_init: _Optional[str] = ..., seed: _Optional[int] = ..., shuffle: _Optional[bool] = ...) -> None: ...

class AlignRequest(_message.Message):
    __slots__ = ("features_uri", "features", "class_names", "output_uri", "settings", "experiment")
    FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    features_uri: str
    features: InlineFeatures
    class_names: _containers.RepeatedScalarFieldContainer[str]
    output_uri: str
    settings: FlptSettings
    experiment: str
    def __init__(self, features_uri: _Optional[str] = ..., features: _Optional[_Union[InlineFeatures, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., output_uri: _Optional[str] = ..., settings: _Optional[_Union[FlptSettings, _Mapping]] = ..., experiment: _Optional[str] = ...) -> None: ...

class AlignResult(_message.Message):
    __slots__ = ("features_uri", "final_loss", "class_names", "n_base", "n_novel", "n_features", "steps_run", "mlflow_run_id", "alignment_id", "residual", "residual_weight")
    FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    N_BASE_FIELD_NUMBER: _ClassVar[int]
    N_NOVEL_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    STEPS_RUN_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    features_uri: str
    final_loss: float
    class_names: _containers.RepeatedScalarFieldContainer[str]
    n_base: int
    n_novel: int
    n_features: int
    steps_run: int
    mlflow_run_id: str
    alignment_id: str
    residual: _common_pb2.Tensor
    residual_weight: float
    def __init__(self, features_uri: _Optional[str] = ..., final_loss: _Optional[float] = ..., class_names: _Optional[_Iterable[str]] = ..., n_base: _Optional[int] = ..., n_novel: _Optional[int] = ..., n_features: _Optional[int] = ..., steps_run: _Optional[int] = ..., mlflow_run_id: _Optional[str] = ..., alignment_id: _Optional[str] = ..., residual: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., residual_weight: _Optional[float] = ...) -> None: ...

class FitTeacherRequest(_message.Message):
    __slots__ = ("features_uri", "class_names", "c", "max_iter", "output_uri")
    FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    C_FIELD_NUMBER: _ClassVar[int]
    MAX_ITER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    features_uri: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    c: float
    max_iter: int
    output_uri: str
    def __init__(self, features_uri: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., c: _Optional[float] = ..., max_iter: _Optional[int] = ..., output_uri: _Optional[str] = ...) -> None: ...

class FitTeacherResult(_message.Message):
    __slots__ = ("teacher_uri", "class_names", "n_train", "dim", "train_accuracy")
    TEACHER_URI_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    N_TRAIN_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    teacher_uri: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    n_train: int
    dim: int
    train_accuracy: float
    def __init__(self, teacher_uri: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., n_train: _Optional[int] = ..., dim: _Optional[int] = ..., train_accuracy: _Optional[float] = ...) -> None: ...
