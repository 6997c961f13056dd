"""Synthesis over real gRPC on the tiny profile: a dataset end to end and its no-op rerun, preview, cancel, a SIGKILL
mid-job then resume, sharding over two replicas, bad input, and the `zsc synthesize` CLI.

Every comparison of two datasets is byte for byte over the whole tree (PNGs, manifest.jsonl, request.json)."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from conftest import cancel_and_wait, start_server, zsc_cli
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from zsc import tracking
from zsc.common.v1 import common_pb2, common_pb2_grpc
from zsc.runtime.client import connect, unpack, wait_until_serving, watch
from zsc.runtime.server import ZscServer
from zsc.synthesis.v1 import synthesis_pb2 as pb
from zsc.synthesis.v1 import synthesis_pb2_grpc as pb_grpc
from zsc_synthesis import requests, servicer
from zsc_synthesis.core import planner, writer

pytestmark = pytest.mark.service
CAP = 1000  # images per class, configured through the service's environment variable
STEPS = 2
BATCH = 4
SEED = 7
CLASSES = ("cat", "dog")
PER_CLASS = 12  # 3 chunks of 4 per class
ENV = {servicer.CAP_ENV: str(CAP)}  # the cap the servers read once, while they start


def _request(out: Path | str, classes=CLASSES, per_class: int = PER_CLASS, **fields) -> pb.GenerateDatasetRequest:
    fields.setdefault("tricks", pb.TrickSpec(tricks="multidomain,random_guidance"))
    fields.setdefault("generation", pb.GenerationSettings(steps=STEPS))
    return pb.GenerateDatasetRequest(
        classes=[pb.ClassSpec(name=c) for c in classes],
        images_per_class=per_class,
        resolution=32,
        output_uri=str(out),
        seed=SEED,
        batch_size=BATCH,
        **fields,
    )


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthesis")


def _server(root: Path) -> ZscServer:
    """Another replica on the module's root: a server of its own."""
    return start_server("synthesis", [root], env=ENV)


@pytest.fixture(scope="module")
def server(root: Path, server_for):
    yield server_for("synthesis", [root], env=ENV)
    server_for.release(root)  # the module's own root: no other module shares this server


@pytest.fixture(scope="module")
def reference(channel, root: Path):
    """One uninterrupted run over gRPC: the dataset every other run must reproduce byte for byte."""
    out = root / "reference"
    updates: list[common_pb2.Operation] = []
    op = watch(channel, pb_grpc.SynthesisStub(channel).GenerateDataset(_request(out)), updates.append)
    return out, unpack(op, pb.GenerateDatasetResult), op, updates


def test_dataset_end_to_end_and_rerun_does_no_new_work(reference, channel) -> None:
    out, result, op, updates = reference
    n = len(CLASSES) * PER_CLASS
    assert (result.total, result.generated, result.skipped, result.computed) == (n, n, 0, n)
    assert result.images_per_second > 0 and result.batch_size == BATCH
    assert (result.output_uri, result.manifest_uri) == (str(out), str(out / writer.MANIFEST))
    done = [u.metadata.done_units for u in updates]
    assert done == sorted(done) and done[-1] == n and any(0 < d < n for d in done)
    assert op.metadata.metrics["images_per_second"] > 0 and op.metadata.unit == "images"

    records = writer.read_manifest(out)
    pngs = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert len(records) == n and sorted(r["file"] for r in records) == pngs
    assert not list(out.rglob("*.tmp"))
    for r in records:
        assert r["file"] == f"{r['class']}/{r['index']:05d}.png"
        assert (r["steps"], r["scheduler"], r["size"], r["model"]) == (STEPS, "ddim", 32, "tiny:zsc-tiny-sd")
        assert r["prompt"] == f"a {r['domain']} of a {r['class']}" and 1.0 <= r["guidance"] <= 5.0
        with Image.open(out / r["file"]) as im:
            im.load()
            assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"
    for name in CLASSES:
        assert len({r["domain"] for r in records if r["class"] == name}) == 10
    assert len({r["seed"] for r in records}) == n and len({r["guidance"] for r in records}) == n

    run = tracking.client().get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and op.metadata.mlflow_run_id == result.mlflow_run_id
    assert run.data.params["images_per_class"] == str(PER_CLASS) and run.data.params["classes"] == "cat,dog"
    assert run.data.metrics["generated"] == n and run.data.metrics["images_per_second"] > 0
    assert run.data.tags["zsc.kind"] == "synthesis"
    artifacts = {a.path for a in tracking.client().list_artifacts(run.info.run_id)}
    assert {"contact_sheet.png", "request.json"} <= artifacts

    before = tree(out)
    again = unpack(
        watch(channel, pb_grpc.SynthesisStub(channel).GenerateDataset(_request(out))), pb.GenerateDatasetResult
    )
    assert (again.generated, again.skipped, again.computed) == (0, n, 0)
    assert tree(out) == before


def test_preview_streams_the_dataset_pixels(reference, channel) -> None:
    out, *_ = reference
    request = pb.GenerateImagesRequest(
        classes=[pb.ClassSpec(name="cat")],
        images_per_class=PER_CLASS,
        tricks=pb.TrickSpec(tricks="multidomain,random_guidance"),
        resolution=32,
        seed=SEED,
        generation=pb.GenerationSettings(steps=STEPS),
        batch_size=BATCH,
    )
    images = list(pb_grpc.SynthesisStub(channel).GenerateImages(request))
    assert len(images) == PER_CLASS
    records = {r["file"]: r for r in writer.read_manifest(out)}
    for item in images:
        with Image.open(io.BytesIO(item.image.data)) as im:
            im.load()
            assert item.image.mime == "image/png" and im.size == (32, 32)
        record = records[item.job.file]
        assert (item.job.prompt, item.job.domain, item.job.guidance, item.job.seed) == (
            record["prompt"],
            record["domain"],
            record["guidance"],
            record["seed"],
        )
        # same plan, same batches: the preview shows the very bytes the dataset holds
        assert item.image.data == (out / item.job.file).read_bytes()

    request.images_per_class = requests.MAX_PREVIEW_IMAGES + 1
    with pytest.raises(grpc.RpcError) as err:
        list(pb_grpc.SynthesisStub(channel).GenerateImages(request))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the cap" in err.value.details()


def test_cancel_ends_cancelled_with_no_partial_files_and_a_killed_run(channel, root: Path) -> None:
    out = root / "cancelled"
    stub = pb_grpc.SynthesisStub(channel)
    op = stub.GenerateDataset(_request(out, per_class=200))
    # a second job on the same files would race the first one's temp files: refused while it runs
    with pytest.raises(grpc.RpcError) as busy:
        stub.GenerateDataset(_request(out, per_class=200, shard=pb.Shard(classes=["dog"], start=100)))
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "being written" in busy.value.details()
    operations = common_pb2_grpc.OperationsStub(channel)
    stream = operations.WatchOperation(common_pb2.WatchOperationRequest(name=op.name))
    for update in stream:
        if update.metadata.done_units > 0 or update.done:
            break
    stream.cancel()
    assert not update.done, "the job finished before it could be cancelled"
    final = cancel_and_wait(channel, op)
    assert 0 < final.metadata.done_units < 400
    assert not list(out.rglob("*.tmp"))
    pngs = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert 0 < len(pngs) < 400 and len(pngs) % BATCH == 0  # whole batches only
    assert sorted(r["file"] for r in writer.read_manifest(out)) == pngs
    assert tracking.client().get_run(final.metadata.mlflow_run_id).info.status == "KILLED"
    assert _serving(channel)


def _spawn_server(root: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`zsc serve synthesis` in a child process; returns it once it prints its address."""
    env = {**os.environ, servicer.CAP_ENV: str(CAP)}
    with open(log, "ab") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zsc.cli.main", "serve", "synthesis", "--port", "0", "--data-root", str(root)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.startswith("synthesis on "):
        proc.kill()
        pytest.fail(f"server did not start: {line!r}; log: {log.read_text()[-2000:]}")
    return proc, line.removeprefix("synthesis on ")


@pytest.mark.slow
def test_sigkill_mid_job_then_resume_is_byte_identical(channel, root: Path, tmp_path: Path) -> None:
    # 2 x 16 images in 8 batches, with enough steps per batch that the kill surely lands mid-job
    n = 2 * 16

    def request(out: Path) -> pb.GenerateDatasetRequest:
        return _request(out, per_class=16, generation=pb.GenerationSettings(steps=6))

    ref_out = root / "uninterrupted"
    watch(channel, pb_grpc.SynthesisStub(channel).GenerateDataset(request(ref_out)))
    out = root / "killed"
    proc, address = _spawn_server(root, tmp_path / "first.log")
    try:
        child = connect(address)
        wait_until_serving(child, timeout=120)
        op = pb_grpc.SynthesisStub(child).GenerateDataset(request(out))
        deadline = time.monotonic() + 120
        written = 0
        while not written and time.monotonic() < deadline:
            time.sleep(0.005)
            written = len(list(out.rglob("*.png")))
        get = common_pb2.GetOperationRequest(name=op.name)
        killed_run = common_pb2_grpc.OperationsStub(child).GetOperation(get).metadata.mlflow_run_id
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        child.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = len(list(out.rglob("*.png")))
    assert 0 < written <= partial < n, f"the kill landed at {partial} of {n} images"
    assert killed_run and tracking.client().get_run(killed_run).info.status == "RUNNING"  # nobody could end it

    proc, address = _spawn_server(root, tmp_path / "second.log")
    try:
        child = connect(address)
        wait_until_serving(child, timeout=120)
        result = unpack(
            watch(child, pb_grpc.SynthesisStub(child).GenerateDataset(request(out))), pb.GenerateDatasetResult
        )
        child.close()
    finally:
        proc.terminate()
        proc.wait(30)
    assert (result.skipped, result.generated) == (partial, n - partial)
    assert tree(out) == tree(ref_out)
    # The restarted server's startup sweep ended the killed job's run (it runs on its own thread at start).
    deadline = time.monotonic() + 60
    while tracking.client().get_run(killed_run).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tracking.client().get_run(killed_run).info.status == "FAILED"


def test_two_replicas_write_the_same_dataset_as_one(reference, server, root: Path, capsys) -> None:
    from zsc.cli.main import main

    ref_out, *_ = reference
    second = _server(root)
    out = root / "sharded"
    try:
        argv = ["synthesize", "--classes", ",".join(CLASSES), "--per-class", str(PER_CLASS)]
        argv += ["--tricks", "multidomain,random_guidance", "--resolution", "32", "--steps", str(STEPS)]
        argv += ["--seed", str(SEED), "--batch-size", str(BATCH), "--out", str(out)]
        argv += ["--address", f"127.0.0.1:{server.port},127.0.0.1:{second.port}"]
        assert main(argv) == 0, capsys.readouterr().err
    finally:
        second.stop(grace=1)
    printed = capsys.readouterr().out
    assert "generated 24 images" in printed and "MLflow runs:" in printed
    # both replicas did work: the plan's six shards (4 images of one class each) were spread over the two; then the
    # last replica that took shards runs the whole plan once, skipping every image: it rebuilds the manifest
    done = [op.metadata.done_units for op in second.runtime.operations.list()[0]]
    assert done.count(24) == 1 and 1 <= len(done) - 1 < 6 and set(done) == {4, 24}
    assert tree(out) == tree(ref_out)


def test_one_shard_writes_exactly_its_part_of_the_dataset(reference, server, root: Path, capsys) -> None:
    """`--shard I/N` (one pod of an indexed Job): each shard's PNGs are its index range of the full dataset, byte for
    byte; a worker past the last shard has nothing to do; a rerun without --shard only rebuilds the manifest."""
    from zsc.cli.main import main

    ref_out, *_ = reference
    ref = tree(ref_out)
    records = writer.read_manifest(ref_out)
    out = root / "one-shard-at-a-time"
    argv = ["synthesize", "--classes", ",".join(CLASSES), "--per-class", str(PER_CLASS)]
    argv += ["--tricks", "multidomain,random_guidance", "--resolution", "32", "--steps", str(STEPS)]
    argv += ["--seed", str(SEED), "--batch-size", str(BATCH), "--out", str(out)]
    argv += ["--address", f"127.0.0.1:{server.port}"]
    expected: set[str] = set()
    # 12 images per class on a grid of 4: three workers take indices 0-3, 4-7 and 8-11 of both classes
    for index, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 12)]):
        assert main([*argv, "--shard", f"{index}/3"]) == 0, capsys.readouterr().err
        expected |= {r["file"] for r in records if lo <= r["index"] < hi}
        pngs = {name: data for name, data in tree(out).items() if name.endswith(".png")}
        assert pngs == {name: ref[name] for name in expected}
    assert "generated 8 images" in capsys.readouterr().out
    # a fourth worker: the plan has only three chunks per class and too few classes to split, so no shard is left
    assert main([*argv, "--shard", "3/4"]) == 0
    assert "shard 3/4: nothing to do" in capsys.readouterr().out
    assert main(argv) == 0
    assert "nothing to do: all 24 images already exist" in capsys.readouterr().out
    assert tree(out) == ref


@pytest.mark.parametrize("value", ["3/3", "1", "-1/2", "a/b", "0/0"])
def test_cli_refuses_a_bad_shard(value: str, tmp_path: Path, capsys) -> None:
    from zsc.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["synthesize", "--classes", "cat", "--per-class", "2", "--out", str(tmp_path), f"--shard={value}"])
    assert exit_.value.code == 2
    assert "--shard takes I/N with 0 <= I < N" in capsys.readouterr().err


def test_split_shards_cuts_classes_when_chunks_run_short() -> None:
    request = writer.SynthesisRequest.create(["a", "b", "c", "d"], 8)
    assert [(s.classes, s.start, s.stop) for s in writer.split_shards(request, 2, 4)] == [(None, 0, 4), (None, 4, 8)]
    shards = writer.split_shards(request, 4, 4)
    assert [(s.classes, s.start, s.stop) for s in shards] == [
        (("a", "b"), 0, 4),
        (("a", "b"), 4, 8),
        (("c", "d"), 0, 4),
        (("c", "d"), 4, 8),
    ]
    covered = sorted(j.file for s in shards for j in s.select(request.plan()))
    assert covered == sorted(j.file for j in request.plan())


def _bad(**changes) -> pb.GenerateDatasetRequest:
    classes = changes.pop("classes", CLASSES)
    per_class = changes.pop("per_class", 4)
    return _request(changes.pop("out", "OUT"), classes=classes, per_class=per_class, **changes)


BAD_REQUESTS = {
    "no classes": (lambda: _bad(classes=()), "no classes given"),
    "duplicate class": (lambda: _bad(classes=("cat", "dog", "cat")), "class 'cat' appears twice in classes"),
    "zero count": (lambda: _bad(per_class=0), "must be positive"),
    "negative count": (lambda: _bad(per_class=-5), "must be positive"),
    "count over the cap": (lambda: _bad(per_class=CAP + 1), f"over the cap of {CAP}"),
    "unknown trick": (lambda: _bad(tricks=pb.TrickSpec(tricks="multidomian")), "unknown trick 'multidomian'"),
    "unknown domain set": (
        lambda: _bad(tricks=pb.TrickSpec(tricks="multidomain", domain_set="nope")),
        "unknown domain set 'nope'",
    ),
    "empty domain": (lambda: _bad(tricks=pb.TrickSpec(tricks="multidomain", domains=["photo", ""])), "unknown domain"),
    "guidance lo > hi": (
        lambda: _bad(tricks=pb.TrickSpec(tricks="random_guidance", guidance_range=pb.GuidanceRange(lo=4, hi=2))),
        "lo > hi",
    ),
    "unknown scheduler": (
        lambda: _bad(generation=pb.GenerationSettings(scheduler="heun")),
        "unknown scheduler 'heun'",
    ),
    "negative steps": (lambda: _bad(generation=pb.GenerationSettings(steps=-1)), "steps must be in"),
    "output outside the root": (lambda: _bad(out="/etc/zsc-synthesis"), "outside the data root"),
    "output escaping the root": (lambda: _bad(out="ROOT/../../escape"), "outside the data root"),
    "no output": (lambda: _bad(out=""), "output_uri is empty"),
    "empty shard": (lambda: _bad(shard=pb.Shard(start=4, stop=2)), "empty or negative"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_invalid_argument(case: str, channel, root: Path) -> None:
    build, message = BAD_REQUESTS[case]
    request = build()
    out = root / "bad"
    request.output_uri = request.output_uri.replace("OUT", str(out)).replace("ROOT", str(root))
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.SynthesisStub(channel).GenerateDataset(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details() and "\n" not in err.value.details()
    assert not out.exists()
    assert _serving(channel)


def test_a_different_request_into_a_dataset_fails_at_once(reference, channel) -> None:
    out, *_ = reference
    before = tree(out)
    stub = pb_grpc.SynthesisStub(channel)
    for request, message in [
        (_request(out, per_class=PER_CLASS, tricks=pb.TrickSpec(tricks="class_prompt")), "different synthesis request"),
        (pb.GenerateDatasetRequest(**{**_fields(_request(out)), "batch_size": 2}), "batch size 4"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            stub.GenerateDataset(request)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and message in err.value.details()
    assert tree(out) == before


def _fields(message: pb.GenerateDatasetRequest) -> dict:
    return {f.name: v for f, v in message.ListFields()}


def test_list_tricks_reports_the_planner_and_the_caps(channel) -> None:
    reply = pb_grpc.SynthesisStub(channel).ListTricks(pb.ListTricksRequest())
    assert [t.name for t in reply.tricks] == [t.name for t in planner.list_tricks()]
    multidomain = next(t for t in reply.tricks if t.name == "multidomain")
    assert multidomain.kind == pb.PROMPT and list(multidomain.defaults["domains"]) == list(planner.DEFAULT_DOMAINS)
    assert next(t for t in reply.tricks if t.name == "merged").kind == pb.MIX
    assert list(reply.default_domains) == list(planner.DEFAULT_DOMAINS)
    assert reply.templates["satellite"] == "a satellite photo of a {class} in the style of a {domain}"
    assert dict(reply.image_templates) == {"image_of": "an image of {class}", "image_of_a": "an image of a {class}"}
    assert {"ddim", "dpm++"} <= set(reply.schedulers) and reply.default_scheduler == "ddim"
    assert (reply.default_guidance_range.lo, reply.default_guidance_range.hi) == (1.0, 5.0)
    assert (reply.default_steps, reply.default_batch_size, reply.max_images_per_class) == (40, 8, CAP)
    assert reply.model == "tiny:zsc-tiny-sd"


def test_profile_without_text_to_image_is_failed_precondition(tmp_path: Path, server_for) -> None:
    profile = tmp_path / "no-t2i.json"
    profile.write_text(
        json.dumps(
            {
                "name": "no-t2i",
                "description": "CLIP only",
                "clip": None,
                "text_to_image": None,
                "diffusion_classifier": None,
                "downstream_arch": "resnet18",
                "device": "cpu",
                "dtype": "float32",
            }
        )
    )
    channel = server_for.channel("synthesis", [tmp_path], profile=str(profile))
    try:
        stub = pb_grpc.SynthesisStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GenerateDataset(_request(tmp_path / "out"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no text-to-image model" in err.value.details()
        assert stub.ListTricks(pb.ListTricksRequest()).model == ""
        assert _serving(channel)
    finally:
        server_for.release(tmp_path)  # the test's own profile and root


@pytest.mark.slow
def test_cli_acceptance_and_rerun(
    tmp_path: Path, isolated_mlflow: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from zsc.cli.main import main

    # the session's temporary store: it already has MLflow's schema, which costs ~10 s to create
    env = {**os.environ, "ZSC_MLFLOW_DIR": str(isolated_mlflow)}
    env.pop("ZSC_SYNTHESIS_ADDRESS", None)
    out = tmp_path / "x"
    # the acceptance command; --steps 2 keeps it within CI time (the default, 40, costs 20x the UNet passes)
    args = ["synthesize", "--classes", "cat,dog,ship", "--per-class", "10", "--tricks", "multidomain,random_guidance"]
    args += ["--resolution", "32", "--out", str(out), "--profile", "tiny", "--steps", "2"]
    first = zsc_cli(*args, env=env, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "generated 30 images" in first.stdout and "30 records" in first.stdout
    records = writer.read_manifest(out)
    assert len(records) == 30 and len(list(out.rglob("*.png"))) == 30
    assert len((out / writer.MANIFEST).read_text().splitlines()) == 30
    assert len({r["domain"] for r in records}) == 10
    for name in ("cat", "dog", "ship"):
        assert len({r["domain"] for r in records if r["class"] == name}) == 10  # 10 images, 10 domains each
    guidance = [r["guidance"] for r in records]
    assert len(set(guidance)) == 30 and all(1 <= g <= 5 for g in guidance) and max(guidance) - min(guidance) > 2
    run_id = first.stdout.strip().splitlines()[-1].removeprefix("MLflow run: ")
    run = tracking.client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["generated"] == 30

    # the rerun, in this process to spare a second interpreter start: same command, same output directory
    before = tree(out)
    monkeypatch.delenv("ZSC_SYNTHESIS_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "nothing to do: all 30 images already exist" in printed and "generated 0" in printed
    assert tree(out) == before


def test_cli_parses_class_files_descriptions_and_merges(tmp_path: Path) -> None:
    import argparse

    from zsc.cli.synthesize import parse_classes, parse_tricks

    (tmp_path / "classes.txt").write_text("# CIFAR-ish\ncrane: crane, a bird\ncat\n\nship\n")
    specs = parse_classes(f"@{tmp_path / 'classes.txt'}", ["ship=a sailing ship"])
    assert [(c.name, c.description) for c in specs] == [
        ("crane", "crane, a bird"),
        ("cat", ""),
        ("ship", "a sailing ship"),
    ]
    knobs = {
        "domains": [],
        "domain_set": "",
        "template": "satellite",
        "image_template": "",
        "guidance": None,
        "guidance_range": [2.0, 3.0],
    }
    spec = parse_tricks(argparse.Namespace(tricks="class_prompt=0.25;multidomain,random_guidance=0.75", **knobs))
    assert [(m.tricks, m.share) for m in spec.merge] == [("class_prompt", 0.25), ("multidomain,random_guidance", 0.75)]
    assert (spec.template, spec.guidance_range.lo, spec.guidance_range.hi) == ("satellite", 2.0, 3.0)
    # the service accepts what the CLI builds, and plans the satellite prompts with the descriptions
    from zsc.client import synthesis

    request = synthesis.dataset_request(specs, 4, tmp_path / "out", tricks=spec)
    plan = requests.build_request(request, CAP, CAP).plan()
    assert "a satellite photo of a crane, a bird in the style of a photo" in {j.prompt for j in plan}
    assert {j.trick for j in plan} == {"class_prompt", "multidomain+random_guidance"}
    wording = synthesis.TrickSpec(tricks="random_guidance", image_template="image_of_a")
    request = synthesis.dataset_request(specs, 1, tmp_path / "out", tricks=wording)
    assert requests.build_request(request, CAP, CAP).plan()[0].prompt == "an image of a crane, a bird"
    request.tricks.image_template = ""
    assert requests.build_request(request, CAP, CAP).plan()[0].prompt == "an image of crane, a bird"


def test_cli_bad_input_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from zsc.cli.main import main

    monkeypatch.delenv("ZSC_SYNTHESIS_ADDRESS", raising=False)
    assert main(["synthesize", "--classes", "cat,cat", "--per-class", "2", "--out", str(tmp_path / "x")]) == 1
    # refused by the client, with the message the server gives (the library's one rule)
    assert capsys.readouterr().err.strip() == "zsc: class 'cat' appears twice in --classes"
    assert not (tmp_path / "x").exists()
