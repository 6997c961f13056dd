"""Per-thread torch CPU intra-op thread counts, for threads that live as long as the server.

torch's CPU intra-op threads are an OpenMP team per calling thread. A team left alive on a long-lived thread makes
libgomp count more threads than cores and stop spinning between parallel regions, so every later job of the process
runs slower (1.3-1.5x on the 2-core development machine: bench/job_threads.py). ``torch.set_num_threads`` cannot
help: it also changes the count every thread that starts later inherits. So gRPC handler threads, which serve quick
RPCs for the server's whole life, get one intra-op thread each through the OpenMP and MKL runtimes torch loaded
(parallelism comes from concurrent RPCs there), while jobs run on fresh threads with torch's default.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
_state = threading.local()


@functools.cache
def _thread_count_setters() -> tuple[Callable[[int], None], ...]:
    """omp_set_num_threads of the OpenMP runtime torch loaded and MKL's per-thread setter; none where unknown."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return ()
    paths = {line.split()[-1] for line in maps.read_text().splitlines() if line.endswith(".so") or ".so." in line}
    setters: list[Callable[[int], None]] = []
    # (library, C function taking an int by value); MKL is linked into libtorch_cpu (its lowercase names are the
    # Fortran entry points, which take a pointer).
    wanted = (
        ("libgomp", "omp_set_num_threads"),
        ("libiomp", "omp_set_num_threads"),
        ("libtorch_cpu", "MKL_Set_Num_Threads_Local"),
    )
    for marker, symbol in wanted:
        for path in sorted(p for p in paths if marker in Path(p).name):
            function = getattr(ctypes.CDLL(path), symbol, None)
            if function is not None:
                function.argtypes, function.restype = [ctypes.c_int], None
                setters.append(function)
                break
    if not setters:
        log.warning("no OpenMP runtime found in this process; handler threads keep torch's intra-op thread count")
    return tuple(setters)


def use_one_intraop_thread() -> None:
    """Give the calling thread (only) one torch intra-op thread; later calls on the same thread cost nothing."""
    if getattr(_state, "single", False):
        return
    import torch  # here, not at the top: the CLI imports the server module, and torch costs seconds

    torch.get_num_threads()  # torch's lazy per-thread initialization first, or it would undo the settings below
    for setter in _thread_count_setters():
        setter(1)
    _state.single = True
