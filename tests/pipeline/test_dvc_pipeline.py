"""`dvc repro` of every pipeline (tiny profile, small sizes) in a temporary git + DVC repository.

One test, in steps that build on each other (pytest-xdist must not split them). The repository is a copy of the
checkout's files, then `git init`, `dvc init`, the checkout's DVC config (the default local remote) and params.yaml
with the sizes shrunk and the data paths pointed at the real CIFAR-10 sets. The four services run once (`zsc up` on
free ports) and every stage's `zsc` command talks to them over gRPC; they log into this session's isolated MLflow
store.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CIFAR10_TEST, CIFAR10_TRAIN, REPO

from zsc.features import FeatureSet
from zsc.lineage import dvc_md5

pytestmark = [pytest.mark.pipeline, pytest.mark.slow, pytest.mark.realdata]

SERVICES = ("synthesis", "recovery", "generative", "classification")
PAGE_TEMPLATE = REPO / ".dvc" / "page-template.html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Feature-file metadata that names the run that wrote the file (or, for a file derived from another, that file's hash).
RUN_IDENTITY = {"mlflow_run_id", "input_sha256", "generator_model_uri", "generator_run_id"}
# Small enough for two full runs in a couple of minutes on 2 CPU cores; the shape of every pipeline stays.
SMALL = {
    "clip_eval": {"limit": 20},
    "diffusion_eval": {"limit": 2, "stages": "4:2,8:1"},
    "synthesize": {"per_class": 2, "steps": 2},
    "train_classifier": {"arch": "test_byobnet", "name": "zsc-downstream-test_byobnet", "epochs": 1, "batch_size": 8},
    "evaluate": {"limit": 20},
    "train_features": {"limit": 100},
    "recover": {"num": 20, "nsample": 10, "epochs": 10},
    "train_generator": {"epochs": 2, "hidden_dim": 32, "noise_dim": 8},
    "generate_features": {"per_class": 20},
    "train_gzsl": {"epochs": 2},
    "test_features": {"limit": 50},
    "ship_base": {"shots": 4},
    "train_ship": {"epochs": 2, "encoder_hidden": 32, "generator_hidden": 32, "latent_dim": 8},
    "finetune": {"synthetic_per_class": 20, "epochs": 2},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    )
    return out.stdout + out.stderr


def _git(repo: Path, env: dict[str, str], *args: str) -> str:
    return _run(["git", "-c", "user.name=zsc", "-c", "user.email=zsc@localhost", *args], repo, env)


def _lock_hashes(repo: Path) -> dict[str, str]:
    """path -> md5 of every stage output listed in dvc.lock (data, models, metrics and plots alike)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def _make_repo(root: Path, env: dict[str, str]) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if rel.startswith(".dvc/") or rel == ".dvcignore" or not src.is_file():
            continue  # `dvc init` writes its own; the checkout's config is copied over it below
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, root / rel)
    _git(root, env, "init", "-q")
    _run(["dvc", "init", "-q"], root, env)
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")  # the default local remote, the page template
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")  # zsc's own plot templates
    if PAGE_TEMPLATE.is_file():  # written by `make install`; ignored by git
        shutil.copy2(PAGE_TEMPLATE, root / ".dvc" / PAGE_TEMPLATE.name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"] = {"real_test": str(CIFAR10_TEST), "real_train": str(CIFAR10_TRAIN)}
    for stage, values in SMALL.items():
        params[stage].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(root, env, "add", "-A")
    _git(root, env, "commit", "-qm", "pipeline test")


@contextmanager
def _services(root: Path, env: dict[str, str]) -> Iterator[None]:
    """`zsc up` on free ports; the stages find the services through ZSC_<SERVICE>_ADDRESS in ``env``."""
    ports = {name: _free_port() for name in SERVICES}
    env.update({f"ZSC_{name.upper()}_ADDRESS": f"127.0.0.1:{port}" for name, port in ports.items()})
    port_args = [arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]
    roots = ["--data-root", str(root), "--data-root", str(CIFAR10_TEST), "--data-root", str(CIFAR10_TRAIN)]
    _run(["zsc", "up", "--detach", "--profile", "tiny", *roots, *port_args], root, env)
    pids = json.loads((root / ".zsc" / "up.json").read_text()).values()
    try:
        yield
    finally:
        for pid in pids:  # what `zsc down` does, without needing the repository to still be there
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def test_dvc_pipelines(tmp_path: Path) -> None:
    env = dict(os.environ)  # ZSC_MLFLOW_DIR: the session's isolated store (tests/conftest.py)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # zsc and dvc of this venv
    env["ZSC_FEATURE_CACHE_DIR"] = str(tmp_path / "feature-cache")
    env["DVC_NO_ANALYTICS"] = "1"
    repo = tmp_path / "repo"
    _make_repo(repo, env)
    with _services(repo, env):
        printed = _run(["dvc", "repro"], repo, env)
        assert "Running stage 'evaluate_gzsl'" in printed and "Running stage 'evaluate_ship'" in printed
        first = _lock_hashes(repo)
        check_metrics_and_plots(repo)
        check_plots_page_renders_offline(repo, env)
        check_lineage(repo, env, first)
        check_stages_name_models_by_their_files_after_a_change_and_revert(repo, env)
        check_repro_is_a_no_op_and_deterministic(repo, env, first)
    check_push_then_pull_into_a_clean_clone(repo, env, tmp_path / "clone")


def _metrics(repo: Path, stage: str) -> dict:
    return json.loads((repo / "metrics" / f"{stage}.json").read_text())


def _is_fraction(x: object) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and 0.0 <= x <= 1.0


def check_metrics_and_plots(repo: Path) -> None:
    for stage, n in (("clip_eval", 20), ("diffusion_eval", 2), ("evaluate", 20)):
        m = _metrics(repo, stage)
        assert m["n_images"] == n and _is_fraction(m["top1"]) and _is_fraction(m["macro_accuracy"]), stage
        # a class without test images has no accuracy (null, zsc.evaluation's rule): the diffusion stage scores 2
        per_class = list(m["per_class_accuracy"].values())
        assert len(per_class) == 10 and all(a is None or _is_fraction(a) for a in per_class), stage
        if n >= 10:  # the images are spread over the classes: every class has some
            assert None not in per_class, stage
        assert not any("second" in k for k in m), "timings would make the metrics differ between identical runs"
    assert _metrics(repo, "diffusion_eval")["unet_passes_per_image"] == 4 * 10 + 4 * 2  # 4:2,8:1 over 10 classes
    for stage in ("evaluate_gzsl", "evaluate_ship"):
        gzsl = _metrics(repo, stage)
        assert all(_is_fraction(gzsl[k]) for k in ("S", "U", "H", "B", "N", "HM")), stage
        s, u = gzsl["S"], gzsl["U"]
        assert gzsl["H"] == pytest.approx(0.0 if s + u == 0 else 2 * s * u / (s + u)), stage
        assert len(gzsl["per_class_accuracy"]) == 10, stage
    train = _metrics(repo, "train_classifier")
    assert _is_fraction(train["best_val_accuracy"]) and train["best_epoch"] == 1
    assert {"loss_d", "loss_g", "wasserstein"} <= set(_metrics(repo, "train_generator"))
    assert math.isfinite(_metrics(repo, "train_gzsl")["loss"])
    assert {"loss", "loss_rec", "loss_kl"} <= set(_metrics(repo, "train_ship"))
    assert _is_fraction(_metrics(repo, "finetune")["train_accuracy"])

    curve = (repo / "plots" / "train_generator" / "training_curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,") and [row.split(",")[0] for row in curve[1:]] == ["1", "2"]
    confusion = (repo / "plots" / "evaluate" / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 1 + 20  # one row per evaluated image
    for folder in ("mazsc/classifier", "dfzsl/generator", "dfzsl/gzsl", "ship/generator", "ship/classifier"):
        folder = f"models/{folder}"
        files = {p.name for p in (repo / folder).iterdir()}
        assert "config.json" in files and any(f.endswith(".safetensors") for f in files), folder
        assert "MLmodel" not in files  # MLflow's wrapper differs run to run; DVC keeps the weights


def check_plots_page_renders_offline(repo: Path, env: dict[str, str]) -> None:
    """`dvc plots show` writes one chart per plot definition (no second default-template copy of a stage's CSV), with
    vega inlined: no script comes from the network, and headless Chromium with every host unresolvable draws them."""
    assert PAGE_TEMPLATE.is_file(), "make install writes .dvc/page-template.html (scripts/plots_template.py)"
    _run(["dvc", "plots", "show", "--out", "dvc_plots"], repo, env)
    page = (repo / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    definitions = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    assert page.count("vegaEmbed('#") == len(definitions)
    assert '<meta charset="utf-8">' in page  # without it vega's minus signs (U+2212) are mojibake
    assert "<script src=" not in page and "cdn.jsdelivr" not in page
    specs = {
        div.split('"', 1)[0]: json.loads(div.split("var spec = ", 1)[1].split(";\n", 1)[0])
        for div in page.split('<div id = "')[1:]
    }
    assert set(specs) == {next(iter(d)) for d in definitions}
    gzsl = specs["dfzsl_real_test_per_class"]
    assert gzsl["encoding"]["color"]["field"] == "split"
    assert {row["split"] for row in gzsl["data"]["values"]} == {"seen", "unseen"}
    if CHROMIUM is None:  # .ci/run installs it, so CI always renders
        assert not os.environ.get("CI"), "chromium is missing in CI"
        return
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    browser += ["--disable-background-networking", "--host-resolver-rules=MAP * ~NOTFOUND"]
    browser += [f"--user-data-dir={repo / '.chromium'}", "--virtual-time-budget=20000", "--dump-dom"]
    page_uri = (repo / "dvc_plots" / "index.html").as_uri()
    dom = subprocess.run([*browser, page_uri], capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count('class="marks"') == len(definitions), "every chart is drawn by vega"


def check_lineage(repo: Path, env: dict[str, str], first_run: dict[str, str]) -> None:
    """The versions the pipeline registered carry, as lineage tags, the hashes dvc.lock lists for their data."""
    from zsc import tracking

    client = tracking.client()

    def aliased(name: str, alias: str) -> dict[str, str]:
        return dict(client.get_model_version_by_alias(name, alias).tags)

    classifier = aliased("zsc-downstream-test_byobnet", "mazsc")
    assert classifier["zsc.dataset.md5"] == first_run["data/synthetic/mazsc"]
    assert classifier["zsc.dataset.uri"] == str(repo / "data" / "synthetic" / "mazsc")
    assert float(classifier["real_test.top1"]) == pytest.approx(_metrics(repo, "evaluate")["top1"])
    assert classifier["real_test.dataset"] == str(CIFAR10_TEST) and classifier["zsc.profile"] == "tiny"

    # each generative route (its alias and folder): the generator and the classifier trained on its base features,
    # the classifier also on its novel ones, and the H of the route's evaluation stage in the classifier's tags
    for route, generator, classifier, base, stage in (
        ("dfzsl", "zsc-generator-tfvaegan", "zsc-gzsl", "aligned", "evaluate_gzsl"),
        ("ship", "zsc-generator-ship_vae", "zsc-finetune-coop", "base", "evaluate_ship"),
    ):
        base_md5, novel_md5 = (first_run[f"data/{route}/{name}.safetensors"] for name in (base, "novel"))
        assert aliased(generator, route)["zsc.dataset.md5"] == base_md5, route
        tags = aliased(classifier, route)
        assert tags["zsc.dataset.md5"] == base_md5 and tags["zsc.novel.md5"] == novel_md5, route
        assert float(tags["real_test.H"]) == pytest.approx(_metrics(repo, stage)["H"], abs=1e-6), route

    review = _run(["zsc", "registry", "review", "zsc-gzsl", "zsc-finetune-coop", "--html-dir", "reports"], repo, env)
    assert review.startswith("### zsc-gzsl\n") and "\n### zsc-finetune-coop\n" in review
    assert "| aliases | @dfzsl |" in review and "| aliases | @ship |" in review and "real test: H" in review
    assert (repo / "reports" / "zsc-finetune-coop-review.html").is_file()


def check_repro_is_a_no_op_and_deterministic(repo: Path, env: dict[str, str], first_run: dict[str, str]) -> None:
    printed = _run(["dvc", "repro"], repo, env)
    assert "Running stage" not in printed
    assert "up to date" in _run(["dvc", "status"], repo, env)

    printed = _run(["dvc", "repro", "--force"], repo, env)
    assert printed.count("Running stage") == len(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    second = _lock_hashes(repo)
    assert second.keys() == first_run.keys()
    # Synthetic images, model weights and configs, metrics and plots: byte for byte. Feature files also record which
    # MLflow run (and model version) wrote them, unique per run by design; all else in them must be identical.
    changed = [path for path in first_run if second[path] != first_run[path]]
    assert all(path.startswith("data/") and path.endswith(".safetensors") for path in changed), changed
    for path in changed:
        md5 = first_run[path]
        before = FeatureSet.load(repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:])
        after = FeatureSet.load(repo / path)
        for name in ("features", "labels", "text_features"):
            assert torch.equal(getattr(before, name), getattr(after, name)), (path, name)
        assert before.class_names == after.class_names, path
        differ = {
            k for k in before.metadata.keys() | after.metadata.keys() if before.metadata.get(k) != after.metadata.get(k)
        }
        assert differ <= RUN_IDENTITY, (path, differ)
    assert "up to date" in _run(["dvc", "status"], repo, env)


def check_stages_name_models_by_their_files_after_a_change_and_revert(repo: Path, env: dict[str, str]) -> None:
    """Change a param, repro, revert it, repro: the alias the training stage moves is a side effect DVC cannot undo
    (a restore from the run-cache, a checkout or a reviewer's promote can leave it on another version). The next stage
    must evaluate the version that holds the files its input folder has, whatever the alias says."""
    from zsc import registry, tracking
    from zsc.cli.common import model_uri

    client = tracking.client()
    params_path = repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["train_gzsl"]["epochs"] += 1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro", "evaluate_gzsl"], repo, env)
    newer = client.get_model_version_by_alias("zsc-gzsl", "dfzsl")
    params_path.write_text(original)
    _run(["dvc", "repro", "evaluate_gzsl"], repo, env)
    assert "up to date" in _run(["dvc", "status"], repo, env)
    restored_md5 = _lock_hashes(repo)["models/dfzsl/gzsl"]
    assert dict(newer.tags)[registry.FILES_MD5_TAG] != restored_md5
    registry.promote("zsc-gzsl", newer.version, "dfzsl", client=client)  # the alias now names the other version

    uri = model_uri(str(repo / "models" / "dfzsl" / "gzsl"))
    name, version = uri.removeprefix("models:/").split("/")
    assert version != newer.version
    assert dict(client.get_model_version(name, version).tags)[registry.FILES_MD5_TAG] == restored_md5
    _run(["dvc", "repro", "--force", "--single-item", "evaluate_gzsl"], repo, env)
    tagged = dict(client.get_model_version(name, version).tags)
    assert float(tagged["real_test.H"]) == pytest.approx(_metrics(repo, "evaluate_gzsl")["H"], abs=1e-6)
    assert "up to date" in _run(["dvc", "status"], repo, env)


def check_push_then_pull_into_a_clean_clone(repo: Path, env: dict[str, str], clone: Path) -> None:
    _run(["dvc", "push"], repo, env)
    _git(repo, env, "add", "-A")
    _git(repo, env, "commit", "-qm", "results")
    _git(repo.parent, env, "clone", "-q", str(repo), str(clone))
    restored = ["data/synthetic/mazsc", "data/dfzsl/aligned.safetensors", "models/mazsc/classifier"]
    assert not any((clone / path).exists() for path in restored)  # git brings dvc.lock and the metrics, not the data
    # The default remote lives in the repository's .dvc/; a second checkout on the machine points at the first's.
    storage = repo / ".dvc" / "storage"
    _run(["dvc", "remote", "modify", "--local", "local", "url", str(storage)], clone, env)
    _run(["dvc", "pull"], clone, env)
    pushed = _lock_hashes(repo)
    for path in restored:
        assert dvc_md5(clone / path) == pushed[path], path
    assert "up to date" in _run(["dvc", "status"], clone, env)
