"""`zsc up --detach` starts all four services, `zsc health --all` sees them SERVING, `zsc down` stops them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zsc.runtime.server import DEFAULT_PORTS

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zsc(*args: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zsc.cli.main", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def test_up_health_down(tmp_path: Path) -> None:
    ports = {name: _free_port() for name in DEFAULT_PORTS}
    env = {**os.environ, "ZSC_MLFLOW_DIR": str(tmp_path / "mlflow")}
    env.update({f"ZSC_{name.upper()}_ADDRESS": f"127.0.0.1:{port}" for name, port in ports.items()})
    port_args = [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
    up = _zsc("up", "--profile", "tiny", "--detach", *port_args, env=env, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.count("SERVING") == 4
        health = _zsc("health", "--all", env=env, cwd=tmp_path, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        lines = health.stdout.strip().splitlines()
        assert len(lines) == 4 and all(line.endswith("SERVING") for line in lines)
    finally:
        down = _zsc("down", env=env, cwd=tmp_path, timeout=60)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = _zsc("health", "--all", env=env, cwd=tmp_path, timeout=60)
        if health.returncode != 0:
            break
        time.sleep(1)
    assert health.returncode == 1 and "UNAVAILABLE" in health.stdout
