"""zsc.model_cache.ModelCache: one load per key under concurrent requests, parallel loads of different keys, a
bounded LRU, and failed loads that are not cached."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from zsc.model_cache import ModelCache


def _slow_loader(loads: list[str], key: str, release: threading.Event) -> Callable[[], str]:
    def load() -> str:
        loads.append(key)
        assert release.wait(10)  # held until every caller is waiting, so they all overlap this load
        return f"model {key}"

    return load


def test_eight_threads_asking_for_one_key_load_it_exactly_once() -> None:
    cache: ModelCache[str, str] = ModelCache(2)
    loads: list[str] = []
    release = threading.Event()
    results: list[str] = []
    together = threading.Barrier(8, timeout=10)

    def ask() -> None:
        together.wait()  # all eight ask at once
        results.append(cache.get("a", _slow_loader(loads, "a", release)))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    while len(loads) < 1:  # the first caller is loading; the other seven find the load in flight
        threading.Event().wait(0.005)
    threading.Event().wait(0.05)
    release.set()
    for t in threads:
        t.join(10)
    assert loads == ["a"] and results == ["model a"] * 8 and cache.loads == 1


def test_different_keys_load_in_parallel() -> None:
    cache: ModelCache[str, str] = ModelCache(4)
    both_loading = threading.Barrier(2, timeout=10)  # broken (an error) unless both loads run at once

    def load(key: str) -> Callable[[], str]:
        def run() -> str:
            both_loading.wait()
            return key

        return run

    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda k=k: results.update({k: cache.get(k, load(k))})) for k in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {"a": "a", "b": "b"}


def test_a_failed_load_is_not_cached_and_is_retried_next_time() -> None:
    cache: ModelCache[str, str] = ModelCache(2)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("download interrupted")
        return "model"

    with pytest.raises(OSError, match="download interrupted"):
        cache.get("a", flaky)
    assert len(cache) == 0
    assert cache.get("a", flaky) == "model" and len(calls) == 2
    assert cache.get("a", flaky) == "model" and len(calls) == 2  # now cached


def test_callers_waiting_on_a_failed_load_get_its_error() -> None:
    cache: ModelCache[str, str] = ModelCache(2)
    started, release = threading.Event(), threading.Event()

    def failing() -> str:
        started.set()
        assert release.wait(10)
        raise ValueError("not a model")

    errors: list[BaseException] = []

    def ask() -> None:
        try:
            cache.get("a", failing)
        except ValueError as err:
            errors.append(err)

    owner = threading.Thread(target=ask)
    owner.start()
    assert started.wait(10)
    waiter = threading.Thread(target=ask)
    waiter.start()
    threading.Event().wait(0.05)
    release.set()
    owner.join(10)
    waiter.join(10)
    assert [str(e) for e in errors] == ["not a model"] * 2
    assert cache.get("a", lambda: "model") == "model"


def test_a_bounded_lru_evicts_the_least_recently_used() -> None:
    cache: ModelCache[str, str] = ModelCache(2)
    for key in ("1", "2", "1", "3"):  # reading 1 again makes 2 the least recently used
        cache.get(key, lambda key=key: key)
    assert set(cache.keys()) == {"1", "3"} and cache.loads == 3
    cache.get("2", lambda: "2")  # 1 is now the least recently used
    assert set(cache.keys()) == {"3", "2"} and cache.loads == 4 and len(cache) == 2
    with pytest.raises(ValueError, match="at least one"):
        ModelCache(0)
