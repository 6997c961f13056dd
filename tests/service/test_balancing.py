"""Replicas behind one target: three `zsc serve` processes on loopback behind one ``ipv4:`` multi-address target.

round_robin spreads unary calls over all three; a sharded synthesis gives every replica shards and writes exactly
one replica's bytes; a replica SIGKILLed after its first shard started has that shard re-run by the others, and the
dataset is still complete and byte-identical; a CLIP evaluation sharded over three replicas reports exactly what
one replica reports. Targets and shard cuts have known answers too."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import CIFAR10_TEST, SHARED_DATASETS, load_bench, start_server

from zsc.cli.main import main
from zsc.client import ClientError, fanout, synthesis
from zsc.client.classification import shard_bounds
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.runtime import client
from zsc.synthesis.v1 import synthesis_pb2 as pb
from zsc_synthesis import servicer

pytestmark = pytest.mark.service
CLASSES = ("cat", "dog", "ship")
PER_CLASS, BATCH, STEPS, SEED = 12, 4, 2, 5  # 3 chunks of 4 per class: 9 shards of one chunk


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _argv(out: Path, address: str) -> list[str]:
    argv = ["synthesize", "--classes", ",".join(CLASSES), "--per-class", str(PER_CLASS), "--tricks", "multidomain"]
    argv += ["--resolution", "32", "--steps", str(STEPS), "--seed", str(SEED), "--batch-size", str(BATCH)]
    return [*argv, "--out", str(out), "--address", address]


def _shard_ops(address: str) -> list[common_pb2.Operation]:
    channel = client.connect(address)
    try:
        reply = common_pb2_grpc.OperationsStub(channel).ListOperations(common_pb2.ListOperationsRequest())
        return list(reply.operations)
    finally:
        channel.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("balancing")


@pytest.fixture(scope="module")
def replicas(root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Three synthesis replicas, each its own process (so one can be SIGKILLed)."""
    bench = load_bench("scale")
    logs = tmp_path_factory.mktemp("replica-logs")
    servers = bench.spawn_replicas("synthesis", 3, [root], logs, {servicer.CAP_ENV: "1000"})
    yield servers
    bench.stop_replicas(servers)


@pytest.fixture(scope="module")
def reference(replicas, root: Path) -> Path:
    """The dataset as one replica writes it (one operation, no shards)."""
    out = root / "one-replica"
    assert main(_argv(out, replicas[0][1])) == 0
    return out


def _target(replicas) -> str:
    return "ipv4:" + ",".join(address for _, address in replicas)


def test_targets_resolve_to_their_replicas() -> None:
    assert client.resolve_target("ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:1") == [
        client.Replica("127.0.0.1:1"),
        client.Replica("127.0.0.1:2"),
    ]
    assert client.resolve_target("ipv6:[::1]:7") == [client.Replica("[::1]:7")]
    assert client.resolve_target("a:1,b:2") == [client.Replica("a:1"), client.Replica("b:2")]
    assert client.resolve_target("gpu-box:50054") == [client.Replica("gpu-box:50054")]  # plain: dialled as is
    local = {info[4][0] for info in socket.getaddrinfo("localhost", 9, type=socket.SOCK_STREAM)}
    resolved = client.resolve_target("dns:///localhost:9")
    assert {r.address.rsplit(":", 1)[0].strip("[]") for r in resolved} == local
    assert {r.name for r in resolved} == {"localhost"}  # TLS checks the certificate against the name
    assert client.grpc_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    for bad, says in [
        ("ipv4:127.0.0.1", "has no host:port"),
        ("dns://8.8.8.8/x:1", "a DNS server in the target is not supported"),
        ("dns:///no-such-host.invalid:1", "does not resolve"),
        (" , ", "no address"),
    ]:
        with pytest.raises(ValueError, match=says):
            client.resolve_target(bad)
    with pytest.raises(ValueError, match="needs a dns:/// name or ipv4: addresses"):
        client.grpc_target("a:1,b:2")


def test_round_robin_service_config() -> None:
    balanced = json.loads(client.service_config(balanced=True))
    assert balanced["loadBalancingConfig"] == [{"round_robin": {}}]
    assert balanced["healthCheckConfig"] == {"serviceName": ""}
    assert json.loads(client.service_config())["loadBalancingConfig"] == [{"pick_first": {}}]


def test_shards_are_cut_on_the_batch_grid() -> None:
    assert shard_bounds(100, 12, 8) == [
        (0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 48), (48, 64), (64, 72), (72, 80), (80, 88), (88, 96),
        (96, 100),
    ]  # fmt: skip
    assert shard_bounds(10, 8, 8) == [(0, 8), (8, 10)]  # never more shards than batches
    assert shard_bounds(5, 3, 64) == [(0, 5)]


def test_round_robin_spreads_unary_calls_over_every_replica(replicas) -> None:
    pids = {}
    everyone = {proc.pid for proc, _ in replicas}
    for balanced in (True, False):
        channel = client.connect(_target(replicas), balanced=balanced)
        client.wait_until_serving(channel, timeout=60)
        if balanced:  # round_robin uses the subchannels that are connected; on a loaded machine some connect later
            seen, deadline = set(), time.monotonic() + 60
            while seen != everyone and time.monotonic() < deadline:
                seen.add(client.server_info(channel).pid)
        pids[balanced] = [client.server_info(channel).pid for _ in range(9)]
        channel.close()
    assert {p: pids[True].count(p) for p in everyone} == dict.fromkeys(everyone, 3)
    assert len(set(pids[False])) == 1  # pick_first: one replica, so an Operation's follow-ups find it


def test_sharded_synthesis_uses_every_replica_and_writes_one_replicas_bytes(replicas, reference, root, capsys):
    before = {address: len(_shard_ops(address)) for _, address in replicas}
    out = root / "three-replicas"
    assert main(_argv(out, _target(replicas))) == 0
    captured = capsys.readouterr()
    assert "9 shards over 3 replicas" in captured.err
    assert "generated 36 images" in captured.out
    for _, address in replicas:
        assert len(_shard_ops(address)) > before[address], f"{address} got no shard"
    assert tree(out) == tree(reference)


@pytest.mark.slow
def test_a_replica_killed_mid_job_has_its_shard_rerun_elsewhere(replicas, reference, root, capsys):
    victim, address = replicas[2]
    killed: list[int] = []

    def kill_on_first_shard(where: str, index: int, op: common_pb2.Operation) -> None:
        if where == address and not killed:
            assert not op.done
            victim.send_signal(signal.SIGKILL)
            victim.wait(30)
            killed.append(index)

    out = root / "one-killed"
    targets = [client.Replica(a) for _, a in replicas]
    result = synthesis.generate_dataset(
        targets,
        CLASSES,
        PER_CLASS,
        out,
        tricks=synthesis.TrickSpec(tricks="multidomain"),
        resolution=32,
        seed=SEED,
        generation={"steps": STEPS},
        batch_size=BATCH,
        on_start=kill_on_first_shard,
    )
    err = capsys.readouterr().err
    assert killed, "the victim got no shard"
    assert f"shard {killed[0] + 1}/9 back on the queue: {address}: UNAVAILABLE" in err
    summary = result.shards.summary(len(targets))
    assert summary.startswith("9 shards over 3 replicas") and f"re-queued after losing {address}" in summary
    assert address not in summary.split("(")[1].split(")")[0]  # the others finished all 9
    assert result.generated + result.skipped == len(CLASSES) * PER_CLASS
    assert tree(out) == tree(reference)


def test_fanout_without_a_live_replica_fails_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ClientError, match=r"no replica left for 1 of 1 shards \(127\.0\.0\.1:\d+: "):
        fanout.run_shards(
            "synthesis", [client.Replica(dead)], [pb.GenerateDatasetRequest()], lambda c, r: None, ready_timeout=1
        )


def test_sharded_clip_evaluation_reports_exactly_one_replicas_result(tmp_path: Path, capsys) -> None:
    servers = [start_server("classification", [SHARED_DATASETS]) for _ in range(3)]
    try:
        outputs = {}
        for name, servers_used in (("one", servers[:1]), ("three", servers)):
            target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers_used)
            metrics, plots = tmp_path / f"{name}.json", tmp_path / f"{name}-plots"
            argv = ["zeroshot", "--method", "clip", "--data", str(CIFAR10_TEST), "--limit", "96"]
            argv += ["--batch-size", "8", "--address", target, "--metrics-out", str(metrics), "--plots-dir", str(plots)]
            assert main(argv) == 0, capsys.readouterr().err
            outputs[name] = [metrics.read_bytes(), *(p.read_bytes() for p in sorted(plots.iterdir()))]
        assert "12 shards over 3 replicas" in capsys.readouterr().err
        assert all(s.runtime.operations.list()[0] for s in servers), "a replica got no shard"
        assert outputs["three"] == outputs["one"]
    finally:
        for s in servers:
            s.stop(grace=1)
