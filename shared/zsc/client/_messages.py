"""Protobuf <-> plain Python for the client: results as dataclasses (tensors as numpy arrays, enums as their core
names), requests filled from keyword values. Nothing outside ``zsc.client`` sees a message."""

from __future__ import annotations

import dataclasses
import mimetypes
import os
import types
import typing
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import json_format, message
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from zsc import codec
from zsc.client.operations import ClientError, Progress, follow
from zsc.common.v1 import common_pb2
from zsc.enums import ProtoEnum
from zsc.runtime import client

T = TypeVar("T")
ImageInput = str | os.PathLike[str] | bytes  # a file to read, or encoded PNG/JPEG bytes
_ENUMS: dict[str, ProtoEnum] = {}  # proto enum full name -> its map


def enum(wrapper: EnumTypeWrapper, *, field: str, strip: str = "") -> ProtoEnum:
    """The ``ProtoEnum`` of a proto enum for this client (UNSPECIFIED refused: a client always names its choice),
    registered so results decode the enum to its name."""
    proto_enum = ProtoEnum(wrapper, default=None, field=field, strip=strip)
    _ENUMS[wrapper.DESCRIPTOR.full_name] = proto_enum
    return proto_enum


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _target(hint: Any) -> Any:
    """``X | None`` -> X."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _scalar(fd: FieldDescriptor, value: Any, hint: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        known = _ENUMS.get(fd.enum_type.full_name)
        return known.name(value) if known is not None and value else fd.enum_type.values_by_number[value].name.lower()
    if fd.message_type is None:
        return value
    name = fd.message_type.full_name
    if name == "zsc.common.v1.Tensor":
        return codec.decode(value, finite=False)
    if name == "google.protobuf.Struct":
        return json_format.MessageToDict(value)
    return from_message(_target(hint), value)


def from_message(cls: type[T], msg: message.Message) -> T:
    """A dataclass from the message fields of the same names: repeated fields as lists, maps as dicts, nested
    messages as the field's dataclass (None when unset), Tensors as numpy arrays, enums as core names."""
    hints = _hints(cast(Any, cls))  # a dataclass type is hashable
    fields = msg.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        fd = fields.get(f.name)
        if fd is None or not f.init:
            continue
        value, hint = getattr(msg, f.name), _target(hints[f.name])
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            item = typing.get_args(hint)[1] if typing.get_args(hint) else Any
            vfd = fd.message_type.fields_by_name["value"]
            values[f.name] = {k: _scalar(vfd, v, item) for k, v in value.items()}
        elif fd.is_repeated:
            item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
            values[f.name] = [_scalar(fd, v, item) for v in value]
        elif fd.message_type is not None and not msg.HasField(f.name):
            values[f.name] = None
        else:
            values[f.name] = _scalar(fd, value, hint)
    return cls(**values)


def job_result(
    channel: grpc.Channel,
    op: common_pb2.Operation,
    progress: Progress | None,
    cls: type[T],
    result: type[message.Message],
) -> T:
    """Follow a started job to its end and return its ``result`` message as a ``cls`` dataclass."""
    return from_message(cls, client.unpack(follow(channel, op, progress), result))


def fill(msg: message.Message, values: Mapping[str, Any] | None) -> None:
    """Set the fields of ``msg`` named in ``values``, skipping None (an unset optional keeps the server's default):
    a mapping fills a nested message, a sequence extends a repeated field, an array becomes a Tensor."""
    for name, value in (values or {}).items():
        if value is None:
            continue
        fd = msg.DESCRIPTOR.fields_by_name.get(name)
        if fd is None:
            raise ClientError(f"{msg.DESCRIPTOR.name} has no field {name!r}")
        if fd.message_type is not None and fd.message_type.full_name == "zsc.common.v1.Tensor":
            getattr(msg, name).CopyFrom(codec.encode(value))
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            getattr(msg, name).update(value)
        elif fd.message_type is not None and not fd.is_repeated:
            fill(getattr(msg, name), value if isinstance(value, Mapping) else dataclasses.asdict(value))
        elif fd.is_repeated and fd.message_type is not None:
            for item in value:  # each a mapping or dataclass of the item message's fields
                fill(getattr(msg, name).add(), item if isinstance(item, Mapping) else dataclasses.asdict(item))
        elif fd.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)


def build(cls: type[message.Message], **values: Any) -> Any:
    """A request message from keyword values (``fill``'s rules)."""
    msg = cls()
    fill(msg, values)
    return msg


def images(items: Sequence[ImageInput]) -> list[common_pb2.Image]:
    """Image messages from files (MIME type from the name) or encoded bytes (the server reads the format)."""
    out = []
    for item in items:
        if isinstance(item, bytes):
            out.append(common_pb2.Image(data=item))
            continue
        path = Path(item)
        if not path.is_file():
            raise ClientError(f"no such image: {path}")
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        out.append(common_pb2.Image(data=path.read_bytes(), mime=mime))
    return out


def local_uri(path: str | os.PathLike[str] | None) -> str:
    """A path as the request carries it: absolute (a URI such as s3:// as is; "" for none)."""
    if path is None or path == "":
        return ""
    text = os.fspath(path)
    return text if "://" in text else str(Path(text).resolve())
