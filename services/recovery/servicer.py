"""Recovery service. It serves health, reflection, Operations and Diagnostics; its own RPCs land with its issue,
and nothing here pretends to work before it does."""

from __future__ import annotations

from typing import ClassVar

import grpc

from zsc.runtime.server import ServiceRuntime


class RecoveryService:
    grpc_services: ClassVar[list[str]] = []

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    def add_to_server(self, server: grpc.Server) -> None:
        """No service-specific RPCs yet."""

    def load(self) -> None:
        """No models to load yet."""


def create_service(runtime: ServiceRuntime) -> RecoveryService:
    return RecoveryService(runtime)
