"""``zsc.client`` without a server: requests built from plain values (None keeps a field unset), results decoded
into dataclasses (tensors as numpy, enums as names, unset messages as None), the merged zero-shot evaluation's
per-class rule (the library's), and the shard cut the client computes equal to the synthesis core's."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from zsc import codec, manifests
from zsc.client import ClientError, classification, generative, recovery, synthesis
from zsc.client._messages import build, from_message
from zsc.errors import InvalidArgument
from zsc.generative.v1 import generative_pb2 as gen_pb
from zsc.recovery.v1 import recovery_pb2 as rec_pb


def test_a_request_sets_what_is_given_and_leaves_none_unset() -> None:
    request = build(
        rec_pb.RecoverRequest,
        teacher={"weight": np.eye(2, dtype=np.float32), "bias": None, "metric": recovery.METRICS.value("linear")},
        class_names=["a", "b"],
        theta=None,
        num=7,
        trusted=False,
    )
    assert request.teacher.metric == rec_pb.LINEAR and not request.teacher.HasField("bias")
    assert (codec.decode(request.teacher.weight) == np.eye(2)).all()
    assert not request.HasField("theta") and request.num == 7 and request.HasField("trusted") and not request.trusted
    with pytest.raises(ClientError, match="no field 'nope'"):
        build(rec_pb.RecoverRequest, nope=1)


def test_enum_names_are_the_core_names_and_unspecified_is_refused() -> None:
    assert generative.CALIBRATIONS.names == ("none", "holdout")
    assert generative.KINDS.value("ship_vae") == gen_pb.SHIP_VAE
    with pytest.raises(InvalidArgument, match="kind 'gan' is not one of"):
        generative.KINDS.value("gan")


def test_a_result_decodes_into_its_dataclass() -> None:
    msg = gen_pb.TrainGZSLResult(class_names=["a", "b"], seen_indices=[0], novel_indices=[1], final_loss=0.5)
    msg.model.name, msg.model.version = "m", "3"
    result = from_message(generative.TrainedGZSL, msg)
    assert result.model == generative.ModelVersion("m", "3", "", "", "") and result.calibration is None
    assert (result.class_names, result.novel_indices) == (["a", "b"], [1])
    msg.calibration.method = gen_pb.CALIBRATION_HOLDOUT
    assert from_message(generative.TrainedGZSL, msg).calibration.method == "holdout"

    @dataclass
    class Mu:
        mu: np.ndarray | None
        kappa: float

    got = from_message(Mu, rec_pb.RecoverResult(mu=codec.encode(np.ones((2, 3), np.float32)), kappa=2.0))
    assert got.mu.shape == (2, 3) and got.kappa == 2.0
    assert from_message(Mu, rec_pb.RecoverResult()).mu is None


def test_merged_zero_shot_uses_the_library_rule_for_a_class_without_images() -> None:
    shard = classification._ShardResult(["a", "b", "c"], 4, np.array([[2, 1, 0], [0, 1, 0], [0, 0, 0]]), "run", 0.5)
    merged = classification.merge_zero_shot([shard, shard])
    assert merged.per_class_accuracy[:2] == [2 / 3, 1.0] and math.isnan(merged.per_class_accuracy[2])
    assert merged.metrics["macro_accuracy"] == pytest.approx((2 / 3 + 1.0) / 2)  # the empty class does not count
    assert merged.metrics["top1"] == 0.75 and merged.metrics["n_images"] == 8 and merged.mlflow_run_ids == ["run"] * 2


def test_the_client_cuts_shards_as_the_synthesis_core_does(tmp_path) -> None:
    from zsc_synthesis.core import writer

    request = writer.SynthesisRequest.create(["a", "b", "c"], 10)
    for workers, grid in ((2, 4), (4, 4), (9, 2), (1, 8)):
        expected = writer.split_shards(request, workers, grid)
        assert synthesis.plan_shards(["a", "b", "c"], 10, tmp_path, workers, grid) == expected
    assert synthesis.plan_shards(["a"], 16, tmp_path, 2) == [manifests.Shard(None, 0, 8), manifests.Shard(None, 8, 16)]


def test_a_dataset_request_carries_classes_tricks_and_shard(tmp_path) -> None:
    tricks = synthesis.TrickSpec(merge=[synthesis.TrickShare("class_prompt", 0.5), synthesis.TrickShare("x", 0.5)])
    tricks.guidance_range = synthesis.GuidanceRange(1.0, 2.0)
    request = synthesis.dataset_request(
        ["cat", synthesis.ClassSpec("crane", "a bird")], 3, tmp_path, tricks=tricks, shard=manifests.Shard(("cat",), 1)
    )
    assert [(c.name, c.description) for c in request.classes] == [("cat", ""), ("crane", "a bird")]
    assert [m.share for m in request.tricks.merge] == [0.5, 0.5] and request.tricks.guidance_range.hi == 2.0
    assert not request.tricks.HasField("guidance_scale") and request.output_uri == str(tmp_path.resolve())
    assert (list(request.shard.classes), request.shard.start, request.shard.stop) == (["cat"], 1, 0)
