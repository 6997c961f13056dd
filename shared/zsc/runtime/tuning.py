"""Process-wide CPU tuning, applied only where a process opts in: `zsc serve` (and so `zsc up`'s children), the
server a client command starts in-process, and the benches. Importing zsc changes nothing; a program that uses the
library decides for itself.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def apply_cpu_tuning(threads: int = 0) -> bool:
    """Back torch's large CPU buffers with transparent huge pages and, with ``threads`` > 0, set torch's intra-op
    thread count (the default every thread started later inherits: a server's job threads).

    Huge pages: a fresh [100, 600, 512] float32 buffer costs ~50 ms of page faults with 4 KB pages and ~8 ms with
    huge pages (bench/vmf.py). torch reads ``THP_MEM_ALLOC_ENABLE`` once, on its first allocation, so this only
    takes effect before torch is imported; ``THP_MEM_ALLOC_ENABLE=0`` in the environment opts out. Returns whether
    the huge-page setting can still take effect (False: torch was already imported)."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    early = "torch" not in sys.modules
    if early:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    elif os.environ.get("THP_MEM_ALLOC_ENABLE") is None:
        log.debug("torch is already imported: transparent huge pages stay as torch found them")
    if threads:
        import torch

        torch.set_num_threads(threads)
    return early
