"""Seeded use of torch's global RNG: the one place zsc needs it is model construction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# One lock for the process: services run jobs on threads, and construction in any of them draws from the same
# global generator.
_LOCK = threading.RLock()


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU RNG seeded by ``seed``, and give the caller its RNG state back after.

    Layer initializers (``nn.Linear``, timm, open_clip, diffusers) draw from the global generator, so building a model
    is where a seed has to go through it. The lock keeps two jobs building at once from drawing from each other's
    seeded stream; everything after construction should draw from explicit generators.
    """
    with _LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
