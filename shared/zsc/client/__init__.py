"""zsc's typed Python client: one function per RPC of the four services, taking and returning plain Python
(numpy arrays, dataclasses, str paths), never protobuf.

Each function takes a channel (``channel``: the service at an address, at ``ZSC_<SERVICE>_ADDRESS``, or started in
this process for the block). Long RPCs follow their Operation to its end, telling an optional ``progress(done, total,
message)``; Ctrl-C cancels the operation on the server and raises ``Interrupted``. A failed operation raises
``OperationError``, a refused call ``grpc.RpcError``, a failure found here ``ClientError``. Zero-shot evaluation and
synthesis also take a list of replicas and shard over them (``zsc.client.fanout``)::

    from zsc import client
    with client.channel("recovery") as ch:
        teacher = client.recovery.fit_teacher(ch, "train.safetensors", ["cat", "dog"], "teacher.safetensors")
"""

from __future__ import annotations

from zsc.client import classification, generative, recovery, synthesis
from zsc.client.operations import (
    ClientError,
    Interrupted,
    OperationError,
    OperationInfo,
    Progress,
    cancel_operation,
    get_operation,
    list_operations,
    watch_operation,
)
from zsc.runtime.client import Replica, resolve_target
from zsc.runtime.client import service_channel as channel

__all__ = [
    "ClientError",
    "Interrupted",
    "OperationError",
    "OperationInfo",
    "Progress",
    "Replica",
    "cancel_operation",
    "channel",
    "classification",
    "generative",
    "get_operation",
    "list_operations",
    "recovery",
    "resolve_target",
    "synthesis",
    "watch_operation",
]
