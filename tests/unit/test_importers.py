"""`zsc data import`: each benchmark format on a small fixture written in its exact file layout, the real AWA2
clip_splits.mat, and the one-line errors for malformed files, wrong index bases and overlapping splits."""

from __future__ import annotations

import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from zsc.cli.common import parse_class_map
from zsc.cli.main import main
from zsc.data import ImageFolder
from zsc.features import FeatureSet
from zsc.importers import (
    ImportFault,
    imagenet_class_names,
    normalize_class_name,
    read_coop_split,
    read_gzsl,
)

AWA2 = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "awa2-clip-splits" / "clip_splits.mat"
# Xian et al.'s proposed-split test classes of AWA2 (testclasses.txt of the released data)
AWA2_UNSEEN = "sheep,dolphin,bat,seal,blue+whale,rat,horse,walrus,giraffe,bobcat"

# --- GZSL fixtures: 5 classes x 4 images; classes 0, 1 train, 2 val, 3 and 4 unseen ------------------------------
NAMES = ["antelope", "grizzly+bear", "001.Black_footed_Albatross", "killer+whale", "art_gallery"]
N_PER, D, N_ATT, D_TEXT = 4, 6, 3, 8


def _cells(strings: list[str]) -> np.ndarray:
    out = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        out[i, 0] = s
    return out


def _locs(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.uint16).reshape(-1, 1)  # the released files store (n, 1) uint16


def gzsl_files(root: Path, clip: bool = True, **override: object) -> tuple[Path, Path]:
    """res101.mat-style image features and att_splits/clip_splits.mat-style splits, 1-based as MATLAB writes them."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(1, 6), N_PER)  # image i+1 is of class labels[i]
    features = rng.normal(size=(D, labels.size)).astype(np.float32)  # [D, N]
    images = np.arange(1, labels.size + 1)
    first_two = [int(i) for i in images if (i - 1) % N_PER < 2]
    train = [i for i in first_two if labels[i - 1] in (1, 2)]
    val = [i for i in first_two if labels[i - 1] == 3]
    test_seen = [int(i) for i in images if (i - 1) % N_PER >= 2 and labels[i - 1] <= 3]
    test_unseen = [int(i) for i in images if labels[i - 1] >= 4]
    image_mat = {
        "features": features,
        "labels": labels.reshape(-1, 1).astype(np.float64),
        "image_files": _cells([f"/data/AWA2/JPEGImages/c{y}/{i:04d}.jpg" for i, y in zip(images, labels, strict=True)]),
    }
    splits = {
        "allclasses_names": _cells(NAMES),
        "att": rng.random((N_ATT, 5)),
        "original_att": rng.random((N_ATT, 5)) * 100,
        "trainval_loc": _locs(train + val),
        "train_loc": _locs(train),
        "val_loc": _locs(val),
        "test_seen_loc": _locs(test_seen),
        "test_unseen_loc": _locs(test_unseen),
    }
    if clip:
        splits["cls_features"] = rng.normal(size=(D_TEXT, 5)).astype(np.float32)
        splits["cls_text"] = np.array([f"a photo of a {normalize_class_name(n)}." for n in NAMES])
        splits["att_features"] = rng.normal(size=(D_TEXT, N_ATT)).astype(np.float32)
    image_mat.update({k: v for k, v in override.items() if k in image_mat})
    splits.update({k: v for k, v in override.items() if k not in image_mat})
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "ViTB16.mat", image_mat)
    scipy.io.savemat(root / ("clip_splits.mat" if clip else "att_splits.mat"), splits)
    return root / "ViTB16.mat", root / ("clip_splits.mat" if clip else "att_splits.mat")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def fails_in_one_line(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str], message: str) -> None:
    """``zsc <argv> --out <out>`` exits 1 with one line of stderr that says ``message``, and writes nothing."""
    code, _, err = run([*argv, "--out", str(out)], capsys)
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_class_names_read_as_prompts_do() -> None:
    assert [normalize_class_name(n) for n in NAMES] == [
        "antelope",
        "grizzly bear",
        "Black footed Albatross",
        "killer whale",
        "art gallery",
    ]


def test_gzsl_import_writes_one_feature_set_per_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_mat, splits_mat = gzsl_files(tmp_path / "src")
    out = tmp_path / "awa"
    code, printed, err = run(
        ["data", "import", "gzsl", "--splits", str(splits_mat), "--image-features", str(image_mat), "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    assert "5 classes (3 seen, 2 unseen)" in printed and "test_unseen 8" in printed
    assert (out / "classes.txt").read_text().splitlines() == [normalize_class_name(n) for n in NAMES]
    assert (out / "seen.txt").read_text().splitlines() == ["antelope", "grizzly bear", "Black footed Albatross"]
    assert (out / "unseen.txt").read_text().splitlines() == ["killer whale", "art gallery"]
    src = scipy.io.loadmat(image_mat)
    split_src = scipy.io.loadmat(splits_mat)
    meta = json.loads((out / "splits.json").read_text())
    assert meta["index_base"] == 0 and meta["original_names"] == NAMES and meta["text_source"] == "cls_features"
    for split in ("trainval", "train", "val", "test_seen", "test_unseen"):
        data = FeatureSet.load(out / f"{split}.safetensors")
        rows = split_src[f"{split}_loc"].ravel().astype(np.int64) - 1
        assert meta["splits"][split] == rows.tolist()
        assert torch.equal(data.features, torch.from_numpy(src["features"].T[rows]))
        assert data.labels.tolist() == (src["labels"].ravel()[rows].astype(int) - 1).tolist()
        assert data.class_names == meta["classes"]  # every class listed, with its CLIP text feature
        assert torch.equal(data.text_features, torch.from_numpy(split_src["cls_features"].T))
        assert json.loads(data.metadata["zsc.import"])["original_names"] == NAMES
    assert sorted(set(FeatureSet.load(out / "test_unseen.safetensors").labels.tolist())) == [3, 4]
    test = FeatureSet.load(out / "test.safetensors")  # what evaluate-gzsl scores S and U on
    assert (
        test.labels.tolist() == [0, 0, 1, 1, 2, 2] + [3] * 4 + [4] * 4 and test.metadata["zsc.import.split"] == "test"
    )
    seen_text = FeatureSet.load(out / "text-seen.safetensors")
    assert len(seen_text) == 0 and seen_text.class_names == (out / "seen.txt").read_text().splitlines()
    assert torch.equal(seen_text.text_features, torch.from_numpy(split_src["cls_features"].T[:3]))
    assert (out / "image_files.txt").read_text().splitlines()[0] == "/data/AWA2/JPEGImages/c1/0001.jpg"

    # the commands that read feature sets take the imported ones as they are
    assert (
        run(
            [
                "data",
                "select",
                "--features",
                str(out / "trainval.safetensors"),
                "--classes",
                f"@{out / 'seen.txt'}",
                "--per-class",
                "1",
                "--out",
                str(tmp_path / "shots.safetensors"),
            ],
            capsys,
        )[0]
        == 0
    )
    assert FeatureSet.load(tmp_path / "shots.safetensors").labels.tolist() == [0, 1, 2]
    teacher = tmp_path / "teacher.safetensors"
    fit = ["fit-teacher", "--features", str(out / "trainval.safetensors"), "--classes", f"@{out / 'seen.txt'}"]
    code, _, err = run([*fit, "--out", str(teacher)], capsys)
    assert code == 0, err


def test_gzsl_import_of_att_splits_uses_the_attributes(tmp_path: Path) -> None:
    image_mat, splits_mat = gzsl_files(tmp_path / "src", clip=False)
    data = read_gzsl(splits_mat, image_mat)
    assert data.text_source == "att" and data.text_features.shape == (5, N_ATT)
    assert np.allclose(data.text_features, scipy.io.loadmat(splits_mat)["att"].T)
    assert read_gzsl(splits_mat, image_mat, text="original_att").text_source == "original_att"
    assert read_gzsl(splits_mat, image_mat, keep_names=True).class_names == NAMES


def test_gzsl_without_image_features_needs_the_unseen_classes(tmp_path: Path) -> None:
    _, splits_mat = gzsl_files(tmp_path / "src")
    with pytest.raises(ImportFault, match="does not say which classes are unseen"):
        read_gzsl(splits_mat)
    assert read_gzsl(splits_mat, unseen=["killer+whale", "art gallery"]).unseen == [3, 4]  # either spelling
    (splits_mat.parent / "testclasses.txt").write_text("killer+whale\nart_gallery\n")
    data = read_gzsl(splits_mat)
    assert data.unseen == [3, 4] and data.features is None and data.sources["unseen"].endswith("testclasses.txt")


def test_real_awa2_clip_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not AWA2.is_file():
        pytest.skip(f"{AWA2} is not here")
    out = tmp_path / "awa2"
    code, printed, err = run(
        ["data", "import", "gzsl", "--splits", str(AWA2), "--unseen", AWA2_UNSEEN, "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "50 classes (40 seen, 10 unseen), text features cls_features [50, 512]" in printed
    assert "trainval 23527, train 16187, val 7340, test_seen 5882, test_unseen 7913" in printed
    assert "text features only" in printed and not (out / "trainval.safetensors").exists()
    classes = (out / "classes.txt").read_text().splitlines()
    assert len(classes) == 50 and classes[:3] == ["antelope", "grizzly bear", "killer whale"]
    assert "blue whale" in (out / "unseen.txt").read_text().splitlines()
    text = FeatureSet.load(out / "text.safetensors")
    assert text.class_names == classes and tuple(text.text_features.shape) == (50, 512)
    raw = scipy.io.loadmat(AWA2)
    assert torch.equal(text.text_features, torch.from_numpy(raw["cls_features"].T.copy()))
    record = json.loads(text.metadata["zsc.import"])
    assert record["original_names"][1] == "grizzly+bear" and len(record["unseen"]) == 10
    prompts = json.loads(text.metadata["zsc.import.text_prompts"])
    assert prompts[1] == "a photo of a grizzly bear, a type of animal."
    seen = FeatureSet.load(out / "text-seen.safetensors")
    assert seen.num_classes == 40 and "blue whale" not in seen.class_names
    meta = json.loads((out / "splits.json").read_text())
    assert min(meta["splits"]["test_seen"]) == 0 and max(meta["splits"]["trainval"]) == 37321  # 1-based in the file


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"test_seen_loc": _locs([1, 2, 3])}, "trainval_loc and test_seen_loc share 2 images (e.g. image 1)"),
        ({"val_loc": _locs([1, 9])}, "train_loc and val_loc share 1 images"),
        ({"trainval_loc": _locs([0, 1, 2])}, "trainval_loc holds 0, but the format's indices are 1-based"),
        ({"test_unseen_loc": _locs([13, 21])}, "test_unseen_loc holds 21, beyond the 20 it indexes"),
        ({"labels": np.repeat(np.arange(0, 5), N_PER).reshape(-1, 1)}, "labels holds 0, but the format's indices"),
        ({"features": np.zeros((20, D), np.float32)}, "features is [20, 6] for 20 labels (it looks [N, D]"),
        ({"test_unseen_loc": _locs([13, 14, 1])}, "trainval_loc and test_unseen_loc share 1 images"),
        ({"cls_features": np.zeros((D_TEXT, 4), np.float32)}, "cls_features must be [dim, 5]"),
    ],
)
def test_gzsl_faults_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: dict[str, object], message: str
) -> None:
    image_mat, splits_mat = gzsl_files(tmp_path / "src", **override)
    argv = ["data", "import", "gzsl", "--splits", str(splits_mat), "--image-features", str(image_mat)]
    fails_in_one_line(argv, tmp_path / "out", capsys, message)


def test_gzsl_file_faults(tmp_path: Path) -> None:
    image_mat, splits_mat = gzsl_files(tmp_path / "src")
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(ImportFault, match=r"^junk.mat is not a readable MATLAB file"):
        read_gzsl(junk)
    v73 = tmp_path / "v73.mat"  # MATLAB v7.3: a 512-byte text header, then an HDF5 file
    v73.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + bytes(64))
    try:
        import h5py  # noqa: F401
    except ImportError:
        with pytest.raises(ImportFault, match=r"v73.mat is a MATLAB v7.3 \(HDF5\) file: install h5py"):
            read_gzsl(v73)
    with pytest.raises(ImportFault, match="lacks features, labels: not an image-features file"):
        read_gzsl(splits_mat, splits_mat)
    with pytest.raises(ImportFault, match="lacks allclasses_names"):
        read_gzsl(image_mat)
    with pytest.raises(ImportFault, match="--unseen names 1 classes, but the images of test_unseen belong to 2"):
        read_gzsl(splits_mat, image_mat, unseen=["killer whale"])
    with pytest.raises(ImportFault, match="names classes the file does not have: \\['zebra'\\]"):
        read_gzsl(splits_mat, unseen=["zebra"])
    dup = gzsl_files(tmp_path / "dup", allclasses_names=_cells(["a+b", "a_b", "c", "d", "e"]))[1]
    with pytest.raises(ImportFault, match="classes 'a\\+b' and 'a_b' both read 'a b'"):
        read_gzsl(dup, unseen=["d", "e"])


def test_gzsl_import_refuses_a_used_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image_mat, splits_mat = gzsl_files(tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    argv = ["data", "import", "gzsl", "--splits", str(splits_mat), "--image-features", str(image_mat)]
    code, _, err = run([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "already exists and is not empty" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging folder left behind


# --- CoOp ----------------------------------------------------------------------------------------------------------
COOP_CLASSES = ["abyssinian", "american_bulldog", "F/A-18", "beagle", "sea_lion"]


def coop_files(root: Path, **override: object) -> tuple[Path, Path]:
    """split_zhou_<Dataset>.json over an image root: 2 train, 1 val and 1 test image per class, in CoOp's shape."""
    images = root / "images"
    split: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(COOP_CLASSES):
        folder = images / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, part in enumerate(["train", "train", "val", "test"]):
            Image.new("RGB", (4, 4), (label * 40, k * 60, 0)).save(folder / f"img_{k}.jpg")
            split[part].append([f"c{label}/img_{k}.jpg", label, cname])
    split.update(override)  # type: ignore[arg-type]
    path = root / "split_zhou_Test.json"
    path.write_text(json.dumps(split))
    return path, images


def test_coop_import_writes_an_image_folder_per_split_and_half(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split_file, images = coop_files(tmp_path / "src")
    out = tmp_path / "pets"
    code, printed, err = run(
        ["data", "import", "coop", "--split-file", str(split_file), "--images", str(images), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "5 classes: 3 base, 2 new" in printed and "train: 6 base, 4 new images" in printed
    assert "--class-map @" in printed  # F/A-18 cannot be a folder name
    names = ["abyssinian", "american bulldog", "F/A-18", "beagle", "sea lion"]
    assert (out / "base.txt").read_text().splitlines() == names[:3]  # CoOp: the first ceil(5/2) sorted labels
    assert (out / "new.txt").read_text().splitlines() == names[3:]
    assert (out / "class_map.txt").read_text() == "F_A-18=F/A-18\n"
    base = ImageFolder.open(out / "train" / "base", class_names=names[:3], folder_to_class={"F_A-18": "F/A-18"})
    assert [(p.name, y) for p, y in base.samples] == [(f"img_{k}.jpg", y) for y in range(3) for k in (0, 1)]
    linked = out / "train" / "base" / "american bulldog" / "img_1.jpg"
    assert linked.is_symlink() and linked.resolve() == (images / "c1" / "img_1.jpg").resolve()
    new_test = ImageFolder.open(out / "test" / "new")
    assert new_test.classes == ["beagle", "sea lion"] and len(new_test) == 2
    assert json.loads((out / "import.json").read_text())["original_names"] == COOP_CLASSES


def test_coop_import_maps_each_half_and_merge_joins_the_halves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split_file, images = coop_files(tmp_path / "src")
    out = tmp_path / "pets"
    argv = ["data", "import", "coop", "--split-file", str(split_file), "--images", str(images), "--out", str(out)]
    assert run(argv, capsys)[0] == 0
    # F/A-18 is a base class: the base map has its entry, the new map is empty
    assert (out / "class_map_base.txt").read_text() == "F_A-18=F/A-18\n"
    assert (out / "class_map_new.txt").read_text() == ""
    assert parse_class_map(f"@{out / 'class_map_new.txt'}") == {}  # an empty map file maps nothing
    base, new = ["abyssinian", "american bulldog", "F/A-18"], ["beagle", "sea lion"]
    a = FeatureSet(torch.eye(3, 4), torch.tensor([0, 1, 2]), base, torch.ones(3, 2), {"image_encoder": "x"})
    b = FeatureSet(torch.ones(2, 4), torch.tensor([1, 0]), new, torch.zeros(2, 2), {"image_encoder": "x"})
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    merge = ["data", "merge", "--features", str(tmp_path / "a.safetensors"), "--features"]
    code, _, err = run([*merge, str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "m.safetensors")], capsys)
    assert code == 0, err
    m = FeatureSet.load(tmp_path / "m.safetensors")
    assert m.class_names == base + new and m.labels.tolist() == [0, 1, 2, 4, 3]
    assert m.text_features[3:].abs().sum() == 0 and torch.equal(m.features[:3], torch.eye(3, 4))
    assert [s["n"] for s in json.loads(m.metadata["merged"])] == [3, 2] and m.metadata["image_encoder"] == "x"
    code, _, err = run([*merge, str(tmp_path / "a.safetensors"), "--out", str(tmp_path / "x.safetensors")], capsys)
    assert code == 1 and "class 'abyssinian' is in both" in err and len(err.strip().splitlines()) == 1
    FeatureSet(b.features, b.labels, new, b.text_features, {"image_encoder": "y"}).save(tmp_path / "c.safetensors")
    code, _, err = run([*merge, str(tmp_path / "c.safetensors"), "--out", str(tmp_path / "x.safetensors")], capsys)
    assert code == 1 and "differ in image_encoder ('y' vs 'x'): not one feature space" in err

    copied = tmp_path / "copied"
    argv = ["data", "import", "coop", "--split-file", str(split_file), "--images", str(images), "--link", "copy"]
    assert run([*argv, "--out", str(copied)], capsys)[0] == 0
    img = copied / "val" / "new" / "sea lion" / "img_2.jpg"
    assert not img.is_symlink() and img.read_bytes() == (images / "c4" / "img_2.jpg").read_bytes()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"test": [["c0/img_0.jpg", 0, "abyssinian"]]}, "image 'c0/img_0.jpg' is listed in both train and test"),
        ({"val": [["c0/img_2.jpg", 0, "abyssinian"]] * 2}, "image 'c0/img_2.jpg' is listed twice in val"),
        ({"val": [["c0/img_2.jpg", 0, "cat"]]}, "label 0 is both 'abyssinian' and 'cat'"),
        ({"val": [["c0/img_2.jpg", "0", "abyssinian"]]}, "val[0] is not [image path, integer label, class name]"),
        ({"val": [["../x.jpg", 0, "abyssinian"]]}, "val[0] path '../x.jpg' leaves the image root"),
        ({"val": {}}, "must be an object with train, val and test lists"),
    ],
)
def test_coop_faults_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: dict[str, object], message: str
) -> None:
    split_file, images = coop_files(tmp_path / "src", **override)
    argv = ["data", "import", "coop", "--split-file", str(split_file), "--images", str(images)]
    fails_in_one_line(argv, tmp_path / "out", capsys, message)


def test_coop_index_base_and_missing_images(tmp_path: Path) -> None:
    split_file, images = coop_files(tmp_path / "src")
    raw = json.loads(split_file.read_text())
    one_based = {s: [[p, y + 1, c] for p, y, c in rows] for s, rows in raw.items()}
    split_file.write_text(json.dumps(one_based))
    with pytest.raises(ImportFault, match=r"labels must be 0..4, got 1..5 \(it runs 1..C: CoOp's split files are 0"):
        read_coop_split(split_file)
    split_file.write_text("{not json")
    with pytest.raises(ImportFault, match="is not JSON"):
        read_coop_split(split_file)
    split_file, images = coop_files(tmp_path / "again")
    os.remove(images / "c3" / "img_3.jpg")
    from zsc.importers import write_coop

    with pytest.raises(ImportFault, match=r"image 'c3/img_3\.jpg' is not under"):
        write_coop(read_coop_split(split_file), images, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- the Diffusion Classifier's datasets ---------------------------------------------------------------------------
class FakePets:
    """torchvision's OxfordIIITPet as the importer sees it: classes, per-image labels and species."""

    def __init__(self, root: str, download: bool, split: str, target_types: list[str]) -> None:
        assert download and split == "test" and target_types == ["category", "binary-category"]
        self.classes = ["Abyssinian", "American Bulldog", "Bengal"]
        self._labels = [0, 1, 2, 1]
        self._bin_labels = [0, 1, 0, 1]

    def __iter__(self):
        for i, (y, s) in enumerate(zip(self._labels, self._bin_labels, strict=True)):
            yield Image.new("RGB", (4, 4), (i * 50, 0, 0)), (y, s)


def test_diffusion_pets_are_named_with_their_species(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "OxfordIIITPet", FakePets)
    out = tmp_path / "pets"
    code, printed, err = run(["data", "import", "diffusion", "pets", "--out", str(out)], capsys)
    assert code == 0, err
    assert "zsc zeroshot --method diffusion --preset pets --data" in printed
    folder = ImageFolder.open(out)
    assert folder.classes == ["Abyssinian cat", "American Bulldog dog", "Bengal cat"]  # as the paper's prompts say
    assert [y for _, y in folder.samples] == [0, 1, 1, 2]


def test_diffusion_aircraft_keep_their_slash_and_offline_says_what_to_fetch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    class FakeAircraft(list):
        def __init__(self, root: str, download: bool, split: str) -> None:
            super().__init__([(Image.new("RGB", (4, 4)), 0), (Image.new("RGB", (4, 4)), 1)])
            self.classes = ["707-320", "F/A-18"]

    monkeypatch.setattr(torchvision.datasets, "FGVCAircraft", FakeAircraft)
    out = tmp_path / "aircraft"
    code, printed, err = run(["data", "import", "diffusion", "aircraft", "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "class_map.txt").read_text() == "F_A-18=F/A-18\n" and "--class-map @" in printed
    assert ImageFolder.open(out, folder_to_class={"F_A-18": "F/A-18"}).classes == ["707-320", "F/A-18"]

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "Food101", offline)
    dl = tmp_path / "dl"
    code, _, err = run(
        ["data", "import", "diffusion", "food", "--out", str(tmp_path / "f"), "--download-dir", str(dl)], capsys
    )
    assert code == 1 and err.count("\n") == 1 and err.startswith("zsc: cannot download food")
    assert f"food-101.tar.gz into {dl}/ by hand" in err and not (tmp_path / "f").exists()
    code, _, err = run(["data", "import", "diffusion", "pets", "--split", "train", "--out", str(out)], capsys)
    assert code == 1 and "pets has the splits trainval, test, not 'train'" in err


def test_diffusion_imagenet_and_objectnet_from_local_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    val = tmp_path / "val"
    wnids = [f"n{i:08d}" for i in range(1000)]
    for w in wnids:
        (val / w).mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(val / wnids[0] / "ILSVRC2012_val_00000001.JPEG")
    Image.new("RGB", (4, 4)).save(val / wnids[744] / "ILSVRC2012_val_00000002.JPEG")
    names = imagenet_class_names(wnids)
    assert names[:3] == ["tench", "goldfish", "great white shark"] and len(set(names)) == 1000
    assert (names[657], names[744], names[836], names[837]) == ("missile", "projectile", "sunglass", "sunglasses")
    out = tmp_path / "imagenet"
    code, printed, err = run(
        ["data", "import", "diffusion", "imagenet", "--images", str(val), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "--preset imagenet" in printed
    assert (out / "tench" / "ILSVRC2012_val_00000001.JPEG").is_symlink()
    assert "swim trunks _ shorts=swim trunks / shorts" in (out / "class_map.txt").read_text().splitlines()
    with pytest.raises(ImportFault, match="it has 999 class folders"):
        imagenet_class_names(wnids[:-1])

    onet = tmp_path / "objectnet-1.0"
    (onet / "mappings").mkdir(parents=True)
    labels = {"alarm_clock": "Alarm clock", "banana": "Banana", "air_freshener": "Air freshener"}
    (onet / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(labels))
    overlap = {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}  # no air freshener in ImageNet
    (onet / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(overlap))
    for folder in labels:
        (onet / "images" / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(onet / "images" / folder / "a.png")
    out = tmp_path / "objectnet"
    code, printed, err = run(
        ["data", "import", "diffusion", "objectnet", "--images", str(onet), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert ImageFolder.open(out).classes == ["alarm clock", "banana"] and "2 images of 2 classes" in printed
