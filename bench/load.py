"""Load test: N concurrent clients x M requests of CLIP zero-shot and of Operation polling, tiny profile.

Starts a classification service in a subprocess (or uses --address), warms it up, then reports the error count,
p50/p99 latency, throughput, and the server's RSS after warm-up and after the load.

    python bench/load.py --clients 32 --requests 50
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.runtime.client import connect, wait_until_serving

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def start_server(data_root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zsc.cli.main",
            "serve",
            "classification",
            "--port",
            "0",
            "--data-root",
            str(data_root),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ZSC_MLFLOW_DIR": str(data_root / "mlflow")},
    )
    line = proc.stdout.readline()
    return proc, "127.0.0.1:" + line.strip().rsplit(":", 1)[1]


def make_dataset(root: Path) -> Path:
    for i, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(2):
            (root / name / f"{j}.png").write_bytes(png(100 * i + j))
    return root


def run_load(address: str, clients: int, requests: int, data: Path) -> dict[str, object]:
    latencies: dict[str, list[float]] = {"zeroshot": [], "poll": []}
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    images = [common_pb2.Image(data=png(i), mime="image/png") for i in range(4)]
    start_gate = threading.Barrier(clients)

    def client(idx: int) -> None:
        channel = connect(address)
        stub, ops = pb_grpc.ClassificationStub(channel), common_pb2_grpc.OperationsStub(channel)
        op_name = ""
        start_gate.wait()
        for r in range(requests):
            kind = "zeroshot" if r % 2 == 0 else "poll"
            t0 = time.perf_counter()
            try:
                if kind == "zeroshot":
                    stub.ZeroShot(
                        pb.ZeroShotRequest(
                            class_names=CLASSES, images=images[: 1 + r % 4], prompts=pb.PromptSpec(template_set="cifar")
                        )
                    )
                elif not op_name:
                    try:
                        op_name = stub.EvaluateZeroShot(pb.EvaluateZeroShotRequest(data_uri=str(data))).name
                    except grpc.RpcError as err:  # the cap on long operations is expected under load
                        if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        ops.ListOperations(common_pb2.ListOperationsRequest(page_size=10))
                else:
                    ops.GetOperation(common_pb2.GetOperationRequest(name=op_name))
            except grpc.RpcError as err:
                with lock:
                    errors[err.code().name] += 1
                continue
            with lock:
                latencies[kind].append(time.perf_counter() - t0)
        channel.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    report: dict[str, object] = {
        "clients": clients,
        "requests_per_client": requests,
        "wall_s": round(wall, 2),
        "errors": dict(errors),
        "error_count": sum(errors.values()),
    }
    done = sum(len(v) for v in latencies.values())
    report["throughput_rps"] = round(done / wall, 1)
    for kind, values in latencies.items():
        if values:
            report[f"{kind}_p50_ms"] = round(1e3 * float(np.percentile(values, 50)), 1)
            report[f"{kind}_p99_ms"] = round(1e3 * float(np.percentile(values, 99)), 1)
    return report


def measure(clients: int, requests: int, warmup: int) -> dict[str, object]:
    """Start a server, warm it up, run the load and report it with the server's RSS before and after."""
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "folder")
        proc, address = start_server(Path(tmp))
        try:
            channel = connect(address)
            wait_until_serving(channel, timeout=300)
            channel.close()
            run_load(address, clients, warmup, data)
            rss_before = rss_mb(proc.pid)
            report = run_load(address, clients, requests, data)
            report["rss_after_warmup_mb"] = round(rss_before, 1)
            report["rss_after_load_mb"] = round(rss_mb(proc.pid), 1)
            report["rss_growth_pct"] = round(100 * (report["rss_after_load_mb"] / rss_before - 1), 2)
        finally:
            proc.terminate()
            proc.wait(60)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=4, help="requests per client before RSS is measured")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args()
    report = measure(args.clients, args.requests, args.warmup)
    for key, value in report.items():
        print(f"{key:22s} {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["error_count"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
