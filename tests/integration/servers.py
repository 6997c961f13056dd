"""Real backing servers on loopback for the tests that run zsc past one machine: PostgreSQL (the system's binaries),
an S3-compatible object store (moto's standalone server) and an MLflow tracking server over both.

Each starter yields once its server answers and stops it (and removes its files) when the caller's block ends. None
of them knows about pytest except through ``Unavailable``, which the fixtures turn into a skip with its message.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# moto accepts any credentials; real ones in the environment must never reach it (or a real bucket).
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BIN = Path(sys.executable).parent
SERVER_SCRIPT = Path(__file__).resolve().parents[2] / "mlflow" / "server-postgres-s3.sh"


class Unavailable(RuntimeError):
    """A server this machine cannot run (not installed); the message says what is missing and how to get it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} during startup: {log.read_text()[-2000:]}")
        if ready():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s: {log.read_text()[-2000:]}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (MLflow's server forks workers), SIGKILL after 15 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        _stop(proc)


def postgres_runner() -> tuple[Path, list[str], pwd.struct_passwd | None]:
    """Where ``initdb`` and ``pg_ctl`` are (Debian keeps them off PATH, under /usr/lib/postgresql/<v>/bin), the prefix
    that runs them and the user they run as; Unavailable if PostgreSQL cannot run here.

    They refuse to run as root, so as root (CI) they run as the ``postgres`` system user Debian's package creates."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        bin_dir = Path(found[-1]).parent
    elif pg_ctl := shutil.which("pg_ctl"):
        bin_dir = Path(pg_ctl).resolve().parent
    else:
        raise Unavailable("PostgreSQL is not installed (no pg_ctl under /usr/lib/postgresql/*/bin or on PATH); "
                          "install it with `apt-get install postgresql` (.ci/run does)")  # fmt: skip
    if os.geteuid() != 0:
        return bin_dir, [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("running as root and there is no `postgres` user to run PostgreSQL as") from None
    return bin_dir, ["runuser", "-u", "postgres", "--"], user


@dataclass(frozen=True)
class Postgres:
    port: int

    def uri(self, database: str) -> str:
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; zsc installs psycopg2
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.uri(name)


@contextlib.contextmanager
def postgres(timeout: float = 60) -> Iterator[Postgres]:
    """A throwaway cluster on a free loopback port, trust auth for the ``postgres`` role, no Unix socket in /run,
    in a folder its user owns (pytest's own temp folders are closed to other users)."""
    bin_dir, prefix, user = postgres_runner()
    root = Path(tempfile.mkdtemp(prefix="zsc-pg-"))
    try:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        data, log = root / "data", root / "server.log"
        subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)  # fmt: skip
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
        pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
        subprocess.run([*pg_ctl, "-o", options, "-l", str(log), "-w", "-t", str(int(timeout)), "start"],
                       check=True, capture_output=True, timeout=timeout + 10)  # fmt: skip
        try:
            yield Postgres(port)
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class S3:
    endpoint: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _boto_credentials() -> dict[str, str]:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]}  # fmt: skip


@contextlib.contextmanager
def s3_server(workdir: Path, timeout: float = 60) -> Iterator[S3]:
    """moto's standalone S3-compatible server (what DVC's and MLflow's own tests use), in its own process."""
    port = free_port()
    log = workdir / "moto.log"
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with _process(cmd, log, env={**os.environ, **S3_ENV}) as proc:
        endpoint = f"http://127.0.0.1:{port}"
        _wait(lambda: _http_ok(f"{endpoint}/moto-api/"), proc, "moto_server", log, timeout)
        yield S3(endpoint)


@dataclass
class MlflowServer:
    uri: str
    wait: Callable[[], None]  # returns once the server answers /health (idempotent)


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str, artifacts: str, s3: S3, workdir: Path, timeout: float = 240
) -> Iterator[MlflowServer]:
    """The team's MLflow server as mlflow/server-postgres-s3.sh starts it, over a database and an S3 artifact
    destination, proxying artifacts (clients need no S3 credentials). It yields as soon as the process is started (its
    imports and migrations take most of a minute on two busy cores, which the caller can overlap with other work);
    ``wait()`` before the first request."""
    port = free_port()
    log = workdir / "mlflow-server.log"
    env = {**os.environ, **S3_ENV, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint, "MLFLOW": str(BIN / "mlflow")}
    env |= {"ZSC_MLFLOW_BACKEND_URI": backend_uri, "ZSC_MLFLOW_ARTIFACTS": artifacts}
    env |= {"MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with _process(["bash", str(SERVER_SCRIPT)], log, env=env) as proc:
        uri = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        ready: list[bool] = []

        def wait() -> None:
            if not ready:
                left = timeout - (time.monotonic() - started)
                _wait(lambda: _http_ok(f"{uri}/health"), proc, "mlflow server", log, left)
                ready.append(True)

        yield MlflowServer(uri, wait)
