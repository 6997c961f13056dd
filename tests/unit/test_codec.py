import numpy as np
import pytest
import torch

from zsc import codec
from zsc.common.v1 import common_pb2
from zsc.errors import InvalidArgument, ResourceExhausted

SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 0, 4), (2, 3, 4, 5)]


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int32", "uint8", "bool"])
@pytest.mark.parametrize("shape", SHAPES)
def test_numpy_and_torch_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 100).astype(dtype) if dtype != "bool" else rng.random(shape) > 0.5
    msg = codec.encode(x)
    assert msg.dtype == dtype and tuple(msg.shape) == tuple(np.asarray(x).shape)
    back = codec.decode(msg)
    assert back.dtype == np.asarray(x).dtype and np.array_equal(back, x)
    as_torch = codec.decode(msg, "torch")
    assert torch.equal(as_torch, torch.from_numpy(np.asarray(x)))
    assert np.array_equal(codec.decode(codec.encode(as_torch)), x)


@pytest.mark.parametrize("shape", SHAPES)
def test_bfloat16_round_trip(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape).to(torch.bfloat16)
    back = codec.decode(codec.encode(x), "torch")
    assert back.dtype == torch.bfloat16 and torch.equal(back, x)
    # numpy has no bfloat16: it widens to float32 without loss
    assert np.array_equal(codec.decode(codec.encode(x)), x.float().numpy())


def test_non_contiguous_and_big_endian_inputs() -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6).T
    assert np.array_equal(codec.decode(codec.encode(x)), x)
    t = torch.arange(24.0).reshape(4, 6).t()
    assert torch.equal(codec.decode(codec.encode(t), "torch"), t)
    be = np.arange(5, dtype=">i4")
    assert np.array_equal(codec.decode(codec.encode(be)), be)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "uint8", "int64"])
@pytest.mark.parametrize("chunk_bytes", [1, 7, 4096, 1 << 20])
def test_chunked_round_trip(dtype: str, chunk_bytes: int) -> None:
    x = torch.randn(33, 17).to(getattr(torch, dtype)) if dtype != "uint8" else torch.randint(0, 255, (33, 17)).byte()
    if dtype == "int64":
        x = torch.randint(-(2**40), 2**40, (33, 17))
    chunks = list(codec.encode_chunks(x, chunk_bytes))
    assert len(chunks) == -(-x.numel() * x.element_size() // chunk_bytes)
    assert torch.equal(codec.decode_chunks(chunks, "torch"), x)


def test_chunked_empty_tensor() -> None:
    x = np.zeros((0, 3), np.float32)
    assert codec.decode_chunks(codec.encode_chunks(x)).shape == (0, 3)


def test_decode_rejects_bad_messages() -> None:
    good = codec.encode(np.ones((2, 3), np.float32))
    with pytest.raises(InvalidArgument, match="needs 24 bytes, got 20"):
        codec.decode(common_pb2.Tensor(dtype="float32", shape=[2, 3], data=good.data[:20]))
    with pytest.raises(InvalidArgument, match="unknown tensor dtype"):
        codec.decode(common_pb2.Tensor(dtype="complex64", shape=[1], data=b"\0" * 8))
    with pytest.raises(InvalidArgument, match="negative"):
        codec.decode(common_pb2.Tensor(dtype="float32", shape=[-1, 3], data=b""))
    with pytest.raises(ResourceExhausted):
        codec.decode(common_pb2.Tensor(dtype="float32", shape=[1 << 40, 1 << 20], data=b""))
    with pytest.raises(InvalidArgument, match="expected one of"):
        codec.decode(good, dtypes=["int64"])
    with pytest.raises(InvalidArgument, match="expected rank 3"):
        codec.decode(good, rank=3)
    with pytest.raises(InvalidArgument, match="NaN or Inf"):
        codec.decode(codec.encode(np.array([1.0, np.nan], np.float32)))
    with pytest.raises(InvalidArgument, match="other than 0 and 1"):
        codec.decode(common_pb2.Tensor(dtype="bool", shape=[2], data=b"\x00\x07"))


def test_decode_chunks_rejects_gaps_overflow_and_truncation() -> None:
    chunks = list(codec.encode_chunks(np.arange(100, dtype=np.int64), 64))
    with pytest.raises(InvalidArgument, match="offset"):
        codec.decode_chunks([chunks[0], chunks[2]])
    with pytest.raises(InvalidArgument, match="ended after"):
        codec.decode_chunks(chunks[:-1])
    with pytest.raises(InvalidArgument, match="more than"):
        codec.decode_chunks([*chunks, common_pb2.TensorChunk(offset=800, data=b"x")])
    with pytest.raises(InvalidArgument, match="empty"):
        codec.decode_chunks([])
    with pytest.raises(ResourceExhausted):
        codec.decode_chunks(chunks, max_bytes=100)


def test_unsupported_dtype_is_refused_on_encode() -> None:
    with pytest.raises(InvalidArgument, match="unsupported dtype"):
        codec.encode(np.zeros(3, np.complex64))
