"""Server interceptors: one place that logs each call and maps exceptions to gRPC status codes.

Servicers and cores raise ordinary exceptions (``ValueError`` for bad input, zsc's own error types for the rest);
clients always get a status code and a one-line message, never a stack trace.

Request bytes are parsed here too: grpcio answers INTERNAL "Exception deserializing request!" when a deserializer
raises, and a deserializer cannot set a status of its own. The wrapped deserializer returns a ``Refused`` marker
instead, and the call's wrapper answers it with INVALID_ARGUMENT (bytes that do not decode) or RESOURCE_EXHAUSTED
(a body over its method's limit). grpcio hands a deserializer the bytes only, not the call's metadata, so the bearer
token cannot be checked there; security.deny() refuses an unauthenticated call without reading its body instead.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from zsc import errors
from zsc.runtime.intraop import use_one_intraop_thread
from zsc.runtime.memory import TRIMMER

log = logging.getLogger("zsc.rpc")

# Methods whose requests are a few names or ids: health (which needs no token), reflection, Operations and
# GetServerInfo. A body over SMALL_REQUEST_BYTES is refused before it is parsed, whatever the server's message limit.
SMALL_REQUEST_METHODS = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
    "/zsc.common.v1.Operations/",
    "/zsc.common.v1.Diagnostics/GetServerInfo",
)
SMALL_REQUEST_BYTES = 64 << 10
# The calling client's address without its port ("ipv4:127.0.0.1"), for caps per client (operations.py).
CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("zsc_client", default="")


@dataclass(frozen=True)
class Refused:
    """What a guarded deserializer returns for a request it will not parse."""

    code: grpc.StatusCode
    message: str

    def error(self) -> errors.ZscError:
        kind = errors.ResourceExhausted if self.code == grpc.StatusCode.RESOURCE_EXHAUSTED else errors.InvalidArgument
        return kind(self.message)


def request_limit(method: str) -> int | None:
    """The largest request body ``method`` takes below the server's own limit, or None for the server's limit."""
    return SMALL_REQUEST_BYTES if method.startswith(SMALL_REQUEST_METHODS) else None


def guard_deserializer(deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    """``deserialize`` that returns a ``Refused`` for bytes it cannot parse or that are over the method's limit."""
    limit = request_limit(method)
    message_type = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)  # a generated FromString
    what = message_type.full_name if message_type is not None else f"{method}'s request"

    def guarded(data: bytes) -> Any:
        TRIMMER.saw(len(data))
        if limit is not None and len(data) > limit:
            message = f"a request of {len(data)} bytes is over {method}'s limit of {limit}"
            return Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except Exception:
            return Refused(grpc.StatusCode.INVALID_ARGUMENT, f"the request bytes do not parse as {what}")

    return guarded


def _checked(requests: Iterable[Any]) -> Iterator[Any]:
    """A client stream whose refused messages raise (and so end the call with their status)."""
    for request in requests:
        if isinstance(request, Refused):
            raise request.error()
        yield request


def _client_of(context: grpc.ServicerContext) -> str:
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    return f"{kind}:{rest.rsplit(':', 1)[0]}" if kind in ("ipv4", "ipv6") else peer


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
        handler = handler._replace(request_deserializer=guard_deserializer(handler.request_deserializer, method))
        streaming = handler.request_streaming
        if handler.unary_unary:
            return handler._replace(unary_unary=self._wrap_unary(handler.unary_unary, method, streaming))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._wrap_stream(handler.unary_stream, method, streaming))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._wrap_unary(handler.stream_unary, method, streaming))
        if handler.stream_stream:
            return handler._replace(stream_stream=self._wrap_stream(handler.stream_stream, method, streaming))
        return handler

    def _wrap_unary(self, behavior: Callable, method: str, streaming: bool) -> Callable:
        computes = _computes(method)

        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            if computes:  # a handler thread lives as long as the server: no OpenMP team of its own (intraop.py)
                use_one_intraop_thread()
            token = CLIENT.set(_client_of(context))
            try:
                response = behavior(_request(request, streaming), context)
            except Exception as err:
                self._abort(context, err, method, start)
            else:
                log.debug("%s OK %.1f ms", method, 1e3 * (time.perf_counter() - start))
                return response
            finally:
                CLIENT.reset(token)
                _after_call(context)

        return wrapper

    def _wrap_stream(self, behavior: Callable, method: str, streaming: bool) -> Callable:
        computes = _computes(method)

        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = time.perf_counter()
            if computes:
                use_one_intraop_thread()
            CLIENT.set(_client_of(context))  # grpcio runs each call in a context of its own: no reset needed
            try:
                yield from behavior(_request(request, streaming), context)
            except Exception as err:
                self._abort(context, err, method, start)
            else:
                log.debug("%s OK %.1f ms", method, 1e3 * (time.perf_counter() - start))
            finally:
                _after_call(context)

        return wrapper

    @staticmethod
    def _abort(context: grpc.ServicerContext, err: Exception, method: str, start: float) -> None:
        if isinstance(err, grpc.RpcError) and not context.is_active():
            # grpcio's request iterator raises a bare RpcError when the client cancels or hangs up: no fault here
            log.debug("%s client went away after %.1f ms", method, 1e3 * (time.perf_counter() - start))
            return
        if context.code() is not None and context.code() != grpc.StatusCode.OK and not isinstance(err, errors.ZscError):
            raise err  # context.abort() already set the status; grpc raises to unwind
        code, message = status_for(err)
        elapsed = 1e3 * (time.perf_counter() - start)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s INTERNAL %.1f ms", method, elapsed)
        else:
            log.info("%s %s %.1f ms: %s", method, code.name, elapsed, message)
        context.abort(code, message)


def _request(request: Any, streaming: bool) -> Any:
    if streaming:
        return _checked(request)
    if isinstance(request, Refused):
        raise request.error()
    return request


def _after_call(context: grpc.ServicerContext) -> None:
    """Once large request bytes were read, trim the heap when this call is over (its buffers are then freed)."""
    if TRIMMER.pending and not context.add_callback(TRIMMER.call_ended):
        TRIMMER.call_ended()  # the call has already terminated
