"""Proto enum <-> core name maps, derived from the generated descriptors, with one UNSPECIFIED rule.

A core names its choices in lower case (``"cosine"``, ``"tip_adapter_f"``); the proto enum spells the same choice
in upper case, sometimes behind a prefix (``CALIBRATION_HOLDOUT``). The rule for value 0 (``*_UNSPECIFIED``) is
the same in every RPC and is written beside the enum in its .proto:

- ``default="<name>"``: UNSPECIFIED means that choice (the released code's default), e.g. TeacherMetric -> cosine;
- ``default=None``: UNSPECIFIED is refused with INVALID_ARGUMENT ("name the kind"), where no choice is neutral.

A number the descriptor does not know (a newer client) is refused too, never mapped to a default. Both refusals
have one wording in every service, naming the values as a gRPC client writes them: "generator kind is unset;
expected TFVAEGAN, CLSWGAN or SHIP_VAE", "unknown kappa policy 7; expected ANGULAR, FIXED or MATCHED".
"""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from zsc.errors import InvalidArgument


class ProtoEnum:
    """One enum's map. ``strip`` is the prefix its value names carry and its core names do not."""

    def __init__(self, enum: EnumTypeWrapper, *, default: str | None, field: str, strip: str = "") -> None:
        self.field = field
        self.default = default
        self._by_value: dict[int, str] = {}
        wire_names = []
        for value in enum.DESCRIPTOR.values:
            if value.number == 0:
                continue
            self._by_value[value.number] = value.name.removeprefix(strip).lower()
            wire_names.append(value.name)
        *rest, last = wire_names
        self._expected = f"expected {', '.join(rest)} or {last}" if rest else f"expected {last}"
        self._by_name = {name: number for number, name in self._by_value.items()}
        if default is not None and default not in self._by_name:
            raise ValueError(f"default {default!r} is not a value of {enum.DESCRIPTOR.full_name}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_value.values())

    def name(self, value: int) -> str:
        """The core name of a request's value: UNSPECIFIED by the rule above, an unknown number refused."""
        if value == 0:
            if self.default is None:
                raise InvalidArgument(f"{self.field} is unset; {self._expected}")
            return self.default
        try:
            return self._by_value[value]
        except KeyError:
            raise InvalidArgument(f"unknown {self.field} {value}; {self._expected}") from None

    def value(self, name: str) -> int:
        """The enum number of a core name (for responses and for clients)."""
        try:
            return self._by_name[name.lower()]
        except KeyError:
            raise InvalidArgument(f"{self.field} {name!r} is not one of {', '.join(self.names)}") from None
