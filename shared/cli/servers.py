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
from grpc_health.v1 import health_pb2, health_pb2_grpc

from zsc import data
from zsc.runtime.client import address_from_env, connect, wait_until_serving
from zsc.runtime.security import TlsFiles, read_token
from zsc.runtime.server import DEFAULT_PORTS, ServerConfig, ZscServer, serve_forever

STATE_FILE = Path(".zsc") / "up.json"
LOG_DIR = Path(".zsc") / "logs"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one service")
    p.add_argument("service", choices=sorted(DEFAULT_PORTS))
    _server_args(p)
    p.add_argument("--port", type=int, help="port (default: the service's default port; 0 = ephemeral)")
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
    p.add_argument("--max-message-mb", type=int, default=64, help="largest gRPC message in or out (default 64)")
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
    p.add_argument("--max-operations", type=int, default=2, help="concurrent long operations before RESOURCE_EXHAUSTED")
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
        help="allow a non-loopback --host without authentication (trusted networks only)",
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
        auth_token=read_token(path=args.auth_token_file),
        tls=_tls(args),
        allow_insecure_remote=args.insecure,
    )


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    if not (args.tls_cert or args.tls_key):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
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


def _spawn(argv: list[str], name: str, detach: bool) -> subprocess.Popen:
    """Detached services log to .zsc/logs/ and hold none of our pipes, so a caller reading our output sees EOF."""
    if not detach:
        return subprocess.Popen(argv)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / f"{name}.log", "ab") as log_file:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True
        )


def cmd_up(args: argparse.Namespace) -> int:
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    procs = {name: _spawn(_serve_argv(args, name, port), name, args.detach) for name, port in ports.items()}
    try:
        for name, port in ports.items():
            channel = connect(f"{args.host}:{port}")
            try:
                wait_until_serving(channel, timeout=600)
            finally:
                channel.close()
            print(f"{name:15s} {args.host}:{port} SERVING", flush=True)
    except TimeoutError as err:
        for p in procs.values():
            p.terminate()
        print(f"zsc: {err}", file=sys.stderr)
        return 1
    if args.detach:
        STATE_FILE.parent.mkdir(exist_ok=True)
        STATE_FILE.write_text(json.dumps({n: p.pid for n, p in procs.items()}))
        print(f"started in the background (logs in {LOG_DIR}/); stop with `zsc down`")
        return 0
    stop = {"signal": 0}
    signal.signal(signal.SIGTERM, lambda s, f: stop.update(signal=s))
    signal.signal(signal.SIGINT, lambda s, f: stop.update(signal=s))
    while not stop["signal"] and all(p.poll() is None for p in procs.values()):
        time.sleep(0.5)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return max((p.wait() for p in procs.values()), default=0)


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
    services = args.services or sorted(DEFAULT_PORTS, key=DEFAULT_PORTS.get)
    unknown = set(services) - set(DEFAULT_PORTS)
    if unknown:
        print(f"zsc: unknown service(s) {sorted(unknown)}; one of {', '.join(DEFAULT_PORTS)}", file=sys.stderr)
        return 2
    ok = True
    for name in services:
        address = address_from_env(name) or f"127.0.0.1:{DEFAULT_PORTS[name]}"
        channel = connect(address)
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as err:
            status = err.code().name
        finally:
            channel.close()
        ok &= status == "SERVING"
        print(f"{name:15s} {address:22s} {status}")
    return 0 if ok else 1
