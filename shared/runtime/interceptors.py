"""Server interceptors: one place that logs each call and maps exceptions to gRPC status codes.

Servicers and cores raise ordinary exceptions (``ValueError`` for bad input, zsc's own error types for the rest);
clients always get a status code and a one-line message, never a stack trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from zsc import errors
from zsc.runtime.intraop import use_one_intraop_thread

log = logging.getLogger("zsc.rpc")

# Most specific first: InvalidArgument is also a ValueError, NotFound also a LookupError.
STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (FileNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_for(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and one-line client message for an exception."""
    for kind, code in STATUS_OF:
        if isinstance(err, kind):
            return code, _one_line(str(err) or type(err).__name__)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(err).__name__}); see the server log"


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _computes(method: str) -> bool:
    """zsc's own RPCs may run torch; operation polling and health checks never do."""
    return method.startswith("/zsc.") and not method.startswith("/zsc.common.v1.Operations/")


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Logs every call with its duration and status, and turns exceptions into status codes."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=self._wrap_unary(handler.unary_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._wrap_stream(handler.unary_stream, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._wrap_unary(handler.stream_unary, method))
        if handler.stream_stream:
            return handler._replace(stream_stream=self._wrap_stream(handler.stream_stream, method))
        return handler

    def _wrap_unary(self, behavior: Callable, method: str) -> Callable:
        computes = _computes(method)

        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            if computes:  # a handler thread lives as long as the server: no OpenMP team of its own (intraop.py)
                use_one_intraop_thread()
            try:
                response = behavior(request, context)
            except Exception as err:
                self._abort(context, err, method, start)
            else:
                log.debug("%s OK %.1f ms", method, 1e3 * (time.perf_counter() - start))
                return response

        return wrapper

    def _wrap_stream(self, behavior: Callable, method: str) -> Callable:
        computes = _computes(method)

        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            if computes:
                use_one_intraop_thread()
            try:
                yield from behavior(request, context)
            except Exception as err:
                self._abort(context, err, method, start)
            else:
                log.debug("%s OK %.1f ms", method, 1e3 * (time.perf_counter() - start))

        return wrapper

    @staticmethod
    def _abort(context: grpc.ServicerContext, err: Exception, method: str, start: float) -> None:
        if context.code() is not None and context.code() != grpc.StatusCode.OK and not isinstance(err, errors.ZscError):
            raise err  # context.abort() already set the status; grpc raises to unwind
        code, message = status_for(err)
        elapsed = 1e3 * (time.perf_counter() - start)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s INTERNAL %.1f ms", method, elapsed)
        else:
            log.info("%s %s %.1f ms: %s", method, code.name, elapsed, message)
        context.abort(code, message)
