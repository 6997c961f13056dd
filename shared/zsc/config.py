"""Config in one place: a core's config dataclass holds each setting's default and its bounds.

A field declared with :func:`setting` carries its bounds in the dataclass metadata, so the servicer that fills the
config from a request, the CLI that prints its help and the core that runs it read one declaration::

    @dataclass
    class TrainConfig:
        epochs: int = setting(50, ge=1, le=100_000)
        lr: float = setting(1e-4, gt=0, le=MAX_LR)

``from_message`` builds a config from the fields a proto3 message sets (unset fields keep the defaults) and refuses
a value outside its bounds with InvalidArgument naming the request field; ``check_config`` does the same for a
config built in Python. Floats must be finite wherever they are bounded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from zsc.errors import InvalidArgument

_BOUNDS = "zsc.bounds"
_C = TypeVar("_C")


class Message(Protocol):
    """What ``from_message`` reads of a protobuf message. No protobuf import: the cores declare their settings here,
    and a core reaches no protobuf (tests/unit/test_layering.py)."""

    DESCRIPTOR: Any

    def ListFields(self) -> Any: ...


@dataclass(frozen=True)
class Bounds:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def fault(self, value: Any) -> str | None:
        """Why ``value`` is out of bounds (a phrase), or None when it is within them."""
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return "must be finite"
        checks = (
            (self.ge, value >= (self.ge or 0), ">="),
            (self.gt, value > (self.gt or 0), ">"),
            (self.le, value <= (self.le or 0), "<="),
            (self.lt, value < (self.lt or 0), "<"),
        )
        for limit, ok, op in checks:
            if limit is not None and not ok:
                return f"must be {op} {limit:g}"
        return None

    def __str__(self) -> str:
        limits = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return ", ".join(f"{op} {limit:g}" for op, limit in limits if limit is not None)


def setting(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A config field with its default and bounds (``ge`` >=, ``gt`` >, ``le`` <=, ``lt`` <)."""
    return dataclasses.field(default=default, metadata={_BOUNDS: Bounds(ge=ge, gt=gt, le=le, lt=lt)})


def bounds_of(cls: Any) -> dict[str, Bounds]:
    """Each bounded field of a config dataclass (class or instance) -> its bounds."""
    return {f.name: f.metadata[_BOUNDS] for f in dataclasses.fields(cls) if _BOUNDS in f.metadata}


def config_defaults(cls: Any) -> dict[str, Any]:
    """Each field of a config dataclass -> its default (what the CLI's help shows)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def check_config(config: Any, where: str = "") -> None:
    """InvalidArgument naming the first field of ``config`` outside its bounds."""
    prefix = where or type(config).__name__
    for name, bounds in bounds_of(config).items():
        fault = bounds.fault(getattr(config, name))
        if fault is not None:
            raise InvalidArgument(f"{prefix}.{name} {fault}, got {getattr(config, name)}")


def message_settings(msg: Message, cls: Any, rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields ``msg`` sets, renamed to ``cls``'s field names and checked against its bounds (named by the
    request field). A set field ``cls`` does not know is a contract error and raises ValueError."""
    known = {f.name for f in dataclasses.fields(cls)}
    bounds = bounds_of(cls)
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        key = (rename or {}).get(field.name, field.name)
        if key not in known:
            raise ValueError(f"{msg.DESCRIPTOR.name}.{field.name} has no field {key!r} in {cls.__name__}")
        fault = bounds[key].fault(value) if key in bounds else None
        if fault is None and isinstance(value, float) and not math.isfinite(value):
            fault = "must be finite"
        if fault is not None:
            raise InvalidArgument(f"{msg.DESCRIPTOR.name}.{field.name} {fault}, got {value}")
        out[key] = value
    return out


def from_message(cls: type[_C], msg: Message, rename: Mapping[str, str] | None = None, **overrides: Any) -> _C:
    """``cls`` with the defaults, the fields ``msg`` sets, then ``overrides``; every bound checked."""
    config = cls(**{**message_settings(msg, cls, rename), **overrides})
    check_config(config)
    return config
