"""Error types that carry their meaning across the core/servicer boundary.

Cores raise these (or plain ``ValueError`` for bad input); the runtime's error interceptor maps each to one gRPC
status code, so no core needs to know about gRPC.
"""

from __future__ import annotations


class ZscError(Exception):
    """Base class of zsc's own errors."""


class InvalidArgument(ZscError, ValueError):
    """The request is malformed or violates a documented limit."""


class NotFound(ZscError, LookupError):
    """A named model, dataset, operation or registry entry does not exist."""


class FailedPrecondition(ZscError):
    """The request is valid, but the service's state or profile cannot serve it (e.g. CLIP under a non-CLIP profile)."""


class ResourceExhausted(ZscError):
    """A configured capacity limit was hit (message size, concurrent operations, image pixels)."""


class ModelUnavailable(ZscError):
    """Real weights are missing from every place zsc looked, and zsc will not download them silently."""


class Cancelled(ZscError):
    """The operation was cancelled by a client or its deadline expired."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): what a status message shows."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
