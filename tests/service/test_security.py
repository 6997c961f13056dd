"""Authentication and exposure rules: bearer tokens, TLS, and no unauthenticated non-loopback bind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.errors import FailedPrecondition
from zsc.runtime.client import connect
from zsc.runtime.security import TlsFiles
from zsc.runtime.server import ServerConfig, ZscServer

pytestmark = pytest.mark.service
TOKEN = "s3cret-token-for-tests-only"


def _list_ops(channel: grpc.Channel) -> None:
    common_pb2_grpc.OperationsStub(channel).ListOperations(common_pb2.ListOperationsRequest(), timeout=10)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory, server_for):
    root = tmp_path_factory.mktemp("d")
    yield server_for("recovery", [root], auth_token=TOKEN)
    server_for.release(root)


def test_missing_or_wrong_token_is_unauthenticated(token_server) -> None:
    for token in ("", "wrong-token-of-enough-length"):
        channel = connect(f"127.0.0.1:{token_server.port}", token=token)
        with pytest.raises(grpc.RpcError) as err:
            _list_ops(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.value.details() == "missing or invalid bearer token"
        channel.close()


def test_right_token_is_accepted_and_health_needs_none(token_server) -> None:
    channel = connect(f"127.0.0.1:{token_server.port}", token=TOKEN)
    _list_ops(channel)
    channel.close()
    anonymous = connect(f"127.0.0.1:{token_server.port}", token="")
    reply = health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    anonymous.close()


def test_non_loopback_bind_needs_auth_or_insecure(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="without authentication"):
        ZscServer("recovery", ServerConfig(host="0.0.0.0", data_roots=[tmp_path]))
    ServerConfig(host="0.0.0.0", auth_token=TOKEN, tls=TlsFiles(tmp_path / "c", tmp_path / "k")).check_exposure()
    ServerConfig(host="0.0.0.0", allow_insecure_remote=True).check_exposure()
    out = subprocess.run(
        [sys.executable, "-m", "zsc.cli.main", "serve", "recovery", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 1
    assert out.stderr.strip().startswith("zsc: refusing to serve on 0.0.0.0 without authentication")
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_token_without_tls_on_a_non_loopback_bind_needs_insecure(tmp_path: Path) -> None:
    """The token would cross the network in cleartext: refused before anything binds (nothing listens on 0.0.0.0)."""
    with pytest.raises(FailedPrecondition, match="without TLS: the bearer token would cross the network in cleartext"):
        ServerConfig(host="0.0.0.0", auth_token=TOKEN).check_exposure()
    ServerConfig(host="0.0.0.0", auth_token=TOKEN, allow_insecure_remote=True).check_exposure()
    ServerConfig(host="127.0.0.1", auth_token=TOKEN).check_exposure()  # loopback: no network to cross
    token = tmp_path / "token"
    token.write_text(TOKEN)
    argv = [sys.executable, "-m", "zsc.cli.main", "serve", "recovery", "--host", "0.0.0.0", "--port", "0"]
    argv += ["--auth-token-file", str(token)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 1
    assert out.stderr.strip().startswith("zsc: refusing to serve on 0.0.0.0 without TLS"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_two_authorization_headers_are_refused_even_with_the_right_token_last(token_server) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{token_server.port}")
    stub = common_pb2_grpc.OperationsStub(channel)
    for first in ("Bearer wrong-token-of-enough-length", f"Bearer {TOKEN}"):
        metadata = [("authorization", first), ("authorization", f"Bearer {TOKEN}")]
        with pytest.raises(grpc.RpcError) as err:
            stub.ListOperations(common_pb2.ListOperationsRequest(), metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.value.details() == "more than one authorization header"
    stub.ListOperations(common_pb2.ListOperationsRequest(), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10)
    channel.close()


@pytest.mark.parametrize(
    "method,streaming",
    [("/zsc.recovery.v1.Recovery/Recover", False), ("/zsc.common.v1.Diagnostics/EchoTensor", True)],
)
def test_authentication_is_checked_before_the_body_is_parsed(token_server, method: str, streaming: bool) -> None:
    """Bytes that parse as nothing: UNAUTHENTICATED without the token (the body is never parsed, nor read: the refusal
    is served as a client stream), INVALID_ARGUMENT with it."""
    channel = grpc.insecure_channel(f"127.0.0.1:{token_server.port}", options=[("grpc.max_send_message_length", -1)])
    garbage = b"\xff" * 64
    large = b"\xff" * (60 << 20)  # under the 64 MiB message limit: only the missing token refuses it
    for body, metadata, code in [
        (garbage, [], grpc.StatusCode.UNAUTHENTICATED),
        (large, [], grpc.StatusCode.UNAUTHENTICATED),
        (garbage, [("authorization", f"Bearer {TOKEN}")], grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            if streaming:
                list(channel.stream_stream(method)(iter([body]), metadata=metadata, timeout=60))
            else:
                channel.unary_unary(method)(body, metadata=metadata, timeout=60)
        assert err.value.code() == code, err.value.details()
    channel.close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0, reason="needs openssl")
def test_tls_with_token(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    config = ServerConfig(data_roots=[tmp_path], auth_token=TOKEN, tls=TlsFiles(cert, key))
    server = ZscServer("recovery", config)
    port = server.start()
    try:
        secure = connect(f"localhost:{port}", token=TOKEN, tls_ca=cert)
        _list_ops(secure)
        secure.close()
        plaintext = connect(f"localhost:{port}", token=TOKEN)
        with pytest.raises(grpc.RpcError) as err:
            _list_ops(plaintext)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        plaintext.close()
    finally:
        server.stop(0)


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0, reason="needs openssl")
def test_plaintext_health_port_beside_tls_serves_health_only(tmp_path: Path) -> None:
    """What Kubernetes' native gRPC probes need: health in plaintext on its own port, nothing else there."""
    cert, key = _self_signed(tmp_path)
    config = ServerConfig(data_roots=[tmp_path], auth_token=TOKEN, tls=TlsFiles(cert, key), health_port=0)
    server = ZscServer("recovery", config)
    server.start()
    try:
        assert server.health_port not in (0, server.port)
        probe = connect(f"127.0.0.1:{server.health_port}")
        server.wait_ready(60)
        reply = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            _list_ops(probe)  # the plaintext port exposes no other service
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as err:  # nor reads a large body: health requests are a service name
            probe.unary_unary("/grpc.health.v1.Health/Check")(b"\n\x80\x80\x08" + b"a" * (128 << 10), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        server.stop(0)
        # a stopped server closes its probe port too, so the kubelet sees it gone
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5)
        probe.close()
    finally:
        server.stop(0)
