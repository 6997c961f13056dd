"""Bounded memory for request bytes: a byte budget shared by a server's client streams, and giving freed heap back to
the operating system after large calls.

glibc keeps the memory of freed allocations in its per-thread arenas; after a burst of large requests (gRPC reads a
message as many small slices on its poller threads) the pages stay resident although nothing uses them. ``malloc_trim``
returns them. It runs on its own thread, shortly after a call that brought large request bytes has ended, at most
once per burst.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable

from zsc import errors

log = logging.getLogger("zsc.memory")

LARGE_REQUEST_BYTES = 1 << 20  # requests this large count towards a trim after their call
TRIM_DELAY_S = 0.2  # after the call ends: its request buffers are released as grpcio returns from the call


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None off glibc (musl, macOS) and with ZSC_MALLOC_TRIM=0 (to measure without it)."""
    if os.environ.get("ZSC_MALLOC_TRIM", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class Trimmer:
    """Calls malloc_trim(0) once large request bytes were seen and a call has ended since."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._lock = threading.Lock()
        self._pending = 0  # large request bytes seen since the last trim
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.trims = 0

    @property
    def pending(self) -> bool:
        return self._pending > 0

    def saw(self, nbytes: int) -> None:
        """A request of ``nbytes`` arrived (called by the request deserializers, on gRPC's poller threads)."""
        if nbytes >= LARGE_REQUEST_BYTES:
            with self._lock:
                self._pending += nbytes

    def call_ended(self) -> None:
        if not self._pending or self._trim is None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="zsc-malloc-trim", daemon=True)
                self._thread.start()
        self._wake.set()

    def trim_now(self) -> None:
        with self._lock:
            freed, self._pending = self._pending, 0
        if self._trim is not None:
            start = time.perf_counter()
            self._trim(0)
            self.trims += 1
            log.debug("malloc_trim after %d large request bytes: %.1f ms", freed, 1e3 * (time.perf_counter() - start))

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(TRIM_DELAY_S)  # calls of one burst end close together: one trim for them
            self._wake.clear()
            self.trim_now()


TRIMMER = Trimmer()  # one per process: malloc's arenas are the process's


class ByteBudget:
    """Bytes that client streams may hold at once, over all the calls of a server; ``take`` past the limit answers
    RESOURCE_EXHAUSTED instead of letting a few streams hold the machine's memory."""

    def __init__(self, limit: int, what: str = "streamed request bytes") -> None:
        self.limit = limit
        self.what = what
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, nbytes: int) -> None:
        with self._lock:
            if self._used + nbytes > self.limit:
                raise errors.ResourceExhausted(
                    f"this server holds {self._used} {self.what} of its limit of {self.limit}; retry later"
                )
            self._used += nbytes

    def give(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - nbytes)
