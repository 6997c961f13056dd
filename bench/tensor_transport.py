"""Tensor transport: a float32 tensor through a running service and back (Diagnostics.EchoTensor, chunked).

Prints MB/s of the gRPC round trip and the ratio to an in-process numpy copy of the same tensor.

    python bench/tensor_transport.py                  # starts a classification service on an ephemeral port
    python bench/tensor_transport.py --address HOST:PORT --mb 256
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from zsc import codec
from zsc.common.v1 import common_pb2_grpc
from zsc.runtime.client import service_channel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="a running zsc service (default: start one on loopback)")
    parser.add_argument("--service", default="classification")
    parser.add_argument("--mb", type=int, default=256, help="tensor size in MB (default 256)")
    parser.add_argument("--chunk-kb", type=int, default=codec.CHUNK_BYTES >> 10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    x = np.random.default_rng(0).standard_normal(args.mb * (1 << 20) // 4, dtype=np.float32)
    nbytes = x.nbytes

    copy_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        y = x.copy()
        copy_times.append(time.perf_counter() - t0)
    del y

    with service_channel(args.service, args.address, data_roots=[Path.cwd()]) as channel:
        stub = common_pb2_grpc.DiagnosticsStub(channel)
        grpc_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            back = codec.decode_chunks(stub.EchoTensor(codec.encode_chunks(x, args.chunk_kb << 10)))
            grpc_times.append(time.perf_counter() - t0)
            assert np.array_equal(back, x), "round trip changed the tensor"

    mb = nbytes / 1e6
    grpc_s, copy_s = min(grpc_times), min(copy_times)
    # A round trip moves the tensor twice (there and back); MB/s counts the tensor once per direction.
    print(f"tensor: {mb:.0f} MB float32, chunks of {args.chunk_kb} KiB, best of {args.repeats}")
    print(f"gRPC round trip : {grpc_s:8.3f} s  {2 * mb / grpc_s:10.1f} MB/s (both directions)")
    print(f"numpy copy      : {copy_s:8.3f} s  {mb / copy_s:10.1f} MB/s")
    print(f"ratio (round trip time / in-process copy time): {grpc_s / copy_s:.1f}x")


if __name__ == "__main__":
    main()
