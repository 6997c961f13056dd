"""Golden: {rpc: {status: calls}} over a fixed list of hostile requests (tests/service/test_hostile_inputs.py's).

The list is deterministic (no hypothesis): each RPC's valid base request, then every catalog value in every field
it fits, one at a time, then the request bytes that parse as no message, the accepted-looking values of issue #21
and a 5,000-character experiment. The status counted is the call's own (OK where a job started): a job that starts
is cancelled at once and waited for, and the data root is put back as the RPC's base request left it (a job that
got further than another may have written an output that a later request reads), so a count never depends on how
far a job got. A stricter refusal moves a
count from OK to INVALID_ARGUMENT: exactly the change a reviewer must see, committed with the JSON and a note.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from golden_support import channels_for, check, golden_world, hostile

pytestmark = [pytest.mark.service, pytest.mark.usefixtures("one_torch_thread")]
__all__ = ["golden_world"]  # the fixture, imported for the test below


def hostile_requests(world: hostile.World) -> Iterator[tuple[hostile.Rpc, Any, float]]:
    """(rpc, request, seconds its job may run before the cancel) in a fixed order. Each RPC's base request runs to
    the end, as in the catalog test, so the files it writes are there whatever the timing."""
    with_base = [r for r in hostile.RPCS if hostile.base_request(r.name, world) is not None]  # a new RPC may lack one
    for r in with_base:
        yield r, hostile.base_request(r.name, world), hostile.CALL_TIMEOUT
        for _path, _label, _value, request in hostile.catalog_requests(r, world):
            yield r, request, 0.0
    for name, mutate, _words in hostile.EDGE_CASES.values():
        request = hostile.base_request(name, world)
        mutate(request)
        yield hostile.rpc(name), request, 0.0
    for r in with_base:
        if "experiment" in r.method.input_type.fields_by_name:
            request = hostile.base_request(r.name, world)
            request.experiment = "x" * 5000
            yield r, request, 0.0


Files = dict[Path, bytes | None]  # a file's bytes; None for a directory


def files_under(root: Path) -> Files:
    """Every file and directory under ``root``, symlinks left out (the world's own, never written through)."""
    found: Files = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            if not path.is_symlink():
                found[path] = None if path.is_dir() else path.read_bytes()
    return found


def put_back(root: Path, saved: Files) -> None:
    """Make ``root`` hold exactly ``saved`` again: remove what a job added, rewrite what it changed."""
    now = files_under(root)
    for path in sorted(set(now) - set(saved), reverse=True):  # a folder's contents before the folder
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for path, data in sorted(saved.items(), key=lambda item: str(item[0])):
        if data is None:
            path.mkdir(parents=True, exist_ok=True)
        elif now.get(path) != data:
            path.write_bytes(data)


def status_of_garbage(channel: grpc.Channel, r: hostile.Rpc) -> str:
    """The status of request bytes that parse as no message."""
    try:
        hostile.send_undecodable(channel, r)
    except grpc.RpcError as err:
        return err.code().name
    return "OK"


def test_hostile_requests_end_in_the_golden_status_counts(golden_world: hostile.World, server_for) -> None:
    channels = channels_for(golden_world, server_for)
    counts: dict[str, Counter[str]] = {r.name: Counter() for r in hostile.RPCS}
    saved = files_under(golden_world.root)
    for r, request, grace in hostile_requests(golden_world):
        code, _job = hostile.attempt(channels, r, request, grace)  # asserts no INTERNAL and a SERVING server
        counts[r.name][code] += 1
        if grace:  # a base request: what it wrote stays for the cases after it
            saved = files_under(golden_world.root)
        elif code == "OK":
            put_back(golden_world.root, saved)
    for r in hostile.RPCS:
        counts[r.name][status_of_garbage(channels[r.server], r)] += 1
    check("hostile_status_counts.json", {name: dict(sorted(c.items())) for name, c in counts.items()})
