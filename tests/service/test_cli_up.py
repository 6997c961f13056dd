"""`zsc up --detach` starts all four services, `zsc health --all` sees them SERVING, `zsc down` stops them; a busy
port or a service that cannot start makes `zsc up` fail at once, naming it, with no server left behind; missing real
weights stop `zsc serve` with exactly one line."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from conftest import zsc_cli

from zsc.runtime.server import DEFAULT_PORTS

pytestmark = [pytest.mark.service, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _servers_on(ports: list[int]) -> list[str]:
    """Command lines of live `zsc serve` processes on any of ``ports`` (from /proc: what an orphan would look like)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "serve" in args and "--port" in args and int(args[args.index("--port") + 1]) in ports:
            found.append(" ".join(args))
    return found


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No real weights anywhere: an empty hub cache, offline."""
    (tmp_path / "hf").mkdir(exist_ok=True)
    return {
        **os.environ,
        "ZSC_MLFLOW_DIR": str(tmp_path / "mlflow"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "ZSC_HUB_ONLINE": "0",
    }


def test_up_health_down(tmp_path: Path) -> None:
    ports = {name: _free_port() for name in DEFAULT_PORTS}
    env = {**os.environ, "ZSC_MLFLOW_DIR": str(tmp_path / "mlflow")}
    env.update({f"ZSC_{name.upper()}_ADDRESS": f"127.0.0.1:{port}" for name, port in ports.items()})
    port_args = [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
    up = zsc_cli("up", "--profile", "tiny", "--detach", *port_args, env=env, cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.count("SERVING") == 4
        health = zsc_cli("health", "--all", env=env, cwd=tmp_path, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        lines = health.stdout.strip().splitlines()
        assert len(lines) == 4 and all(line.endswith("SERVING") for line in lines)
    finally:
        down = zsc_cli("down", env=env, cwd=tmp_path, timeout=60)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = zsc_cli("health", "--all", env=env, cwd=tmp_path, timeout=60)
        if health.returncode != 0:
            break
        time.sleep(1)
    assert health.returncode == 1 and "UNAVAILABLE" in health.stdout


@pytest.mark.parametrize("detach", [True, False])
def test_up_on_a_busy_port_fails_naming_it_and_leaves_no_server(tmp_path: Path, detach: bool) -> None:
    ports = {name: _free_port() for name in DEFAULT_PORTS}
    port_args = [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
    env = {**os.environ, "ZSC_MLFLOW_DIR": str(tmp_path / "mlflow")}
    with socket.socket() as holder:  # something else already listens on classification's port
        holder.bind(("127.0.0.1", ports["classification"]))
        holder.listen()
        up = zsc_cli("up", *(["--detach"] if detach else []), *port_args, env=env, cwd=tmp_path, timeout=120)
    assert up.returncode == 1
    err = up.stderr.strip().splitlines()
    assert len(err) == 1 and f"classification cannot listen on 127.0.0.1:{ports['classification']}" in err[0]
    assert "SERVING" not in up.stdout
    assert _servers_on(list(ports.values())) == []
    assert not (tmp_path / ".zsc" / "up.json").exists()


def test_up_reports_a_service_that_cannot_start_and_stops_the_others(tmp_path: Path) -> None:
    """--profile paper without weights: synthesis, recovery and classification exit at startup, generative (which
    loads nothing up front) would stay up; zsc up must say which failed and why, stop generative and exit 1."""
    ports = {name: _free_port() for name in DEFAULT_PORTS}
    port_args = [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
    up = zsc_cli(
        "up", "--profile", "paper", "--detach", *port_args, env=_offline_env(tmp_path), cwd=tmp_path, timeout=300
    )
    assert up.returncode == 1
    err = up.stderr.strip().splitlines()
    assert len(err) == 1, up.stderr
    assert err[0].startswith("zsc: ") and "exited with code 1: zsc: " in err[0] and "stopping the other" in err[0]
    failed = err[0].removeprefix("zsc: ").split()[0]
    assert failed in ("synthesis", "recovery", "classification")
    assert "hub repo " in err[0] and "hf download " in err[0]
    assert "SERVING" not in up.stdout
    assert _servers_on(list(ports.values())) == []
    assert not (tmp_path / ".zsc" / "up.json").exists()


@pytest.mark.parametrize(
    ("service", "repo"),
    [("classification", "timm/vit_base_patch16_clip_224.openai"), ("synthesis", "CompVis/stable-diffusion-v1-4")],
)
def test_serve_without_real_weights_prints_exactly_one_line(tmp_path: Path, service: str, repo: str) -> None:
    out = zsc_cli("serve", service, "--profile", "paper", "--port", "0", env=_offline_env(tmp_path), cwd=tmp_path)
    assert out.returncode == 1
    assert out.stdout == ""  # it never listened
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith("zsc: ") and "model" in line
    assert f"(hub repo {repo})" in line and "<repo>" not in line
    assert f"looked in the hub cache {tmp_path / 'hf' / 'hub'}" in line
    assert f"`hf download {repo}`" in line
