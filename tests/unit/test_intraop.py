"""zsc.runtime.intraop: one intra-op thread for the calling thread only, never for the process."""

from __future__ import annotations

import threading

import pytest
import torch

from zsc.runtime.intraop import _thread_count_setters, use_one_intraop_thread


@pytest.mark.skipif(not _thread_count_setters(), reason="no OpenMP runtime found in this process")
def test_one_intraop_thread_for_the_calling_thread_only() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the default that new threads inherit (the suite runs with OMP_NUM_THREADS=1)
    seen: dict[str, int] = {}

    def in_thread(name: str, limit: bool) -> None:
        if limit:
            use_one_intraop_thread()
            use_one_intraop_thread()  # idempotent
            a = torch.randn(256, 256)
            (a @ a).sum()  # torch work after the limit keeps it
        seen[name] = torch.get_num_threads()

    try:
        for name, limit in (("handler", True), ("job", False)):
            thread = threading.Thread(target=in_thread, args=(name, limit))
            thread.start()
            thread.join()
        assert seen == {"handler": 1, "job": 2}
        assert torch.get_num_threads() == 2  # the caller's own count is untouched
    finally:
        torch.set_num_threads(before)
