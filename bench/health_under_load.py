"""Benchmark: gRPC health latency while long operations run, against an idle server.

    python bench/health_under_load.py              # tiny classification server, 2 busy jobs, 50 checks each way

Jobs run off the RPC threads (the OperationManager), so a health check should answer about as fast beside two
CPU-bound jobs as on an idle server. Prints the median and worst latency of each and their ratios; the test suite
only checks that health says SERVING under load (tests/service/test_runtime.py), timing lives here.
"""

# ruff: noqa: E402  (CPU tuning runs before torch is imported, on purpose)
from __future__ import annotations

from zsc.runtime.tuning import apply_cpu_tuning

apply_cpu_tuning()

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from zsc.common.v1 import common_pb2
from zsc.runtime.client import connect
from zsc.runtime.server import ServerConfig, ZscServer


def _busy(seconds: float):
    def job(ctx):
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            ctx.check_cancelled()
            n += sum(i * i for i in range(20_000))  # pure-Python work: it holds the GIL as a job's host code does
        return common_pb2.Status(code=0, message=str(n))

    return job


def _latencies(stub: health_pb2_grpc.HealthStub, checks: int) -> list[float]:
    out = []
    for _ in range(checks):
        t = time.perf_counter()
        stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checks", type=int, default=50)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ZscServer("classification", ServerConfig(data_roots=[Path(tmp)], max_concurrent_operations=args.jobs))
        port = server.start()
        server.wait_ready(300)
        channel = connect(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            _latencies(stub, 5)  # warm the channel
            idle = _latencies(stub, args.checks)
            ops = [server.runtime.operations.start("bench/busy", _busy(600)) for _ in range(args.jobs)]
            time.sleep(0.5)
            busy = _latencies(stub, args.checks)
            for op in ops:
                server.runtime.operations.cancel(op.name)
        finally:
            channel.close()
            server.stop(grace=1)
    for name, xs in (("idle", idle), (f"{args.jobs} busy jobs", busy)):
        print(f"{name:>12}: median {statistics.median(xs) * 1e3:.2f} ms, worst {max(xs) * 1e3:.2f} ms")
    print(
        f"ratio busy/idle: median {statistics.median(busy) / statistics.median(idle):.2f}x, "
        f"worst {max(busy) / max(idle):.2f}x"
    )


if __name__ == "__main__":
    main()
