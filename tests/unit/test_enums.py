"""zsc.enums.ProtoEnum: core names from the descriptors, one UNSPECIFIED rule, one wording of each refusal."""

from __future__ import annotations

import pytest

from zsc.enums import ProtoEnum
from zsc.errors import InvalidArgument
from zsc.generative.v1 import generative_pb2 as gen_pb
from zsc.recovery.v1 import recovery_pb2 as rec_pb


def test_names_come_from_the_descriptor_without_the_prefix() -> None:
    calibration = ProtoEnum(gen_pb.CalibrationMethod, default="none", field="calibration method", strip="CALIBRATION_")
    assert calibration.names == ("none", "holdout")
    assert calibration.name(gen_pb.CALIBRATION_METHOD_UNSPECIFIED) == "none"
    assert calibration.name(gen_pb.CALIBRATION_HOLDOUT) == "holdout"
    assert calibration.value("holdout") == gen_pb.CALIBRATION_HOLDOUT


def test_unspecified_without_a_default_is_refused_naming_the_wire_values() -> None:
    kinds = ProtoEnum(gen_pb.GeneratorKind, default=None, field="generator kind")
    with pytest.raises(InvalidArgument, match=r"^generator kind is unset; expected TFVAEGAN, CLSWGAN or SHIP_VAE$"):
        kinds.name(0)


def test_an_unknown_number_is_refused_never_defaulted() -> None:
    samplers = ProtoEnum(rec_pb.VmfSampler, default="exact", field="vMF sampler")
    assert samplers.name(0) == "exact"
    with pytest.raises(InvalidArgument, match=r"^unknown vMF sampler 9; expected EXACT or AUTHORS$"):
        samplers.name(9)


def test_a_default_must_be_a_value() -> None:
    with pytest.raises(ValueError, match="not a value"):
        ProtoEnum(rec_pb.VmfSampler, default="wood", field="vMF sampler")
