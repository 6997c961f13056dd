"""The pieces the pipelines add to zsc, each on its own: DVC-compatible hashes, `zsc data fetch|select`,
`zsc fit-teacher` (on an in-process recovery service), and the DVC outputs of evaluations. Fast."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from zsc.cli import data as data_cli
from zsc.cli.common import CommandError, save_evaluation
from zsc.cli.main import main
from zsc.features import FeatureSet
from zsc.lineage import dvc_md5


def _tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("hello\n")
    (root / "a" / "b" / "y.bin").write_bytes(bytes(range(256)) * 3)
    (root / "z.txt").write_bytes(b"crlf\r\n")  # DVC 3 hashes bytes as they are (no dos2unix)
    return root


def test_dvc_md5_equals_what_dvc_computes(tmp_path: Path) -> None:
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db.local import LocalHashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    root = _tree(tmp_path / "data")
    fs = LocalFileSystem()
    odb = LocalHashFileDB(fs, str(tmp_path / "odb"))
    for path in (root, root / "z.txt", root / "a" / "b" / "y.bin"):
        _, _, obj = build(odb, str(path), fs, "md5")
        assert dvc_md5(path) == obj.hash_info.value, path
    assert dvc_md5(root).endswith(".dir") and not dvc_md5(root / "z.txt").endswith(".dir")
    before = dvc_md5(root)
    (root / "a" / "x.txt").write_text("hello!\n")
    assert dvc_md5(root) != before


def _features(path: Path, per_class: int = 6, dim: int = 8, classes: int = 4, seed: int = 0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    centers = torch.randn(classes, dim, generator=g) * 3
    features = centers[labels] + 0.1 * torch.randn(len(labels), dim, generator=g)
    fs = FeatureSet(
        features.float(),
        labels,
        [f"class {i}" for i in range(classes)],
        torch.randn(classes, dim, generator=g),
        {"source": "test"},
    )
    fs.save(path)
    return fs


def test_fit_teacher_writes_a_linear_teacher_that_separates_the_classes(tmp_path: Path, capsys) -> None:
    src = tmp_path / "train.safetensors"
    data = _features(src)
    out = tmp_path / "teacher.safetensors"
    code = main(["fit-teacher", "--features", str(src), "--classes", "class 2,class 0,class 3", "--out", str(out)])
    assert code == 0 and "over 3 classes on 18 features (D=8); training accuracy 1.0000" in capsys.readouterr().out
    with safe_open(str(out), "pt") as fh:
        weight, bias = fh.get_tensor("weight"), fh.get_tensor("bias")
        about = json.loads(fh.metadata()["zsc.teacher"])
    assert weight.shape == (3, 8) and bias.shape == (3,) and about["class_names"] == ["class 2", "class 0", "class 3"]
    # Rows follow --classes: class 2's samples score highest on row 0. The teacher scores unit-norm features.
    x = torch.nn.functional.normalize(data.features[data.labels == 2], dim=1)
    assert bool(((x @ weight.T + bias).argmax(dim=1) == 0).all())
    first = out.read_bytes()
    assert main(["fit-teacher", "--features", str(src), "--classes", "class 2,class 0,class 3", "--out", str(out)]) == 0
    assert out.read_bytes() == first  # deterministic, byte for byte (DVC sees no change on a rerun)

    # Two classes: sklearn keeps one row; the teacher still has one row per class with the same softmax.
    assert main(["fit-teacher", "--features", str(src), "--classes", "class 1,class 3", "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as fh:
        weight, bias = fh.get_tensor("weight"), fh.get_tensor("bias")
    x = torch.nn.functional.normalize(data.features[data.labels == 3], dim=1)
    assert weight.shape == (2, 8) and bool(((x @ weight.T + bias).argmax(dim=1) == 1).all())

    capsys.readouterr()
    assert main(["fit-teacher", "--features", str(src), "--classes", "class 1,nope", "--out", str(out)]) == 1
    err = capsys.readouterr().err  # the recovery service fits it: the error is its one line after the served-by line
    assert err.splitlines()[-1] == "zsc: INVALID_ARGUMENT: class 'nope' is not in the features file"


def test_data_select_keeps_the_first_shots_of_some_classes_and_every_class_name(tmp_path: Path, capsys) -> None:
    src = tmp_path / "all.safetensors"
    data = _features(src)
    out = tmp_path / "base.safetensors"
    select = ["data", "select", "--features", str(src), "--out", str(out)]
    assert main([*select, "--classes", "class 3,class 1", "--per-class", "2"]) == 0
    picked = FeatureSet.load(out)
    assert picked.class_names == data.class_names and torch.equal(picked.text_features, data.text_features)
    assert picked.labels.tolist() == [1, 1, 3, 3]  # file order
    assert torch.equal(picked.features, data.features[[6, 7, 18, 19]])
    assert picked.metadata["source"] == "test" and json.loads(picked.metadata["selection"])["per_class"] == 2
    capsys.readouterr()
    code = main([*select, "--classes", "class 1", "--per-class", "7"])
    assert code == 1 and "has 6 samples of 'class 1', fewer than asked" in capsys.readouterr().err


def test_data_center_moves_every_set_by_the_reference_mean_once(tmp_path: Path, capsys) -> None:
    train, test = tmp_path / "train.safetensors", tmp_path / "test.safetensors"
    reference, data = _features(train), _features(test)
    out = tmp_path / "centered.safetensors"
    center = ["data", "center", "--features", str(test), "--mean-of", str(train)]
    assert main([*center, "--classes", "class 1,class 3", "--out", str(out)]) == 0
    mean = reference.features[(reference.labels == 1) | (reference.labels == 3)].double().mean(0).float()
    centered = FeatureSet.load(out)
    torch.testing.assert_close(centered.features, torch.nn.functional.normalize(data.features - mean, dim=1))
    assert torch.equal(centered.labels, data.labels) and centered.class_names == data.class_names
    assert len(centered.metadata[data_cli.CENTERED_TAG]) == 64
    capsys.readouterr()
    assert main(["data", "center", "--features", str(out), "--mean-of", str(train), "--out", str(out)]) == 1
    assert "is centered already" in capsys.readouterr().err


def test_data_fetch_offline_says_what_to_do_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    out = tmp_path / "real" / "cifar10-test"
    code = main(["data", "fetch", "cifar10", "--out", str(out), "--download-dir", str(tmp_path / "dl")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and not out.exists()
    assert err.startswith("zsc: cannot download cifar10") and "looks offline" in err and "data.real_test" in err
    assert main(["data", "fetch", "eurosat", "--split", "test", "--out", str(out)]) == 1
    assert "eurosat has the split(s) all, not 'test'" in capsys.readouterr().err


def test_write_image_folder_writes_pngs_per_class_atomically(tmp_path: Path) -> None:
    images = [(Image.new("RGB", (8, 8), (i * 20, 0, 0)), i % 3) for i in range(9)]
    out = tmp_path / "folder"
    counts = data_cli.write_image_folder(images, ["maple_tree", "cat", "sea ship"], out, limit_per_class=2)
    assert counts == {"maple tree": 2, "cat": 2, "sea ship": 2}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "cat/00000.png",
        "cat/00001.png",
        "maple tree/00000.png",
        "maple tree/00001.png",
        "sea ship/00000.png",
        "sea ship/00001.png",
    ]
    assert Image.open(out / "cat" / "00001.png").getpixel((0, 0)) == (80, 0, 0)  # the 2nd image of label 1 (i=4)

    def broken():
        yield images[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data_cli.write_image_folder(broken(), ["a", "b", "c"], tmp_path / "partial")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]  # no partial folder, no temp folder left
    with pytest.raises(CommandError, match="cannot be a folder name"):
        data_cli.write_image_folder([], ["../x"], tmp_path / "bad")


def test_evaluation_outputs_leave_timings_out_and_write_dvc_plot_csvs(tmp_path: Path) -> None:
    metrics = {"top1": 0.5, "n_images": 4, "seconds_per_image": 0.1, "unet_passes_per_image": 48.0}
    save_evaluation(["a", "b"], [1.0, 0.0], [[2, 0], [2, 0]], metrics, tmp_path / "m.json", tmp_path / "plots")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved == {
        "top1": 0.5,
        "n_images": 4,
        "unet_passes_per_image": 48.0,
        "per_class_accuracy": {"a": 1.0, "b": 0.0},
    }
    assert (tmp_path / "plots" / "per_class_accuracy.csv").read_text() == "class,accuracy\na,1.000000\nb,0.000000\n"
    assert (tmp_path / "plots" / "confusion.csv").read_text().splitlines() == [
        "actual,predicted",
        *["a,a"] * 2,
        *["b,a"] * 2,
    ]
