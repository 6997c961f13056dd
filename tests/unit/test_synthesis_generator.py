"""Synthesis generator and writer on the tiny seeded Stable Diffusion: per-sample guidance in one batch, and the
ImageFolder + manifest output (resume, cancel, byte-identical resumes, shards, refusal of a different request)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsc.errors import Cancelled, FailedPrecondition
from zsc.models.diffusion import create_sd_components, text_to_image_pipeline
from zsc_synthesis.core.generator import GenerationConfig, ImageGenerator
from zsc_synthesis.core.planner import make_plan
from zsc_synthesis.core.writer import (
    MANIFEST,
    REQUEST,
    Shard,
    SynthesisRequest,
    contact_sheet,
    read_manifest,
    split_shards,
    synthesize,
    write_manifest,
)

STEPS = 3
BATCH = 4


@pytest.fixture(scope="module")
def parts():
    return create_sd_components("tiny:zsc-tiny-sd", seed=0)


@pytest.fixture(scope="module")
def request_():
    # merged tricks put fixed (7.5) and random guidance into the same batches
    return SynthesisRequest.create(
        ["cat", "crane"],
        8,
        [("class_prompt", 0.5), ("multidomain,random_guidance", 0.5)],
        seed=3,
        descriptions={"crane": "crane, a bird"},
        negative_prompt="blurry",
        generation=GenerationConfig(steps=STEPS, size=32),
    )


@pytest.fixture(scope="module")
def reference(parts, request_, tmp_path_factory):
    """One uninterrupted run: the dataset every other run must reproduce byte for byte."""
    root = tmp_path_factory.mktemp("reference")
    result = synthesize(request_, parts, root, batch_size=BATCH)
    return root, result


class UNetCalls:
    """Counts UNet forward passes and the samples they carry."""

    def __init__(self, unet):
        self.calls = self.rows = 0
        self._handle = unet.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        self.rows += args[0].shape[0]

    def close(self):
        self._handle.remove()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_mixed_guidance_batch_equals_one_at_a_time(parts, scheduler):
    gen = ImageGenerator(parts, GenerationConfig(steps=3, scheduler=scheduler))
    prompts = ["a photo of a cat", "dog", "an image of a bird", "a sketch of a cat", "an image of a frog"]
    negatives = ["", "blurry", "", "", "low quality"]
    guidance = [7.5, 1.0, 3.3, 0.0, 2.2]
    seeds = [11, 12, 13, 14, 15]
    calls = UNetCalls(parts.unet)
    batch = gen.generate_tensors(prompts, negatives, guidance, seeds)
    # one UNet batch per step: 5 conditional rows + 3 unconditional ones (only for g > 1)
    assert (calls.calls, calls.rows) == (3, 3 * 8)
    calls.close()
    singles = torch.cat(
        [
            gen.generate_tensors([p], [n], [g], [s])
            for p, n, g, s in zip(prompts, negatives, guidance, seeds, strict=True)
        ]
    )
    assert batch.shape == (5, 3, 64, 64) and batch.dtype == torch.float32
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)
    # guidance really acts per sample: the same seed and prompt at another scale is another image
    other = gen.generate_tensors([prompts[0]], [negatives[0]], [1.0], [seeds[0]])
    assert (other - batch[:1]).abs().max() > 1e-3


def test_custom_loop_matches_diffusers_pipeline(parts):
    """Per-sample CFG reduces to diffusers' scalar CFG, with the same initial noise."""
    gen = ImageGenerator(parts, GenerationConfig(steps=4, scheduler="ddim"))
    pipe = text_to_image_pipeline(parts, "ddim")
    for prompt, negative, g, seed in [("a painting of a cat", "blurry", 4.5, 5), ("dog", "", 0.0, 6)]:
        ours = gen.generate_tensors([prompt], [negative], [g], [seed])
        latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
        ref = pipe(
            prompt,
            negative_prompt=negative,
            guidance_scale=g,
            num_inference_steps=4,
            height=64,
            width=64,
            latents=latents,
            output_type="pt",
        ).images
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_seeds_downsampling_and_cancel(parts):
    jobs = make_plan(["cat"], 3, "random_guidance", seed=1)
    lanczos = ImageGenerator(parts, GenerationConfig(steps=2, size=32)).generate(jobs)
    bicubic = ImageGenerator(parts, GenerationConfig(steps=2, size=16, downsample="bicubic")).generate(jobs)
    assert [im.size for im in lanczos] == [(32, 32)] * 3 and {im.mode for im in lanczos} == {"RGB"}
    assert [im.size for im in bicubic] == [(16, 16)] * 3
    again = ImageGenerator(parts, GenerationConfig(steps=2, size=32)).generate(jobs)
    assert [im.tobytes() for im in again] == [im.tobytes() for im in lanczos]
    # alone, an image differs from its batched self by float kernels only (at most one 8-bit level): the reason the
    # writer always generates a fixed chunk grid
    alone = ImageGenerator(parts, GenerationConfig(steps=2, size=32)).generate(jobs[:1])
    assert np.abs(np.asarray(alone[0], dtype=int) - np.asarray(lanczos[0], dtype=int)).max() <= 1
    assert lanczos[0].tobytes() != lanczos[1].tobytes()
    with pytest.raises(Cancelled):
        ImageGenerator(parts, GenerationConfig(steps=2)).generate(jobs, should_stop=lambda: True)
    with pytest.raises(ValueError, match="multiple of the VAE factor"):
        ImageGenerator(parts, GenerationConfig(native_resolution=60))
    with pytest.raises(ValueError, match="unknown scheduler"):
        GenerationConfig(scheduler="heun")


def test_dataset_is_complete_and_consistent(reference, request_):
    root, result = reference
    assert (result.total, result.generated, result.skipped, result.computed) == (16, 16, 0, 16)
    assert not result.cancelled and result.images_per_second > 0
    plan = request_.plan()
    records = read_manifest(root)
    assert [r["file"] for r in records] == [j.file for j in plan]
    pngs = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    assert pngs == sorted(r["file"] for r in records)
    assert not list(root.rglob("*.tmp"))
    for record, job in zip(records, plan, strict=True):
        assert (record["class"], record["index"], record["seed"], record["guidance"]) == (
            job.class_name,
            job.index,
            job.seed,
            job.guidance,
        )
        assert (record["steps"], record["scheduler"], record["model"]) == (STEPS, "ddim", "tiny:zsc-tiny-sd")
        assert (record["size"], record["native_resolution"], record["negative_prompt"]) == (32, 64, "blurry")
        with Image.open(root / record["file"]) as im:
            im.load()
            assert im.size == (32, 32) and im.mode == "RGB"
    crane = [r for r in records if r["class"] == "crane"]
    assert all("crane, a bird" in r["prompt"] for r in crane)
    assert {r["trick"] for r in records} == {"class_prompt", "multidomain+random_guidance"}
    header = json.loads((root / REQUEST).read_text())
    assert header["batch_size"] == BATCH and len(header["fingerprint"]) == 64
    sheet = contact_sheet(root, per_class=3)
    assert sheet.height == 2 * (32 + 2) and sheet.width > 3 * 32


def test_resume_does_no_new_work(reference, parts, request_):
    root, _ = reference
    before = tree(root)
    calls = UNetCalls(parts.unet)
    progress = []
    result = synthesize(request_, parts, root, on_progress=lambda done, total: progress.append((done, total)))
    calls.close()
    assert (result.generated, result.skipped, result.computed, calls.calls) == (0, 16, 0, 0)
    assert progress == [(16, 16)]
    assert tree(root) == before


def test_interrupted_then_resumed_is_byte_identical(reference, parts, request_, tmp_path):
    ref_root, _ = reference
    done = []

    def on_progress(n, total):
        done.append(n)

    first = synthesize(
        request_, parts, tmp_path, batch_size=BATCH, on_progress=on_progress, should_stop=lambda: done[-1] >= 5
    )
    assert first.cancelled and first.generated == 8  # stopped at the first chunk boundary after 5 images
    assert not list(tmp_path.rglob("*.tmp"))
    assert len(list(tmp_path.rglob("*.png"))) == 8
    assert [r["file"] for r in read_manifest(tmp_path)] == [j.file for j in request_.plan()[:8]]
    second = synthesize(request_, parts, tmp_path)
    assert (second.generated, second.skipped, second.computed, second.cancelled) == (8, 8, 8, False)
    assert tree(tmp_path) == tree(ref_root)


def test_cancel_inside_a_batch_discards_it(reference, parts, request_, tmp_path):
    ref_root, _ = reference
    checks = []

    def should_stop():
        checks.append(1)
        return len(checks) > 3  # after the first denoising steps of the first batch

    result = synthesize(request_, parts, tmp_path, batch_size=BATCH, should_stop=should_stop)
    assert result.cancelled and result.generated == 0
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.tmp"))
    assert (tmp_path / MANIFEST).read_text() == ""
    assert (tmp_path / REQUEST).read_bytes() == (ref_root / REQUEST).read_bytes()


def test_kill_between_image_and_manifest_loses_nothing(reference, parts, request_, tmp_path):
    ref_root, _ = reference
    root = tmp_path / "data"
    shutil.copytree(ref_root, root)
    # a killed run: the manifest lags the files, one image of the last chunk is missing, a temp file is left over
    (root / MANIFEST).write_text((root / MANIFEST).read_text().splitlines(keepends=True)[0])
    (root / "crane" / "00006.png").unlink()
    (root / "crane" / ".00006.png.deadbeef.tmp").write_bytes(b"partial")
    calls = UNetCalls(parts.unet)
    result = synthesize(request_, parts, root)
    calls.close()
    assert (result.generated, result.computed) == (1, BATCH)  # the whole chunk is rerun, one file is written
    assert calls.calls == STEPS
    assert tree(root) == tree(ref_root)
    # the manifest alone is repaired from the files without any generation
    (root / MANIFEST).unlink()
    assert write_manifest(root) == 16
    assert tree(root) == tree(ref_root)


def test_shards_union_equals_one_run(reference, parts, request_, tmp_path):
    """Two replicas on index ranges cut off the chunk grid (the harder case), into one directory."""
    ref_root, _ = reference
    cut = 3
    a = synthesize(request_, parts, tmp_path, batch_size=BATCH, shard=Shard(None, 0, cut))
    b = synthesize(request_, parts, tmp_path, batch_size=BATCH, shard=Shard(None, cut, None))
    assert (a.total, b.total) == (2 * cut, 2 * (8 - cut))
    assert a.generated + b.generated == 16
    # the chunk that straddles the cut is computed by both replicas, so both write its exact bytes
    assert (a.computed, b.computed) == (8, 16)
    assert tree(tmp_path) == tree(ref_root)


def test_class_shard_and_split_shards(reference, parts, request_, tmp_path):
    ref_root, _ = reference
    result = synthesize(request_, parts, tmp_path, batch_size=BATCH, shard=Shard(("crane",), 0, 4))
    assert result.generated == 4
    for rel in ("crane/00000.png", "crane/00003.png"):
        assert (tmp_path / rel).read_bytes() == (ref_root / rel).read_bytes()
    assert not (tmp_path / "cat").exists()
    shards = split_shards(request_, 3, batch_size=BATCH)
    assert [(s.start, s.stop) for s in shards] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError, match="not in the request"):
        synthesize(request_, parts, tmp_path, shard=Shard(("emu",)))


def test_different_request_is_refused(reference, parts, request_, tmp_path):
    root, _ = reference
    before = tree(root)
    other = SynthesisRequest.create(
        ["cat", "crane"], 8, "class_prompt", seed=4, generation=GenerationConfig(steps=STEPS, size=32)
    )
    with pytest.raises(FailedPrecondition, match=r"different synthesis request.*seed"):
        synthesize(other, parts, root)
    with pytest.raises(FailedPrecondition, match="batch size 4"):
        synthesize(request_, parts, root, batch_size=2)
    assert tree(root) == before
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FailedPrecondition, match="not empty"):
        synthesize(request_, parts, tmp_path)
