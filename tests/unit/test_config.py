"""zsc.config: one declaration of a setting's default and bounds, read by the servicer, the CLI and the core."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from zsc.common.v1 import common_pb2
from zsc.config import Bounds, bounds_of, check_config, config_defaults, from_message, message_settings, setting
from zsc.errors import InvalidArgument


@dataclass
class Example:
    epochs: int = setting(50, ge=1, le=1000)
    lr: float = setting(1e-3, gt=0, le=10.0)
    name: str = "x"


def test_defaults_and_bounds_come_from_the_declaration() -> None:
    assert config_defaults(Example) == {"epochs": 50, "lr": 1e-3, "name": "x"}
    assert str(bounds_of(Example)["lr"]) == "> 0, <= 10"
    check_config(Example())


@pytest.mark.parametrize(
    ("value", "fault"),
    [(0, "must be >= 1"), (1001, "must be <= 1000"), (float("nan"), "must be finite"), (5, None)],
)
def test_bounds_name_the_fault(value: float, fault: str | None) -> None:
    assert Bounds(ge=1, le=1000).fault(value) == fault


def test_check_config_names_the_field() -> None:
    with pytest.raises(InvalidArgument, match=r"Example\.lr must be > 0, got 0.0"):
        check_config(Example(lr=0.0))


def test_from_message_reads_set_fields_and_names_the_request_field() -> None:
    # A small message of the common contract is enough: page_size is set, kind and page_token are not.
    msg = common_pb2.ListOperationsRequest(page_size=7)
    settings = message_settings(msg, Example, rename={"page_size": "epochs"})
    assert settings == {"epochs": 7}
    assert from_message(Example, msg, rename={"page_size": "epochs"}, name="y") == Example(epochs=7, name="y")
    with pytest.raises(InvalidArgument, match=r"ListOperationsRequest\.page_size must be <= 1000, got 5000"):
        from_message(Example, common_pb2.ListOperationsRequest(page_size=5000), rename={"page_size": "epochs"})
    with pytest.raises(ValueError, match="has no field"):
        message_settings(msg, Example)
