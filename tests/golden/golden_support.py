"""What the golden tests share: the JSON snapshots and their readable diff, and a data world per module with a
server per service on it (the hostile-input suite's world: tests/service/test_hostile_inputs.py, whose base requests
are the small valid requests of every RPC).

A snapshot is written, instead of compared, when ZSC_GOLDEN_WRITE=1. It is generated at the reference commit of
issue #17 (e3ee8aa) and changed only in a commit that changes the behaviour it records, with a note why.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "service"))  # test_hostile_inputs: the world and the base requests

import test_hostile_inputs as hostile  # noqa: E402

WRITE = os.environ.get("ZSC_GOLDEN_WRITE") == "1"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a/b/c": leaf}: a list becomes its members (each present or not), so a diff names single keys."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out |= flatten(inner, f"{prefix}{key}/")
        return out or {prefix.rstrip("/"): "{}"}
    if isinstance(value, list):
        return {f"{prefix}{item}": "present" for item in value} or {prefix.rstrip("/"): "[]"}
    return {prefix.rstrip("/"): value}


def diff(golden: Any, observed: Any) -> list[str]:
    """One line per leaf that the snapshot and the observation disagree on."""
    then, now = flatten(golden), flatten(observed)
    lines = []
    for key in sorted(set(then) | set(now)):
        if key not in now:
            lines.append(f"- {key}" + ("" if then[key] == "present" else f": {then[key]}"))
        elif key not in then:
            lines.append(f"+ {key}" + ("" if now[key] == "present" else f": {now[key]}"))
        elif then[key] != now[key]:
            lines.append(f"~ {key}: {then[key]} -> {now[key]}")
    return lines


def check(name: str, observed: Any) -> None:
    """Compare ``observed`` with tests/golden/<name> (or write it there under ZSC_GOLDEN_WRITE=1)."""
    path = HERE / name
    if WRITE:
        path.write_text(json.dumps(observed, indent=2, sort_keys=True) + "\n")
        return
    lines = diff(json.loads(path.read_text()), observed)
    assert not lines, (
        f"{len(lines)} differences from {path.name} (- snapshot only, + observed only, ~ changed). If the change is "
        "intended, rerun with ZSC_GOLDEN_WRITE=1 and commit the JSON with a note:\n" + "\n".join(lines)
    )


@pytest.fixture(scope="module")
def golden_world(tmp_path_factory: pytest.TempPathFactory, server_for) -> Iterator[hostile.World]:
    """The hostile suite's world with its models trained: a module's own, so that no golden test sees the files
    another one's jobs wrote (a count must not depend on the order of the modules or on xdist)."""
    base = tmp_path_factory.mktemp("golden")
    (base / "root").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZSC_FEATURE_CACHE_DIR", str(base / "root" / "cache"))  # a request without cache_uri: here
        world = hostile.make_world(base / "root", base / "outside")
        yield hostile.train_references(world, channels_for(world, server_for))
    server_for.release(world.root)


def channels_for(world: hostile.World, server_for) -> dict[str, grpc.Channel]:
    """A channel to each service's server on the world's data root (the hostile suite's configuration)."""
    return {name: server_for.channel(name, [world.root], **hostile.server_config(name)) for name in hostile.SERVICES}
