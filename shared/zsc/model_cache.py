"""One single-flight LRU cache of loaded models, for every service that loads models on demand (and for the cores'
costly derived values: the text embeddings of a class list).

``ModelCache.get(key, load)`` returns the cached value of ``key`` or calls ``load()`` once for it: concurrent
requests for the same key wait for that one load (a loading model costs seconds and memory, two copies of it cost
twice), requests for other keys load in parallel, at most ``maxsize`` values are kept (least recently used goes
first), and a failed load is not cached: the callers waiting on it get its error, the next call loads again.
"""

from __future__ import annotations

import logging
import reprlib
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

log = logging.getLogger("zsc.model_cache")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LoggedLRU(LRUCache):
    """cachetools' LRU that says which model it evicted (a reload later is then no surprise in the logs)."""

    def __init__(self, maxsize: int, name: str, log_evictions: bool = True) -> None:
        super().__init__(maxsize)
        self.name, self.log_evictions = name, log_evictions

    def popitem(self) -> tuple[Any, Any]:
        key, value = super().popitem()
        if self.log_evictions:  # a key may hold thousands of class names
            log.info("%s cache evicted %s", self.name, reprlib.repr(key))
        return key, value


class ModelCache(Generic[K, V]):
    """A thread-safe, size-bounded LRU of loaded models with one load per key at a time (see the module doc)."""

    def __init__(self, maxsize: int = 8, name: str = "model", log_evictions: bool = True) -> None:
        """``log_evictions=False`` for caches of many small values (per-prompt embeddings), where an eviction is
        routine and a log line per image would be noise."""
        if maxsize < 1:
            raise ValueError("the model cache needs room for at least one model")
        self.maxsize, self.name = maxsize, name
        self._items: LRUCache = _LoggedLRU(maxsize, name, log_evictions)
        self._loading: dict[K, Future[V]] = {}
        self._lock = threading.Lock()  # guards _items (an LRU read reorders it) and _loading
        self.loads = 0  # how many loads finished (tests and logs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def keys(self) -> list[K]:
        """The cached keys (in the order they were loaded)."""
        with self._lock:
            return list(self._items)

    def get(self, key: K, load: Callable[[], V]) -> V:
        """The cached value of ``key``, else ``load()``'s (run by one caller; the others wait for it)."""
        with self._lock:
            try:
                return self._items[key]  # a hit refreshes the key's recency
            except KeyError:
                pass
            pending = self._loading.get(key)
            if pending is None:
                pending = self._loading[key] = Future()
                owner = True
            else:
                owner = False
        if not owner:
            return pending.result()  # the owner's value, or its error
        try:
            value = load()
        except BaseException as err:
            with self._lock:
                del self._loading[key]  # not cached: the next call loads again
            pending.set_exception(err)
            raise
        with self._lock:
            self._items[key] = value
            del self._loading[key]
            self.loads += 1
        pending.set_result(value)
        return value
