"""The Diagnostics service: a tensor round trip through the real codec, for transport benchmarks and checks."""

from __future__ import annotations

from zsc import codec
from zsc.common.v1 import common_pb2_grpc


class DiagnosticsServicer(common_pb2_grpc.DiagnosticsServicer):
    def __init__(self, max_tensor_bytes: int) -> None:
        self.max_tensor_bytes = max_tensor_bytes * 8  # streamed: bounded by memory, not by one message

    def EchoTensor(self, request_iterator, context):
        array = codec.decode_chunks(request_iterator, max_bytes=self.max_tensor_bytes)
        yield from codec.encode_chunks(array)
