"""The answering server says who it is (GetServerInfo, a "served by" line, run tags) and refuses a client that asked
for another profile with FAILED_PRECONDITION. Real gRPC on loopback, tiny profile."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from zsc import tracking
from zsc.cli.main import main
from zsc.runtime.client import connect, server_info, service_channel

pytestmark = pytest.mark.service


def test_server_info_names_service_profile_models_and_process(classification_server) -> None:
    channel = connect(f"127.0.0.1:{classification_server.port}", profile="tiny")
    try:
        info = server_info(channel)
    finally:
        channel.close()
    assert (info.service, info.profile, info.pid) == ("classification", "tiny", os.getpid())
    assert info.models["clip"] == "tiny:zsc-tiny-clip"
    assert info.models["diffusion_classifier"] == "tiny:zsc-tiny-sd"
    assert info.models["downstream_arch"] == "resnet18"
    assert "image_encoder" not in info.models  # tiny leaves it to CLIP's towers


def test_a_client_asking_for_another_profile_gets_failed_precondition(classification_server) -> None:
    address = f"127.0.0.1:{classification_server.port}"
    channel = connect(address, profile="paper")
    try:
        with pytest.raises(grpc.RpcError) as err:
            server_info(channel)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "runs profile 'tiny', not 'paper'" in err.value.details()
        # health stays open to any caller: readiness polls carry no profile
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
    with pytest.raises(grpc.RpcError) as err, service_channel("classification", address, profile="paper"):
        pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_cli_with_another_profile_fails_in_one_line_and_names_the_server_otherwise(
    classification_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    address = f"127.0.0.1:{classification_server.port}"
    argv = ["zeroshot", "--image", str(image), "--classes", "cat,dog", "--address", address]
    assert main([*argv, "--profile", "paper"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zsc: FAILED_PRECONDITION: this classification server runs profile")
    assert main(argv) == 0  # no --profile: whatever the running server has
    err = capsys.readouterr().err
    assert f"zsc: classification served by {address} (profile tiny, models: clip tiny:zsc-tiny-clip" in err
    assert "every accuracy they give is chance level by design" in err  # beside the numbers it printed


def test_runs_of_a_server_carry_its_profile_and_models(classification_server) -> None:
    """What a run created in one of the server's jobs is tagged with: this server's, even when the process holds
    other servers of the same service (test processes do)."""
    from google.protobuf import empty_pb2

    seen: dict[str, str] = {}

    def job(ctx) -> empty_pb2.Empty:
        seen.update(tracking.owner_tags())
        return empty_pb2.Empty()

    operations = classification_server.runtime.operations
    op = operations.start("identity-test", job)
    assert next(o for o in operations.watch(op.name) if o.done).HasField("response")
    tags = seen
    assert tags["zsc.server.profile"] == "tiny"
    assert tags["zsc.server.address"] == f"127.0.0.1:{classification_server.port}"
    assert tags["zsc.server.model.clip"] == "tiny:zsc-tiny-clip"


def test_health_checks_the_address_it_is_given(classification_server, capsys) -> None:
    address = f"127.0.0.1:{classification_server.port}"
    assert main(["health", "classification", "--address", address]) == 0
    assert capsys.readouterr().out.split() == ["classification", address, "SERVING"]
    assert main(["health", "--address", address]) == 2  # one address, one service
    assert "names one server" in capsys.readouterr().err
