"""Hostile input against every RPC of every service: no call may end in INTERNAL or UNKNOWN, crash a server, write
outside the data root, or leave a server anything but SERVING.

The RPCs are read from the compiled proto descriptors (every ``zsc.*.v1`` service), so a new RPC is covered, and
``test_every_rpc_has_a_valid_base_request`` fails until it gets a valid base request below. Requests come from:

- a catalog of the hostile values the project promises to survive, applied one field at a time to each RPC's valid
  base request: huge and negative shapes, dtype/byte-length mismatches, NaN/Inf tensors; empty, duplicate and
  10,000-character class names; truncated, zero-byte, decompression-bomb and very large images; URIs with ``..``,
  absolute paths outside the data root and symlinks out of it;
- hypothesis, which mutates the base requests field by field with values drawn from each field's type (strategies
  derived from the descriptors, so new fields are fuzzed too) and also draws whole random messages.

One server per service for the module, on the tiny profile; operations that start are cancelled (the catalog lets
small ones finish first) and waited for, so no job outlives its example. Set ZSC_HOSTILE_SUMMARY to a path to get a
JSON count of the calls made and the status codes they ended with (bench/reliability.py reads it).
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import pkgutil
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import descriptor, message, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from zsc import codec
from zsc.classification.v1 import classification_pb2 as cls_pb
from zsc.classification.v1 import downstream_pb2 as ds_pb
from zsc.classification.v1 import features_pb2 as feat_pb
from zsc.common.v1 import common_pb2
from zsc.features import FORMAT, FeatureSet
from zsc.generative.v1 import generative_pb2 as gen_pb
from zsc.recovery.v1 import recovery_pb2 as rec_pb
from zsc.runtime.client import unpack, watch
from zsc.synthesis.v1 import synthesis_pb2 as syn_pb

pytestmark = pytest.mark.service
FD = descriptor.FieldDescriptor
AREAS = ("synthesis", "recovery", "generative", "classification", "common")
HOST = {area: area for area in AREAS} | {"common": "classification"}  # the shared services: tested on one server
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
CALL_TIMEOUT = 120.0  # a hostile request may be refused, never left hanging
OPERATION = common_pb2.Operation.DESCRIPTOR.full_name
CLIP_DIM = 32  # the tiny profile's CLIP width
IMAGE_LIMITS = {"max_image_bytes": 256 << 10, "max_image_pixels": 128 * 128}  # the classification server's
EXAMPLES = 30  # hypothesis examples per RPC: ~20 RPCs on 2 CPU cores within the file's time budget
CALLS: Counter[str] = Counter()  # "<rpc> <status>" -> calls, for the summary
LAST: list[str] = []  # the error message of the last finished operation
SERVER_DIRS: list[str] = []  # the data root and the working directory: no reply may name them
LEAKS: list[str] = []  # their texts, for the summary
PATH_REPLIES: Counter[str] = Counter()  # "<rpc>" -> error replies (call or job) that named a server directory
GARBAGE = b"\xff\xff\xff\xff"  # request bytes that parse as no message


# ---------------------------------------------------------------------------------------------- the RPCs under test
@dataclass(frozen=True)
class Rpc:
    server: str
    service: descriptor.ServiceDescriptor
    method: descriptor.MethodDescriptor

    @property
    def name(self) -> str:
        return f"{self.service.name}/{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"


def all_rpcs() -> list[Rpc]:
    """Every RPC of every zsc service, from the generated modules of each ``zsc.<area>.v1`` package."""
    rpcs = []
    for area in AREAS:
        package = importlib.import_module(f"zsc.{area}.v1")
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.endswith("_pb2"):
                continue
            module = importlib.import_module(f"zsc.{area}.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                rpcs += [Rpc(HOST[area], service, m) for m in service.methods]
    return sorted(rpcs, key=lambda r: r.name)


RPCS = all_rpcs()


def message_class(desc: descriptor.Descriptor) -> type[message.Message]:
    return message_factory.GetMessageClass(desc)


# --------------------------------------------------------------------------------------------------- the data world
def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG that claims width x height 1-bit pixels over a few bytes of zlib data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def hostile_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    good = png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    return {
        "valid": good,
        "zero-byte": b"",
        "truncated": good[: len(good) // 2],
        "truncated-jpeg": jpeg.getvalue()[:200],
        "header-only": good[:33],
        "not-an-image": b"GIF89a" + np.random.default_rng(1).bytes(64),  # fixed: its status is deterministic
        "random": rng.bytes(300),
        "bomb-100k-x-100k": png_header_bomb(100_000, 100_000),
        "bomb-over-the-limit": png_header_bomb(4096, 4096),
        "very-large-bytes": png(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)),  # > the 256 KiB limit
        "very-large-pixels": png(np.zeros((512, 512, 3), dtype=np.uint8)),  # a few KB, 262,144 pixels
        "one-pixel": png(np.zeros((1, 1, 3), dtype=np.uint8)),
        "grayscale-16bit": png(np.zeros((8, 8), dtype=np.uint16)),
    }


def tensor(dtype: str, shape: list[int], data: bytes) -> common_pb2.Tensor:
    return common_pb2.Tensor(dtype=dtype, shape=shape, data=data)


def hostile_tensors() -> dict[str, common_pb2.Tensor]:
    f4 = np.ones((3, CLIP_DIM), dtype="<f4")
    nan, inf = f4.copy(), f4.copy()
    nan[1, 2], inf[0, 0] = np.nan, -np.inf
    return {
        "valid": tensor("float32", [3, CLIP_DIM], f4.tobytes()),
        "huge-shape": tensor("float32", [1 << 40, 1 << 40], b""),
        "huge-shape-overflowing-int64": tensor("float32", [(1 << 62), (1 << 62), 4], b"\0" * 16),
        "negative-shape": tensor("float32", [-3, CLIP_DIM], f4.tobytes()),
        "zero-rows": tensor("float32", [0, CLIP_DIM], b""),
        "zero-columns": tensor("float32", [3, 0], b""),
        "rank-9": tensor("float32", [1] * 9, b"\0" * 4),
        "rank-1": tensor("float32", [3 * CLIP_DIM], f4.tobytes()),
        "short-data": tensor("float32", [3, CLIP_DIM], f4.tobytes()[:-3]),
        "long-data": tensor("float32", [3, CLIP_DIM], f4.tobytes() + b"\0"),
        "unknown-dtype": tensor("float64", [3, CLIP_DIM], np.ones((3, CLIP_DIM)).tobytes()),
        "empty-dtype": tensor("", [3, CLIP_DIM], f4.tobytes()),
        "int-dtype": tensor("int64", [3, CLIP_DIM], np.ones((3, CLIP_DIM), dtype="<i8").tobytes()),
        "bool-not-0-1": tensor("bool", [3, CLIP_DIM], b"\x02" * (3 * CLIP_DIM)),
        "nan": tensor("float32", [3, CLIP_DIM], nan.tobytes()),
        "inf": tensor("float32", [3, CLIP_DIM], inf.tobytes()),
        "float16-inf": tensor("float16", [3, CLIP_DIM], np.full((3, CLIP_DIM), np.inf, dtype="<f2").tobytes()),
        "bfloat16": tensor("bfloat16", [3, CLIP_DIM], b"\x80\x3f" * (3 * CLIP_DIM)),
        "huge-values": tensor("float32", [3, CLIP_DIM], np.full((3, CLIP_DIM), 3e38, dtype="<f4").tobytes()),
        "all-zero": tensor("float32", [3, CLIP_DIM], np.zeros((3, CLIP_DIM), dtype="<f4").tobytes()),
        "wrong-width": tensor("float32", [3, 5], np.ones((3, 5), dtype="<f4").tobytes()),
    }


CLASS_NAME_LISTS: dict[str, list[str]] = {
    "empty-list": [],
    "empty-name": ["cat", ""],
    "blank-name": ["cat", "   "],
    "duplicate": ["cat", "cat"],
    "10000-chars": ["cat", "x" * 10_000],
    "path-like": ["../../etc", "dog/../../x"],
    "nul-byte": ["ca\x00t", "dog"],
    "unicode": ["猫", "cañón\u202e"],
    "many": [f"class {i}" for i in range(1000)],
}


@dataclass
class World:
    """Files inside and outside the data root, and the models the base requests name."""

    root: Path
    outside: Path
    uris: dict[str, str] = field(default_factory=dict)
    escapes: set[str] = field(default_factory=set)  # URIs that lie outside the root: must always be refused
    images: dict[str, bytes] = field(default_factory=hostile_images)
    tensors: dict[str, common_pb2.Tensor] = field(default_factory=hostile_tensors)
    refs: dict[str, str] = field(default_factory=dict)
    op_name: str = ""
    base: dict[str, str] = field(default_factory=dict)  # the inputs of the base requests: no catalog URI names them


def clip_features(path: Path, classes: int = 3, per_class: int = 4) -> None:
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(classes, CLIP_DIM, generator=g), dim=1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = F.normalize(text[labels] + 0.1 * torch.randn(len(labels), CLIP_DIM, generator=g), dim=1)
    FeatureSet(features, labels, [f"base {i}" for i in range(classes)], text).save(path)


def generative_features(path: Path) -> None:
    """6 classes, 5 with samples, D = 24, D_t = 7."""
    g = torch.Generator().manual_seed(3)
    text = torch.randn(6, 7, generator=g)
    labels = torch.arange(5).repeat_interleave(8)
    features = F.normalize(torch.randn(len(labels), 24, generator=g), dim=1)
    FeatureSet(features, labels, [f"class {i}" for i in range(6)], text).save(path)


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(2):
            (root / f"class{c}" / f"{i}.png").write_bytes(png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)))
    return root


def make_world(root: Path, outside: Path) -> World:
    world = World(root, outside)
    (root / "features").mkdir()
    (root / "out").mkdir()
    (root / "base").mkdir()
    clip_features(root / "base" / "clip.safetensors")
    generative_features(root / "base" / "gen.safetensors")
    image_folder(root / "base" / "images")
    world.base = {
        "features": str(root / "base" / "clip.safetensors"),
        "gen-features": str(root / "base" / "gen.safetensors"),
        "images": str(root / "base" / "images"),
    }
    clip_features(root / "features" / "clip.safetensors")
    generative_features(root / "features" / "gen.safetensors")
    image_folder(root / "images")
    (root / "features" / "corrupt.safetensors").write_bytes(np.random.default_rng(2).bytes(256))  # fixed bytes
    (root / "features" / "empty.safetensors").write_bytes(b"")
    good = (root / "features" / "clip.safetensors").read_bytes()
    (root / "features" / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    header = {"zsc.featureset": json.dumps({"format": FORMAT, "class_names": ["a"], "metadata": {}})}
    bad = {"features": torch.full((2, CLIP_DIM), float("nan")), "labels": torch.tensor([0, 7]),
           "text_features": torch.ones(1, CLIP_DIM)}  # fmt: skip
    save_file(bad, root / "features" / "nan-and-bad-labels.safetensors", metadata=header)
    save_file({"x": torch.ones(1)}, root / "features" / "not-a-feature-set.safetensors")
    (root / "images-empty" / "class0").mkdir(parents=True)
    (root / "images-bad" / "class0").mkdir(parents=True)
    (root / "images-bad" / "class1").mkdir(parents=True)
    for c in ("class0", "class1"):
        (root / "images-bad" / c / "zero.png").write_bytes(b"")
        (root / "images-bad" / c / "bomb.png").write_bytes(png_header_bomb(100_000, 100_000))
        (root / "images-bad" / c / "truncated.png").write_bytes(world.images["truncated"])
    # Outside the root: a valid features file and dataset that only a path escape could reach.
    outside.mkdir(exist_ok=True)
    clip_features(outside / "clip.safetensors")
    image_folder(outside / "images")
    (root / "escape-dir").symlink_to(outside, target_is_directory=True)
    (root / "escape-file.safetensors").symlink_to(outside / "clip.safetensors")
    (root / "dangling.safetensors").symlink_to(outside / "new.safetensors")
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    inside = {
        "features": root / "features" / "clip.safetensors",
        "gen-features": root / "features" / "gen.safetensors",
        "images": root / "images",
        "corrupt": root / "features" / "corrupt.safetensors",
        "empty-file": root / "features" / "empty.safetensors",
        "truncated-file": root / "features" / "truncated.safetensors",
        "nan-file": root / "features" / "nan-and-bad-labels.safetensors",
        "not-a-feature-set": root / "features" / "not-a-feature-set.safetensors",
        "empty-dataset": root / "images-empty",
        "bad-images-dataset": root / "images-bad",
        "a-directory": root / "features",
        "missing": root / "no" / "such" / "file.safetensors",
        "dot-dot-inside": root / "out" / ".." / "features" / "clip.safetensors",
        "symlink-loop": root / "loop-a" / "clip.safetensors",
        "long-component": root / "out" / ("n" * 300),
    }
    escapes = {
        "dot-dot-out": f"{root}/../{outside.name}/clip.safetensors",
        "dot-dot-deep": f"{root}/features/../../../../../../etc/passwd",
        "relative-dot-dot": "../../../../../../etc/passwd",
        "absolute-out": "/etc/passwd",
        "absolute-out-dir": str(outside),
        "file-uri-out": "file:///etc/passwd",
        "symlink-dir-out": f"{root}/escape-dir/clip.safetensors",
        "symlink-dataset-out": f"{root}/escape-dir/images",
        "symlink-file-out": f"{root}/escape-file.safetensors",
        "dangling-symlink-out": f"{root}/dangling.safetensors",
        "home": "~/.bashrc",
        "file-uri-empty": "file://",  # once the server's working directory
    }
    odd = {
        "empty": "",
        "nul-byte": f"{root}/features/clip\x00.safetensors",
        "10000-chars": f"{root}/" + "a" * 10_000,
        "http": "http://example.invalid/x.safetensors",
        "s3": "s3://bucket/key",
        "models-missing": "models:/zsc-no-such-model/1",
        "models-alias-missing": "models:/zsc-no-such-model@champion",
        "models-bad-version": "models:/zsc-no-such-model/-1",
        "runs-dot-dot": "runs:/0123456789abcdef/../../etc",
        "runs-missing": "runs:/ffffffffffffffffffffffffffffffff/model",
        "models-empty": "models:/",
    }
    world.uris = {k: str(v) for k, v in inside.items()} | escapes | odd
    world.escapes = set(escapes.values())
    return world


# ------------------------------------------------------------------------------------------------------ servers
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("hostile")
    old_cache = os.environ.get("ZSC_FEATURE_CACHE_DIR")
    os.environ["ZSC_FEATURE_CACHE_DIR"] = str(base / "root" / "cache")  # a request without cache_uri writes here
    (base / "root").mkdir()
    SERVER_DIRS[:] = sorted({str(base / "root"), str((base / "root").resolve()), os.getcwd()})
    yield make_world(base / "root", base / "outside")
    if old_cache is None:
        os.environ.pop("ZSC_FEATURE_CACHE_DIR", None)
    else:
        os.environ["ZSC_FEATURE_CACHE_DIR"] = old_cache


SERVICES = ("synthesis", "recovery", "generative", "classification")


def server_config(name: str) -> dict[str, Any]:
    """The servers of this suite (and of tests/golden): small image limits on the classification one."""
    return IMAGE_LIMITS if name == "classification" else {}


@pytest.fixture(scope="module")
def servers(world: World, server_for) -> Iterator[dict[str, Any]]:
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {name: server_for(name, [world.root], **server_config(name)) for name in SERVICES}
    finally:
        server_for.release(world.root)  # the module's own root: no other module shares these servers
        torch.set_num_threads(torch_threads)


@pytest.fixture(scope="module")
def channels(servers: dict[str, Any], server_for) -> dict[str, grpc.Channel]:
    return {name: server_for.channel_to(server) for name, server in servers.items()}


@pytest.fixture(scope="module")
def trained(world: World, channels: dict[str, grpc.Channel]) -> World:
    """The generator, GZSL classifier and downstream model that the base requests of later RPCs name."""
    return train_references(world, channels)


def train_references(world: World, channels: dict[str, grpc.Channel]) -> World:
    """Train the models the base requests name (world.refs) with the base requests; also tests/golden's."""
    gen = channels["generative"]
    op = call(gen, rpc("Generative/TrainGenerator"), base_request("Generative/TrainGenerator", world))
    world.refs["generator"] = unpack(watch(gen, op), gen_pb.TrainGeneratorResult).model.model_uri
    op = call(gen, rpc("Generative/TrainGZSL"), base_request("Generative/TrainGZSL", world))
    world.refs["gzsl"] = unpack(watch(gen, op), gen_pb.TrainGZSLResult).model.model_uri
    cls = channels["classification"]
    op = call(cls, rpc("Downstream/TrainClassifier"), base_request("Downstream/TrainClassifier", world))
    world.refs["downstream"] = unpack(watch(cls, op), ds_pb.TrainClassifierResult).model_uri
    world.op_name = op.name
    return world


@pytest.fixture(scope="module", autouse=True)
def summary(world: World) -> Iterator[None]:
    yield
    path = os.environ.get("ZSC_HOSTILE_SUMMARY")
    if path:
        per_rpc: dict[str, dict[str, int]] = {}
        for key, n in CALLS.items():
            name, code = key.rsplit(" ", 1)
            per_rpc.setdefault(name, {})[code] = n
        counts = {"calls": sum(CALLS.values()), "rpcs": per_rpc, "replies_with_server_path": dict(PATH_REPLIES)}
        counts["server_path_examples"] = sorted(set(LEAKS))[:10]
        Path(path).write_text(json.dumps(counts, indent=2, sort_keys=True))


def rpc(name: str) -> Rpc:
    return next(r for r in RPCS if r.name == name)


# ----------------------------------------------------------------------------------------------- base requests
def base_request(name: str, world: World) -> Any:
    """A valid, small request of RPC ``name`` (a list of messages for a client stream)."""
    root, uris, refs = world.root, world.base, world.refs
    valid_image = common_pb2.Image(data=world.images["valid"], mime="image/png")
    f4 = np.random.default_rng(0).standard_normal((3, CLIP_DIM)).astype("<f4")
    tiny_generator = gen_pb.GeneratorSettings(epochs=1, hidden_dim=16, noise_dim=4, batch_size=16, lr=1e-3)
    bases: dict[str, Callable[[], Any]] = {
        "Synthesis/GenerateDataset": lambda: syn_pb.GenerateDatasetRequest(
            classes=[syn_pb.ClassSpec(name="cat")],
            images_per_class=1,
            resolution=32,
            output_uri=str(root / "out" / "synthesis"),
            batch_size=1,
            generation=syn_pb.GenerationSettings(steps=1),
        ),
        "Synthesis/GenerateImages": lambda: syn_pb.GenerateImagesRequest(
            classes=[syn_pb.ClassSpec(name="cat")],
            images_per_class=1,
            resolution=32,
            batch_size=1,
            generation=syn_pb.GenerationSettings(steps=1),
        ),
        "Synthesis/ListTricks": lambda: syn_pb.ListTricksRequest(),
        "Recovery/Recover": lambda: rec_pb.RecoverRequest(
            teacher=rec_pb.Teacher(weight=codec.encode(f4)),
            class_names=["a", "b", "c"],
            text_features=codec.encode(f4),
            epochs=3,
            nsample=4,
            num=4,
            output_uri=str(root / "out" / "recovered.safetensors"),
        ),
        "Recovery/Align": lambda: rec_pb.AlignRequest(
            features_uri=uris["features"],
            class_names=["base 0", "base 1", "base 2", "novel"],
            output_uri=str(root / "out" / "aligned.safetensors"),
            settings=rec_pb.FlptSettings(epochs=1, batch_size=8),
        ),
        "Recovery/FitTeacher": lambda: rec_pb.FitTeacherRequest(
            features_uri=uris["features"],
            class_names=["base 0", "base 1", "base 2"],  # the file's classes, each with samples
            max_iter=50,
            output_uri=str(root / "out" / "teacher.safetensors"),
        ),
        "Generative/TrainGenerator": lambda: gen_pb.TrainGeneratorRequest(
            features_uri=uris["gen-features"],
            kind=gen_pb.CLSWGAN,
            settings=tiny_generator,
            clswgan=gen_pb.ClswganSettings(cls_epochs=1),
            registered_model_name="zsc-hostile-generator",
        ),
        "Generative/GenerateFeatures": lambda: gen_pb.GenerateFeaturesRequest(
            generator=refs.get("generator", ""),
            class_names=["class 0", "class 5"],
            per_class=2,
            output_uri=str(root / "out" / "generated.safetensors"),
        ),
        "Generative/StreamFeatures": lambda: gen_pb.GenerateFeaturesRequest(
            generator=refs.get("generator", ""), class_names=["class 0", "class 5"], per_class=2
        ),
        "Generative/TrainGZSL": lambda: gen_pb.TrainGZSLRequest(
            base_features_uri=uris["gen-features"],
            settings=gen_pb.GZSLSettings(epochs=1, batch_size=16),
            registered_model_name="zsc-hostile-gzsl",
        ),
        "Generative/FineTune": lambda: gen_pb.FineTuneRequest(
            base_features_uri=uris["features"],  # D = the tiny CLIP's width, as FineTune needs
            method=gen_pb.FineTuneMethod.Value("CLIP_ADAPTER"),
            settings=gen_pb.FineTuneSettings(epochs=1, batch_size=8),
            registered_model_name="zsc-hostile-finetune",
        ),
        "Generative/EvaluateGZSL": lambda: gen_pb.EvaluateGZSLRequest(
            classifier=refs.get("gzsl", ""), test_features_uri=uris["gen-features"]
        ),
        "Classification/ZeroShot": lambda: cls_pb.ZeroShotRequest(
            class_names=["cat", "dog"], images=[valid_image], prompts=cls_pb.PromptSpec(template_set="single")
        ),
        "Classification/EvaluateZeroShot": lambda: cls_pb.EvaluateZeroShotRequest(
            data_uri=uris["images"], prompts=cls_pb.PromptSpec(template_set="single"), limit=2
        ),
        "Downstream/TrainClassifier": lambda: ds_pb.TrainClassifierRequest(
            data_uri=uris["images"], epochs=1, batch_size=4, registered_model_name="zsc-hostile-downstream"
        ),
        "Downstream/Evaluate": lambda: ds_pb.EvaluateModelRequest(
            model_uri=refs.get("downstream", ""), data_uri=uris["images"], limit=2
        ),
        "Downstream/Predict": lambda: ds_pb.PredictRequest(model_uri=refs.get("downstream", ""), images=[valid_image]),
        "Features/ExtractFeatures": lambda: feat_pb.ExtractFeaturesRequest(
            data_uri=uris["images"],
            output_uri=str(root / "out" / "extracted.safetensors"),
            limit=2,
            cache_uri=str(root / "cache"),
        ),
        "Operations/GetOperation": lambda: common_pb2.GetOperationRequest(name=world.op_name),
        "Operations/ListOperations": lambda: common_pb2.ListOperationsRequest(page_size=2),
        "Operations/CancelOperation": lambda: common_pb2.CancelOperationRequest(name=world.op_name),
        "Operations/WatchOperation": lambda: common_pb2.WatchOperationRequest(name=world.op_name),
        "Diagnostics/EchoTensor": lambda: [
            common_pb2.TensorChunk(dtype="float32", shape=[2, 2], offset=0, data=b"\0" * 8),
            common_pb2.TensorChunk(offset=8, data=b"\0" * 8),
        ],
        "Diagnostics/GetServerInfo": lambda: common_pb2.GetServerInfoRequest(),
    }
    return bases[name]() if name in bases else None


# ------------------------------------------------------------------------------------------------------- calling
def call(channel: grpc.Channel, r: Rpc, request: Any) -> Any:
    """One call; for streams, the first response only (then the call is cancelled, so the server stops working)."""
    request_type = message_class(r.method.input_type)
    response_type = message_class(r.method.output_type)
    kwargs = {"request_serializer": request_type.SerializeToString, "response_deserializer": response_type.FromString}
    if r.method.client_streaming:
        requests = request if isinstance(request, list) else [request]
        stream = channel.stream_stream(r.path, **kwargs)(iter(requests), timeout=CALL_TIMEOUT)
        return first(stream)
    if r.method.server_streaming:
        return first(channel.unary_stream(r.path, **kwargs)(request, timeout=CALL_TIMEOUT))
    return channel.unary_unary(r.path, **kwargs)(request, timeout=CALL_TIMEOUT)


def first(stream: Any) -> Any:
    try:
        return next(stream, None)
    finally:
        stream.cancel()


def finish(channel: grpc.Channel, op: common_pb2.Operation, grace: float) -> common_pb2.Operation:
    """Let the operation run ``grace`` seconds, then cancel it; return it once done (never leave a job running)."""
    from zsc.common.v1 import common_pb2_grpc

    ops = common_pb2_grpc.OperationsStub(channel)
    updates = [op]
    if grace > 0 and not op.done:
        try:
            updates += ops.WatchOperation(common_pb2.WatchOperationRequest(name=op.name), timeout=grace)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
            updates.append(ops.GetOperation(common_pb2.GetOperationRequest(name=op.name)))
    if not updates[-1].done:
        ops.CancelOperation(common_pb2.CancelOperationRequest(name=op.name))
        updates += ops.WatchOperation(common_pb2.WatchOperationRequest(name=op.name), timeout=CALL_TIMEOUT)
    assert updates[-1].done, f"{op.name} did not end after a cancel"
    return updates[-1]


def status_name(code: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))


def attempt(channels: dict[str, grpc.Channel], r: Rpc, request: Any, grace: float = 0.0) -> tuple[str, str]:
    """Send ``request``; assert it ends in no forbidden status (its Operation neither) and the server still serves.

    Returns the call's status name and, for a started Operation, the state it ended in ("" otherwise)."""
    channel = channels[r.server]
    try:
        response = call(channel, r, request)
        code = grpc.StatusCode.OK
    except grpc.RpcError as err:
        code = err.code()
        CALLS[f"{r.name} {code.name}"] += 1
        count_server_paths(r, err.details() or "", request)
        assert code not in FORBIDDEN, f"{r.name} -> {code.name}: {err.details()}\nrequest: {short(request)}"
        response = None
    else:
        CALLS[f"{r.name} OK"] += 1
    job_state = ""
    if r.method.output_type.full_name == OPERATION and response is not None and r.method.name != "CancelOperation":
        final = finish(channel, response, grace)
        job_state = common_pb2.OperationMetadata.State.Name(final.metadata.state)
        LAST[:] = [final.error.message]
        count_server_paths(r, final.error.message, request)
        if final.HasField("error"):
            job_code = status_name(final.error.code)
            CALLS[f"{r.name} job:{job_code}"] += 1
            assert job_code not in {c.name for c in FORBIDDEN}, (
                f"{r.name} job -> {job_code}: {final.error.message}\nrequest: {short(request)}"
            )
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, f"{r.server} stopped serving after {r.name}"
    return code.name, job_state


def count_server_paths(r: Rpc, text: str, request: Any) -> None:
    """Count a reply that names the data root or the working directory where the request did not (quoting the
    client's own absolute URI back is no leak), for bench/reliability.py."""
    sent = str(request)
    if any(d in text and d not in sent for d in SERVER_DIRS):
        PATH_REPLIES[r.name] += 1
        LEAKS.append(text)


def short(request: Any) -> str:
    text = str(request)
    return text if len(text) < 1500 else text[:1500] + "..."


# ------------------------------------------------------------------------------------ fields and their hostile values
def field_paths(desc: descriptor.Descriptor, depth: int = 0) -> list[tuple[FD, ...]]:
    """Every field of a message and of its singular sub-messages (two levels), as paths from the top."""
    paths: list[tuple[FD, ...]] = []
    for f in desc.fields:
        paths.append((f,))
        nested = f.type == FD.TYPE_MESSAGE and not is_repeated(f) and depth < 2 and f.message_type.fields
        if nested and f.message_type.full_name not in SPECIAL_TYPES:
            paths += [(f, *rest) for rest in field_paths(f.message_type, depth + 1)]
    return paths


def is_repeated(f: FD) -> bool:
    return bool(f.is_repeated)


def is_map(f: FD) -> bool:
    return is_repeated(f) and f.type == FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def assign(msg: message.Message, path: tuple[FD, ...], value: Any) -> None:
    """Set ``value`` at ``path`` (creating sub-messages; a repeated field's value is a list)."""
    for f in path[:-1]:
        msg = getattr(msg, f.name)
    f = path[-1]
    if is_map(f):
        target = getattr(msg, f.name)
        target.clear()
        for k, v in value.items():
            if f.message_type.fields_by_name["value"].type == FD.TYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif is_repeated(f):
        del getattr(msg, f.name)[:]
        getattr(msg, f.name).extend(value)
    elif f.type == FD.TYPE_MESSAGE:
        getattr(msg, f.name).CopyFrom(value)
    else:
        setattr(msg, f.name, value)


def is_uri_field(f: FD) -> bool:
    return f.type == FD.TYPE_STRING and (f.name.endswith("uri") or f.name in ("generator", "classifier"))


def is_name_list(f: FD) -> bool:
    return f.type == FD.TYPE_STRING and is_repeated(f) and (f.name.endswith("classes") or f.name.endswith("names"))


def catalog(f: FD, world: World) -> dict[str, Any]:
    """The catalog's hostile values for field ``f`` (empty where the catalog has none for its kind)."""
    if f.type == FD.TYPE_MESSAGE and f.message_type.full_name == common_pb2.Tensor.DESCRIPTOR.full_name:
        values = dict(world.tensors)
        return {k: [v] for k, v in values.items()} if is_repeated(f) else values
    if f.type == FD.TYPE_MESSAGE and f.message_type.full_name == common_pb2.Image.DESCRIPTOR.full_name:
        images = {k: common_pb2.Image(data=v, mime="image/png") for k, v in world.images.items()}
        return {k: [v] for k, v in images.items()} if is_repeated(f) else images
    if is_uri_field(f) and not is_repeated(f):
        return dict(world.uris)
    if is_name_list(f):
        return dict(CLASS_NAME_LISTS)
    if f.type == FD.TYPE_MESSAGE and f.message_type.name == "ClassSpec" and is_repeated(f):
        return {k: [syn_pb.ClassSpec(name=n) for n in v] for k, v in CLASS_NAME_LISTS.items()}
    return {}


INT_EDGES = [0, 1, -1, 2, 3, 7, 1000, -(1 << 31), (1 << 31) - 1]
INT64_EDGES = [*INT_EDGES, 1 << 40, (1 << 63) - 1, -(1 << 63)]
FLOAT_EDGES = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-12, 1e300, -1e300, math.nan, math.inf, -math.inf]
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
SPECIAL_TYPES = {
    common_pb2.Tensor.DESCRIPTOR.full_name,
    common_pb2.TensorChunk.DESCRIPTOR.full_name,
    common_pb2.Image.DESCRIPTOR.full_name,
    "google.protobuf.Any",
    "google.protobuf.Struct",
    "google.protobuf.Timestamp",
}


def scalar_strategy(f: FD, world: World) -> st.SearchStrategy:
    t = f.type
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return st.sampled_from(INT_EDGES) | st.integers(-2, 8)
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return st.sampled_from(INT64_EDGES) | st.integers(-2, 8)
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return st.sampled_from([0, 1, 2, (1 << 32) - 1]) | st.integers(0, 8)
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return st.sampled_from([0, 1, 2, (1 << 64) - 1]) | st.integers(0, 8)
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.sampled_from(FLOAT_EDGES) | st.floats(-10, 10, allow_nan=False)
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t == FD.TYPE_ENUM:
        return st.sampled_from([v.number for v in f.enum_type.values] + [-1, 99, (1 << 31) - 1])
    if t == FD.TYPE_BYTES:
        return st.sampled_from(list(world.images.values())) | st.binary(max_size=64)
    if is_uri_field(f):
        return st.sampled_from(sorted(world.uris.values())) | TEXT
    return st.sampled_from(["", " ", "x" * 10_000, "..", "\x00", "{}", "{c}", "a photo of a {}."]) | TEXT


def tensor_strategy(world: World, chunk: bool = False) -> st.SearchStrategy:
    dims = st.sampled_from([-1, 0, 1, 2, 3, CLIP_DIM, 1 << 31, 1 << 40])
    drawn = st.builds(
        lambda dtype, shape, data, offset: (
            common_pb2.TensorChunk(dtype=dtype, shape=shape, data=data, offset=offset)
            if chunk
            else common_pb2.Tensor(dtype=dtype, shape=shape, data=data)
        ),
        st.sampled_from(["float32", "float16", "bfloat16", "int64", "int32", "uint8", "bool", "float64", ""]),
        st.lists(dims, max_size=9),
        st.binary(max_size=96),
        st.sampled_from([0, 4, -1, 1 << 40]),
    )
    if chunk:
        return drawn
    return st.sampled_from(list(world.tensors.values())) | drawn


def value_strategy(f: FD, world: World, depth: int) -> st.SearchStrategy:
    """Values for field ``f``: the catalog's first, then whatever its type admits."""
    known = catalog(f, world)
    if is_map(f):
        key = scalar_strategy(f.message_type.fields_by_name["key"], world)
        value_field = f.message_type.fields_by_name["value"]
        return st.dictionaries(key, element_strategy(value_field, world, depth), max_size=2)
    if is_repeated(f):
        drawn = st.lists(element_strategy(f, world, depth), max_size=3)
    else:
        drawn = element_strategy(f, world, depth)
    return (st.sampled_from(list(known.values())) | drawn) if known else drawn


def element_strategy(f: FD, world: World, depth: int) -> st.SearchStrategy:
    if f.type != FD.TYPE_MESSAGE:
        return scalar_strategy(f, world)
    name = f.message_type.full_name
    if name == common_pb2.Tensor.DESCRIPTOR.full_name:
        return tensor_strategy(world)
    if name == common_pb2.TensorChunk.DESCRIPTOR.full_name:
        return tensor_strategy(world, chunk=True)
    if name == common_pb2.Image.DESCRIPTOR.full_name:
        return st.builds(
            lambda data, mime: common_pb2.Image(data=data, mime=mime),
            st.sampled_from(list(world.images.values())) | st.binary(max_size=64),
            st.sampled_from(["image/png", "image/jpeg", "", "text/html"]),
        )
    if name in SPECIAL_TYPES or depth >= 3:
        return st.just(message_class(f.message_type)())
    return message_strategy(f.message_type, world, depth + 1)


def message_strategy(desc: descriptor.Descriptor, world: World, depth: int = 0) -> st.SearchStrategy:
    """Random messages of ``desc``: each field unset or drawn from its type, at most one member per oneof."""
    cls = message_class(desc)
    plain = [f for f in desc.fields if f.containing_oneof is None]

    @st.composite
    def build(draw: st.DrawFn) -> message.Message:
        msg = cls()
        for f in plain:
            if draw(st.booleans()):
                assign(msg, (f,), draw(value_strategy(f, world, depth)))
        for oneof in desc.oneofs:
            chosen = draw(st.sampled_from([None, *oneof.fields]))
            if chosen is not None:
                assign(msg, (chosen,), draw(value_strategy(chosen, world, depth)))
        return msg

    return build()


def request_strategy(r: Rpc, world: World) -> st.SearchStrategy:
    """Mutations of the RPC's valid base request (one to three fields replaced) and whole random requests."""
    desc = r.method.input_type
    paths = field_paths(desc)

    @st.composite
    def mutated(draw: st.DrawFn) -> Any:
        base = base_request(r.name, world)
        msgs = base if isinstance(base, list) else [base]
        target = draw(st.sampled_from(range(len(msgs))))
        msg = msgs[target]
        for _ in range(draw(st.integers(1, 3)) if paths else 0):  # a request without fields stays as it is
            path = draw(st.sampled_from(paths))
            assign(msg, path, draw(value_strategy(path[-1], world, len(path))))
        return msgs if isinstance(base, list) else msg

    random = message_strategy(desc, world)
    if r.method.client_streaming:
        random = st.lists(random, max_size=3)
    return st.one_of(mutated(), mutated(), random)


def catalog_requests(r: Rpc, world: World) -> Iterator[tuple[tuple[FD, ...], str, Any, Any]]:
    """(field path, label, value, request): the base request with one catalog value set, in a fixed order."""
    for path in field_paths(r.method.input_type):
        for label, value in catalog(path[-1], world).items():
            request = base_request(r.name, world)
            assign(request[0] if isinstance(request, list) else request, path, value)
            yield path, label, value, request


# --------------------------------------------------------------------------------------------------------- tests
def test_every_rpc_has_a_valid_base_request(tmp_path: Path, servers: dict[str, Any]) -> None:
    """A new RPC fails here until it gets a base request: the fuzzing below starts from it."""
    world = World(tmp_path, tmp_path, base=dict.fromkeys(["features", "gen-features", "images"], ""))
    missing = [r.name for r in RPCS if base_request(r.name, world) is None]
    assert not missing, f"add a valid base request for {missing} to base_request() in {Path(__file__).name}"
    served = {s for server in servers.values() for s in server.service_names}
    assert {r.service.full_name for r in RPCS} == served, "the protos and the servers disagree on the services"
    for name, server in servers.items():  # each RPC is tested on a server that serves it
        assert {r.service.full_name for r in RPCS if r.server == name} <= set(server.service_names)


@pytest.mark.parametrize("r", RPCS, ids=lambda r: r.name)
def test_catalog_of_hostile_values_on_every_field(r: Rpc, trained: World, channels: dict[str, grpc.Channel]) -> None:
    """Each catalog value in each field it fits, one at a time, on the RPC's valid base request."""
    world = trained
    code, job = attempt(channels, r, base_request(r.name, world), grace=60)
    assert code == "OK" and job in ("", "SUCCEEDED"), f"the base request of {r.name} is not valid: {code} {job} {LAST}"
    tried = 0
    for path, label, value, request in catalog_requests(r, world):
        code, _ = attempt(channels, r, request, grace=5)
        tried += 1
        if isinstance(value, str) and value in world.escapes:
            assert code != "OK", f"{r.name}.{path[-1].name} accepted {label}"
    if r.name in ("Classification/ZeroShot", "Downstream/Predict", "Recovery/Recover", "Recovery/Align"):
        assert tried >= 9, f"the catalog reached only {tried} cases of {r.name}"
    assert not list(world.outside.rglob("new*")) and sorted(p.name for p in world.outside.iterdir()) == [
        "clip.safetensors",
        "images",
    ], "something was written outside the data root"


@pytest.mark.parametrize("r", RPCS, ids=lambda r: r.name)
def test_random_and_mutated_messages(r: Rpc, trained: World, channels: dict[str, grpc.Channel]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples on every run: CI failures reproduce
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(request=request_strategy(r, trained))
    def run(request: Any) -> None:
        attempt(channels, r, request)

    run()


def test_configured_image_limits_refuse_large_images(trained: World, channels, classification_channel) -> None:
    """The classification server of this module runs with small image limits; the session's with the defaults."""
    from zsc.classification.v1 import classification_pb2_grpc, downstream_pb2_grpc

    big_pixels = common_pb2.Image(data=trained.images["very-large-pixels"])
    big_bytes = common_pb2.Image(data=trained.images["very-large-bytes"])
    limited = classification_pb2_grpc.ClassificationStub(channels["classification"])
    default = classification_pb2_grpc.ClassificationStub(classification_channel)
    for image, limit in ((big_pixels, "16384"), (big_bytes, str(IMAGE_LIMITS["max_image_bytes"]))):
        request = cls_pb.ZeroShotRequest(class_names=["cat", "dog"], images=[image])
        with pytest.raises(grpc.RpcError) as err:
            limited.ZeroShot(request)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and limit in err.value.details()
        assert len(default.ZeroShot(request).top_k) == 1  # the same image within the default limits
        predict = ds_pb.PredictRequest(model_uri=trained.refs["downstream"], images=[image])
        with pytest.raises(grpc.RpcError) as err:
            downstream_pb2_grpc.DownstreamStub(channels["classification"]).Predict(predict)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_image_limit_flags_reach_the_server_config(tmp_path: Path) -> None:
    import argparse

    from zsc.cli import servers as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", "classification", "--data-root", str(tmp_path), "--max-image-mb", "3", "--max-image-pixels", "4096"]
    )
    config = cli._config(args, 0)
    assert (config.max_image_bytes, config.max_image_pixels) == (3 << 20, 4096)
    argv = cli._serve_argv(args, "recovery", 1234)  # what `zsc up` passes on to each service
    assert argv[argv.index("--max-image-mb") + 1] == "3" and argv[argv.index("--max-image-pixels") + 1] == "4096"
    from zsc.errors import InvalidArgument
    from zsc.runtime.server import ServerConfig, ZscServer

    with pytest.raises(InvalidArgument, match="max_image_pixels must be positive"):
        ZscServer("recovery", ServerConfig(data_roots=[tmp_path], max_image_pixels=0))


# ------------------------------------------------------------------- issue #21: accepted values, cancel, server paths
def refused(channels: dict[str, grpc.Channel], name: str, request: Any) -> grpc.RpcError:
    """The error a request ends with at once (an Operation started instead fails the test)."""
    with pytest.raises(grpc.RpcError) as err:
        call(channels[rpc(name).server], rpc(name), request)
    return err.value


EDGE_CASES: dict[str, tuple[str, Callable[[Any], None], str]] = {
    # The documented maximum of steps is more than DDIM and DDPM take with SD's steps_offset 1.
    "ddim-1000-steps": (
        "Synthesis/GenerateDataset",
        lambda r: r.generation.MergeFrom(syn_pb.GenerationSettings(steps=1000, scheduler="ddim")),
        "limit of 999",
    ),
    "ddpm-1000-steps": (
        "Synthesis/GenerateImages",
        lambda r: r.generation.MergeFrom(syn_pb.GenerationSettings(steps=1000, scheduler="ddpm")),
        "limit of 999",
    ),
    # A preview of one image at native resolution 1000 is ~1000x the tiny model's native work: GenerateDataset's job.
    "preview-native-1000": (
        "Synthesis/GenerateImages",
        lambda r: r.generation.CopyFrom(syn_pb.GenerationSettings(native_resolution=1000)),  # the default 40 steps
        "preview limit",
    ),
    "recover-lr-3.4e38": ("Recovery/Recover", lambda r: setattr(r, "lr", 3.4e38), "lr must lie in (0, 10]"),
    "align-lr-3.4e38": ("Recovery/Align", lambda r: setattr(r.settings, "lr", 3.4e38), "lr must lie in (0, 10]"),
    "finetune-lr-1e308": ("Generative/FineTune", lambda r: setattr(r.settings, "lr", 1e308), "lr must be <= 10"),
    "recover-weight-decay-1e300": ("Recovery/Recover", lambda r: setattr(r, "weight_decay", 1e300), "weight_decay"),
}


@pytest.mark.parametrize("case", EDGE_CASES, ids=str)
def test_accepted_looking_values_are_refused_before_the_library(
    case: str, trained: World, channels: dict[str, grpc.Channel]
) -> None:
    """Values that used to pass validation and fail inside torch or diffusers (INTERNAL) are INVALID_ARGUMENT."""
    name, mutate, words = EDGE_CASES[case]
    request = base_request(name, trained)
    mutate(request)
    err = refused(channels, name, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.details(), err.details()


def test_every_experiment_field_is_bounded_at_request_time(trained: World, channels: dict[str, grpc.Channel]) -> None:
    """MLflow refuses a 5,000-character experiment inside the job; every RPC with the field refuses it at once."""
    with_field = [r for r in RPCS if "experiment" in r.method.input_type.fields_by_name]
    assert len(with_field) >= 11
    for r in with_field:
        request = base_request(r.name, trained)
        request.experiment = "x" * 5000
        err = refused(channels, r.name, request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit is 256" in err.details(), r.name


CANCEL_PHASES: dict[str, Callable[[Any], None]] = {
    # f-CLSWGAN's classifier pre-training, before the first generator step
    "clswgan-classifier-pretraining": lambda r: r.clswgan.MergeFrom(gen_pb.ClswganSettings(cls_epochs=65535)),
    # the held-out selection's quick GZSL classifier, inside an epoch's scoring
    "selection-scoring": lambda r: r.selection.MergeFrom(gen_pb.SelectionSettings(every=1, classifier_epochs=65535)),
    # TF-VAEGAN's own epochs
    "tfvaegan-epochs": lambda r: (
        r.ClearField("clswgan"),
        setattr(r, "kind", gen_pb.TFVAEGAN),
        setattr(r.settings, "epochs", 65535),
    ),
}


@pytest.mark.parametrize("phase", CANCEL_PHASES, ids=str)
def test_cancel_reaches_every_training_phase(phase: str, trained: World, channels: dict[str, grpc.Channel]) -> None:
    """A cancel ends the job in each phase (before, it ran 229 s on after a cancel in the classifier pre-training)."""
    from zsc.common.v1 import common_pb2_grpc

    gen = channels["generative"]
    request = base_request("Generative/TrainGenerator", trained)
    request.ClearField("registered_model_name")
    CANCEL_PHASES[phase](request)
    op = call(gen, rpc("Generative/TrainGenerator"), request)
    ops = common_pb2_grpc.OperationsStub(gen)
    for update in ops.WatchOperation(common_pb2.WatchOperationRequest(name=op.name), timeout=CALL_TIMEOUT):
        if update.metadata.state == common_pb2.OperationMetadata.RUNNING:
            break  # the job is inside its (long) first phase
    ops.CancelOperation(common_pb2.CancelOperationRequest(name=op.name))
    final = finish(gen, op, grace=0)  # waits at most CALL_TIMEOUT; a job deaf to the cancel fails here
    assert final.metadata.state == common_pb2.OperationMetadata.CANCELLED, final


def test_request_paths_resolve_against_the_data_root_and_replies_name_no_server_path(
    trained: World, channels: dict[str, grpc.Channel]
) -> None:
    root = trained.root
    evaluate = base_request("Classification/EvaluateZeroShot", trained)
    evaluate.data_uri = "base/images"  # relative: the data root's, not the server's working directory
    op = call(channels["classification"], rpc("Classification/EvaluateZeroShot"), evaluate)
    assert finish(channels["classification"], op, grace=60).metadata.state == common_pb2.OperationMetadata.SUCCEEDED
    server_dirs = {str(root), str(root.resolve()), os.getcwd(), str(Path.home())}
    for uri, code in {
        "file://": grpc.StatusCode.INVALID_ARGUMENT,  # once the working directory, listed
        "file:": grpc.StatusCode.INVALID_ARGUMENT,
        "../outside/images": grpc.StatusCode.INVALID_ARGUMENT,
        "/etc": grpc.StatusCode.INVALID_ARGUMENT,
        "~/": grpc.StatusCode.INVALID_ARGUMENT,
        "no/such/folder": grpc.StatusCode.NOT_FOUND,
    }.items():
        evaluate.data_uri = uri
        err = refused(channels, "Classification/EvaluateZeroShot", evaluate)
        assert err.code() == code and repr(uri) in err.details(), (uri, err.details())
        assert not any(d in err.details() for d in server_dirs), err.details()


def send_undecodable(channel: grpc.Channel, r: Rpc) -> None:
    """Call ``r`` with request bytes that parse as no message (raw bytes: no serializer)."""
    if r.method.client_streaming:
        first(channel.stream_stream(r.path)(iter([GARBAGE]), timeout=CALL_TIMEOUT))
    elif r.method.server_streaming:
        first(channel.unary_stream(r.path)(GARBAGE, timeout=CALL_TIMEOUT))
    else:
        channel.unary_unary(r.path)(GARBAGE, timeout=CALL_TIMEOUT)


@pytest.mark.parametrize("r", RPCS, ids=lambda r: r.name)
def test_undecodable_request_bytes_are_invalid_argument(r: Rpc, channels: dict[str, grpc.Channel]) -> None:
    """Bytes that parse as no message: INVALID_ARGUMENT from the runtime's guarded deserializer, not grpcio's
    INTERNAL "Exception deserializing request!"."""
    with pytest.raises(grpc.RpcError) as err:
        send_undecodable(channels[r.server], r)
    CALLS[f"{r.name} {err.value.code().name}"] += 1
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details() == f"the request bytes do not parse as {r.method.input_type.full_name}"
