"""The registry helpers against a real (per-session, sqlite) MLflow store: models-from-code round trip without pickle
or global MLflow state, URI resolution, metric-gated promotion with its history, and the review."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from zsc import registry, tracking
from zsc.errors import InvalidArgument, NotFound
from zsc.plots import confusion_figure, per_class_figure
from zsc_classification import mlflow_model
from zsc_classification.core import downstream as core
from zsc_classification.downstream_servicer import pip_requirements

CLASSES = ["a", "b", "c"]


def _register(name: str, tmp_path: Path, val_accuracy: float = 0.5, seed: int = 0) -> tuple[str, torch.nn.Module, dict]:
    """A real (tiny, untrained) downstream model logged and registered the way the service does it."""
    model, kwargs = core.create_classifier("test_vit", len(CLASSES), 16, seed=seed)
    config = core.model_config("test_vit", CLASSES, 16, kwargs, model)
    with tracking.run("zsc-registry-test", "train", tags={"zsc.kind": "test"}) as run:
        run.log_params({"arch": "test_vit", "epochs": 1, "lr": 1e-3, "seed": seed})
        run.log_metrics({"best_val_accuracy": val_accuracy, "best_epoch": 1})
        files = tmp_path / f"files-{uuid.uuid4().hex[:6]}"
        version = registry.log_pyfunc_model(
            run,
            code_path=mlflow_model.model_code_path(),
            code_paths=mlflow_model.code_paths(),
            artifacts=core.save_model_files(model.state_dict(), config, files),
            registered_model_name=name,
            tags={"zsc.dataset.uri": "/data/syn", "zsc.dataset.hash": "sha256:" + "ab" * 32, "zsc.seed": str(seed)},
            pip_requirements=pip_requirements(),
            signature=mlflow_model.signature(),
            input_example=mlflow_model.input_example(),
        )
    return str(version.version), model.eval(), config


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]


def test_models_from_code_round_trip_without_pickle_or_global_state(tmp_path: Path) -> None:
    name = f"rt-{uuid.uuid4().hex[:8]}"
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    version, model, config = _register(name, tmp_path)
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before  # nothing leaked into the environment

    images = _images()
    batch = mlflow_model.preprocess(images, config)
    with torch.no_grad():
        expected = model(mlflow_model.normalize(batch, config["mean"], config["std"])).softmax(-1)

    for uri in (f"models:/{name}/{version}", f"runs:/{registry.resolve(f'models:/{name}/{version}').run_id}/model"):
        resolved = registry.resolve(uri)
        assert resolved.name == name and resolved.version == version
        local = registry.download(resolved, tmp_path / uuid.uuid4().hex)
        files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
        assert {"MLmodel", "mlflow_model.py", "artifacts/model.safetensors", "artifacts/config.json"} <= files
        assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
        pyfunc = registry.load_pyfunc(local)
        torch.testing.assert_close(pyfunc.unwrap_python_model().predict_proba(images), expected)
        encoded = []
        for im in images:
            path = tmp_path / "im.png"
            im.save(path)
            encoded.append(path.read_bytes())
        frame = pyfunc.predict(pd.DataFrame({"image": encoded}))
        assert list(frame["label"]) == [CLASSES[i] for i in expected.argmax(-1).tolist()]
        np.testing.assert_allclose(np.stack(frame["probabilities"]), expected.numpy(), atol=1e-5)


def test_resolve_errors() -> None:
    with pytest.raises(NotFound):
        registry.resolve("models:/no-such-model/1")
    with pytest.raises(NotFound):
        registry.resolve("models:/no-such-model@champion")
    with pytest.raises(NotFound):
        registry.resolve("runs:/0123456789abcdef0123456789abcdef/model")
    with pytest.raises(NotFound):
        registry.resolve("models:/no-such-model/latest")
    for bad in ("", "s3://bucket/model", "models:/", "models:/x/one", "runs:/abc", "models:/a b/1", "models:/-x/1"):
        with pytest.raises(InvalidArgument, match="models:/<name>@<alias>"):
            registry.resolve(bad)
    with pytest.raises(InvalidArgument, match=r"may not contain '\.\.'"):
        registry.resolve("runs:/abc/model/../../etc")


def test_one_registered_name_rule() -> None:
    for good in ("zsc-downstream-resnet18", "a", "A.b_c-1", "x" * 200):
        assert registry.check_model_name(good) == good
    for bad in ("", "a b", "a/b", "a@b", "a:b", " a", "-a", ".a", "x" * 201, "a\n", "é"):
        with pytest.raises(InvalidArgument, match="registered model name"):
            registry.check_model_name(bad)


def test_real_test_tags_are_one_format_that_the_review_orders() -> None:
    tags = registry.real_test_tags(
        {"H": 0.1234567891, "top1": 1 / 3, "macro_accuracy": 0.5},
        run_id="r1",
        dataset="/data/test",
        n_images=12,
        data_hash="sha256:ab",
        now=1_700_000_000,
    )
    assert tags == {
        "real_test.H": "0.1234567891",
        "real_test.top1": repr(1 / 3),  # full precision: a gate compares the exact score
        "real_test.macro_accuracy": "0.5",
        "real_test.n_images": "12",
        "real_test.dataset": "/data/test",
        "real_test.hash": "sha256:ab",
        "real_test.time": "2023-11-14T22:13:20+00:00",
        "real_test.run_id": "r1",
    }
    assert "real_test.hash" not in registry.real_test_tags({"top1": 1.0}, run_id="r", dataset="d", n_images=1)
    with pytest.raises(ValueError, match="context fields"):
        registry.real_test_tags({"dataset": 1.0}, run_id="r", dataset="d", n_images=1)
    order = [k.removeprefix("real_test.") for k, _ in sorted(tags.items(), key=registry._real_test_order)]
    assert [k for k in order if k != "run_id"] == ["top1", "macro_accuracy", "H", "n_images", "dataset", "hash", "time"]


def test_register_a_folder_and_resolve_every_uri_form(tmp_path: Path) -> None:
    name = f"folder-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"format": "test"}')
    versions = []
    for i in range(2):
        with tracking.run("zsc-registry-test", f"train-{i}") as run:
            versions.append(registry.register_folder(run, folder, "generator", name, {"zsc.seed": str(i)}))
    assert [v.version for v in versions] == ["1", "2"] and versions[0].model_uri == f"models:/{name}/1"
    registry.promote(name, "1", "champion")
    first = versions[0]
    expected = {
        f"models:/{name}/1": "1",
        f"models:/{name}/latest": "2",
        f"models:/{name}@champion": "1",
        first.artifact_uri: "1",  # runs:/<id>/generator names the version holding those files
        f"{first.artifact_uri}/": "1",
    }
    for uri, version in expected.items():
        resolved = registry.resolve(uri)
        assert (resolved.name, resolved.version, resolved.uri) == (name, version, uri.strip()), uri
        assert resolved.model_uri == f"models:/{name}/{version}"
        assert json.loads((registry.fetch(resolved, tmp_path / "dl") / "config.json").read_text()) == {"format": "test"}
    by_run = registry.resolve(first.artifact_uri)
    assert by_run.artifact_uri == first.artifact_uri and by_run.key == f"models:/{name}/1"
    assert registry.load_files(by_run, lambda path: sorted(p.name for p in path.iterdir())) == ["config.json"]
    with pytest.raises(NotFound, match="no model folder"):
        registry.fetch(registry.resolve(f"runs:/{first.run_id}/nothing-here"), tmp_path / "dl")
    with pytest.raises(NotFound, match="is not an MLflow model"):
        registry.download(by_run, tmp_path / uuid.uuid4().hex)
    with tracking.run("zsc-registry-test", "bad-name") as run, pytest.raises(InvalidArgument, match="model name"):
        registry.register_folder(run, folder, "generator", "a b", {})


def test_promote_gates_and_alias_history(tmp_path: Path) -> None:
    name = f"gate-{uuid.uuid4().hex[:8]}"
    v1 = _register(name, tmp_path, val_accuracy=0.5)[0]
    v2 = _register(name, tmp_path, val_accuracy=0.7, seed=1)[0]
    registry.tag_version(name, v1, {"real_test.top1": 0.40})
    registry.tag_version(name, v2, {"real_test.top1": 0.65})

    with pytest.raises(registry.PromotionRefused) as err:
        registry.promote(name, v1, "champion", ["real_test.top1>=0.5"])
    assert "real_test.top1 is 0.4, needs >= 0.5" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(registry.PromotionRefused, match="no_such_metric is missing"):
        registry.promote(name, v1, "champion", ["no_such_metric>0"])
    with pytest.raises(InvalidArgument, match="bad gate"):
        registry.promote(name, v1, "champion", ["top1 at least 0.5"])
    assert registry.alias_history(name) == []
    with pytest.raises(NotFound):
        registry.resolve(f"models:/{name}@champion")

    first = registry.promote(name, v1, "champion", ["best_val_accuracy>=0.5"], now=1_700_000_000)
    assert first == {
        "alias": "champion",
        "version": v1,
        "time": "2023-11-14T22:13:20+00:00",
        "previous": None,
        "gates": ["best_val_accuracy>=0.5"],
    }
    registry.promote(name, v2, "champion", ["real_test.top1>=0.6", "best_val_accuracy>0.6"])
    registry.promote(name, v1, "challenger")
    history = registry.alias_history(name)
    assert [(h["alias"], h["version"], h["previous"]) for h in history] == [
        ("champion", v1, None),
        ("champion", v2, v1),
        ("challenger", v1, None),
    ]
    assert registry.resolve(f"models:/{name}@champion").version == v2
    with pytest.raises(NotFound):
        registry.promote(name, "99", "champion")


def test_review_shows_every_version_and_embeds_evaluation_plots(tmp_path: Path) -> None:
    name = f"review-{uuid.uuid4().hex[:8]}"
    versions = [_register(name, tmp_path, val_accuracy=0.1 * (i + 1), seed=i)[0] for i in range(3)]
    with tracking.run("zsc-registry-test", "eval") as run:
        confusion = np.array([[3, 1, 0], [0, 4, 0], [1, 0, 3]])
        run.log_figure(confusion_figure(confusion, CLASSES), "confusion_matrix.png")
        run.log_figure(per_class_figure([0.75, 1.0, 0.75], CLASSES), "per_class_accuracy.png")
    registry.tag_version(
        name, versions[1], {"real_test.top1": 0.8333, "real_test.macro_accuracy": 0.8333, "real_test.run_id": run.id}
    )
    registry.promote(name, versions[1], "champion")

    text, html_path = registry.review(name, tmp_path / "review.html")
    header = text.splitlines()[0]
    assert all(f"v{v}" in header for v in versions)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    column = {name: i for i, name in enumerate(cells[0])}
    aliases = next(row for row in cells if row[0] == "aliases")
    assert [aliases[column[f"v{v}"]] for v in versions] == ["-", "@champion", "-"]
    assert "real test: top1" in text and "0.8333" in text
    assert "lineage: dataset.hash | sha256:abababababab" in text and "synthetic val: best_val_accuracy" in text
    assert "| arch | test_vit | test_vit | test_vit |" in text
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 2  # the evaluated version's two plots
    assert all(f"Version {v}" in page for v in versions) and "No real-test evaluation" in page
    with pytest.raises(NotFound):
        registry.review(f"missing-{uuid.uuid4().hex[:6]}")


def test_review_says_tiny_profile_accuracy_is_chance_level_and_the_index_links_every_report(tmp_path: Path) -> None:
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    real, tiny = (_register(name, tmp_path, seed=i)[0] for i in range(2))
    registry.tag_version(name, tiny, {"zsc.profile": "tiny"})
    registry.tag_version(name, real, {"zsc.profile": "paper"})
    text, html_path = registry.review(name, tmp_path / "reports" / f"{name}-review.html")
    note = [line for line in text.splitlines() if "chance level" in line]
    assert note == [f"Note: versions v{tiny} come from the tiny profile: random-weight models, so their accuracies are "
                    "chance level by design."]  # fmt: skip
    assert "chance level by design" in html_path.read_text()
    registry.tag_version(name, tiny, {"zsc.profile": "lite"})
    assert "chance level" not in registry.review(name)[0]

    (tmp_path / "reports" / "other-review.html").write_text("<html></html>")
    plots = tmp_path / "dvc_plots" / "index.html"
    plots.parent.mkdir()
    plots.write_text("<html></html>")
    index = registry.write_report_index(tmp_path / "reports", {"DVC plots": plots, "absent": tmp_path / "nothing.html"})
    page = index.read_text()
    assert f"href='{name}-review.html'" in page and "href='other-review.html'" in page
    assert "href='../dvc_plots/index.html'" in page and "absent" not in page and "href='index.html'" not in page


@pytest.mark.slow
def test_cli_promote_refusal_is_one_line_and_exit_1(tmp_path: Path, isolated_mlflow: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    version = _register(name, tmp_path, val_accuracy=0.3)[0]
    env = {**os.environ, "ZSC_MLFLOW_DIR": str(isolated_mlflow)}
    env.pop("MLFLOW_TRACKING_URI", None)

    def zsc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "zsc.cli.main", "registry", *args],
            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
        )  # fmt: skip

    out = zsc("promote", name, "--version", version, "--alias", "champion", "--require", "best_val_accuracy>=0.5")
    assert out.returncode == 1, out.stdout
    assert out.stderr.strip().count("\n") == 0 and "refused to promote" in out.stderr and "Traceback" not in out.stderr
    out = zsc("promote", name, "--version", version, "--require", "best_val_accuracy>=0.2")
    assert out.returncode == 0, out.stderr
    assert f"{name}@champion -> v{version}" in out.stdout
    out = zsc("review", name)
    assert out.returncode == 0, out.stderr
    assert f"v{version}" in out.stdout and (tmp_path / f"{name}-review.html").is_file()
