"""`zsc serve`, `zsc up`, `zsc down` and `zsc health`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from zsc import data
from zsc.cli.common import CommandError
from zsc.runtime.client import address_from_env, connect, health_status, server_info
from zsc.runtime.security import TlsFiles, read_token
from zsc.runtime.server import DEFAULT_PORTS, ServerConfig, ZscServer, port_unavailable, serve_forever
from zsc.runtime.tuning import apply_cpu_tuning

STATE_FILE = Path(".zsc") / "up.json"
LOG_DIR = Path(".zsc") / "logs"
READY_TIMEOUT = 600.0  # real weights on a slow disk; a service that dies is reported at once, not after this
STOP_GRACE = 15.0  # seconds a stopped service gets to drain before SIGKILL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one service")
    p.add_argument("service", choices=sorted(DEFAULT_PORTS))
    _server_args(p)
    p.add_argument("--port", type=int, help="port (default: the service's default port; 0 = ephemeral)")
    p.add_argument(
        "--health-port",
        type=int,
        help="also serve gRPC health alone, in plaintext, on this port (for Kubernetes' native gRPC probes, which "
        "speak no TLS; default: none)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("up", help="run all four services on loopback")
    _server_args(p)
    for name, port in DEFAULT_PORTS.items():
        p.add_argument(f"--{name}-port", type=int, default=port, help=f"default {port}")
    p.add_argument("--detach", action="store_true", help="start them in the background (stop with `zsc down`)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the services that `zsc up --detach` started")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("health", help="health of the services, one line each; exit 0 only if all are SERVING")
    p.add_argument("services", nargs="*", help=f"any of {', '.join(DEFAULT_PORTS)} (default: all four)")
    p.add_argument("--all", action="store_true", help="all four services (the default)")
    p.add_argument(
        "--address",
        help="host:port to check instead of ZSC_<SERVICE>_ADDRESS or the default port (name one service with it)",
    )
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_health)


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="tiny", help="model profile name or JSON file (default: tiny)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    p.add_argument(
        "--data-root",
        action="append",
        type=Path,
        help="directory that request paths must lie in (repeatable; default: the current directory)",
    )
    p.add_argument(
        "--max-message-mb",
        type=int,
        default=ServerConfig.max_message_bytes >> 20,
        help=f"largest gRPC message in or out (default {ServerConfig.max_message_bytes >> 20})",
    )
    p.add_argument(
        "--max-image-mb",
        type=int,
        default=data.MAX_IMAGE_BYTES >> 20,
        help=f"largest encoded image, inline or in a dataset (default {data.MAX_IMAGE_BYTES >> 20})",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=data.MAX_IMAGE_PIXELS,
        help=f"largest decoded image in pixels: stops decompression bombs (default {data.MAX_IMAGE_PIXELS})",
    )
    p.add_argument(
        "--max-operations",
        type=int,
        default=ServerConfig.max_concurrent_operations,
        help=f"concurrent long operations before RESOURCE_EXHAUSTED (default {ServerConfig.max_concurrent_operations})",
    )
    p.add_argument(
        "--max-operations-per-hour",
        type=int,
        default=ServerConfig.max_operations_per_hour,
        help="long operations one client address may start per hour before RESOURCE_EXHAUSTED; each may leave MLflow "
        f"runs and model versions (default {ServerConfig.max_operations_per_hour}; 0 = no cap)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads per job (default 0: torch's own, one per core); bench/server_threads.py "
        "measures what concurrent jobs cost with each setting",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--auth-token-file",
        type=Path,
        help="file holding the bearer token clients must send (default: $ZSC_AUTH_TOKEN; none = no authentication)",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA: require client certificates signed by it (mTLS)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without authentication or without TLS (trusted networks only)",
    )


def _config(args: argparse.Namespace, port: int) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=port,
        profile=args.profile,
        data_roots=[p.resolve() for p in (args.data_root or [Path.cwd()])],
        max_message_bytes=args.max_message_mb << 20,
        max_image_bytes=args.max_image_mb << 20,
        max_image_pixels=args.max_image_pixels,
        max_concurrent_operations=args.max_operations,
        max_operations_per_hour=args.max_operations_per_hour,
        auth_token=read_token(path=args.auth_token_file),
        tls=_tls(args),
        allow_insecure_remote=args.insecure,
        health_port=getattr(args, "health_port", None),  # `zsc serve` only
    )


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    if not (args.tls_cert or args.tls_key):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def cmd_serve(args: argparse.Namespace) -> int:
    level = logging.getLevelName(args.log_level.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown --log-level {args.log_level!r}")
    # --log-level is zsc's; the libraries (open_clip logs through the root logger) speak up only for warnings,
    # unless DEBUG asks for everything.
    logging.basicConfig(
        level=min(level, logging.WARNING) if level <= logging.DEBUG else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("zsc").setLevel(level)
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    apply_cpu_tuning(args.threads)  # before the service imports torch
    port = DEFAULT_PORTS[args.service] if args.port is None else args.port
    server = ZscServer(args.service, _config(args, port))
    return serve_forever(server, on_ready=lambda s: print(f"{args.service} on {args.host}:{s.port}", flush=True))


def _serve_argv(args: argparse.Namespace, service: str, port: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "zsc.cli.main",
        "serve",
        service,
        "--port",
        str(port),
        "--profile",
        args.profile,
        "--host",
        args.host,
        "--max-message-mb",
        str(args.max_message_mb),
        "--max-image-mb",
        str(args.max_image_mb),
        "--max-image-pixels",
        str(args.max_image_pixels),
        "--max-operations",
        str(args.max_operations),
        "--max-operations-per-hour",
        str(args.max_operations_per_hour),
        "--threads",
        str(args.threads),
        "--log-level",
        args.log_level,
    ]
    for root in args.data_root or []:
        argv += ["--data-root", str(root.resolve())]
    for flag in ("auth_token_file", "tls_cert", "tls_key", "tls_client_ca"):
        if getattr(args, flag):
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag).resolve())]
    if args.insecure:
        argv.append("--insecure")
    return argv


class _Child:
    """A service `zsc up` started, and where its own last words go (its log file when detached)."""

    def __init__(self, name: str, argv: list[str], detach: bool) -> None:
        self.name = name
        self.log: Path | None = None
        self.log_start = 0
        if not detach:
            self.proc = subprocess.Popen(argv)  # its stderr is ours: its one-line error shows as it happens
            return
        # Detached services log to .zsc/logs/ and hold none of our pipes, so a caller reading our output sees EOF.
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log = LOG_DIR / f"{name}.log"
        with open(self.log, "ab") as log_file:
            self.log_start = log_file.tell()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
            )

    def last_words(self) -> str:
        """The last line this run of the service wrote to its log ("" when not detached: it is on our stderr)."""
        if self.log is None or not self.log.is_file():
            return ""
        with open(self.log, "rb") as f:
            f.seek(self.log_start)
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def failure(self) -> str:
        """Why the service is gone, in one line (it exited)."""
        words = self.last_words()
        where = f" (log: {self.log})" if self.log else ""
        return f"{self.name} exited with code {self.proc.returncode}{': ' + words if words else ''}{where}"


def _stop(children: list[_Child]) -> None:
    """SIGTERM every child still running, then SIGKILL what has not drained within STOP_GRACE: no orphan."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for child in children:
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def _check_ports(args: argparse.Namespace, ports: dict[str, int]) -> None:
    """Fail before starting anything: one busy port would otherwise leave the other three services running."""
    taken: dict[int, str] = {}
    for name, port in ports.items():
        if port in taken:
            raise CommandError(f"{name} and {taken[port]} would both listen on port {port}: give --{name}-port")
        taken[port] = name
        busy = port_unavailable(args.host, port)
        if busy:
            raise CommandError(
                f"{name} cannot listen on {args.host}:{port}: {busy}; stop what holds the port "
                f"(`zsc down` for a detached zsc up) or give --{name}-port"
            )


def _check_no_detached_up() -> None:
    """A second detached `zsc up` would overwrite up.json and leave the first one's services unreachable by down."""
    if not STATE_FILE.exists():
        return
    alive = []
    for name, pid in json.loads(STATE_FILE.read_text()).items():
        try:
            os.kill(pid, 0)
            alive.append(f"{name} (pid {pid})")
        except ProcessLookupError:
            pass
        except PermissionError:
            alive.append(f"{name} (pid {pid})")
    if alive:
        raise CommandError(f"a detached zsc up is still running here: {', '.join(alive)}; stop it with `zsc down`")


def _wait_serving(args: argparse.Namespace, children: list[_Child], ports: dict[str, int]) -> str | None:
    """Print a SERVING line per service once it is up *and* is the process we started; return why not otherwise.

    Every round polls each child's exit first, so a service that dies at startup is reported within a second."""
    token = read_token(path=args.auth_token_file)
    channels = {c.name: connect(f"{args.host}:{ports[c.name]}", token=token) for c in children}
    pending = list(children)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while pending:
            for child in list(pending):
                if child.proc.poll() is not None:
                    return child.failure()
                address = f"{args.host}:{ports[child.name]}"
                try:
                    if health_status(channels[child.name], timeout=1) != "SERVING":
                        continue
                    info = server_info(channels[child.name], timeout=5)
                except grpc.RpcError:
                    continue  # not listening yet, or still loading
                if info.pid != child.proc.pid:
                    return (
                        f"{address} answers for another server (pid {info.pid}, {info.service}, profile "
                        f"{info.profile}), not the {child.name} zsc up started"
                    )
                print(f"{child.name:15s} {address} SERVING (profile {info.profile})", flush=True)
                pending.remove(child)
            if pending and time.monotonic() > deadline:
                return f"{', '.join(c.name for c in pending)} not SERVING after {READY_TIMEOUT:.0f} s"
            time.sleep(0.2)
    finally:
        for channel in channels.values():
            channel.close()
    return None


def cmd_up(args: argparse.Namespace) -> int:
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    if args.detach:
        _check_no_detached_up()
    _check_ports(args, ports)
    children: list[_Child] = []
    ok = False
    try:
        for name, port in ports.items():
            children.append(_Child(name, _serve_argv(args, name, port), args.detach))
        if args.detach:  # recorded at once: `zsc down` can stop them even if this command is killed while waiting
            STATE_FILE.parent.mkdir(exist_ok=True)
            STATE_FILE.write_text(json.dumps({c.name: c.proc.pid for c in children}))
        failure = _wait_serving(args, children, ports)
        if failure:
            print(f"zsc: {failure}; stopping the other services", file=sys.stderr, flush=True)
            return 1
        ok = True
        if args.detach:
            print(f"started in the background (logs in {LOG_DIR}/); stop with `zsc down`")
            return 0
        return _run_until_stopped(children)
    finally:
        if not ok or not args.detach:
            _stop(children)
            if args.detach:
                STATE_FILE.unlink(missing_ok=True)


def _run_until_stopped(children: list[_Child]) -> int:
    """Foreground `zsc up`: run until SIGTERM/SIGINT or until a service exits (then say which, and stop the rest)."""
    stop = {"signal": 0}
    signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))
    signal.signal(signal.SIGINT, lambda s, f: stop.update(signal=s))
    while not stop["signal"]:
        gone = [c for c in children if c.proc.poll() is not None]
        if gone:
            print(f"zsc: {gone[0].failure()}; stopping the other services", file=sys.stderr, flush=True)
            _stop(children)
            return 1
        time.sleep(0.5)
    _stop(children)
    return max((c.proc.returncode for c in children), default=0)


def cmd_down(args: argparse.Namespace) -> int:
    if not STATE_FILE.exists():
        print("zsc: nothing to stop (no .zsc/up.json)", file=sys.stderr)
        return 1
    for name, pid in json.loads(STATE_FILE.read_text()).items():
        try:
            os.kill(pid, signal.SIGTERM)
            print(f"{name}: sent SIGTERM to {pid}")
        except ProcessLookupError:
            print(f"{name}: {pid} already gone")
    STATE_FILE.unlink()
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    services = args.services or sorted(DEFAULT_PORTS, key=DEFAULT_PORTS.__getitem__)
    unknown = set(services) - set(DEFAULT_PORTS)
    if unknown:
        print(f"zsc: unknown service(s) {sorted(unknown)}; one of {', '.join(DEFAULT_PORTS)}", file=sys.stderr)
        return 2
    if args.address and len(services) != 1:
        print("zsc: --address names one server: give the one service it runs", file=sys.stderr)
        return 2
    ok = True
    for name in services:
        address = args.address or address_from_env(name) or f"127.0.0.1:{DEFAULT_PORTS[name]}"
        channel = connect(address)
        try:
            status = health_status(channel, timeout=args.timeout)
        except grpc.RpcError as err:
            status = err.code().name
        finally:
            channel.close()
        ok &= status == "SERVING"
        print(f"{name:15s} {address:22s} {status}")
    return 0 if ok else 1
