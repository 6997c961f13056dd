"""The Diagnostics service: who is answering (GetServerInfo), and a tensor round trip through the real codec for
transport benchmarks and checks."""

from __future__ import annotations

from collections.abc import Callable

from zsc import codec
from zsc.common.v1 import common_pb2, common_pb2_grpc


class DiagnosticsServicer(common_pb2_grpc.DiagnosticsServicer):
    def __init__(self, max_tensor_bytes: int, server_info: Callable[[], common_pb2.ServerInfo]) -> None:
        self.max_tensor_bytes = max_tensor_bytes * 8  # streamed: bounded by memory, not by one message
        self.server_info = server_info

    def EchoTensor(self, request_iterator, context):
        array = codec.decode_chunks(request_iterator, max_bytes=self.max_tensor_bytes)
        yield from codec.encode_chunks(array)

    def GetServerInfo(self, request: common_pb2.GetServerInfoRequest, context) -> common_pb2.ServerInfo:
        return self.server_info()
