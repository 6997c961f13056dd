"""DVC with an S3 remote (dvc-s3 against moto's S3-compatible server on loopback), in a temporary git + DVC repository:
a tracked dataset and a stage's output go to the bucket with `dvc push`, and `dvc pull` in a clean clone restores them
with the hashes dvc.lock and the .dvc file recorded."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from integration.servers import S3_ENV, s3_server
from test_dvc_pipeline import _git, _lock_hashes, _run

from zsc.lineage import dvc_md5

pytestmark = [pytest.mark.pipeline, pytest.mark.slow]
BUCKET = "zsc-dvc"
SUMMARIZE = """\
import json, pathlib
files = sorted(p for p in pathlib.Path("data/raw").rglob("*") if p.is_file())
pathlib.Path("out").mkdir(exist_ok=True)
summary = {p.relative_to("data/raw").as_posix(): p.stat().st_size for p in files}
pathlib.Path("out/summary.json").write_text(json.dumps(summary, sort_keys=True))
"""


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_push_to_and_pull_from_an_s3_remote(tmp_path: Path) -> None:
    # Only moto's dummy credentials: a real AWS profile in the environment must not be used, or reach a real bucket.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | S3_ENV | {"DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # dvc and python of this venv
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (repo / "data" / "raw" / c).mkdir(parents=True)
        for i in range(3):
            (repo / "data" / "raw" / c / f"{i}.bin").write_bytes(rng.bytes(int(rng.integers(100, 5000))))
    (repo / "summarize.py").write_text(SUMMARIZE)

    with s3_server(tmp_path) as s3:
        s3.create_bucket(BUCKET)
        _git(repo, env, "init", "-q")
        _run(["dvc", "init", "-q"], repo, env)
        _run(["dvc", "add", "-q", "data/raw"], repo, env)
        _run(["dvc", "stage", "add", "-q", "-n", "summarize", "-d", "data/raw", "-d", "summarize.py",
              "-o", "out/summary.json", "python summarize.py"], repo, env)  # fmt: skip
        _run(["dvc", "repro", "-q"], repo, env)
        # The README's lines for a team's remote; endpointurl is what an S3-compatible store (MinIO, Ceph) adds.
        _run(["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/zsc"], repo, env)
        _run(["dvc", "remote", "modify", "s3", "endpointurl", s3.endpoint], repo, env)
        _git(repo, env, "add", "-A")
        _git(repo, env, "commit", "-qm", "data, a stage and the S3 remote")

        assert "pushed" in _run(["dvc", "push"], repo, env)
        objects = repo / ".dvc" / "cache" / "files"  # not runs/: the run cache is pushed only with --run-cache
        cache = sorted(f"files/{p.relative_to(objects).as_posix()}" for p in objects.rglob("*") if p.is_file())
        # Every cache object (6 files, the directory listing, the summary) is in the bucket under the remote's path.
        assert s3.keys(BUCKET) == [f"zsc/{key}" for key in cache] and len(cache) == 8
        assert "Everything is up to date" in _run(["dvc", "push"], repo, env)

        _git(tmp_path, env, "clone", "-q", str(repo), str(clone))
        assert not (clone / "data" / "raw").exists() and not (clone / "out" / "summary.json").exists()  # no data in git
        _run(["dvc", "pull"], clone, env)
        assert "in sync" in _run(["dvc", "status", "--cloud"], clone, env)

    recorded = _lock_hashes(repo)
    added = yaml.safe_load((repo / "data" / "raw.dvc").read_text())["outs"][0]["md5"]
    assert dvc_md5(clone / "data" / "raw") == dvc_md5(repo / "data" / "raw") == added
    assert dvc_md5(clone / "out" / "summary.json") == recorded["out/summary.json"]
    assert _files(clone / "data" / "raw") == _files(repo / "data" / "raw")
    assert (clone / "out" / "summary.json").read_bytes() == (repo / "out" / "summary.json").read_bytes()
    assert "up to date" in _run(["dvc", "status"], clone, env)
