"""The Diagnostics service: who is answering (GetServerInfo), and a tensor round trip through the real codec for
transport benchmarks and checks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from zsc import codec
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.runtime.memory import ByteBudget


class DiagnosticsServicer(common_pb2_grpc.DiagnosticsServicer):
    def __init__(
        self, max_message_bytes: int, server_info: Callable[[], common_pb2.ServerInfo], budget: ByteBudget
    ) -> None:
        # streamed: a stream may hold 8 messages' worth, and all streams together what the budget allows
        self.max_tensor_bytes = min(max_message_bytes * 8, budget.limit)
        self.server_info = server_info
        self.budget = budget

    def EchoTensor(self, request_iterator, context):
        held = [0]

        def counted(chunks: Iterable[common_pb2.TensorChunk]) -> Iterator[common_pb2.TensorChunk]:
            for chunk in chunks:  # bytes are taken as they arrive: a stream that only announces a size holds none
                self.budget.take(len(chunk.data))
                held[0] += len(chunk.data)
                yield chunk

        try:
            array = codec.decode_chunks(counted(request_iterator), max_bytes=self.max_tensor_bytes)
            yield from codec.encode_chunks(array)
        finally:
            self.budget.give(held[0])  # the call is over, whichever way it ended

    def GetServerInfo(self, request: common_pb2.GetServerInfoRequest, context) -> common_pb2.ServerInfo:
        return self.server_info()
