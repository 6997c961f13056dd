"""Sharded jobs over several replicas: a work queue of independent shard operations, one channel per replica.

Each replica of a target (``client.resolve_target``) gets a worker thread with a channel of its own; a worker takes
the next shard from the queue, starts its operation and follows it there, so the operation's Watch, Get and Cancel
reach the replica that holds it (operations live on the server that started them; a round_robin channel would send
a follow-up to another replica, which does not know the operation). A free replica takes the next shard, so faster
replicas take more of them. A shard whose replica is lost (UNAVAILABLE: killed, unreachable, shutting down) or
that the replica cancels is put back on the queue for the others; the lost replica takes no more shards. Any other
failure stops the job: every running shard is cancelled and the error is raised.

Shards must outnumber replicas (``SHARDS_PER_REPLICA``) for this to balance: with one shard per replica the slowest
replica sets the time, and a lost replica's whole share would be redone by one other replica at the end.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf import message

from zsc.client.operations import ClientError, Interrupted, Progress, cancel_and_wait, follow, log
from zsc.common.v1 import common_pb2
from zsc.runtime import client

SHARDS_PER_REPLICA = 4  # shards cut per replica: enough to rebalance around a slow or lost replica
# a replica is lost on these; its shard goes back on the queue. RESOURCE_EXHAUSTED: it runs its cap of operations
# (other clients' jobs), so the shard waits for another free replica.
REQUEUE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}
BUSY_BACKOFF_SECONDS = 2.0
OnStart = Callable[[str, int, common_pb2.Operation], None]  # (replica address, shard index, its operation)
BUSY_LIMIT_SECONDS = 600.0  # how long a shard waits for a replica below its cap of operations


@dataclass
class FanOut:
    """How a sharded job ran: the shards' final operations (in shard order), the replica that finished each, and
    the replicas lost on the way with their reason."""

    operations: list[common_pb2.Operation]
    ran_on: list[str]
    requeued: int = 0
    lost: dict[str, str] = field(default_factory=dict)

    def summary(self, replicas: int) -> str:
        """One line: how many shards each replica finished, and the replicas lost."""
        counts = ", ".join(f"{a} {self.ran_on.count(a)}" for a in dict.fromkeys(self.ran_on))
        line = f"{len(self.operations)} shards over {replicas} replicas ({counts})"
        if self.lost:
            line += f"; {self.requeued} re-queued after losing " + ", ".join(f"{a} ({r})" for a, r in self.lost.items())
        return line


def run_shards(
    service: str,
    replicas: list[client.Replica],
    requests: list[message.Message],
    start: Callable[[grpc.Channel, message.Message], common_pb2.Operation],
    *,
    profile: str | None = None,
    ready_timeout: float = 600.0,
    on_start: OnStart | None = None,
    progress: Progress | None = None,
) -> FanOut:
    """Run every request of ``requests`` (independent shards) as an operation started by ``start(channel, request)``
    on whichever replica is free, re-queuing a lost replica's shards; returns when all succeeded.

    Raises ``client.OperationError`` / ``grpc.RpcError`` for a shard that failed otherwise (every other running
    shard is cancelled first), ClientError when no replica is left, and Interrupted after Ctrl-C (every running
    shard cancelled). ``on_start(address, index, op)`` is told each shard operation as it starts (tests kill a
    replica mid-shard with it); ``progress`` gets the shards' units added up, and how many shards are done."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(requests)):
        todo.put(i)
    results: list[common_pb2.Operation | None] = [None] * len(requests)
    ran_on = [""] * len(requests)
    attempts = [0] * len(requests)
    busy = [0] * len(requests)
    running: dict[int, tuple[str, str]] = {}  # shard -> (address, operation name), for cancelling
    lost: dict[str, str] = {}
    failure: list[BaseException] = []
    state = threading.Condition()
    stop = threading.Event()
    units: dict[int, tuple[int, int]] = {}  # shard -> its latest (done, total)

    def shard_progress(index: int) -> Progress:
        def update(done: int, total: int, message: str) -> None:
            if progress is None:
                return
            with state:
                units[index] = (done, total)
                finished = sum(r is not None for r in results)
                done_all, total_all = sum(d for d, _ in units.values()), sum(t for _, t in units.values())
            progress(done_all, total_all, f"{finished}/{len(requests)} shards done")

        return update

    max_attempts = len(replicas) + 2  # each replica once, and a couple of cancels by others

    def requeue(index: int, address: str, err: grpc.RpcError | client.OperationError) -> bool:
        """Put shard ``index`` back; False (and the job fails) once it has been tried too often."""
        with state:
            running.pop(index, None)
            attempts[index] += 1
            if attempts[index] >= max_attempts:
                reason = f"last on {address}: {_reason(err)}"
                failure.append(ClientError(f"shard {index + 1} failed {attempts[index]} times, {reason}"))
                state.notify_all()
                return False
        todo.put(index)
        log.warning("shard %d/%d back on the queue: %s: %s", index + 1, len(requests), address, _reason(err))
        return True

    def finished() -> bool:
        with state:
            return all(r is not None for r in results)

    def work(replica: client.Replica) -> None:
        address = replica.address
        try:
            with client.service_channel(
                service,
                address,
                profile=profile,
                name=replica.name,
                ready_timeout=ready_timeout,
                should_stop=stop.is_set,
            ) as channel:
                # idle workers stay until the job ends: a lost replica's shard may come back on the queue
                while not stop.is_set() and not finished():
                    try:
                        index = todo.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    try:
                        op = start(channel, requests[index])
                        with state:
                            running[index] = (address, op.name)
                        if on_start is not None:
                            on_start(address, index, op)
                        op = follow(channel, op, shard_progress(index))
                    except (grpc.RpcError, client.OperationError) as err:
                        if stop.is_set() or _code(err) not in REQUEUE_CODES:
                            raise
                        if _code(err) == grpc.StatusCode.RESOURCE_EXHAUSTED:
                            busy[index] += 1  # busy with others' jobs: not this shard's fault, so no attempt counted
                            if busy[index] * BUSY_BACKOFF_SECONDS > BUSY_LIMIT_SECONDS:
                                raise  # busy this long, or not busy at all (a message over the size limit)
                            todo.put(index)
                            time.sleep(BUSY_BACKOFF_SECONDS)
                            continue
                        if not requeue(index, address, err):
                            return
                        if _code(err) == grpc.StatusCode.UNAVAILABLE:
                            raise  # this replica is lost: it takes no more shards
                        continue  # cancelled there: the next start says whether it still takes work
                    with state:
                        running.pop(index, None)
                        results[index], ran_on[index] = op, address
                        state.notify_all()
        except (grpc.RpcError, client.OperationError, TimeoutError) as err:
            with state:
                if stop.is_set():
                    pass  # the job is over (done, failed elsewhere or interrupted): nothing to report
                elif isinstance(err, TimeoutError) or _code(err) in REQUEUE_CODES:
                    lost.setdefault(address, _reason(err))  # never SERVING, or lost: the others go on
                else:
                    failure.append(err)
        except BaseException as err:  # handed to the main thread, which raises it
            with state:
                failure.append(err)
        finally:
            with state:
                alive.discard(address)
                state.notify_all()

    alive = {r.address for r in replicas}
    threads = [threading.Thread(target=work, args=(r,), name=f"zsc-shards-{r.address}", daemon=True) for r in replicas]
    for t in threads:
        t.start()
    try:
        with state:
            # ends when every shard is done, a shard failed, or no replica is left to take the rest
            while not failure and alive and any(r is None for r in results):
                state.wait(0.5)  # a timeout, so that Ctrl-C reaches this thread promptly
            if failure or any(r is None for r in results):
                stop.set()
    except KeyboardInterrupt:
        stop.set()
        raise Interrupted(_cancel_all(running, state) or "interrupted before any shard started") from None
    if failure:
        _cancel_all(running, state)
        raise failure[0]
    missing = [i + 1 for i, r in enumerate(results) if r is None]
    if missing:
        reasons = "; ".join(f"{a}: {r}" for a, r in lost.items())
        raise ClientError(f"no replica left for {len(missing)} of {len(requests)} shards ({reasons})")
    requeued = sum(attempts)
    return FanOut([r for r in results if r is not None], ran_on, requeued, lost)


def _cancel_all(running: dict[int, tuple[str, str]], state: threading.Condition) -> str:
    """Cancel every running shard's operation, each from a channel of its own (its follower closes its channel when
    it sees the operation end); one line per shard, joined."""
    with state:
        started = list(running.values())
    lines = []
    for address, name in started:
        channel = client.connect(address)
        try:
            with contextlib.suppress(grpc.RpcError):  # that replica is gone: nothing left to stop there
                lines.append(cancel_and_wait(channel, name))
        finally:
            channel.close()
    return "; ".join(lines)


def _code(err: grpc.RpcError | client.OperationError) -> grpc.StatusCode:
    return err.code if isinstance(err, client.OperationError) else err.code()


def _reason(err: BaseException) -> str:
    if isinstance(err, grpc.RpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err) or type(err).__name__
