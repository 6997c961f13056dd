"""FeatureSet file format and the shared evaluation metrics, against hand-computed values."""

from __future__ import annotations

import hashlib
import math
import os
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zsc.evaluation import (
    base_to_new_metrics,
    confusion_matrix,
    gzsl_metrics,
    harmonic_mean,
    mean_per_class_accuracy,
    mean_std,
    mean_std_dict,
    per_class_accuracy,
)
from zsc.features import FeatureSet, content_hash
from zsc.lineage import file_digests


def make_set(n: int = 12, dim: int = 8, text_dim: int = 5, classes: int = 4, seed: int = 0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    return FeatureSet(
        features=torch.randn(n, dim, generator=g),
        labels=torch.arange(n) % (classes - 1),  # the last class has no samples, like a novel class
        class_names=[f"class {i}" for i in range(classes)],
        text_features=torch.randn(classes, text_dim, generator=g),
        metadata={"source": "unit-test", "seed": str(seed)},
    )


# ---------------------------------------------------------------------------------------------------- FeatureSet


def test_round_trip_preserves_everything(tmp_path: Path) -> None:
    fs = make_set()
    path = tmp_path / "features.safetensors"
    fs.save(path)
    back = FeatureSet.load(path)
    assert torch.equal(back.features, fs.features) and back.features.dtype == torch.float32
    assert torch.equal(back.labels, fs.labels) and back.labels.dtype == torch.int64
    assert torch.equal(back.text_features, fs.text_features)
    assert back.class_names == fs.class_names
    assert back.metadata == fs.metadata
    assert (back.num_classes, back.dim, back.text_dim, len(back)) == (4, 8, 5, 12)


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "features.safetensors"
    make_set(seed=0).save(path)
    assert sorted(os.listdir(tmp_path)) == ["features.safetensors"]
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:  # the temp file holds the new bytes; the disk fails before the rename
        raise OSError("disk full")

    import zsc.io

    monkeypatch.setattr(zsc.io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        make_set(seed=1).save(path)
    assert sorted(os.listdir(tmp_path)) == ["features.safetensors"]
    assert path.read_bytes() == before  # the old file is intact, not half-overwritten


def test_file_has_no_pickle_and_readable_header(tmp_path: Path) -> None:
    path = tmp_path / "f.safetensors"
    make_set().save(path)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = path.read_bytes()[8 : 8 + header_len].decode()
    assert "zsc.featureset/1" in header and "zsc.featureset" in header
    assert "class 0" in header
    make_set().save(tmp_path / "again.safetensors")  # the same data saves to the same bytes
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda fs: setattr(fs, "labels", torch.tensor([0] * 11 + [4])), "labels must lie in"),
        (lambda fs: setattr(fs, "labels", torch.tensor([0] * 11 + [-1])), "labels must lie in"),
        (lambda fs: fs.features.__setitem__((0, 0), math.nan), "NaN or Inf"),
        (lambda fs: fs.text_features.__setitem__((1, 1), math.inf), "NaN or Inf"),
        (lambda fs: setattr(fs, "labels", torch.zeros(11, dtype=torch.int64)), "rows but labels has"),
        (lambda fs: setattr(fs, "features", fs.features.double()), "float32"),
        (lambda fs: setattr(fs, "labels", fs.labels.int()), "int64"),
        (lambda fs: setattr(fs, "class_names", ["a", "b", "c"]), "rows but there are 3 class names"),
        (lambda fs: setattr(fs, "class_names", ["a", "a", "b", "c"]), "class 'a' appears twice in class_names"),
        (lambda fs: setattr(fs, "metadata", {"k": 1}), "metadata"),
        (lambda fs: setattr(fs, "features", fs.features[:, :, None]), "2-D"),
    ],
)
def test_validate_rejects_inconsistent_sets(mutate, message: str, tmp_path: Path) -> None:
    fs = make_set()
    mutate(fs)
    with pytest.raises(ValueError, match=message) as info:
        fs.validate()
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError):  # save validates first and writes nothing
        fs.save(tmp_path / "bad.safetensors")
    assert os.listdir(tmp_path) == []


def test_load_rejects_foreign_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"features": torch.zeros(2, 2)}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a zsc feature set"):
        FeatureSet.load(path)


def test_subset_relabels_or_keeps_indices() -> None:
    fs = make_set()
    sub = fs.subset([2, 0])
    assert sub.class_names == ["class 2", "class 0"]
    assert torch.equal(sub.text_features, fs.text_features[[2, 0]])
    keep = (fs.labels == 2) | (fs.labels == 0)
    assert torch.equal(sub.features, fs.features[keep])
    assert torch.equal(sub.labels, torch.where(fs.labels[keep] == 2, 0, 1))
    sub.validate()

    same = fs.subset([2, 0], relabel=False)
    assert same.class_names == fs.class_names
    assert torch.equal(same.labels, fs.labels[keep])
    with pytest.raises(ValueError, match="must lie in"):
        fs.subset([7])


def test_content_hash_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f.safetensors"
    make_set().save(path)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert content_hash(path) == expected
    assert content_hash(path, chunk_size=7) == expected  # chunk boundaries do not matter
    make_set(seed=3).save(path)
    assert content_hash(path) != expected
    # one read gives both digests a training file's lineage records
    assert file_digests(path, "sha256", "md5", chunk_size=5) == (
        hashlib.sha256(path.read_bytes()).hexdigest(),
        hashlib.md5(path.read_bytes()).hexdigest(),
    )


# ------------------------------------------------------------------------------------------------------- metrics

# Hand example: classes 0, 1 seen; 2, 3 unseen.
Y_TRUE = [0, 0, 1, 1, 1, 2, 2, 3]
Y_PRED = [0, 1, 1, 1, 2, 2, 0, 0]


def test_confusion_matrix_and_per_class_accuracy() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0]])
    assert torch.equal(cm, expected)
    acc = per_class_accuracy(Y_TRUE, Y_PRED, 5)
    assert torch.allclose(acc[:4], torch.tensor([1 / 2, 2 / 3, 1 / 2, 0.0], dtype=torch.float64))
    assert math.isnan(acc[4])  # no samples: undefined, not 0
    # Mean over the classes with samples only: (1/2 + 2/3 + 1/2 + 0) / 4.
    assert mean_per_class_accuracy(Y_TRUE, Y_PRED, num_classes=5) == pytest.approx(5 / 12)
    assert mean_per_class_accuracy(Y_TRUE, Y_PRED, classes=[1, 3]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="must lie in"):
        confusion_matrix([0, 5], [0, 0], 4)


def test_gzsl_metrics_hand_example() -> None:
    m = gzsl_metrics(Y_TRUE, Y_PRED, seen_classes=[0, 1], unseen_classes=[2, 3])
    assert m.seen == pytest.approx(7 / 12)  # (1/2 + 2/3) / 2
    assert m.unseen == pytest.approx(1 / 4)  # (1/2 + 0) / 2
    assert m.harmonic == pytest.approx(0.35)  # 2 · 7/12 · 1/4 / (7/12 + 1/4)
    assert m.as_dict() == {"seen": m.seen, "unseen": m.unseen, "harmonic": m.harmonic}
    with pytest.raises(ValueError, match="overlap"):
        gzsl_metrics(Y_TRUE, Y_PRED, [0, 1], [1, 2])


SCORES = torch.tensor(
    [
        [0.90, 0.10, 0.95, 0.00],  # true 0: base-only → 0 (right); over all → 2
        [0.20, 0.80, 0.00, 0.00],  # true 0: → 1 (wrong)
        [0.10, 0.30, 0.90, 0.00],  # true 1: base-only → 1 (right)
        [0.60, 0.50, 0.00, 0.00],  # true 1: → 0 (wrong)
        [0.00, 0.20, 0.00, 0.99],  # true 1: base-only → 1 (right)
        [0.99, 0.00, 0.30, 0.10],  # true 2: new-only → 2 (right)
        [0.00, 0.00, 0.20, 0.70],  # true 2: → 3 (wrong)
        [0.00, 0.90, 0.10, 0.40],  # true 3: new-only → 3 (right)
    ]
)


def test_base_to_new_metrics_hand_example() -> None:
    m = base_to_new_metrics(SCORES, Y_TRUE, base_classes=[0, 1], new_classes=[2, 3])
    # B and N are overall accuracy (the DFZSL and SHIP code): correct / samples.
    assert m.base == pytest.approx(3 / 5)  # 1 of 2 class-0 samples + 2 of 3 class-1 samples
    assert m.new == pytest.approx(2 / 3)  # 1 of 2 class-2 samples + 1 of 1 class-3 sample
    assert m.harmonic == pytest.approx(12 / 19)  # 2 · 3/5 · 2/3 / (3/5 + 2/3)
    assert m.base_per_class == pytest.approx(7 / 12)  # (1/2 + 2/3) / 2
    assert m.new_per_class == pytest.approx(3 / 4)  # (1/2 + 1) / 2
    # The same scores over all classes get every sample wrong: S = U = 0 and H is 0, not NaN.
    g = gzsl_metrics(Y_TRUE, SCORES.argmax(1), [0, 1], [2, 3])
    assert (g.seen, g.unseen, g.harmonic) == (0.0, 0.0, 0.0)


def test_base_to_new_is_overall_accuracy_on_an_imbalanced_confusion() -> None:
    # Base: class 0 has 90 samples, 81 right; class 1 has 10, 1 right. New: class 2 has 5, all right; class 3 has
    # 45, 9 right. Per-class means would be (0.9 + 0.1)/2 = 0.5 and (1 + 0.2)/2 = 0.6; overall accuracy is 82/100
    # and 14/50. Each sample's score row puts its top score on the predicted class (one-hot, within its set).
    spec = [(0, 0, 81), (0, 1, 9), (1, 1, 1), (1, 0, 9), (2, 2, 5), (3, 3, 9), (3, 2, 36)]
    y = torch.tensor([t for t, _, n in spec for _ in range(n)])
    pred = torch.tensor([p for _, p, n in spec for _ in range(n)])
    scores = torch.nn.functional.one_hot(pred, 4).float()
    m = base_to_new_metrics(scores, y, base_classes=[0, 1], new_classes=[2, 3])
    assert (m.base, m.new) == (pytest.approx(0.82), pytest.approx(0.28))
    assert m.harmonic == pytest.approx(2 * 0.82 * 0.28 / 1.10)
    assert (m.base_per_class, m.new_per_class) == (pytest.approx(0.5), pytest.approx(0.6))
    # S and U stay per-class means.
    g = gzsl_metrics(y, pred, [0, 1], [2, 3])
    assert (g.seen, g.unseen) == (pytest.approx(0.5), pytest.approx(0.6))


def test_harmonic_mean_and_mean_std() -> None:
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    ms = mean_std([1.0, 2.0, 3.0, 4.0])
    assert ms.mean == pytest.approx(2.5)
    assert ms.std == pytest.approx(statistics.stdev([1.0, 2.0, 3.0, 4.0]))  # sample std, ddof = 1
    assert ms.n == 4 and "±" in str(ms)
    assert mean_std([0.7]).std == 0.0
    agg = mean_std_dict([{"H": 0.5, "S": 0.9}, {"H": 0.7, "S": 0.7}])
    assert agg["H"].mean == pytest.approx(0.6) and agg["S"].std == pytest.approx(statistics.stdev([0.9, 0.7]))
    with pytest.raises(ValueError):
        mean_std([])
    with pytest.raises(ValueError, match="same metric keys"):
        mean_std_dict([{"H": 1.0}, {"S": 1.0}])
