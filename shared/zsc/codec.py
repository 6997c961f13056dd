"""Tensor codec: numpy arrays and torch tensors to and from ``zsc.common.v1.Tensor`` (raw little-endian bytes).

Every decode checks dtype, shape and byte length before touching the data, so a hostile message fails with one clear
``InvalidArgument`` line. Tensors over a few MB travel as a stream of ``TensorChunk`` messages.

torch is imported only when a tensor is asked for: the CLI imports this module, and importing torch costs seconds
that ``zsc --help`` and a numpy-only client should not pay.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal, TypeAlias

import numpy as np

from zsc.common.v1 import common_pb2
from zsc.errors import InvalidArgument, ResourceExhausted

if TYPE_CHECKING:
    import torch
    from typing_extensions import TypeIs  # typing's from 3.13

# name -> (numpy dtype or None when numpy has no such type, itemsize); each name is also torch's (torch.<name>)
DTYPES: dict[str, tuple[np.dtype | None, int]] = {
    "float32": (np.dtype("<f4"), 4),
    "float16": (np.dtype("<f2"), 2),
    "bfloat16": (None, 2),
    "int64": (np.dtype("<i8"), 8),
    "int32": (np.dtype("<i4"), 4),
    "uint8": (np.dtype("u1"), 1),
    "bool": (np.dtype("?"), 1),
}
_NUMPY_NAMES = {v[0]: k for k, v in DTYPES.items() if v[0] is not None}

CHUNK_BYTES = 2 << 20  # 2 MiB: well under any message limit, large enough to amortize per-message cost
MAX_TENSOR_BYTES = 1 << 30

ArrayLike: TypeAlias = "np.ndarray | torch.Tensor"


def _is_tensor(x: object) -> TypeIs[torch.Tensor]:
    """A torch tensor, without importing torch: one cannot exist unless torch was imported."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def dtype_name(x: ArrayLike) -> str:
    name: str | None
    if _is_tensor(x):
        name = str(x.dtype).removeprefix("torch.")
        name = name if name in DTYPES else None
    else:
        name = _NUMPY_NAMES.get(x.dtype.newbyteorder("<") if x.dtype.byteorder == ">" else x.dtype)
    if name is None:
        raise InvalidArgument(f"unsupported dtype {x.dtype}; supported: {', '.join(DTYPES)}")
    return name


def _raw_bytes(x: ArrayLike) -> tuple[str, list[int], memoryview]:
    name = dtype_name(x)
    if _is_tensor(x):
        import torch

        t = x.detach().to("cpu").contiguous()
        # numpy has no bfloat16: move its bits as int16, which has the same bytes.
        arr = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    else:
        arr = np.asarray(x, dtype=DTYPES[name][0])
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
    return name, list(arr.shape), arr.reshape(-1).view(np.uint8).data


def encode(x: ArrayLike) -> common_pb2.Tensor:
    """A numpy array or torch tensor as a Tensor message."""
    name, shape, data = _raw_bytes(x)
    return common_pb2.Tensor(dtype=name, shape=shape, data=data.tobytes())


def _check_header(dtype: str, shape: Iterable[int], max_bytes: int) -> tuple[str, tuple[int, ...], int]:
    if dtype not in DTYPES:
        raise InvalidArgument(f"unknown tensor dtype {dtype!r}; supported: {', '.join(DTYPES)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) > 8:
        raise InvalidArgument(f"tensor rank {len(shape)} is over the limit of 8")
    if any(s < 0 for s in shape):
        raise InvalidArgument(f"tensor shape {list(shape)} has a negative dimension")
    nbytes = math.prod(shape) * DTYPES[dtype][1]
    if nbytes > max_bytes:
        raise ResourceExhausted(f"tensor of shape {list(shape)} ({nbytes} bytes) is over the limit of {max_bytes}")
    return dtype, shape, nbytes


def _from_buffer(dtype: str, shape: tuple[int, ...], data: bytes | bytearray, as_: str) -> ArrayLike:
    np_dtype = DTYPES[dtype][0]
    if dtype == "bfloat16":
        import torch

        arr = np.frombuffer(data, dtype="<i2").reshape(shape)
        t = torch.from_numpy(arr.copy()).view(torch.bfloat16)
        return t if as_ == "torch" else t.float().numpy()
    arr = np.frombuffer(data, dtype=np_dtype).reshape(shape)
    if dtype == "bool" and arr.size and arr.view(np.uint8).max() > 1:
        raise InvalidArgument("bool tensor holds bytes other than 0 and 1")
    if as_ == "torch":
        import torch

        return torch.from_numpy(arr.copy())
    return arr.copy()


def decode(
    msg: common_pb2.Tensor,
    as_: Literal["numpy", "torch"] = "numpy",
    *,
    dtypes: Iterable[str] | None = None,
    rank: int | None = None,
    finite: bool = True,
    max_bytes: int = MAX_TENSOR_BYTES,
    name: str = "tensor",
) -> ArrayLike:
    """A Tensor message as a numpy array or torch tensor, after checking it.

    numpy has no bfloat16, so a bfloat16 tensor decodes to float32 for numpy (a lossless widening).
    """
    dtype, shape, nbytes = _check_header(msg.dtype, msg.shape, max_bytes)
    if dtypes is not None and dtype not in set(dtypes):
        raise InvalidArgument(f"{name} has dtype {dtype}; expected one of {sorted(set(dtypes))}")
    if rank is not None and len(shape) != rank:
        raise InvalidArgument(f"{name} has shape {list(shape)}; expected rank {rank}")
    if len(msg.data) != nbytes:
        raise InvalidArgument(
            f"{name} of dtype {dtype} and shape {list(shape)} needs {nbytes} bytes, got {len(msg.data)}"
        )
    out = _from_buffer(dtype, shape, msg.data, as_)
    if finite:
        _check_finite(out, dtype, name)
    return out


def _check_finite(x: ArrayLike, dtype: str, name: str) -> None:
    if dtype in ("float32", "float16", "bfloat16"):
        finite = bool(x.isfinite().all()) if _is_tensor(x) else bool(np.isfinite(x).all())
        if not finite:
            raise InvalidArgument(f"{name} contains NaN or Inf")


def encode_chunks(x: ArrayLike, chunk_bytes: int = CHUNK_BYTES) -> Iterator[common_pb2.TensorChunk]:
    """Stream a tensor as TensorChunk messages; the first carries dtype and shape."""
    name, shape, data = _raw_bytes(x)
    total = len(data)
    offsets = range(0, total, chunk_bytes) if total else [0]
    for i, offset in enumerate(offsets):
        piece = data[offset : offset + chunk_bytes].tobytes()
        if i == 0:
            yield common_pb2.TensorChunk(dtype=name, shape=shape, offset=offset, data=piece)
        else:
            yield common_pb2.TensorChunk(offset=offset, data=piece)


def decode_chunks(
    chunks: Iterable[common_pb2.TensorChunk],
    as_: Literal["numpy", "torch"] = "numpy",
    *,
    max_bytes: int = MAX_TENSOR_BYTES,
    finite: bool = False,
    name: str = "tensor",
) -> ArrayLike:
    """Reassemble a streamed tensor, checking order, completeness and the size limit before buffering."""
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None:
        raise InvalidArgument(f"{name} stream is empty")
    dtype, shape, nbytes = _check_header(first.dtype, first.shape, max_bytes)
    buffer = bytearray()  # grown as bytes arrive: a stream that announces a large shape and stalls holds nothing
    filled = 0
    for chunk in _chain(first, iterator):
        if chunk.offset != filled:
            raise InvalidArgument(f"{name} chunk at offset {chunk.offset} arrived where {filled} was expected")
        end = filled + len(chunk.data)
        if end > nbytes:
            raise InvalidArgument(f"{name} stream carries more than the {nbytes} bytes its shape needs")
        buffer += chunk.data
        filled = end
    if filled != nbytes:
        raise InvalidArgument(f"{name} stream ended after {filled} of {nbytes} bytes")
    out = _from_buffer(dtype, shape, buffer, as_)
    if finite:
        _check_finite(out, dtype, name)
    return out


def _chain(first: common_pb2.TensorChunk, rest: Iterator[common_pb2.TensorChunk]) -> Iterator[common_pb2.TensorChunk]:
    yield first
    yield from rest
