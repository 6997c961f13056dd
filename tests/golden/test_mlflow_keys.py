"""Golden: the MLflow keys each run-opening RPC logs (issue #17 moves every servicer onto one tracked-job path).

Each RPC runs once, on the hostile suite's small valid base request (variants below for the other generator kinds,
fine-tuning methods and the diffusion classifier), against real tiny-profile servers. Recorded per RPC: the sorted
keys of the run's params, tags and metrics, and the tag keys of a model version the run registered. Values vary
between runs; the keys are the contract that dashboards, `zsc registry review` and promotion gates read. MLflow's own
``mlflow.*`` tags are left out: MLflow sets them from the client's environment (user, source file, git), not zsc.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from golden_support import channels_for, check, golden_world, hostile

from zsc import tracking
from zsc.classification.v1 import classification_pb2 as cls_pb
from zsc.common.v1 import common_pb2
from zsc.generative.v1 import generative_pb2 as gen_pb

pytestmark = [pytest.mark.service, pytest.mark.usefixtures("one_torch_thread")]
__all__ = ["golden_world"]  # the fixture, imported for the tests below


Mutate = Callable[[Any, hostile.World], None]


def generator_kind(kind: str) -> Mutate:
    def mutate(request: gen_pb.TrainGeneratorRequest, world: hostile.World) -> None:
        request.ClearField("clswgan")
        request.kind = gen_pb.GeneratorKind.Value(kind.upper())
        request.registered_model_name = f"zsc-golden-generator-{kind}"
        if kind == "ship_vae":  # SHIP's VAE decodes into the tiny CLIP's width: the CLIP features file
            request.features_uri = world.base["features"]
            request.settings.ClearField("hidden_dim")  # SHIP's widths are its own settings
            request.ship_vae.CopyFrom(gen_pb.ShipVaeSettings(encoder_hidden=16, generator_hidden=16))

    return mutate


def finetune_method(method: str) -> Mutate:
    def mutate(request: gen_pb.FineTuneRequest, world: hostile.World) -> None:
        request.method = gen_pb.FineTuneMethod.Value(method.upper())
        request.registered_model_name = f"zsc-golden-finetune-{method}"

    return mutate


def diffusion(request: cls_pb.EvaluateZeroShotRequest, world: hostile.World) -> None:
    request.method = cls_pb.DIFFUSION
    request.diffusion.CopyFrom(
        cls_pb.DiffusionOptions(stages=[cls_pb.DiffusionStage(n_samples=2, to_keep=1)], seed=0, batch_size=4)
    )


def unchanged(request: Any, world: hostile.World) -> None:
    pass


# label -> (rpc, how the base request is changed)
CASES: dict[str, tuple[str, Mutate]] = {
    "Synthesis/GenerateDataset": ("Synthesis/GenerateDataset", unchanged),
    "Recovery/Recover": ("Recovery/Recover", unchanged),
    "Recovery/Align": ("Recovery/Align", unchanged),
    "Generative/TrainGenerator clswgan": ("Generative/TrainGenerator", unchanged),
    "Generative/TrainGenerator tfvaegan": ("Generative/TrainGenerator", generator_kind("tfvaegan")),
    "Generative/TrainGenerator ship_vae": ("Generative/TrainGenerator", generator_kind("ship_vae")),
    "Generative/TrainGZSL": ("Generative/TrainGZSL", unchanged),
    "Generative/EvaluateGZSL": ("Generative/EvaluateGZSL", unchanged),
    "Generative/FineTune clip_adapter": ("Generative/FineTune", unchanged),
    "Generative/FineTune coop": ("Generative/FineTune", finetune_method("coop")),
    "Generative/FineTune tip_adapter_f": ("Generative/FineTune", finetune_method("tip_adapter_f")),
    "Classification/EvaluateZeroShot clip": ("Classification/EvaluateZeroShot", unchanged),
    "Classification/EvaluateZeroShot diffusion": ("Classification/EvaluateZeroShot", diffusion),
    "Downstream/TrainClassifier": ("Downstream/TrainClassifier", unchanged),
    "Downstream/Evaluate": ("Downstream/Evaluate", unchanged),
    "Features/ExtractFeatures": ("Features/ExtractFeatures", unchanged),
}


def run_keys(run_id: str) -> dict[str, list[str]]:
    client = tracking.client()
    data = client.get_run(run_id).data
    keys = {
        "params": sorted(data.params),
        "tags": sorted(k for k in data.tags if not k.startswith("mlflow.")),
        "metrics": sorted(data.metrics),
    }
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    if versions:
        keys["model_version_tags"] = sorted({k for v in versions for k in v.tags})
    return keys


def test_every_run_opening_rpc_logs_the_golden_keys(golden_world: hostile.World, server_for) -> None:
    channels = channels_for(golden_world, server_for)
    observed = {}
    for label, (name, mutate) in CASES.items():
        r = hostile.rpc(name)
        request = hostile.base_request(name, golden_world)
        mutate(request, golden_world)
        op = hostile.call(channels[r.server], r, request)
        final = hostile.finish(channels[r.server], op, grace=hostile.CALL_TIMEOUT)
        assert final.metadata.state == common_pb2.OperationMetadata.SUCCEEDED, (label, final.error.message)
        assert final.metadata.mlflow_run_id, f"{label} opened no MLflow run"
        observed[label] = run_keys(final.metadata.mlflow_run_id)
    check("mlflow_keys.json", observed)
