from zsc.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GeneratorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATOR_KIND_UNSPECIFIED: _ClassVar[GeneratorKind]
    TFVAEGAN: _ClassVar[GeneratorKind]
    CLSWGAN: _ClassVar[GeneratorKind]
    SHIP_VAE: _ClassVar[GeneratorKind]

class CalibrationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALIBRATION_METHOD_UNSPECIFIED: _ClassVar[CalibrationMethod]
    CALIBRATION_NONE: _ClassVar[CalibrationMethod]
    CALIBRATION_HOLDOUT: _ClassVar[CalibrationMethod]

class FineTuneMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINE_TUNE_METHOD_UNSPECIFIED: _ClassVar[FineTuneMethod]
    COOP: _ClassVar[FineTuneMethod]
    CLIP_ADAPTER: _ClassVar[FineTuneMethod]
    TIP_ADAPTER_F: _ClassVar[FineTuneMethod]
GENERATOR_KIND_UNSPECIFIED: GeneratorKind
TFVAEGAN: GeneratorKind
CLSWGAN: GeneratorKind
SHIP_VAE: GeneratorKind
CALIBRATION_METHOD_UNSPECIFIED: CalibrationMethod
CALIBRATION_NONE: CalibrationMethod
CALIBRATION_HOLDOUT: CalibrationMethod
FINE_TUNE_METHOD_UNSPECIFIED: FineTuneMethod
COOP: FineTuneMethod
CLIP_ADAPTER: FineTuneMethod
TIP_ADAPTER_F: FineTuneMethod

class GeneratorSettings(_message.Message):
    __slots__ = ("epochs", "batch_size", "lr", "beta1", "beta2", "hidden_dim", "noise_dim", "critic_iters", "gp_weight", "normalize_features")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_DIM_FIELD_NUMBER: _ClassVar[int]
    NOISE_DIM_FIELD_NUMBER: _ClassVar[int]
    CRITIC_ITERS_FIELD_NUMBER: _ClassVar[int]
    GP_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    lr: float
    beta1: float
    beta2: float
    hidden_dim: int
    noise_dim: int
    critic_iters: int
    gp_weight: float
    normalize_features: bool
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., hidden_dim: _Optional[int] = ..., noise_dim: _Optional[int] = ..., critic_iters: _Optional[int] = ..., gp_weight: _Optional[float] = ..., normalize_features: _Optional[bool] = ...) -> None: ...

class SelectionSettings(_message.Message):
    __slots__ = ("every", "holdout_fraction", "val_fraction", "n_per_class", "classifier_epochs", "classifier_lr", "refit")
    EVERY_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    N_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_LR_FIELD_NUMBER: _ClassVar[int]
    REFIT_FIELD_NUMBER: _ClassVar[int]
    every: int
    holdout_fraction: float
    val_fraction: float
    n_per_class: int
    classifier_epochs: int
    classifier_lr: float
    refit: bool
    def __init__(self, every: _Optional[int] = ..., holdout_fraction: _Optional[float] = ..., val_fraction: _Optional[float] = ..., n_per_class: _Optional[int] = ..., classifier_epochs: _Optional[int] = ..., classifier_lr: _Optional[float] = ..., refit: _Optional[bool] = ...) -> None: ...

class ClswganSettings(_message.Message):
    __slots__ = ("cls_weight", "cls_epochs", "cls_lr", "cls_temperature", "normalize_output")
    CLS_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CLS_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    CLS_LR_FIELD_NUMBER: _ClassVar[int]
    CLS_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    cls_weight: float
    cls_epochs: int
    cls_lr: float
    cls_temperature: float
    normalize_output: bool
    def __init__(self, cls_weight: _Optional[float] = ..., cls_epochs: _Optional[int] = ..., cls_lr: _Optional[float] = ..., cls_temperature: _Optional[float] = ..., normalize_output: _Optional[bool] = ...) -> None: ...

class TfvaeganSettings(_message.Message):
    __slots__ = ("recon_weight", "adv_weight", "kl_weight", "feedback_loop", "feedback_weight", "generation_feedback_weight", "feedback_lr", "decoder_lr", "freeze_decoder", "encoded_noise", "adaptive_gp", "encoder_beta1")
    RECON_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ADV_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_LOOP_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FEEDBACK_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_LR_FIELD_NUMBER: _ClassVar[int]
    DECODER_LR_FIELD_NUMBER: _ClassVar[int]
    FREEZE_DECODER_FIELD_NUMBER: _ClassVar[int]
    ENCODED_NOISE_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_GP_FIELD_NUMBER: _ClassVar[int]
    ENCODER_BETA1_FIELD_NUMBER: _ClassVar[int]
    recon_weight: float
    adv_weight: float
    kl_weight: float
    feedback_loop: int
    feedback_weight: float
    generation_feedback_weight: float
    feedback_lr: float
    decoder_lr: float
    freeze_decoder: bool
    encoded_noise: bool
    adaptive_gp: bool
    encoder_beta1: float
    def __init__(self, recon_weight: _Optional[float] = ..., adv_weight: _Optional[float] = ..., kl_weight: _Optional[float] = ..., feedback_loop: _Optional[int] = ..., feedback_weight: _Optional[float] = ..., generation_feedback_weight: _Optional[float] = ..., feedback_lr: _Optional[float] = ..., decoder_lr: _Optional[float] = ..., freeze_decoder: _Optional[bool] = ..., encoded_noise: _Optional[bool] = ..., adaptive_gp: _Optional[bool] = ..., encoder_beta1: _Optional[float] = ...) -> None: ...

class ShipVaeSettings(_message.Message):
    __slots__ = ("encoder_hidden", "generator_hidden", "n_ctx", "ctx_init_std", "kl_weight", "weight_decay")
    ENCODER_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    N_CTX_FIELD_NUMBER: _ClassVar[int]
    CTX_INIT_STD_FIELD_NUMBER: _ClassVar[int]
    KL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    encoder_hidden: int
    generator_hidden: int
    n_ctx: int
    ctx_init_std: float
    kl_weight: float
    weight_decay: float
    def __init__(self, encoder_hidden: _Optional[int] = ..., generator_hidden: _Optional[int] = ..., n_ctx: _Optional[int] = ..., ctx_init_std: _Optional[float] = ..., kl_weight: _Optional[float] = ..., weight_decay: _Optional[float] = ...) -> None: ...

class TrainGeneratorRequest(_message.Message):
    __slots__ = ("features_uri", "text_features", "kind", "settings", "selection", "clswgan", "tfvaegan", "ship_vae", "seed", "registered_model_name", "experiment")
    FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    TEXT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    CLSWGAN_FIELD_NUMBER: _ClassVar[int]
    TFVAEGAN_FIELD_NUMBER: _ClassVar[int]
    SHIP_VAE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    features_uri: str
    text_features: _common_pb2.Tensor
    kind: GeneratorKind
    settings: GeneratorSettings
    selection: SelectionSettings
    clswgan: ClswganSettings
    tfvaegan: TfvaeganSettings
    ship_vae: ShipVaeSettings
    seed: int
    registered_model_name: str
    experiment: str
    def __init__(self, features_uri: _Optional[str] = ..., text_features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., kind: _Optional[_Union[GeneratorKind, str]] = ..., settings: _Optional[_Union[GeneratorSettings, _Mapping]] = ..., selection: _Optional[_Union[SelectionSettings, _Mapping]] = ..., clswgan: _Optional[_Union[ClswganSettings, _Mapping]] = ..., tfvaegan: _Optional[_Union[TfvaeganSettings, _Mapping]] = ..., ship_vae: _Optional[_Union[ShipVaeSettings, _Mapping]] = ..., seed: _Optional[int] = ..., registered_model_name: _Optional[str] = ..., experiment: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "version", "run_id", "model_uri", "artifact_uri")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    run_id: str
    model_uri: str
    artifact_uri: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., run_id: _Optional[str] = ..., model_uri: _Optional[str] = ..., artifact_uri: _Optional[str] = ...) -> None: ...

class TrainGeneratorResult(_message.Message):
    __slots__ = ("model", "kind", "feature_dim", "text_dim", "class_names", "trained_classes", "epochs_run", "best_epoch", "final_metrics", "features_sha256")
    class FinalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    TEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TRAINED_CLASSES_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_RUN_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_SHA256_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersion
    kind: GeneratorKind
    feature_dim: int
    text_dim: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    trained_classes: _containers.RepeatedScalarFieldContainer[str]
    epochs_run: int
    best_epoch: int
    final_metrics: _containers.ScalarMap[str, float]
    features_sha256: str
    def __init__(self, model: _Optional[_Union[ModelVersion, _Mapping]] = ..., kind: _Optional[_Union[GeneratorKind, str]] = ..., feature_dim: _Optional[int] = ..., text_dim: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., trained_classes: _Optional[_Iterable[str]] = ..., epochs_run: _Optional[int] = ..., best_epoch: _Optional[int] = ..., final_metrics: _Optional[_Mapping[str, float]] = ..., features_sha256: _Optional[str] = ...) -> None: ...

class GenerateFeaturesRequest(_message.Message):
    __slots__ = ("generator", "class_names", "text_features", "per_class", "seed", "output_uri")
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    generator: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    text_features: _common_pb2.Tensor
    per_class: int
    seed: int
    output_uri: str
    def __init__(self, generator: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., text_features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., per_class: _Optional[int] = ..., seed: _Optional[int] = ..., output_uri: _Optional[str] = ...) -> None: ...

class GenerateFeaturesResult(_message.Message):
    __slots__ = ("features_uri", "class_names", "n_features", "feature_dim", "generator", "features_sha256")
    FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    FEATURES_SHA256_FIELD_NUMBER: _ClassVar[int]
    features_uri: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    n_features: int
    feature_dim: int
    generator: ModelVersion
    features_sha256: str
    def __init__(self, features_uri: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., n_features: _Optional[int] = ..., feature_dim: _Optional[int] = ..., generator: _Optional[_Union[ModelVersion, _Mapping]] = ..., features_sha256: _Optional[str] = ...) -> None: ...

class FeatureChunk(_message.Message):
    __slots__ = ("class_names", "per_class", "features")
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    per_class: int
    features: _common_pb2.TensorChunk
    def __init__(self, class_names: _Optional[_Iterable[str]] = ..., per_class: _Optional[int] = ..., features: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class GZSLSettings(_message.Message):
    __slots__ = ("epochs", "lr", "batch_size", "weight_decay", "temperature", "logit_adjustment", "logit_adjustment_tau", "calibration_gamma", "beta1", "prior", "seen_mass")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_ADJUSTMENT_FIELD_NUMBER: _ClassVar[int]
    LOGIT_ADJUSTMENT_TAU_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_GAMMA_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    SEEN_MASS_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    temperature: float
    logit_adjustment: bool
    logit_adjustment_tau: float
    calibration_gamma: float
    beta1: float
    prior: str
    seen_mass: float
    def __init__(self, epochs: _Optional[int] = ..., lr: _Optional[float] = ..., batch_size: _Optional[int] = ..., weight_decay: _Optional[float] = ..., temperature: _Optional[float] = ..., logit_adjustment: _Optional[bool] = ..., logit_adjustment_tau: _Optional[float] = ..., calibration_gamma: _Optional[float] = ..., beta1: _Optional[float] = ..., prior: _Optional[str] = ..., seen_mass: _Optional[float] = ...) -> None: ...

class CalibrationSettings(_message.Message):
    __slots__ = ("method", "holdout_fraction", "val_fraction", "n_per_class", "generator")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    N_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    method: CalibrationMethod
    holdout_fraction: float
    val_fraction: float
    n_per_class: int
    generator: str
    def __init__(self, method: _Optional[_Union[CalibrationMethod, str]] = ..., holdout_fraction: _Optional[float] = ..., val_fraction: _Optional[float] = ..., n_per_class: _Optional[int] = ..., generator: _Optional[str] = ...) -> None: ...

class TrainGZSLRequest(_message.Message):
    __slots__ = ("base_features_uri", "novel_features_uri", "class_names", "text_features", "settings", "seed", "registered_model_name", "experiment", "calibration")
    BASE_FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    NOVEL_FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    base_features_uri: str
    novel_features_uri: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    text_features: _common_pb2.Tensor
    settings: GZSLSettings
    seed: int
    registered_model_name: str
    experiment: str
    calibration: CalibrationSettings
    def __init__(self, base_features_uri: _Optional[str] = ..., novel_features_uri: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., text_features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., settings: _Optional[_Union[GZSLSettings, _Mapping]] = ..., seed: _Optional[int] = ..., registered_model_name: _Optional[str] = ..., experiment: _Optional[str] = ..., calibration: _Optional[_Union[CalibrationSettings, _Mapping]] = ...) -> None: ...

class CalibrationResult(_message.Message):
    __slots__ = ("method", "gamma", "harmonic", "harmonic_uncalibrated", "pseudo_unseen", "generator")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    HARMONIC_FIELD_NUMBER: _ClassVar[int]
    HARMONIC_UNCALIBRATED_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_UNSEEN_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    method: CalibrationMethod
    gamma: float
    harmonic: float
    harmonic_uncalibrated: float
    pseudo_unseen: _containers.RepeatedScalarFieldContainer[str]
    generator: ModelVersion
    def __init__(self, method: _Optional[_Union[CalibrationMethod, str]] = ..., gamma: _Optional[float] = ..., harmonic: _Optional[float] = ..., harmonic_uncalibrated: _Optional[float] = ..., pseudo_unseen: _Optional[_Iterable[str]] = ..., generator: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class TrainGZSLResult(_message.Message):
    __slots__ = ("model", "class_names", "seen_indices", "novel_indices", "n_base", "n_novel", "feature_dim", "final_loss", "calibration")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    SEEN_INDICES_FIELD_NUMBER: _ClassVar[int]
    NOVEL_INDICES_FIELD_NUMBER: _ClassVar[int]
    N_BASE_FIELD_NUMBER: _ClassVar[int]
    N_NOVEL_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersion
    class_names: _containers.RepeatedScalarFieldContainer[str]
    seen_indices: _containers.RepeatedScalarFieldContainer[int]
    novel_indices: _containers.RepeatedScalarFieldContainer[int]
    n_base: int
    n_novel: int
    feature_dim: int
    final_loss: float
    calibration: CalibrationResult
    def __init__(self, model: _Optional[_Union[ModelVersion, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., seen_indices: _Optional[_Iterable[int]] = ..., novel_indices: _Optional[_Iterable[int]] = ..., n_base: _Optional[int] = ..., n_novel: _Optional[int] = ..., feature_dim: _Optional[int] = ..., final_loss: _Optional[float] = ..., calibration: _Optional[_Union[CalibrationResult, _Mapping]] = ...) -> None: ...

class EvaluateGZSLRequest(_message.Message):
    __slots__ = ("classifier", "test_features_uri", "unseen_classes", "unseen_indices", "calibration_gamma", "experiment", "alignment_uri")
    CLASSIFIER_FIELD_NUMBER: _ClassVar[int]
    TEST_FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    UNSEEN_CLASSES_FIELD_NUMBER: _ClassVar[int]
    UNSEEN_INDICES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_GAMMA_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_URI_FIELD_NUMBER: _ClassVar[int]
    classifier: str
    test_features_uri: str
    unseen_classes: _containers.RepeatedScalarFieldContainer[str]
    unseen_indices: _containers.RepeatedScalarFieldContainer[int]
    calibration_gamma: float
    experiment: str
    alignment_uri: str
    def __init__(self, classifier: _Optional[str] = ..., test_features_uri: _Optional[str] = ..., unseen_classes: _Optional[_Iterable[str]] = ..., unseen_indices: _Optional[_Iterable[int]] = ..., calibration_gamma: _Optional[float] = ..., experiment: _Optional[str] = ..., alignment_uri: _Optional[str] = ...) -> None: ...

class GZSLMetrics(_message.Message):
    __slots__ = ("seen", "unseen", "harmonic")
    SEEN_FIELD_NUMBER: _ClassVar[int]
    UNSEEN_FIELD_NUMBER: _ClassVar[int]
    HARMONIC_FIELD_NUMBER: _ClassVar[int]
    seen: float
    unseen: float
    harmonic: float
    def __init__(self, seen: _Optional[float] = ..., unseen: _Optional[float] = ..., harmonic: _Optional[float] = ...) -> None: ...

class BaseNewMetrics(_message.Message):
    __slots__ = ("base", "new", "harmonic", "base_per_class", "new_per_class")
    BASE_FIELD_NUMBER: _ClassVar[int]
    NEW_FIELD_NUMBER: _ClassVar[int]
    HARMONIC_FIELD_NUMBER: _ClassVar[int]
    BASE_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    NEW_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    base: float
    new: float
    harmonic: float
    base_per_class: float
    new_per_class: float
    def __init__(self, base: _Optional[float] = ..., new: _Optional[float] = ..., harmonic: _Optional[float] = ..., base_per_class: _Optional[float] = ..., new_per_class: _Optional[float] = ...) -> None: ...

class EvaluateGZSLResult(_message.Message):
    __slots__ = ("gzsl", "base_to_new", "class_names", "per_class_accuracy", "support", "seen_indices", "unseen_indices", "n_samples", "classifier", "mlflow_run_id")
    GZSL_FIELD_NUMBER: _ClassVar[int]
    BASE_TO_NEW_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    SEEN_INDICES_FIELD_NUMBER: _ClassVar[int]
    UNSEEN_INDICES_FIELD_NUMBER: _ClassVar[int]
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    gzsl: GZSLMetrics
    base_to_new: BaseNewMetrics
    class_names: _containers.RepeatedScalarFieldContainer[str]
    per_class_accuracy: _containers.RepeatedScalarFieldContainer[float]
    support: _containers.RepeatedScalarFieldContainer[int]
    seen_indices: _containers.RepeatedScalarFieldContainer[int]
    unseen_indices: _containers.RepeatedScalarFieldContainer[int]
    n_samples: int
    classifier: ModelVersion
    mlflow_run_id: str
    def __init__(self, gzsl: _Optional[_Union[GZSLMetrics, _Mapping]] = ..., base_to_new: _Optional[_Union[BaseNewMetrics, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., per_class_accuracy: _Optional[_Iterable[float]] = ..., support: _Optional[_Iterable[int]] = ..., seen_indices: _Optional[_Iterable[int]] = ..., unseen_indices: _Optional[_Iterable[int]] = ..., n_samples: _Optional[int] = ..., classifier: _Optional[_Union[ModelVersion, _Mapping]] = ..., mlflow_run_id: _Optional[str] = ...) -> None: ...

class FineTuneSettings(_message.Message):
    __slots__ = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "logit_scale", "val_fraction", "select_every", "normalize_features", "ctx_init", "template", "reduction", "ratio", "init_alpha", "init_beta", "adamw_eps", "search_alpha_max", "search_alpha_steps", "search_beta_max", "search_beta_steps", "cache_synthetic_per_class", "tip_adapter_preset")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_SCALE_FIELD_NUMBER: _ClassVar[int]
    VAL_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SELECT_EVERY_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CTX_INIT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    INIT_ALPHA_FIELD_NUMBER: _ClassVar[int]
    INIT_BETA_FIELD_NUMBER: _ClassVar[int]
    ADAMW_EPS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_ALPHA_MAX_FIELD_NUMBER: _ClassVar[int]
    SEARCH_ALPHA_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_BETA_MAX_FIELD_NUMBER: _ClassVar[int]
    SEARCH_BETA_STEPS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SYNTHETIC_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    TIP_ADAPTER_PRESET_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    logit_scale: float
    val_fraction: float
    select_every: int
    normalize_features: bool
    ctx_init: str
    template: str
    reduction: int
    ratio: float
    init_alpha: float
    init_beta: float
    adamw_eps: float
    search_alpha_max: float
    search_alpha_steps: int
    search_beta_max: float
    search_beta_steps: int
    cache_synthetic_per_class: int
    tip_adapter_preset: str
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., logit_scale: _Optional[float] = ..., val_fraction: _Optional[float] = ..., select_every: _Optional[int] = ..., normalize_features: _Optional[bool] = ..., ctx_init: _Optional[str] = ..., template: _Optional[str] = ..., reduction: _Optional[int] = ..., ratio: _Optional[float] = ..., init_alpha: _Optional[float] = ..., init_beta: _Optional[float] = ..., adamw_eps: _Optional[float] = ..., search_alpha_max: _Optional[float] = ..., search_alpha_steps: _Optional[int] = ..., search_beta_max: _Optional[float] = ..., search_beta_steps: _Optional[int] = ..., cache_synthetic_per_class: _Optional[int] = ..., tip_adapter_preset: _Optional[str] = ...) -> None: ...

class FineTuneRequest(_message.Message):
    __slots__ = ("base_features_uri", "novel_features_uri", "class_names", "method", "settings", "seed", "registered_model_name", "experiment")
    BASE_FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    NOVEL_FEATURES_URI_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    base_features_uri: str
    novel_features_uri: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    method: FineTuneMethod
    settings: FineTuneSettings
    seed: int
    registered_model_name: str
    experiment: str
    def __init__(self, base_features_uri: _Optional[str] = ..., novel_features_uri: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., method: _Optional[_Union[FineTuneMethod, str]] = ..., settings: _Optional[_Union[FineTuneSettings, _Mapping]] = ..., seed: _Optional[int] = ..., registered_model_name: _Optional[str] = ..., experiment: _Optional[str] = ...) -> None: ...

class FineTuneResult(_message.Message):
    __slots__ = ("model", "method", "class_names", "base_indices", "new_indices", "n_fit", "n_val", "n_synthetic", "views", "epochs_run", "best_epoch", "val_accuracy", "final_metrics", "feature_dim")
    class FinalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    BASE_INDICES_FIELD_NUMBER: _ClassVar[int]
    NEW_INDICES_FIELD_NUMBER: _ClassVar[int]
    N_FIT_FIELD_NUMBER: _ClassVar[int]
    N_VAL_FIELD_NUMBER: _ClassVar[int]
    N_SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_RUN_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    model: ModelVersion
    method: FineTuneMethod
    class_names: _containers.RepeatedScalarFieldContainer[str]
    base_indices: _containers.RepeatedScalarFieldContainer[int]
    new_indices: _containers.RepeatedScalarFieldContainer[int]
    n_fit: int
    n_val: int
    n_synthetic: int
    views: int
    epochs_run: int
    best_epoch: int
    val_accuracy: float
    final_metrics: _containers.ScalarMap[str, float]
    feature_dim: int
    def __init__(self, model: _Optional[_Union[ModelVersion, _Mapping]] = ..., method: _Optional[_Union[FineTuneMethod, str]] = ..., class_names: _Optional[_Iterable[str]] = ..., base_indices: _Optional[_Iterable[int]] = ..., new_indices: _Optional[_Iterable[int]] = ..., n_fit: _Optional[int] = ..., n_val: _Optional[int] = ..., n_synthetic: _Optional[int] = ..., views: _Optional[int] = ..., epochs_run: _Optional[int] = ..., best_epoch: _Optional[int] = ..., val_accuracy: _Optional[float] = ..., final_metrics: _Optional[_Mapping[str, float]] = ..., feature_dim: _Optional[int] = ...) -> None: ...
